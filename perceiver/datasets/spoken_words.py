"""A spoken-word set made with the espeak-ng speech synthesizer, one folder per word.

Each class is a word, each "speaker" an English espeak-ng voice with a
voice variant (m1..m7, f1..f4), a speed and a pitch. Clips are trimmed to
where the speech is, resampled and written as 16-bit WAV under
`out_dir/<word>/<speaker>.wav`, the layout `audio_folders.read_audio_folder`
reads. The caller holds speakers out between train and eval (e.g.
`SPEAKERS[:16]` and `SPEAKERS[16:]`). Needs the espeak-ng program
(Debian/Ubuntu: apt-get install espeak-ng).
"""

import dataclasses
import pathlib
import shutil
import subprocess
import tempfile
from typing import Sequence, Tuple

import numpy as np

from perceiver import media
from perceiver.datasets import audio_folders

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclasses.dataclass(frozen=True)
class Speaker:
    """An espeak-ng voice (`-v`, e.g. "en-us+f2"), speed in words per minute (`-s`), pitch 0-99 (`-p`)."""

    voice: str
    speed: int
    pitch: int

    @property
    def name(self) -> str:
        return f"{self.voice.replace('+', '_')}_s{self.speed}_p{self.pitch}"


def _speakers():
    # espeak-ng's own English voices (not the MBROLA ones, which need extra data)
    # crossed with its variants; speed and pitch cycle so that no two repeat.
    voices = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
    variants = ("m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "m6", "m7")
    speeds, pitches = (140, 170, 155, 185), (35, 60, 45, 70, 50)
    out = []
    for i in range(len(voices) * 4):
        voice = voices[i % len(voices)]
        variant = variants[(i * 5) % len(variants)]
        out.append(Speaker(f"{voice}+{variant}", speeds[i % len(speeds)], pitches[i % len(pitches)]))
    return tuple(out)


SPEAKERS = _speakers()

# The speeds and pitches `vary_speakers` draws from: 25 pairs, espeak-ng's usual range.
_SPEEDS, _PITCHES = (130, 150, 170, 190, 210), (25, 40, 55, 70, 85)


def vary_speakers(speakers: Sequence[Speaker], count: int) -> Tuple[Speaker, ...]:
    """The speakers, then each voice again at `count` other speeds and pitches.

    More clips from the same voices (data augmentation at the source), so a
    split held out by voice (`SPEAKERS[:16]` / `SPEAKERS[16:]`, whose voices
    differ) stays held out. Deterministic; no speaker repeats.

    Args:
      speakers: the voices to vary.
      count: variants per speaker, 0 to 24.

    Raises:
      ValueError: for a count outside [0, 24].
    """
    pairs = [(s, p) for s in _SPEEDS for p in _PITCHES]
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < len(pairs):
        raise ValueError(f"count must be an int in [0, {len(pairs) - 1}]; got {count!r}.")
    out = list(speakers)
    seen = set(out)
    for i, speaker in enumerate(speakers):
        # Stepping by 11 (prime to 25) visits every pair once; the start differs per speaker.
        candidates = (pairs[(7 * i + 11 * k) % len(pairs)] for k in range(len(pairs)))
        made = 0
        for speed, pitch in candidates:
            varied = Speaker(speaker.voice, speed, pitch)
            if made < count and varied not in seen:
                out.append(varied)
                seen.add(varied)
                made += 1
    return tuple(out)


def _espeak() -> str:
    program = shutil.which("espeak-ng")
    if program is None:
        raise RuntimeError("the spoken-word set needs espeak-ng: apt-get install espeak-ng")
    return program


def _trim(audio: np.ndarray, rate: int, threshold: float = 0.02, margin: float = 0.02) -> np.ndarray:
    """`audio [samples]` cut to where it exceeds `threshold` of its peak, `margin` seconds kept around."""
    loud = np.nonzero(np.abs(audio) >= threshold * np.abs(audio).max())[0]
    pad = int(margin * rate)
    return audio[max(0, loud[0] - pad):loud[-1] + 1 + pad]


def say(word: str, speaker: Speaker, sample_rate: int = 16000, max_seconds: float = 0.95) -> np.ndarray:
    """`word` spoken by `speaker`: float32 `[samples]` at `sample_rate`, at most `max_seconds` long.

    Raises:
      RuntimeError: if espeak-ng is missing or fails (its message included).
    """
    program = _espeak()
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "word.wav"
        command = [program, "-v", speaker.voice, "-s", str(speaker.speed), "-p", str(speaker.pitch),
                   "-w", str(path), word]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or not path.exists():
            detail = (result.stderr or result.stdout).strip().replace("\n", " ")
            raise RuntimeError(f"espeak-ng failed for {word!r} with voice {speaker.voice}: {detail}")
        audio, rate = media.read_wav(path)
    mono = _trim(audio.mean(axis=1), rate)
    wave = audio_folders.resample(mono, rate, sample_rate)[: int(max_seconds * sample_rate)]
    return np.clip(wave, -1.0, 1.0)


def make_spoken_words(
    out_dir,
    words: Sequence[str] = DIGITS,
    speakers: Sequence[Speaker] = SPEAKERS,
    sample_rate: int = 16000,
    max_seconds: float = 0.95,
) -> pathlib.Path:
    """Writes `out_dir/<word>/<speaker.name>.wav` for every word and speaker; returns `out_dir`.

    Raises:
      RuntimeError: "needs espeak-ng: apt-get install espeak-ng" if it is missing.
      ValueError: for a word that is not a plain folder name.
    """
    _espeak()
    out_dir = pathlib.Path(out_dir)
    for word in words:
        if not word or "/" in word or word.startswith("."):
            raise ValueError(f"word {word!r} cannot name a folder.")
        (out_dir / word).mkdir(parents=True, exist_ok=True)
        for speaker in speakers:
            wave = say(word, speaker, sample_rate, max_seconds)
            media.write_wav(out_dir / word / f"{speaker.name}.wav", wave, sample_rate)
    return out_dir
