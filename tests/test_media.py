"""Round trips through perceiver.media on small generated images, video and audio."""

import struct
import sys
import wave
import zlib

import numpy as np
import pytest

from perceiver import media

pytest.importorskip("PIL")


def _smooth_image(height=24, width=32, shift=0):
    """An RGB image of gentle gradients, which lossy codecs keep well."""
    y, x = np.mgrid[:height, :width]
    return np.stack(
        [(x * 6 + shift * 8) % 256, (y * 9 + 20) % 256, np.full_like(x, 90 + shift * 12)], -1
    ).astype(np.uint8)


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def test_png_round_trip_is_exact(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    media.write_image(tmp_path / "a.png", image)
    back = media.read_image(tmp_path / "a.png")
    assert back.dtype == np.uint8 and back.shape == (9, 11, 3)
    np.testing.assert_array_equal(back, image)


def test_float_image_is_scaled_from_unit_range(tmp_path):
    image = np.random.default_rng(1).random((5, 6, 3))
    media.write_image(tmp_path / "f.png", image)
    np.testing.assert_array_equal(
        media.read_image(tmp_path / "f.png"), np.round(image * 255).astype(np.uint8)
    )


def test_grey_image_is_read_as_three_equal_channels(tmp_path):
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    media.write_image(tmp_path / "g.png", grey)
    back = media.read_image(tmp_path / "g.png")
    assert back.shape == (4, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(back[..., channel], grey)


def test_alpha_is_dropped_and_16_bit_grey_is_scaled(tmp_path):
    from PIL import Image

    rgba = np.random.default_rng(2).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(media.read_image(tmp_path / "rgba.png"), rgba[..., :3])

    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    back = media.read_image(tmp_path / "deep.png")
    want = np.round(deep / 65535.0 * 255).astype(np.uint8)
    np.testing.assert_array_equal(back, np.repeat(want[..., None], 3, -1))


# EXIF orientation -> how a viewer turns the stored pixels (EXIF 2.3, tag 0x0112),
# written out with numpy.
_ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),  # turned 90 clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, 1),  # turned 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(_ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path, orientation):
    from PIL import Image

    stored = np.random.default_rng(orientation).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "o.png", exif=exif)
    np.testing.assert_array_equal(
        media.read_image(tmp_path / "o.png"), _ORIENTATIONS[orientation](stored)
    )


def test_a_portrait_photo_from_a_camera_is_read_upright(tmp_path):
    # A real photo stored sideways, as cameras do, with the tag that turns it.
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    photo = skimage_data.coffee()  # [400, 600, 3]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(photo, 1)).save(tmp_path / "p.jpg", exif=exif, quality=95)
    back = media.read_image(tmp_path / "p.jpg")
    assert back.shape == photo.shape
    assert np.abs(back.astype(int) - photo).mean() < 3


def test_damaged_exif_keeps_the_stored_image(tmp_path, recwarn):
    from PIL import Image

    stored = np.random.default_rng(3).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    Image.fromarray(stored).save(tmp_path / "d.png", exif=b"Exif\x00\x00garbage")
    np.testing.assert_array_equal(media.read_image(tmp_path / "d.png"), stored)


def test_jpeg_round_trip_is_close(tmp_path):
    image = _smooth_image()
    media.write_image(tmp_path / "a.jpg", image)
    back = media.read_image(tmp_path / "a.jpg")
    assert back.shape == image.shape
    assert np.abs(back.astype(int) - image).mean() < 3


