"""perceiver.datasets.audio_folders (resampling, folders, errors) and spoken_words (needs espeak-ng)."""

import shutil

import numpy as np
import pytest

from perceiver import media
from perceiver.datasets import audio_folders


def _peak_hz(wave, rate):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)]


def test_resampling_keeps_a_sine_and_removes_what_would_alias():
    rate = 22050
    t = np.arange(rate // 4) / rate
    down = audio_folders.resample(0.5 * np.sin(2 * np.pi * 1000 * t), rate, 8000)
    assert len(down) == 2000 and abs(_peak_hz(down, 8000) - 1000) <= 4
    # Amplitude kept away from the ends.
    assert np.abs(down[200:-200]).max() == pytest.approx(0.5, abs=0.01)
    up = audio_folders.resample(0.5 * np.sin(2 * np.pi * 440 * t), rate, 44100)
    assert abs(_peak_hz(up, 44100) - 440) <= 4
    # 7 kHz is above 8 kHz's Nyquist: filtered out, not folded down to 1 kHz.
    alias = audio_folders.resample(0.5 * np.sin(2 * np.pi * 7000 * t), rate, 8000)
    assert np.abs(alias[100:-100]).max() < 1e-3


def test_resampling_matches_the_signal_evaluated_at_the_new_times():
    # A sum of sines below both Nyquist frequencies is known at every instant.
    def signal(t):
        return 0.3 * np.sin(2 * np.pi * 300 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t + 1) \
            + 0.1 * np.sin(2 * np.pi * 2500 * t + 2)

    for src, dst in [(16000, 12000), (12000, 16000), (44100, 16000)]:
        x = signal(np.arange(src // 10) / src)
        ours = audio_folders.resample(x, src, dst)
        want = signal(np.arange(len(ours)) / dst)
        np.testing.assert_allclose(ours[150:-150], want[150:-150], atol=3e-3)


def test_fit_length_centres():
    np.testing.assert_array_equal(audio_folders.fit_length(np.arange(6.0), 2), [2, 3])
    np.testing.assert_array_equal(audio_folders.fit_length(np.ones(2), 5), [0, 1, 1, 0, 0])


def _tone(hz, seconds, rate, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    return np.tile((0.3 * np.sin(2 * np.pi * hz * t))[:, None], (1, channels))


def test_reads_class_folders_mono_resampled_and_fitted(tmp_path):
    (tmp_path / "high").mkdir()
    (tmp_path / "low").mkdir()
    media.write_wav(tmp_path / "low" / "a.wav", _tone(300, 0.2, 16000, channels=2), 16000)
    media.write_wav(tmp_path / "high" / "b.wav", _tone(2000, 0.05, 22050), 22050)
    (tmp_path / "low" / ".DS_Store").write_bytes(b"junk")  # Skipped.
    got = audio_folders.read_audio_folder(tmp_path, 8000, 1000)
    assert got.classes == ["high", "low"] and got.labels.tolist() == [0, 1]
    assert got.waves.shape == (2, 1000) and got.waves.dtype == np.float32
    # 0.05 s at 8 kHz is 400 samples, padded with 300 zeros each side.
    assert not got.waves[0, :290].any() and not got.waves[0, 710:].any()
    assert abs(_peak_hz(got.waves[1], 8000) - 300) <= 8
    assert got.waves[1].max() == pytest.approx(0.3, abs=0.01)  # Stereo mean, not sum.


def test_reads_flac_through_pyav(tmp_path):
    av = pytest.importorskip("av")
    (tmp_path / "tone").mkdir()
    path = tmp_path / "tone" / "c.flac"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray((_tone(500, 0.1, 16000).T * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    got = audio_folders.read_audio_folder(tmp_path, 16000, 1600)
    assert abs(_peak_hz(got.waves[0], 16000) - 500) <= 10


@pytest.mark.parametrize("case,message", [
    ("none", r"no class folders"),
    ("empty", r"empty: the class folder holds no audio files"),
    ("suffix", r"x\.ogg: unsupported audio extension '\.ogg'; accepted: \.wav, \.wave, \.flac, \.mp3"),
    ("broken", r"x\.wav: cannot read it as audio"),
    ("silent", r"x\.wav: the audio is silent"),
])
def test_errors_name_the_file_in_one_line(tmp_path, case, message):
    folder = tmp_path / ("empty" if case == "empty" else "word")
    if case != "none":
        folder.mkdir()
    if case == "suffix":
        (folder / "x.ogg").write_bytes(b"OggS")
    elif case == "broken":
        (folder / "x.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    elif case == "silent":
        media.write_wav(folder / "x.wav", np.zeros(100), 8000)
    with pytest.raises(ValueError, match=message) as info:
        audio_folders.read_audio_folder(tmp_path, 8000, 100)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_spoken_words_are_written_in_class_folders(tmp_path):
    from perceiver.datasets import spoken_words

    speakers = spoken_words.SPEAKERS[:2]
    root = spoken_words.make_spoken_words(tmp_path, words=("yes", "no"), speakers=speakers, sample_rate=16000)
    got = audio_folders.read_audio_folder(root, 16000, 16000)
    assert got.classes == ["no", "yes"] and len(got.paths) == 4
    for path in got.paths:
        audio, rate = media.read_wav(path)
        assert rate == 16000 and 0.1 < len(audio) / rate < 1.0
    assert not np.allclose(got.waves[0], got.waves[1])  # Two speakers differ.


def test_spoken_words_say_what_to_install(monkeypatch, tmp_path):
    from perceiver.datasets import spoken_words

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs espeak-ng: apt-get install espeak-ng"):
        spoken_words.make_spoken_words(tmp_path, words=("yes",))


def test_varied_speakers_keep_their_voices_and_the_held_out_split():
    from perceiver.datasets import spoken_words

    train, held_out = spoken_words.SPEAKERS[:16], spoken_words.SPEAKERS[16:]
    varied = spoken_words.vary_speakers(train, 3)
    assert varied[:16] == train and len(varied) == 16 * 4 == len(set(varied))
    assert {s.voice for s in varied} == {s.voice for s in train}
    assert not {s.voice for s in varied} & {s.voice for s in held_out}
    for speaker in train:  # Each voice at three new speed-pitch pairs.
        others = [s for s in varied[16:] if s.voice == speaker.voice]
        assert len({(s.speed, s.pitch) for s in others} - {(speaker.speed, speaker.pitch)}) == 3
    assert spoken_words.vary_speakers(train, 0) == train
    assert len(set(spoken_words.vary_speakers(train, 24))) == 16 * 25  # Every pair, none twice.


@pytest.mark.parametrize("count", [-1, 25, 2.0, True, "3"])
def test_varied_speakers_refuse_a_count_out_of_range(count):
    from perceiver.datasets import spoken_words

    with pytest.raises(ValueError, match="count must be an int in \\[0, 24\\]"):
        spoken_words.vary_speakers(spoken_words.SPEAKERS[:2], count)
