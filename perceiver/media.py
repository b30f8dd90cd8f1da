"""Reading and writing images, video and audio as numpy arrays.

Images (PNG, JPEG, GIF, ...) go through Pillow, MP4 video and its audio
through PyAV (FFmpeg), WAV through the standard library's `wave`. Pillow and
PyAV are optional: install them with `pip install 'perceiver-io-jax[media]'`.

Conventions: images and frames are uint8 RGB, `[H, W, 3]` and `[T, H, W, 3]`;
audio is float32 `[samples, channels]` in [-1, 1].

Raises, for every reader: `FileNotFoundError` naming the path when there is no
such file; `ValueError` saying what the path is when it is a folder or a file
of another kind ("x.pystate is a Python pickle (a checkpoint?), expected an
image ...", told from its first bytes), and naming the path when the file
cannot be decoded (corrupt, truncated, or an image larger than Pillow's
decompression-bomb limit).
"""

import contextlib
import fractions
import functools
import io
import os
import pathlib
import re
import secrets
import struct
import warnings
import wave
from typing import Optional, Tuple, Union

import numpy as np

from perceiver import _messages

PathLike = Union[str, "os.PathLike[str]"]

_INSTALL_HINT = f"install the media extra: {_messages.install_hint('media')}"
_GIF_SUFFIXES = (".gif",)
# The extensions write_video writes: containers that take H.264 and AAC (and GIF).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi") + _GIF_SUFFIXES
# What Pillow raises for corrupt or truncated data (its own `open` catches
# SyntaxError, IndexError, TypeError and struct.error from its plugins).
_PILLOW_DATA_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error
)


def _pillow():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"reading and writing images needs Pillow; {_INSTALL_HINT}") from e
    return Image


def _pyav():
    try:
        import av
    except ImportError as e:
        raise ImportError(f"reading and writing video needs PyAV (av); {_INSTALL_HINT}") from e
    return av


# The kinds of file each reader tries to decode; any other kind is named and
# refused before decoding. "binary" (no signature known here) and
# "unreadable" go to the decoder, which says what is wrong.
_IMAGE_KINDS = ("image", "gif", "binary", "unreadable")
_VIDEO_KINDS = ("video", "gif", "binary", "unreadable")
_WAV_KINDS = ("wav", "binary", "unreadable")
# Pillow's image formats that are text (netpbm's plain variants, X bitmaps).
_TEXT_IMAGE_SUFFIXES = (".pbm", ".pgm", ".ppm", ".pnm", ".xbm", ".xpm")


def _existing_file(path: PathLike, expected: str, kinds) -> pathlib.Path:
    """`path`, if it is a file of one of `kinds` (see `_messages.Kind`).

    Raises:
      FileNotFoundError: if nothing is at `path`.
      ValueError: "PATH is KIND, expected EXPECTED" for a folder or a file of
        another kind.
    """
    path = pathlib.Path(path)
    kind = _messages.file_kind(path)
    if kind.name == "missing":
        raise FileNotFoundError(f"no such file: {path}")
    if kind.name == "text" and path.suffix.lower() in _TEXT_IMAGE_SUFFIXES and "image" in kinds:
        return path
    if kind.name not in kinds:
        raise ValueError(_messages.wrong_kind(path, kind, expected))
    return path


