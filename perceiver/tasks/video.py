"""Video and audio autoencoding of clips of any length (Perceiver IO, section 4.3).

The published multimodal model reads 16 frames of 224x224 video with 30720
audio samples (48 kHz, 1920 per frame) and reconstructs every pixel and
sample, plus a Kinetics-700 label. Its 800k output queries do not fit in
memory at once, so they are decoded in chunks. DeepMind's notebook re-ran the
whole model, encoder included, for each of its 128 chunks; here each
16-frame clip is encoded once and its latents decoded chunk by chunk, with one
compiled encode and one compiled decode for every clip and chunk.

    autoencoder = VideoAutoencoder.from_pretrained()
    result = autoencoder(video, audio)    # video [T, 224, 224, 3], audio [S]
    result.video, result.audio, result.labels[0]
    psnr(video / 255, result.video)
"""

import dataclasses
import math
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from perceiver import _progress
from perceiver import _validation
from perceiver.tasks import _loading
from perceiver import labels as labels_lib
from perceiver import media
from perceiver import models

# Output queries (image and audio together) decoded per call. For the
# published model XLA (CPU) plans about 100 MB of temporaries for a call of
# 8192 queries (34 MB for 2048, 330 MB for 32768); 99 calls decode a clip.
DEFAULT_CHUNK_SIZE = 8192


@dataclasses.dataclass(frozen=True)
class VideoReconstruction:
    """The result of `VideoAutoencoder.__call__`.

    Attributes:
      video: reconstructed frames `[T, H, W, 3]` float32, nominally in [0, 1]
        (the model's raw output: not clipped).
      audio: reconstructed audio `[S]` float32, nominally in [-1, 1].
      labels: per clip, the top-k `(class name, probability)` pairs, most
        probable first.
      label_probabilities: per clip, softmax of the label logits
        `[num_clips, num_classes]`.
      clip_starts: the first frame of each clip `[num_clips]`.
    """

    video: np.ndarray
    audio: np.ndarray
    labels: List[List[Tuple[str, float]]]
    label_probabilities: np.ndarray
    clip_starts: np.ndarray


@dataclasses.dataclass(frozen=True)
class ClipReconstruction:
    """One clip's share of a reconstruction (see `VideoAutoencoder.clips`).

    Attributes:
      start: index of the clip's first frame in the input video.
      video: its frames `[n, H, W, 3]` float32, n <= num_frames (the last
        clip is trimmed to the input; 0 for clips covering audio only).
      audio: its samples `[m]` float32, trimmed likewise.
      label_probabilities: `[num_classes]`, softmax of the label logits.
    """

    start: int
    video: np.ndarray
    audio: np.ndarray
    label_probabilities: np.ndarray