def test_write_image_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"image must be \[H, W, 3\]"):
        media.write_image(tmp_path / "x.png", np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        media.write_image(tmp_path / "x.png", np.full((4, 5, 3), 2.0))
    with pytest.raises(TypeError, match="dtype bool"):
        media.write_image(tmp_path / "x.png", np.zeros((4, 5, 3), bool))
    with pytest.raises(ValueError, match="x.nosuchformat"):
        media.write_image(tmp_path / "x.nosuchformat", np.zeros((4, 5, 3), np.uint8))


# ---------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------


def test_gif_frames_round_trip(tmp_path):
    # Few colours, so that the GIF palette holds every one exactly.
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [250, 250, 250]], np.uint8)
    index = np.random.default_rng(3).integers(0, 4, (5, 10, 12))
    frames = palette[index]
    media.write_video(tmp_path / "a.gif", frames, fps=20)
    back, fps, audio, rate = media.read_video(tmp_path / "a.gif")
    np.testing.assert_array_equal(back, frames)
    assert fps == pytest.approx(20)
    assert audio is None and rate is None
    first_two, _, _, _ = media.read_video(tmp_path / "a.gif", max_frames=2)
    np.testing.assert_array_equal(first_two, frames[:2])
    np.testing.assert_array_equal(media.read_image(tmp_path / "a.gif"), frames[0])


def test_gif_keeps_repeated_frames(tmp_path):
    # GIF writers store a run of equal frames once; reading restores the run.
    frames = np.zeros((4, 6, 6, 3), np.uint8)
    frames[3] = 255
    media.write_video(tmp_path / "r.gif", frames, fps=10)
    back, fps, _, _ = media.read_video(tmp_path / "r.gif")
    np.testing.assert_array_equal(back, frames)
    assert fps == pytest.approx(10)
    back, fps, _, _ = media.read_video(tmp_path / "r.gif", max_frames=2)
    np.testing.assert_array_equal(back, frames[:2])
    assert fps == pytest.approx(10)


def test_gif_refuses_audio(tmp_path):
    with pytest.raises(ValueError, match="GIF cannot hold audio"):
        media.write_video(tmp_path / "a.gif", np.zeros((2, 4, 4, 3), np.uint8), 10,
                          np.zeros((100, 1)), 8000)


def test_mp4_round_trip_frames_and_audio(tmp_path):
    pytest.importorskip("av")
    frames = np.stack([_smooth_image(shift=t) for t in range(8)])
    rate = 16000
    seconds = len(frames) / 10
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    audio = np.stack([tone, -0.5 * tone], -1).astype(np.float32)
    media.write_video(tmp_path / "a.mp4", frames, 10, audio, rate)

    back, fps, sound, sound_rate = media.read_video(tmp_path / "a.mp4")
    assert back.dtype == np.uint8 and back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 4  # H.264 is lossy.
    assert fps == pytest.approx(10)
    assert sound_rate == rate
    assert sound.dtype == np.float32 and sound.shape[1] == 2
    assert abs(len(sound) - len(audio)) <= 1024  # AAC codes whole 1024-sample frames.
    n = min(len(sound), len(audio))
    assert np.abs(sound[:n] - audio[:n]).mean() < 0.02  # AAC is lossy.

    first, fps, sound, _ = media.read_video(tmp_path / "a.mp4", max_frames=3)
    assert first.shape == (3,) + frames.shape[1:]
    assert len(sound) == pytest.approx(0.3 * rate, abs=1)