def check_finite(name: str, array) -> None:
    """Raises `ValueError` if a float array holds NaN or Inf.

    Args:
      name: the argument's name, for the message.
      array: an array of any shape; non-float arrays always pass.

    Raises:
      ValueError: naming `name` and how many values are not finite.
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(
            f"{name} has {bad} non-finite value{'s' if bad > 1 else ''} (NaN or Inf)."
        )


def _to_uint8(
    name: str, array, ndim: int, channel_counts: Tuple[int, ...], layout: str
) -> np.ndarray:
    """`array` as uint8, checking its rank, channels and value range."""
    array = np.asarray(array)
    if array.ndim != ndim or array.shape[-1] not in channel_counts:
        raise ValueError(f"{name} must be {layout}; got shape {array.shape}.")
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"{name} must be uint8, or float in [0, 1]; got dtype {array.dtype}."
        )
    check_finite(name, array)
    if array.size and not (array.min() >= 0 and array.max() <= 1):
        raise ValueError(
            f"{name} is float, so its values must be in [0, 1]; got values in "
            f"[{array.min()}, {array.max()}]."
        )
    return np.round(array * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def _pil_to_rgb(image) -> np.ndarray:
    """A Pillow image as uint8 RGB; alpha is dropped, grey is repeated."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # 16-bit and 32-bit grey: Pillow's own conversion to 8 bits clips.
        grey = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode != "F" else max(float(grey.max()), 1.0)
        grey = np.clip(np.round(grey / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _bomb_message(path: pathlib.Path, what: str, error: Exception, limit: int) -> str:
    """The message for an image past Pillow's decompression-bomb limit."""
    # Pillow's message: "Image size (N pixels) exceeds limit of ...".
    found = re.search(r"\((\d+) pixels\)", str(error))
    claim = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (
        f"cannot read {path} as {what}: it claims {claim}, more than "
        f"PIL.Image.MAX_IMAGE_PIXELS ({limit:,}); it is corrupt or a decompression bomb."
    )


@contextlib.contextmanager
def _pillow_decoding(path: pathlib.Path, what: str):
    """Yields Pillow's Image module; its errors inside become one ValueError.

    Raises:
      ValueError: "cannot read {path} as {what}: ...", for data Pillow cannot
        decode (raised in the block as OSError, SyntaxError, ValueError...),
        and for an image past Pillow's decompression-bomb limit.
    """
    Image = _pillow()
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it, then decodes
            # the whole image anyway: refuse that too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield Image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(_bomb_message(path, what, e, Image.MAX_IMAGE_PIXELS)) from e
    except _PILLOW_DATA_ERRORS as e:
        # UnidentifiedImageError (an OSError) for unknown formats, OSError
        # "image file is truncated", SyntaxError... for bad data.
        raise ValueError(f"cannot read {path} as {what}: {e}") from e


def _check_has_pixels(image) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"it has no pixels ({width} x {height}).")


def _upright(image):
    """`image` turned as its EXIF orientation says (as viewers show it); else as stored."""
    from PIL import ImageOps

    # Cameras store portrait photos sideways with an Orientation tag; a model
    # fed the stored pixels would see them turned or mirrored.
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:  # noqa: BLE001 - a damaged EXIF block must not lose the image.
        warnings.warn(f"ignoring the unreadable EXIF orientation of the image: {e}", stacklevel=3)
        return image


def read_image(path: PathLike) -> np.ndarray:
    """Reads an image file (the first frame of an animation) as RGB.

    Args:
      path: a PNG, JPEG, GIF, BMP, TIFF, WebP... file.

    Returns:
      uint8 `[H, W, 3]`, upright: turned (or mirrored) as the file's EXIF
      orientation says, as image viewers show it; an alpha channel is
      dropped and grey is repeated into three channels.

    Raises:
      FileNotFoundError: if there is no file at `path`.
      ValueError: saying what the path is, for a folder or a file of another
        kind (a checkpoint, a text, a video...); naming the path, if the file
        is not an image Pillow can decode, has no pixels, or claims more than
        PIL.Image.MAX_IMAGE_PIXELS.
      ImportError: without Pillow.
    """
    path = _existing_file(path, _messages.IMAGE, _IMAGE_KINDS)
    with _pillow_decoding(path, "an image") as Image:
        with Image.open(path) as image:
            _check_has_pixels(image)
            image.load()
            return _pil_to_rgb(_upright(image))


@functools.lru_cache(maxsize=None)
def _pillow_writes_rgb(format_name: str) -> bool:
    """Whether Pillow's writer of `format_name` takes an RGB image."""
    Image = _pillow()
    try:
        Image.new("RGB", (2, 2)).save(io.BytesIO(), format=format_name)
    except (OSError, ValueError, KeyError, TypeError):
        # E.g. "cannot write mode RGB as XBM", or a stub without a writer.
        return False
    return True


@contextlib.contextmanager
def _replacing(path: PathLike):
    """A temporary name beside `path` to write, renamed over `path` when the block ends without error.

    The name keeps `path`'s extension (the writers take the format from it).
    A failure or Ctrl-C inside the block removes the temporary file, so that
    `path` is written whole or left as it was, never half-written. A
    symbolic link is written through: its target is replaced.
    """
    target = pathlib.Path(os.path.realpath(path))
    temporary = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.part{target.suffix}")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def check_image_suffix(path: PathLike) -> None:
    """Raises `ValueError` unless `write_image` can write RGB to `path`'s extension.

    Raises:
      ValueError: naming the path and extension, if no Pillow writer of an
        RGB image has that extension.
      ImportError: without Pillow.
    """
    Image = _pillow()
    suffix = pathlib.Path(path).suffix.lower()
    formats = Image.registered_extensions()
    name = formats.get(suffix)
    if name is not None and name in Image.SAVE and _pillow_writes_rgb(name):
        return
    raise ValueError(
        f"cannot write an image to {path}: Pillow writes no RGB image with the extension "
        f"{suffix!r}; use e.g. .png, .jpg, .bmp, .tif or .webp."
    )


def write_image(path: PathLike, image) -> None:
    """Writes an RGB or grey image; the format follows the file's extension.

    Args:
      path: where to write, e.g. 'out.png' or 'out.jpg' (JPEG at quality 95).
      image: `[H, W, 3]` or `[H, W]`, uint8 or float in [0, 1].

    Raises:
      ValueError: for a bad shape, values out of range, or an extension
        Pillow cannot write.
      TypeError: for a dtype other than uint8 or float.
      ImportError: without Pillow.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    array = _to_uint8("image", array, 3, (1, 3), "[H, W, 3] or [H, W]")
    Image = _pillow()
    path = pathlib.Path(path)
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    options = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    try:
        with _replacing(path) as temporary:
            pil.save(temporary, **options)
    except (KeyError, ValueError) as e:
        # Pillow raises KeyError/ValueError for an extension it cannot write.
        raise ValueError(f"cannot write an image to {path}: {e!r}") from e


# ---------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------


def _read_gif(path: pathlib.Path, max_frames: Optional[int]):
    frames = []
    durations = []
    with _pillow_decoding(path, "a GIF") as Image:
        with Image.open(path) as image:
            _check_has_pixels(image)
            for index in range(getattr(image, "n_frames", 1)):
                image.seek(index)
                image.load()
                frames.append(_pil_to_rgb(image))
                # Browsers show frames without a duration for 100 ms.
                durations.append(image.info.get("duration") or 100)
    sizes = sorted({frame.shape[:2] for frame in frames})
    if len(sizes) > 1:
        raise ValueError(f"cannot read {path} as a GIF: its frames differ in size ({sizes}).")
    # GIF writers (Pillow among them) store a run of identical frames once,
    # with the run's total duration: repeat such frames to restore a constant
    # frame rate, that of the shortest frame. (All frames are decoded to know
    # it; GIFs are small.)
    base = min(durations)
    repeats = [max(1, int(round(d / base))) for d in durations]
    frames = np.repeat(np.stack(frames), repeats, axis=0)[:max_frames]
    return frames, 1000.0 / base, None, None


def read_video(
    path: PathLike, max_frames: Optional[int] = None
) -> Tuple[np.ndarray, float, Optional[np.ndarray], Optional[int]]:
    """Reads the frames of a video (MP4, WebM, AVI, GIF...) and its audio.

    Args:
      path: a video file. GIFs are read with Pillow, at a constant frame
        rate (that of their shortest frame; longer frames are repeated);
        everything else with PyAV.
      max_frames: read at most this many frames (audio is cut to the same
        duration); None reads all.

    Returns:
      `(frames, fps, audio, sample_rate)`: frames uint8 `[T, H, W, 3]`, the
      frame rate, audio float32 `[samples, channels]` in [-1, 1] (None when
      the file has no audio track) and its sample rate (or None).

    Raises:
      FileNotFoundError: if there is no file at `path`.
      ValueError: saying what the path is, for a folder or a file of another
        kind (an image, a text...); naming the path, if the file cannot be
        decoded (see read_image for GIFs), has no video frames, or its audio
        holds NaN or Inf.
      ImportError: without PyAV (or Pillow, for GIFs).
    """
    path = _existing_file(path, _messages.VIDEO, _VIDEO_KINDS)
    if max_frames is not None:
        if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)):
            raise TypeError(f"max_frames must be an int or None; got {max_frames!r}.")
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1; got {max_frames}.")
    if path.suffix.lower() in _GIF_SUFFIXES:
        return _read_gif(path, max_frames)
    av = _pyav()
    try:
        frames, fps = _decode_video(av, path, max_frames)
        duration = len(frames) / fps if max_frames and fps > 0 else None
        audio, rate = _decode_audio(av, path, duration)
    except (av.FFmpegError, ValueError, OSError, EOFError) as e:
        # PyAV raises FFmpegError for bad data, and ValueError (such as
        # UnicodeDecodeError) for bad metadata.
        raise ValueError(f"cannot read {path} as a video: {e}") from e
    return frames, fps, audio, rate


def _decode_video(av, path: pathlib.Path, max_frames: Optional[int]):
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("it has no video stream.")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise ValueError("FFmpeg knows no decoder for its video stream.")
        stream.thread_type = "AUTO"
        frames = []
        for frame in container.decode(stream):
            # Phones store portrait video sideways with a display rotation
            # (counter-clockwise degrees); players turn it, and so do we.
            turns = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
            frames.append(np.rot90(frame.to_ndarray(format="rgb24"), turns))
            if max_frames is not None and len(frames) >= max_frames:
                break
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not frames:
        raise ValueError("its video stream has no decodable frames.")
    return np.stack(frames), float(rate) if rate else 0.0


def _decode_audio(av, path: pathlib.Path, duration: Optional[float]):
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None, None
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise ValueError("FFmpeg knows no decoder for its audio stream.")
        rate = stream.codec_context.sample_rate
        if not rate:
            raise ValueError("its audio stream has no sample rate.")
        limit = None if duration is None else int(round(duration * rate))
        if stream.duration is not None and stream.time_base is not None:
            # The encoder pads the last frame with silence; the stream's
            # duration says where the real samples end.
            stored = int(round(stream.duration * stream.time_base * rate))
            limit = stored if limit is None else min(limit, stored)
        # Planar float: each decoded frame is [channels, samples].
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
        chunks = []
        total = 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunk = out.to_ndarray()
                chunks.append(chunk)
                total += chunk.shape[1]
            if duration is not None and total >= limit:
                break
        else:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    if not chunks:
        return None, None
    audio = np.concatenate(chunks, axis=1).T.astype(np.float32)
    if limit is not None:
        audio = audio[:limit]
    check_finite("its audio", audio)  # Float codecs (e.g. pcm_f32le) can store NaN.
    return np.clip(audio, -1.0, 1.0), int(rate)


def _check_fps(fps) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise TypeError(f"fps must be a number; got {fps!r}.")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0; got {fps}.")
    return float(fps)


def check_video_suffix(path: PathLike) -> None:
    """Raises `ValueError` unless `path` has an extension `write_video` writes.

    Raises:
      ValueError: naming the path and extension, and listing VIDEO_SUFFIXES.
    """
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(
            f"cannot write video to {path}: the extension must be one of "
            f"{', '.join(VIDEO_SUFFIXES)}; got {suffix!r}."
        )


def write_video(
    path: PathLike,
    frames,
    fps: float,
    audio=None,
    sample_rate: Optional[int] = None,
) -> None:
    """Writes frames, and optionally audio, as MP4 (H.264 + AAC) or GIF.

    Args:
      path: the output file; '.gif' writes an animated GIF with Pillow (no
        audio), the other VIDEO_SUFFIXES ('.mp4', '.m4v', '.mov', '.mkv',
        '.avi') a video with PyAV.
      frames: `[T, H, W, 3]`, uint8 or float in [0, 1]. H.264 needs even H
        and W.
      fps: frames per second (for a GIF, rounded to a frame time in whole
        hundredths of a second, at least 0.02 s).
      audio: float `[samples, channels]` or `[samples]` in [-1, 1]; None for
        no sound track.
      sample_rate: the audio's sample rate; required with `audio`. AAC codes
        13 rates (8000, 16000, 44100, 48000 Hz...): audio at another rate is
        resampled to the next higher one.

    Raises:
      ValueError: for another extension, bad shapes or values (NaN or Inf
        among them), odd frame sizes for H.264, audio for a GIF, or when the
        encoder fails.
      TypeError: for bad dtypes.
      ImportError: without PyAV (or Pillow, for GIFs).
    """
    path = pathlib.Path(path)
    check_video_suffix(path)
    frames = _to_uint8("frames", frames, 4, (3,), "[T, H, W, 3]")
    if frames.shape[0] == 0:
        raise ValueError("frames must hold at least one frame; got 0.")
    fps = _check_fps(fps)
    if audio is not None:
        audio = _check_audio(audio)
        _check_rate(sample_rate)
    if path.suffix.lower() in _GIF_SUFFIXES:
        if audio is not None:
            raise ValueError(f"a GIF cannot hold audio; write {path.with_suffix('.mp4')} instead.")
        with _replacing(path) as temporary:
            _write_gif(temporary, frames, fps)
        return
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(
            f"H.264 video needs an even frame height and width; got {height}x{width} "
            f"(crop or pad the frames, or write a .gif)."
        )
    if audio is not None and audio.shape[1] > 2:
        raise ValueError(f"audio must have 1 or 2 channels for AAC; got {audio.shape[1]}.")
    av = _pyav()
    try:
        with _replacing(path) as temporary:  # no half-written video, and a failure keeps the old one
            _encode_mp4(av, temporary, frames, fps, audio, sample_rate)
    except (av.FFmpegError, ValueError) as e:
        # PyAV raises ValueError too, e.g. for a codec the container refuses.
        raise ValueError(f"cannot write video to {path}: {e}") from e


def _write_gif(path: pathlib.Path, frames: np.ndarray, fps: float) -> None:
    Image = _pillow()
    images = [Image.fromarray(frame) for frame in frames]
    # GIF stores frame durations in hundredths of a second, and browsers
    # show frames shorter than 0.02 s for 0.1 s.
    duration = max(20, int(round(100.0 / fps)) * 10)
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False
    )


# The sample rates AAC can code (ISO 14496-3's sampling frequency table).
_AAC_RATES = (
    7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000
)


def _aac_rate(sample_rate: int) -> int:
    """The AAC rate to encode audio of `sample_rate` at: it, or the next one up.

    The video model's rate is fps * 1920 (57600 Hz at 30 fps), rarely one AAC codes.
    """
    higher = [rate for rate in _AAC_RATES if rate >= sample_rate]
    return higher[0] if higher else _AAC_RATES[-1]


def _encode_mp4(av, path, frames, fps, audio, sample_rate) -> None:
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("h264", rate=rate)
        video.width = frames.shape[2]
        video.height = frames.shape[1]
        video.pix_fmt = "yuv420p"
        if video.codec_context.name == "libx264":
            video.options = {"crf": "17"}  # Near-transparent quality.
        sound = None
        if audio is not None:
            layout = "mono" if audio.shape[1] == 1 else "stereo"
            sound = container.add_stream("aac", rate=_aac_rate(sample_rate), layout=layout)
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            # Planar float, [channels, samples]; the encoder cuts its own
            # frames, resampling them to its rate.
            planar = np.ascontiguousarray(audio.T.astype(np.float32))
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=sound.layout.name)
            frame.sample_rate = int(sample_rate)
            frame.pts = 0
            frame.time_base = fractions.Fraction(1, int(sample_rate))
            container.mux(sound.encode(frame))
            container.mux(sound.encode(None))


# ---------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------


def _check_rate(sample_rate) -> None:
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, (int, np.integer))
        or sample_rate < 1
    ):
        raise ValueError(f"sample_rate must be a positive int; got {sample_rate!r}.")


def _check_audio(audio) -> np.ndarray:
    """`audio` as float32 `[samples, channels]`, checked to be in [-1, 1]."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.ndim != 2 or audio.shape[1] < 1:
        raise ValueError(
            f"audio must be [samples, channels] or [samples]; got shape {audio.shape}."
        )
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    if audio.dtype == bool or not np.issubdtype(audio.dtype, np.floating):
        raise TypeError(f"audio must be float in [-1, 1] or int16; got dtype {audio.dtype}.")
    check_finite("audio", audio)
    if audio.size and not np.abs(audio).max() <= 1:
        raise ValueError(
            f"audio is float, so its values must be in [-1, 1]; got values in "
            f"[{audio.min()}, {audio.max()}]."
        )
    return audio.astype(np.float32)


def read_wav(path: PathLike) -> Tuple[np.ndarray, int]:
    """Reads an integer PCM WAV file (8, 16, 24 or 32 bits).

    Returns:
      `(audio, sample_rate)`: audio float32 `[samples, channels]` in [-1, 1)
      (an n-bit sample k is k / 2^(n-1)).

    Raises:
      FileNotFoundError: if there is no file at `path`.
      ValueError: saying what the path is, for a folder or a file of another
        kind; if the file is not an integer PCM WAV file.
    """
    path = _existing_file(path, _messages.WAV, _WAV_KINDS)
    try:
        with wave.open(str(path), "rb") as reader:
            channels = reader.getnchannels()
            width = reader.getsampwidth()
            rate = reader.getframerate()
            data = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError, ValueError) as e:
        raise ValueError(f"cannot read {path} as a PCM WAV file: {e}") from e
    usable = len(data) // (width * channels) * width * channels
    raw = np.frombuffer(data[:usable], np.uint8)
    if width == 1:  # 8-bit WAV is unsigned.
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        ints = raw.view(np.dtype(f"<i{width}"))
        samples = ints.astype(np.float64) / float(2 ** (8 * width - 1))
    elif width == 3:
        triples = raw.reshape(-1, 3).astype(np.int32)
        ints = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints / float(1 << 23)
    else:
        raise ValueError(f"cannot read {path}: {8 * width}-bit samples are not supported.")
    return samples.astype(np.float32).reshape(-1, channels), rate


