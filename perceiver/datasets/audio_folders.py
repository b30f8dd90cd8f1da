"""Audio clips in folders named by class, read as fixed-length mono waveforms.

`root/<class>/<clip>.wav|.flac|.mp3`: classes are the sub-folders, sorted by
name. Each clip is mixed to mono (the mean of its channels), resampled to
`sample_rate` (windowed-sinc, band-limited: `resample`) and cut or padded
with zeros, centred, to `num_samples`. WAV is read by
`perceiver.media.read_wav`; FLAC and MP3 by PyAV (the 'media' extra),
imported when needed. Files at the root and names starting with '.' are
skipped.
"""

import dataclasses
import math
import pathlib
from typing import List

import numpy as np

from perceiver import media
from perceiver import _messages

SUFFIXES = (".wav", ".wave", ".flac", ".mp3")
# A clip whose peak is below this (of full scale, 1.0) is refused as silent.
SILENCE = 1e-4


@dataclasses.dataclass(frozen=True)
class AudioFolder:
    """waves float32 `[N, num_samples]`, labels int32 `[N]` (indices into classes), paths `[N]`."""

    waves: np.ndarray
    labels: np.ndarray
    classes: List[str]
    paths: List[str]


def _kaiser_sinc(x: np.ndarray, cutoff: float, half_width: float, beta: float) -> np.ndarray:
    """A low-pass kernel at offsets `x` (input samples): cutoff in cycles per input sample x 2."""
    window = np.where(np.abs(x) < half_width,
                      np.i0(beta * np.sqrt(np.clip(1 - (x / half_width) ** 2, 0, 1))) / np.i0(beta), 0.0)
    return cutoff * np.sinc(cutoff * x) * window


def resample(audio, from_rate: int, to_rate: int, zero_crossings: int = 16, beta: float = 8.0) -> np.ndarray:
    """Band-limited resampling by a Kaiser-windowed sinc, evaluated at each output time.

    The kernel's cutoff is the lower of the two Nyquist frequencies (times
    0.95, leaving the window room to roll off), so downsampling filters out
    what would alias. Samples past the ends count as zeros.

    Args:
      audio: `[samples]` or `[samples, channels]`.
      from_rate, to_rate: sample rates, Hz.
      zero_crossings: the kernel's half-width in zero crossings of the sinc.
      beta: the Kaiser window's shape.

    Returns:
      float32 `[ceil(samples * to_rate / from_rate)]` (or `[..., channels]`).
    """
    audio = np.asarray(audio, np.float64)
    if from_rate == to_rate:
        return audio.astype(np.float32)
    length = audio.shape[0]
    out_length = int(math.ceil(length * to_rate / from_rate))
    cutoff = 0.95 * min(1.0, to_rate / from_rate)  # As a fraction of the input's Nyquist.
    half_width = zero_crossings / cutoff  # In input samples.
    taps = np.arange(-int(math.ceil(half_width)), int(math.ceil(half_width)) + 1)
    padded = np.concatenate([np.zeros((len(taps),) + audio.shape[1:]), audio,
                             np.zeros((len(taps),) + audio.shape[1:])])
    out = np.empty((out_length,) + audio.shape[1:])
    step = 4096  # Output samples per block: bounds the [block, taps] kernel matrix.
    for start in range(0, out_length, step):
        times = np.arange(start, min(start + step, out_length)) * (from_rate / to_rate)
        base = np.floor(times).astype(np.int64)
        index = base[:, None] + taps[None, :]
        kernel = _kaiser_sinc(times[:, None] - index, cutoff, half_width, beta)
        gathered = padded[index + len(taps)]
        out[start:start + len(times)] = np.einsum("ot,ot...->o...", kernel, gathered)
    return out.astype(np.float32)


def fit_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """`wave [samples]` cut or zero-padded, centred, to `[num_samples]`."""
    extra = len(wave) - num_samples
    if extra >= 0:
        return wave[extra // 2:extra // 2 + num_samples]
    before = -extra // 2
    return np.pad(wave, (before, -extra - before))


def _decode_av(path: pathlib.Path):
    try:
        import av
    except ImportError as e:
        raise ImportError(
            f"reading {path.suffix} audio needs PyAV: {_messages.install_hint('media')}"
        ) from e
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("it has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
        chunks = [out.to_ndarray() for frame in container.decode(stream) for out in resampler.resample(frame)]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
    if not chunks:
        raise ValueError("it holds no audio samples")
    return np.concatenate(chunks, axis=1).T, int(rate)


def read_clip(path, sample_rate: int, num_samples: int) -> np.ndarray:
    """One clip as float32 `[num_samples]` mono at `sample_rate`.

    Raises:
      ValueError: in one line naming the file: an extension not in SUFFIXES,
        an unreadable file, silent audio (peak below 1e-4 of full scale).
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported audio extension {suffix or 'none'!r}; accepted: {', '.join(SUFFIXES)}.")
    try:
        if suffix in (".wav", ".wave"):
            audio, rate = media.read_wav(path)
        else:
            audio, rate = _decode_av(path)
    except ImportError:
        raise
    except Exception as e:  # Decoders raise many kinds; all mean the file cannot be read.
        reason = str(e).replace("\n", " ")
        raise ValueError(f"{path}: cannot read it as audio: {reason}") from e
    audio = np.asarray(audio, np.float64).reshape(len(audio), -1)
    if not audio.size or not np.isfinite(audio).all() or np.abs(audio).max() < SILENCE:
        raise ValueError(f"{path}: the audio is silent (peak below {SILENCE} of full scale) or empty.")
    wave = resample(audio.mean(axis=1), rate, sample_rate)
    return fit_length(wave, num_samples).astype(np.float32)


def read_audio_folder(root, sample_rate: int, num_samples: int) -> AudioFolder:
    """Reads every clip under `root/<class>/`.

    Args:
      root: the folder whose sub-folders are the classes.
      sample_rate: the rate to resample to, Hz.
      num_samples: each wave's length after centred cutting or padding.

    Raises:
      FileNotFoundError: if `root` is not a folder.
      ValueError: in one line naming the folder or file: no class folders,
        an empty class folder, or any of `read_clip`'s.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no audio folder at {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no class folders (expected {root}/<class>/<clip>.wav).")
    waves, labels, paths = [], [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{folder}: the class folder holds no audio files.")
        for path in files:
            waves.append(read_clip(path, sample_rate, num_samples))
            labels.append(label)
            paths.append(str(path))
    return AudioFolder(np.stack(waves), np.asarray(labels, np.int32), [f.name for f in folders], paths)