def psnr(a, b, max_value: float = 1.0) -> float:
    """Peak signal-to-noise ratio between `a` and `b`, in dB.

    `10 log10(max_value**2 / mean((a - b)**2))`, computed in float64; `inf`
    when they are equal. For images in [0, 1] use max_value=1 (255 for
    uint8); for audio in [-1, 1] use max_value=2, the peak-to-peak range.

    Args:
      a, b: arrays of one shape.
      max_value: the largest possible difference between two values.

    Raises:
      ValueError: if the shapes differ, are empty, or max_value <= 0.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape; got {a.shape} and {b.shape}.")
    if a.size == 0:
        raise ValueError("a and b are empty; PSNR needs at least one value.")
    if not max_value > 0:
        raise ValueError(f"max_value must be > 0; got {max_value}.")
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return math.inf
    return float(10 * np.log10(max_value**2 / mse))


def center_crop_and_resize(video, image_size: int = 224) -> np.ndarray:
    """Crops each frame to its centred square and resizes it, as the notebook did.

    Resizing is bilinear without antialiasing (`jax.image.resize`, method
    'linear', antialias=False), like the notebook's `cv2.resize` default.

    Args:
      video: frames `[T, H, W, C]`, integer (e.g. uint8) or float.

    Returns:
      `[T, image_size, image_size, C]` of video's dtype (integers rounded and
      clipped to their range), so uint8 frames stay uint8 in 0..255.

    Raises:
      ValueError: if `video` is not rank 4, or holds NaN or Inf.
    """
    _validation.check_rank("video", video, (4,), "[T, H, W, C]")
    _validation.check_positive_int("image_size", image_size)
    video = np.asarray(video)
    media.check_finite("video", video)
    height, width = video.shape[1:3]
    side = min(height, width)
    top = height // 2 - side // 2
    left = width // 2 - side // 2
    square = video[:, top : top + side, left : left + side]
    if side == image_size:
        return square.copy()
    shape = (video.shape[0], image_size, image_size, video.shape[3])
    out = np.asarray(
        jax.image.resize(square.astype(np.float32), shape, method="linear", antialias=False)
    )
    if np.issubdtype(video.dtype, np.integer):
        info = np.iinfo(video.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(video.dtype)
    return out.astype(video.dtype)


def prepare_audio(
    audio, sample_rate: float, fps: float, samples_per_frame: int = 1920
) -> np.ndarray:
    """Mixes audio to mono and resamples it to `samples_per_frame` per video frame.

    The model pairs each frame with 1920 samples (48 kHz at 25 fps); for a
    video at another frame rate, the audio is resampled to fps * 1920 Hz so
    that sound and picture stay in step. Resampling is linear interpolation
    (no anti-alias filter), good enough for reconstruction demos.

    Args:
      audio: `[S]` or `[S, channels]` float in [-1, 1].
      sample_rate: its rate in Hz.
      fps: the video's frame rate.
      samples_per_frame: the model's audio_samples_per_frame.

    Returns:
      mono float32 `[S']`, S' = round(S * fps * samples_per_frame / sample_rate).

    Raises:
      ValueError: for audio of another rank or holding NaN or Inf, or rates
        that are not positive.
    """
    _validation.check_rank("audio", audio, (1, 2), "[S] or [S, channels]")
    if not (sample_rate > 0 and fps > 0):
        raise ValueError(f"sample_rate and fps must be > 0; got {sample_rate} and {fps}.")
    audio = np.asarray(audio, np.float32)
    media.check_finite("audio", audio)
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    target = fps * samples_per_frame
    if math.isclose(target, sample_rate) or mono.size == 0:
        return mono
    length = int(round(mono.size * target / sample_rate))
    times = np.arange(length) * (sample_rate / target)
    return np.interp(times, np.arange(mono.size), mono).astype(np.float32)


def _top_k(probabilities: np.ndarray, names: Sequence[str], k: int) -> List[Tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(names[i], float(probabilities[i])) for i in order]


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _chunk_plan(num_pixels: int, num_audio: int, chunk_size: int) -> Tuple[int, int, int]:
    """`(num_calls, pixels_per_call, audio_patches_per_call)` with at most
    `chunk_size` image and audio queries per call, in as few calls as possible."""
    calls = max(1, math.ceil((num_pixels + num_audio) / chunk_size))
    while math.ceil(num_pixels / calls) + math.ceil(num_audio / calls) > chunk_size:
        calls += 1
    return calls, math.ceil(num_pixels / calls), math.ceil(num_audio / calls)


class VideoAutoencoder:
    """Reconstructs video and audio of any length with the multimodal autoencoder.

    The input is split into clips of `num_frames` frames (16), the last one
    padded by repeating its last frame and with silent audio; each clip is
    encoded once (`encode`), its image and audio queries decoded in chunks of
    at most `chunk_size` (`decode`), and the outputs are reassembled and
    trimmed to the input's length. Every clip and chunk uses the same two
    compiled functions.

    Attributes:
      config: every size of the model (`models.factory_sizes`).
      num_frames, image_size, audio_samples_per_frame: the clip's shape.
      class_names: the name of each class (Kinetics-700's for 700 classes,
        else the indices as str).
      chunk_size: most image plus audio queries per decode call.
      decode_calls_per_clip: decode calls needed for one clip.
    """

    def __init__(
        self,
        params: Mapping,
        state: Optional[Mapping] = None,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        labels: Optional[Sequence[str]] = None,
        **sizes,
    ):
        """Wraps parameters of `perceiver.models.video_autoencoder(**sizes)`.

        Args:
          params: the model's parameters (e.g. from `perceiver.checkpoint.load`).
          state: its state (the published model has none).
          chunk_size: image plus audio queries decoded per call (>= 2); bounds
            the decoder's memory.
          labels: the name of each class; None: Kinetics-700's for 700
            classes, else the indices as str.
          **sizes: `video_autoencoder`'s size keywords, for a model of other
            sizes than the published one.

        Raises:
          TypeError: for an unknown size keyword or a non-int chunk_size.
          ValueError: if chunk_size < 2, or labels do not name each class.
          perceiver.checkpoint.CheckpointError: if params or state do not fit
            the model, listing every difference.
        """
        self.config: Dict[str, Any] = models.factory_sizes("video_autoencoder", **sizes)
        state = {} if state is None else state
        _loading.check_fits("video_autoencoder", params, state, **sizes)
        _validation.check_positive_int("chunk_size", chunk_size)
        if chunk_size < 2:
            raise ValueError(
                f"chunk_size must be >= 2 (one image and one audio query); got {chunk_size}."
            )
        self.chunk_size = chunk_size
        self.num_frames: int = self.config["num_frames"]
        self.image_size: int = self.config["image_size"]
        self.audio_samples_per_frame: int = self.config["audio_samples_per_frame"]
        self.samples_per_patch: int = self.config["samples_per_patch"]
        self.num_pixels = self.num_frames * self.image_size**2
        self.num_audio_patches = (
            self.num_frames * self.audio_samples_per_frame // self.samples_per_patch
        )
        num_classes = self.config["num_classes"]
        named = _loading.Description().class_names(labels, num_classes)
        if named is not None:
            self.class_names: Tuple[str, ...] = named
        elif num_classes == 700:
            self.class_names = labels_lib.kinetics700_labels()
        else:  # Another model: name classes by index.
            self.class_names = tuple(str(i) for i in range(num_classes))

        self._params = jax.device_put(params)
        self._state = jax.device_put(state)
        parts = models.video_autoencoder_parts(**sizes)

        def encode(params, state, images, audio):
            latents, _ = parts.apply.encode(params, state, None, images, audio)
            return latents

        def decode(params, state, latents, image_points, audio_points):
            out, _ = parts.apply.decode(
                params, state, None, latents, {"image": image_points, "audio": audio_points}
            )
            return out["image"], out["audio"], out["label"]

        self._encode = jax.jit(encode)
        self._decode = jax.jit(decode)
        calls, pixels, audio = _chunk_plan(self.num_pixels, self.num_audio_patches, chunk_size)
        self.decode_calls_per_clip = calls
        self._pixels_per_call = pixels
        self._audio_per_call = audio

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "video_autoencoding",
        *,
        cache_dir: Optional[str] = None,
        progress: bool = True,
        chunk_size: Optional[int] = None,
        labels: Optional[Sequence[str]] = None,
        **sizes,
    ) -> "VideoAutoencoder":
        """The published model (downloaded once), or a checkpoint file of one.

        A file's description (`NAME.json` beside it, see
        `perceiver.checkpoint.save_description`) gives its sizes,
        `task.chunk_size` and class names (`labels`); keywords given here
        override it.

        Args:
          name_or_path: 'video_autoencoding' or the path of a checkpoint.
          cache_dir: where downloads are kept (see `perceiver.hub.fetch`).
          progress: show a download progress bar (only when stderr is a
            terminal).
          chunk_size: as in the constructor; None: the description's, else
            `DEFAULT_CHUNK_SIZE`.
          labels: class names, one per class; None: the description's.
          **sizes: the sizes the checkpoint was made for (default: its
            description's, else the published ones).

        Raises:
          ValueError: for a word that is neither a file nor a checkpoint name.
          FileNotFoundError: for a path to nothing.
          perceiver.checkpoint.CheckpointError: for a folder or a file that is
            not a checkpoint, saying what it is (a description, an image...);
            if the file does not fit, or its description is of another
            model or names another number of classes.
        """
        name_or_path = _loading.resolve_for(name_or_path, "video_autoencoder")
        description = _loading.read_description(name_or_path, "video_autoencoder")
        sizes = description.sizes_with(sizes)
        chunk_size = description.option("chunk_size", chunk_size, DEFAULT_CHUNK_SIZE)
        num_classes = models.factory_sizes("video_autoencoder", **sizes)["num_classes"]
        labels = description.class_names(labels, num_classes)
        return _loading.build_from_checkpoint(
            lambda params, state: cls(
                params, state, chunk_size=chunk_size, labels=labels, **sizes
            ),
            name_or_path,
            cache_dir=cache_dir,
            progress=progress,
            description=description,
        )

    # -- The two compiled steps, public so that they can be used (or counted) alone.

    def encode(self, video_clip: np.ndarray, audio_clip: np.ndarray) -> jax.Array:
        """Encodes one clip into latents.

        Args:
          video_clip: `[num_frames, H, W, 3]` float32 in [0, 1].
          audio_clip: `[num_frames * audio_samples_per_frame]` float32.

        Returns:
          latents `[1, num_latents, num_latent_channels]`.
        """
        return self._encode(
            self._params, self._state, video_clip[None], audio_clip[None, :, None]
        )

    def decode(
        self, latents: jax.Array, image_points: np.ndarray, audio_points: np.ndarray
    ) -> Tuple[jax.Array, jax.Array, jax.Array]:
        """Decodes the outputs at some points of a clip.

        Args:
          latents: `[1, num_latents, C]` from `encode`.
          image_points: flat indices into the clip's `[T, H, W]` pixels `[M]`.
          audio_points: indices of audio patches `[A]`.

        Returns:
          `(pixels [1, M, 3], audio [1, A * samples_per_patch], label logits
          [1, num_classes])`.
        """
        return self._decode(self._params, self._state, latents, image_points, audio_points)

    def _decode_clip(self, latents) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All pixels `[P, 3]`, audio `[A * spp]` and label logits of one clip."""
        pixels, audio, logits = [], [], None
        for call in range(self.decode_calls_per_clip):
            # The last chunk is padded with the last index and trimmed after.
            image_points = np.minimum(
                np.arange(call * self._pixels_per_call, (call + 1) * self._pixels_per_call),
                self.num_pixels - 1,
            ).astype(np.int32)
            audio_points = np.minimum(
                np.arange(call * self._audio_per_call, (call + 1) * self._audio_per_call),
                self.num_audio_patches - 1,
            ).astype(np.int32)
            image, sound, label = self.decode(latents, image_points, audio_points)
            pixels.append(image[0])
            audio.append(sound[0])
            if logits is None:  # Every chunk decodes the same label query.
                logits = label[0]
        pixels = np.concatenate(jax.device_get(pixels))[: self.num_pixels]
        audio = np.concatenate(jax.device_get(audio))
        audio = audio[: self.num_audio_patches * self.samples_per_patch]
        return pixels, audio, np.asarray(logits)

    def _check_video(self, video) -> np.ndarray:
        """The video as an array, validated; converted to float per clip later."""
        _validation.check_rank("video", video, (4,), "[T, H, W, 3]")
        video = np.asarray(video)
        want = (self.image_size, self.image_size, 3)
        if tuple(video.shape[1:]) != want or video.shape[0] == 0:
            raise ValueError(
                f"video must be [T, {self.image_size}, {self.image_size}, 3] with T >= 1; got "
                f"shape {video.shape} (crop and resize frames first, e.g. with "
                f"center_crop_and_resize)."
            )
        if video.dtype == np.uint8:
            return video
        if not np.issubdtype(video.dtype, np.floating):
            raise TypeError(
                f"video must be uint8 (0..255) or float (0..1); got dtype {video.dtype}."
            )
        media.check_finite("video", video)
        low, high = float(np.min(video)), float(np.max(video))
        # Catches frames on the 0..255 scale passed as floats.
        if not (-0.5 <= low and high <= 1.5):
            raise ValueError(
                f"video of dtype {video.dtype} must hold values in [0, 1]; got values in "
                f"[{low}, {high}] (pass uint8 for 0..255)."
            )
        return video

    def _check_audio(self, audio, num_frames: int) -> np.ndarray:
        if audio is None:
            return np.zeros(num_frames * self.audio_samples_per_frame, np.float32)
        audio = np.asarray(audio)
        if audio.ndim == 2 and audio.shape[1] == 1:
            audio = audio[:, 0]
        if audio.ndim != 1:
            raise ValueError(
                f"audio must be mono [S] or [S, 1] in [-1, 1]; got shape {audio.shape}."
            )
        if not np.issubdtype(audio.dtype, np.floating):
            raise TypeError(f"audio must be float in [-1, 1]; got dtype {audio.dtype}.")
        # Checked in float32, which the model reads (1e39 is Inf there).
        with np.errstate(over="ignore"):
            media.check_finite("audio", audio.astype(np.float32, copy=False))
        return audio

    def clips(
        self, video, audio=None, *, progress: bool = False
    ) -> Iterator[ClipReconstruction]:
        """Reconstructs clip after clip, for videos too long to hold twice in memory.

        Args:
          video, audio: as `__call__`.
          progress: show a progress bar over clips (needs tqdm).

        Yields:
          One `ClipReconstruction` per clip of num_frames (16) frames, in order.

        Raises:
          ValueError, TypeError: for inputs of the wrong shape or dtype, or
            holding NaN or Inf (before anything is computed).
        """
        # Checked here, not in the generator, so that bad input fails at the call.
        video = self._check_video(video)
        audio = self._check_audio(audio, video.shape[0])
        return self._clips(video, audio, progress)

    def _clips(self, video, audio, progress: bool) -> Iterator[ClipReconstruction]:
        num_frames = video.shape[0]
        clip_samples = self.num_frames * self.audio_samples_per_frame
        num_clips = max(
            math.ceil(num_frames / self.num_frames), math.ceil(audio.size / clip_samples)
        )
        for clip in _progress.track(range(num_clips), num_clips, "clips", progress):
            start = clip * self.num_frames
            # Pad the video by repeating its last frame and the audio with zeros.
            index = np.minimum(np.arange(start, start + self.num_frames), num_frames - 1)
            clip_video = video[index]
            if clip_video.dtype == np.uint8:
                clip_video = clip_video.astype(np.float32) / 255.0
            clip_audio = np.zeros(clip_samples, np.float32)
            sound_in = audio[clip * clip_samples : (clip + 1) * clip_samples]
            clip_audio[: sound_in.size] = sound_in
            latents = self.encode(clip_video.astype(np.float32), clip_audio)
            pixels, sound, logits = self._decode_clip(latents)
            frames = pixels.reshape(self.num_frames, self.image_size, self.image_size, 3)
            yield ClipReconstruction(
                start=start,
                video=frames[: max(0, min(self.num_frames, num_frames - start))],
                audio=sound[: sound_in.size],
                label_probabilities=_softmax(logits),
            )

    def __call__(
        self, video, audio=None, *, top_k: int = 5, progress: bool = False
    ) -> VideoReconstruction:
        """Reconstructs a video and its audio, and labels each clip.

        Args:
          video: frames `[T, H, W, 3]`, uint8 or float in [0, 1], with H and
            W the model's image_size (224); T is any length.
          audio: mono audio `[S]` or `[S, 1]` in [-1, 1] at the model's rate
            (audio_samples_per_frame = 1920 per frame: 48 kHz at 25 fps), or
            None for silence (the output then has T * 1920 samples). S need
            not equal T * 1920: the clips cover the longer of the two, and
            each output is trimmed to its input's length.
          top_k: labels to return per clip.
          progress: show a progress bar over clips (needs tqdm).

        Returns:
          A `VideoReconstruction`.

        Raises:
          ValueError, TypeError: for inputs of the wrong shape or dtype, or
            holding NaN or Inf (before anything is computed).
        """
        _validation.check_positive_int("top_k", top_k)
        clips = list(self.clips(video, audio, progress=progress))
        probabilities = np.stack([c.label_probabilities for c in clips])
        return VideoReconstruction(
            video=np.concatenate([c.video for c in clips]),
            audio=np.concatenate([c.audio for c in clips]),
            labels=[_top_k(p, self.class_names, top_k) for p in probabilities],
            label_probabilities=probabilities,
            clip_starts=np.array([c.start for c in clips]),
        )

    autoencode = __call__