# The extensions write_wav writes (it writes WAV only).
AUDIO_SUFFIXES = (".wav", ".wave")


def check_audio_suffix(path: PathLike) -> None:
    """Raises `ValueError` unless `path` has an extension `write_wav` writes (AUDIO_SUFFIXES).

    Raises:
      ValueError: naming the path and its extension; WAV bytes under another
        name (.mp3, .flac) would not play as that format.
    """
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        raise ValueError(
            f"cannot write audio to {path}: it is written as WAV, so the extension must be one "
            f"of {', '.join(AUDIO_SUFFIXES)}; got {suffix or 'none'!r}."
        )


def write_wav(path: PathLike, audio, sample_rate: int) -> None:
    """Writes 16-bit PCM WAV.

    Args:
      path: the output file, ending in .wav (or .wave).
      audio: float `[samples, channels]` or `[samples]` in [-1, 1] (a value
        x becomes round(x * 32768), 1.0 saturating at 32767), or int16.
      sample_rate: samples per second.

    Raises:
      ValueError: for another extension, a bad shape, values out of [-1, 1]
        or a bad rate.
      TypeError: for a dtype other than float or int16.
    """
    check_audio_suffix(path)
    _check_rate(sample_rate)
    audio = _check_audio(audio)
    ints = np.clip(np.round(audio.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
    with _replacing(path) as temporary:
        with wave.open(str(temporary), "wb") as writer:
            writer.setnchannels(audio.shape[1])
            writer.setsampwidth(2)
            writer.setframerate(int(sample_rate))
            writer.writeframes(ints.tobytes())