def test_mp4_without_audio_and_from_float_frames(tmp_path):
    pytest.importorskip("av")
    frames = np.stack([_smooth_image(16, 16, shift=t) for t in range(3)]) / 255.0
    media.write_video(tmp_path / "b.mp4", frames, 24)
    back, fps, sound, rate = media.read_video(tmp_path / "b.mp4")
    assert back.shape == (3, 16, 16, 3) and sound is None and rate is None
    assert fps == pytest.approx(24)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_video_display_rotation_is_applied(tmp_path, rotation):
    # Phones store portrait video sideways with a display rotation; players turn it.
    av = pytest.importorskip("av")
    stored = np.stack([_smooth_image(16, 32, shift=t) for t in range(3)])
    path = tmp_path / "r.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        if not hasattr(stream, "set_display_rotation"):
            pytest.skip("this PyAV cannot write a display rotation")
        stream.set_display_rotation(rotation)  # Counter-clockwise degrees.
        for frame in stored:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    frames, _, _, _ = media.read_video(path)
    want = np.rot90(stored, rotation // 90, axes=(1, 2))
    assert frames.shape == want.shape
    assert np.abs(frames.astype(int) - want).mean() < 6  # MPEG-4 is lossy.


def test_write_video_rejects_bad_input(tmp_path):
    pytest.importorskip("av")
    with pytest.raises(ValueError, match="even frame height and width"):
        media.write_video(tmp_path / "odd.mp4", np.zeros((2, 5, 6, 3), np.uint8), 10)
    with pytest.raises(ValueError, match=r"frames must be \[T, H, W, 3\]"):
        media.write_video(tmp_path / "x.mp4", np.zeros((5, 6, 3), np.uint8), 10)
    with pytest.raises(ValueError, match="fps must be > 0"):
        media.write_video(tmp_path / "x.mp4", np.zeros((2, 4, 4, 3), np.uint8), 0)
    with pytest.raises(ValueError, match="sample_rate"):
        media.write_video(tmp_path / "x.mp4", np.zeros((2, 4, 4, 3), np.uint8), 10,
                          np.zeros((100, 1)))


# ---------------------------------------------------------------------------
# WAV
# ---------------------------------------------------------------------------


def test_wav_round_trip_is_exact_at_16_bits(tmp_path):
    ints = np.random.default_rng(4).integers(-32768, 32768, (50, 2))
    audio = ints / 32768.0
    media.write_wav(tmp_path / "a.wav", audio, 22050)
    back, rate = media.read_wav(tmp_path / "a.wav")
    assert rate == 22050 and back.dtype == np.float32
    np.testing.assert_array_equal(back, audio.astype(np.float32))
    # The samples on disk are the little-endian int16s, interleaved.
    with wave.open(str(tmp_path / "a.wav")) as reader:
        raw = np.frombuffer(reader.readframes(50), "<i2").reshape(50, 2)
    np.testing.assert_array_equal(raw, ints)


def test_wav_mono_int16_and_quantisation(tmp_path):
    media.write_wav(tmp_path / "m.wav", np.array([0, 1, -1, 32767, -32768], np.int16), 8000)
    back, _ = media.read_wav(tmp_path / "m.wav")
    np.testing.assert_array_equal(back[:, 0], np.array([0, 1, -1, 32767, -32768]) / 32768.0)
    # Floats round to the nearest step; +1.0 saturates.
    media.write_wav(tmp_path / "q.wav", np.array([0.3, 1.0, -1.0]), 8000)
    back, _ = media.read_wav(tmp_path / "q.wav")
    np.testing.assert_array_equal(back[:, 0], np.array([9830, 32767, -32768]) / 32768.0)


@pytest.mark.parametrize("width", [1, 3])
def test_wav_reads_8_and_24_bit(tmp_path, width):
    if width == 1:
        raw = bytes([0, 128, 255])
        want = (np.array([0, 128, 255]) - 128) / 128.0
    else:
        values = [-(1 << 23), 0, (1 << 23) - 1]
        raw = b"".join(struct.pack("<i", v)[:3] for v in values)
        want = np.array(values) / float(1 << 23)
    with wave.open(str(tmp_path / "w.wav"), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(width)
        writer.setframerate(1000)
        writer.writeframes(raw)
    back, rate = media.read_wav(tmp_path / "w.wav")
    assert rate == 1000
    np.testing.assert_allclose(back[:, 0], want, rtol=0, atol=1e-7)


def test_write_wav_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        media.write_wav(tmp_path / "x.wav", np.array([0.0, 1.5]), 8000)
    with pytest.raises(ValueError, match="sample_rate"):
        media.write_wav(tmp_path / "x.wav", np.zeros(4), 0)
    with pytest.raises(TypeError, match="int32"):
        media.write_wav(tmp_path / "x.wav", np.zeros(4, np.int32), 8000)


# ---------------------------------------------------------------------------
# Missing and corrupt files
# ---------------------------------------------------------------------------

READERS = [
    ("x.png", media.read_image),
    ("x.mp4", media.read_video),
    ("x.gif", media.read_video),
    ("x.wav", media.read_wav),
]


@pytest.mark.parametrize("name, reader", READERS)
def test_missing_file_names_the_path(tmp_path, name, reader):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / name)):
        reader(tmp_path / name)


@pytest.mark.parametrize("name, reader", READERS)
def test_corrupt_file_is_one_value_error_naming_the_path(tmp_path, name, reader):
    if name.endswith(".mp4"):
        pytest.importorskip("av")
    path = tmp_path / name
    path.write_bytes(b"this is not a media file\x00\x01" * 8)
    with pytest.raises(ValueError, match=str(path)):
        reader(path)


def test_truncated_png_is_a_value_error(tmp_path):
    image = np.random.default_rng(5).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    media.write_image(tmp_path / "t.png", image)
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.png"):
        media.read_image(tmp_path / "t.png")


def test_missing_pillow_asks_for_the_media_extra(tmp_path, monkeypatch):
    media.write_image(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "PIL", None)  # Makes `import PIL` fail.
    with pytest.raises(ImportError, match=r"perceiver-io-jax\[media\]"):
        media.read_image(tmp_path / "a.png")


# ---------------------------------------------------------------------------
# Hostile files: decompression bombs, corrupt data, NaN
# ---------------------------------------------------------------------------


def _png_header(width, height):
    """A PNG that claims width x height pixels and holds none: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side, pixels", [(100_000, "10,000,000,000"), (10_000, "100,000,000")])
def test_decompression_bomb_is_a_value_error_naming_file_and_size(tmp_path, recwarn, side, pixels):
    # 10^10 pixels is past twice Pillow's limit (it raises); 10^8 is between
    # its limit and twice it (it only warns, then would decode it all).
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(side, side))
    with pytest.raises(ValueError, match=rf"bomb\.png.*claims {pixels} pixels.*MAX_IMAGE_PIXELS"):
        media.read_image(path)
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_decompression_bomb_gif_is_a_value_error(tmp_path):
    # A GIF's logical screen size is in bytes 6..9: claim 65535 x 65535.
    media.write_video(tmp_path / "a.gif", np.zeros((2, 4, 4, 3), np.uint8), 10)
    data = bytearray((tmp_path / "a.gif").read_bytes())
    data[6:10] = struct.pack("<HH", 65535, 65535)
    (tmp_path / "a.gif").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"a\.gif.*4,294,836,225 pixels"):
        media.read_video(tmp_path / "a.gif")


def test_image_without_pixels_is_a_value_error(tmp_path, monkeypatch):
    from PIL import Image

    # Pillow's readers refuse a 0 x 4 image themselves; a plugin might not.
    media.write_image(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    monkeypatch.setattr(Image, "open", lambda path: Image.new("RGB", (0, 4)))
    with pytest.raises(ValueError, match=r"a\.png.*no pixels \(0 x 4\)"):
        media.read_image(tmp_path / "a.png")


@pytest.mark.parametrize("name", ["c.gif", "c.png", "c.jpg"])
def test_damaged_images_give_one_value_error_naming_the_path(tmp_path, name):
    """Truncated and byte-flipped copies of good files: a ValueError, never another error."""
    frames = np.stack([_smooth_image(16, 16, shift=t) for t in range(6)])
    good = tmp_path / ("good" + name[1:])
    if name.endswith(".gif"):
        media.write_video(good, frames, 25)
        reader = media.read_video
    else:
        media.write_image(good, frames[0])
        reader = media.read_image
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / name
    for trial in range(150):
        damaged = bytearray(data)
        if trial % 3 == 0:
            damaged = damaged[: rng.integers(1, len(data))]
        else:
            for _ in range(rng.integers(1, 8)):
                damaged[rng.integers(0, len(data))] = rng.integers(0, 256)
        path.write_bytes(bytes(damaged))
        try:
            reader(path)
        except ValueError as e:
            assert str(path) in str(e), (trial, str(e))


def _break_audio_track(data: bytes) -> bytes:
    # The size byte of the sound track's handler box: the track loses its codec.
    at = data.index(b"hdlr\0\0\0\0\0\0\0\0soun")
    return data[: at - 1] + b"\x9c" + data[at:]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: data.replace(b"SoundHandler", b"Sound\xb2andler"),  # Not UTF-8.
        _break_audio_track,
    ],
    ids=["truncated", "metadata-not-utf8", "audio-without-codec"],
)
def test_damaged_mp4_gives_one_value_error_naming_the_path(tmp_path, damage):
    pytest.importorskip("av")
    frames = np.stack([_smooth_image(16, 16, shift=t) for t in range(4)])
    tone = 0.3 * np.sin(np.arange(4000) / 5)[:, None]
    media.write_video(tmp_path / "good.mp4", frames, 25, tone, 8000)
    path = tmp_path / "bad.mp4"
    path.write_bytes(damage((tmp_path / "good.mp4").read_bytes()))
    with pytest.raises(ValueError, match=rf"^cannot read {path} as a video: "):
        media.read_video(path)


def test_check_finite_counts_and_names():
    media.check_finite("x", np.arange(4))  # Integers are always finite.
    media.check_finite("x", np.zeros(3))
    with pytest.raises(ValueError, match=r"^audio has 3 non-finite values \(NaN or Inf\)\.$"):
        media.check_finite("audio", np.array([0.0, np.nan, np.inf, -np.inf]))
    with pytest.raises(ValueError, match=r"^x has 1 non-finite value \(NaN or Inf\)\.$"):
        media.check_finite("x", np.array([[np.nan, 1.0]], np.float32))


def test_writers_refuse_nan(tmp_path):
    frames = np.zeros((2, 4, 4, 3))
    frames[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="frames has 1 non-finite value"):
        media.write_video(tmp_path / "a.gif", frames, 10)
    with pytest.raises(ValueError, match="audio has 1 non-finite value"):
        media.write_wav(tmp_path / "a.wav", np.array([0.0, np.nan]), 8000)


def test_nan_audio_in_a_video_file_is_refused(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "nan.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream("h264", rate=10)
        video.width = video.height = 16
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("pcm_f32le", rate=8000, layout="mono")
        for index in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples = np.zeros((1, 1600), np.float32)
        samples[0, 5:8] = np.nan  # A float codec stores NaN as it is.
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 8000
        frame.pts = 0
        container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    with pytest.raises(ValueError, match=r"nan\.mkv.*its audio has 3 non-finite values"):
        media.read_video(path)


# ---------------------------------------------------------------------------
# Output extensions
# ---------------------------------------------------------------------------


def test_check_image_suffix():
    for name in ("a.png", "a.JPG", "a.webp", "a.tif"):
        media.check_image_suffix(name)
    # .xbm is a Pillow writer, of 1-bit images only; .txt none at all.
    for name in ("a.xbm", "a.txt", "noextension"):
        with pytest.raises(ValueError, match=rf"{name}.*Pillow writes no RGB image"):
            media.check_image_suffix(name)


def test_write_video_refuses_other_extensions_before_writing(tmp_path):
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    media.check_video_suffix("a.MKV")
    with pytest.raises(ValueError, match=r"out\.webm.*one of \.mp4.*got '\.webm'"):
        media.write_video(tmp_path / "out.webm", frames, 10)
    assert not (tmp_path / "out.webm").exists()


def test_mp4_audio_at_a_rate_aac_cannot_code_is_resampled(tmp_path):
    # The video model's rate at 30 fps: 30 * 1920 = 57600 Hz, not an AAC rate.
    pytest.importorskip("av")
    frames = np.zeros((30, 16, 16, 3), np.uint8)
    rate = 57600
    tone = 0.5 * np.sin(2 * np.pi * 200 * np.arange(rate) / rate)
    media.write_video(tmp_path / "a.mp4", frames, 30, tone[:, None], rate)
    _, _, sound, sound_rate = media.read_video(tmp_path / "a.mp4")
    assert sound_rate == 64000
    assert len(sound) == pytest.approx(sound_rate, abs=2)  # Still one second.
    want = 0.5 * np.sin(2 * np.pi * 200 * np.arange(len(sound)) / sound_rate)
    assert np.abs(sound[:, 0] - want).mean() < 0.03
