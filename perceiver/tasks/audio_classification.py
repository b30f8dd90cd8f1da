"""Classifying audio clips with a raw-waveform Perceiver IO classifier (`perceiver.models.audio_classifier`).

Such a model is what `perceiver train --config finetune_audio` trains.
Exported with `--export model.pystate`, its description (`model.json`)
gives its sizes, class names and how clips were read (`task.sample_rate`,
`task.num_samples`, `task.normalize`), so

    classifier = AudioClassifier.from_pretrained("model.pystate")
    classifier.classify(["yes.wav", "no.flac"])   # [[(label, probability), ...], ...]

Clips are read as the training data were (`datasets.audio_folders.read_clip`):
mixed to mono, resampled to the model's rate, cut or padded (centred) to its
length, and scaled to a peak of 1 when the model was trained so. Silent or
unreadable audio is refused in one line naming the file (or the clip's index).
"""

import os
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from perceiver import _validation
from perceiver import checkpoint
from perceiver import models
from perceiver.datasets import audio_folders
from perceiver.tasks import _loading

FACTORY = "audio_classifier"
# A path, or a waveform [samples] (or [samples, channels]) at the given sample rate.
Clip = Union[str, os.PathLike, np.ndarray]


class AudioClassifier:
    """Classifies audio clips with a `perceiver.models.audio_classifier` model.

    Attributes:
      class_names: the name of each class (the labels given, else the indices as str).
      num_classes: the number of classes.
      sample_rate: the rate (Hz) clips are resampled to.
      num_samples: the samples the model reads (clips are cut or padded to it).
      normalize: whether each clip is scaled to a peak of 1.
      batch_size: most clips per model call.
      sizes: the `audio_classifier` keywords of the model.
    """

    def __init__(
        self,
        params: Mapping,
        state: Optional[Mapping] = None,
        *,
        labels: Optional[Sequence[str]] = None,
        sample_rate: int = 16000,
        normalize: bool = True,
        batch_size: int = 8,
        **sizes,
    ):
        """Wraps parameters of `perceiver.models.audio_classifier(**sizes)`.

        Args:
          params: the model's parameters.
          state: its state (the model has none; None means `{}`).
          labels: the name of each class, in the order of the logits.
          sample_rate: the rate (Hz) the model was trained at.
          normalize: scale each clip to a peak of 1 (as the training data were).
          batch_size: most clips per model call.
          **sizes: `audio_classifier`'s keywords: num_classes (required), num_samples, ...

        Raises:
          TypeError: for a missing num_classes or an unknown size keyword.
          ValueError: for labels that do not name each class, or a
            sample_rate or batch_size below 1.
          perceiver.checkpoint.CheckpointError: if params or state do not fit
            the model, listing the differences.
        """
        config = models.factory_sizes(FACTORY, **sizes)
        _validation.check_positive_int("batch_size", batch_size)
        _validation.check_positive_int("sample_rate", sample_rate)
        state = {} if state is None else state
        _loading.check_fits(FACTORY, params, state, **sizes)
        self.num_classes: int = config["num_classes"]
        self.num_samples: int = config["num_samples"]
        named = _loading.Description().class_names(labels, self.num_classes)
        self.class_names: Tuple[str, ...] = (
            named if named is not None else tuple(str(i) for i in range(self.num_classes))
        )
        self.sample_rate = int(sample_rate)
        self.normalize = bool(normalize)
        self.batch_size = batch_size
        self.sizes = dict(sizes)
        self._params = jax.device_put(params)
        self._state = jax.device_put(state)
        model = models.audio_classifier(**sizes)

        def probabilities(params, state, audio):
            logits, _ = model.apply(params, state, None, audio)
            return jax.nn.softmax(logits, axis=-1)

        self._probabilities = jax.jit(probabilities)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        cache_dir: Optional[str] = None,
        progress: bool = True,
        labels: Optional[Sequence[str]] = None,
        sample_rate: Optional[int] = None,
        normalize: Optional[bool] = None,
        batch_size: Optional[int] = None,
        **sizes,
    ) -> "AudioClassifier":
        """An audio classifier from a checkpoint file, e.g. one `perceiver train --export` wrote.

        The file's description (`NAME.json` beside it) gives its sizes, class
        names and `task.sample_rate`, `task.normalize`; keywords given here
        override it.

        Args:
          name_or_path: the path of a checkpoint of an `audio_classifier`
            model (none is published).
          cache_dir, progress: as for `perceiver.hub.fetch`.
          labels, sample_rate, normalize, batch_size: as in the constructor;
            None: the description's (else the indices, 16000, True, 8).
          **sizes: `audio_classifier`'s keywords (default: the description's).

        Raises:
          ValueError: for a published or shipped name (none is an audio classifier).
          FileNotFoundError: for a path to nothing.
          perceiver.checkpoint.CheckpointError: for a file that is not a
            checkpoint, one whose description is of another model, one that
            does not fit, or when nothing gives the number of classes.
        """
        from perceiver import hub

        if _loading.is_published(name_or_path):
            factory = hub.get(name_or_path).factory
            raise ValueError(
                f"name_or_path {name_or_path!r} is a published {factory} checkpoint, not an audio "
                "classifier; train one (perceiver train --config finetune_audio ... --export "
                "model.pystate) and give that file."
            )
        name_or_path = _loading.resolve_for(name_or_path, FACTORY)
        description = _loading.read_description(name_or_path, FACTORY)
        sizes = description.sizes_with(sizes)
        named = labels if labels is not None else description.labels
        if "num_classes" not in sizes:
            if named is None:
                where = description.source or checkpoint.description_path(str(name_or_path))
                raise checkpoint.CheckpointError(
                    f"{name_or_path}: the number of classes is unknown: {where} gives no "
                    "sizes.num_classes or labels; pass num_classes= (or labels=) and the sizes."
                )
            sizes["num_classes"] = len(named)
        labels = description.class_names(labels, sizes["num_classes"])
        options = dict(
            sample_rate=description.option("sample_rate", sample_rate, 16000),
            normalize=description.option("normalize", normalize, True),
            batch_size=description.option("batch_size", batch_size, 8),
        )
        return _loading.build_from_checkpoint(
            lambda params, state: cls(params, state, labels=labels, **options, **sizes),
            name_or_path,
            cache_dir=cache_dir,
            progress=progress,
            description=description,
        )

    def waveform(self, clip: Clip, sample_rate: Optional[int] = None, name: str = "clip") -> np.ndarray:
        """One clip as the model reads it: float32 `[num_samples]`.

        Args:
          clip: a path (WAV, FLAC, MP3), or a waveform `[samples]` or
            `[samples, channels]` in [-1, 1].
          sample_rate: a waveform's rate (default: the model's); ignored for files.
          name: how a waveform is named in errors.

        Raises:
          ValueError: in one line naming the file (or `name`): unreadable,
            silent or empty audio, an unsupported extension, a bad shape.
        """
        if isinstance(clip, (str, os.PathLike)):
            wave = audio_folders.read_clip(clip, self.sample_rate, self.num_samples)
        else:
            audio = np.asarray(clip, np.float64)
            if audio.ndim not in (1, 2) or not audio.size:
                raise ValueError(
                    f"{name}: a waveform must be [samples] or [samples, channels]; got shape {audio.shape}."
                )
            audio = audio.reshape(len(audio), -1)
            if not np.isfinite(audio).all() or np.abs(audio).max() < audio_folders.SILENCE:
                raise ValueError(
                    f"{name}: the audio is silent (peak below {audio_folders.SILENCE} of full scale) or not finite."
                )
            rate = self.sample_rate if sample_rate is None else sample_rate
            _validation.check_positive_int("sample_rate", rate)
            wave = audio_folders.resample(audio.mean(axis=1), rate, self.sample_rate)
            wave = audio_folders.fit_length(wave, self.num_samples)
        if self.normalize:
            wave = wave / np.abs(wave).max()  # read_clip refused silence: the peak is above 0
        return np.asarray(wave, np.float32)

    def probabilities(
        self, clips: Union[Clip, Sequence[Clip]], sample_rate: Optional[int] = None
    ) -> np.ndarray:
        """Class probabilities `[N, num_classes]` of one clip or a sequence of them.

        Args:
          clips: a path or a waveform (see `waveform`), or a sequence of them;
            a 2-D array is a sequence of mono waveforms `[N, samples]`.
          sample_rate: the waveforms' rate (default: the model's).

        Raises:
          ValueError: as `waveform`, for the first bad clip.
          TypeError: for a clip that is neither a path nor an array.
        """
        if isinstance(clips, (str, os.PathLike)) or (isinstance(clips, np.ndarray) and clips.ndim == 1):
            clips = [clips]
        if isinstance(clips, bytes) or not isinstance(clips, (Sequence, np.ndarray)):
            raise TypeError(f"clips must be a path, a waveform or a sequence of them; got {type(clips).__name__}.")
        waves = []
        for i, clip in enumerate(clips):
            if not isinstance(clip, (str, os.PathLike, np.ndarray, list, tuple)):
                raise TypeError(f"clips[{i}] must be a path or a waveform; got {type(clip).__name__}.")
            waves.append(self.waveform(clip, sample_rate, name=f"clips[{i}]"))
        out = np.zeros((len(waves), self.num_classes), np.float32)
        # Always full batches: one shape is compiled.
        for start in range(0, len(waves), self.batch_size):
            batch = np.zeros((self.batch_size, self.num_samples), np.float32)
            chunk = waves[start:start + self.batch_size]
            batch[: len(chunk)] = chunk
            probs = np.asarray(self._probabilities(self._params, self._state, batch))
            out[start:start + len(chunk)] = probs[: len(chunk)]
        return out

    def classify(
        self, clips: Union[Clip, Sequence[Clip]], sample_rate: Optional[int] = None, top_k: int = 5
    ) -> List[List[Tuple[str, float]]]:
        """The top-k `(class name, probability)` of each clip, most probable first.

        Args:
          clips: as `probabilities`.
          sample_rate: the waveforms' rate (default: the model's); files give their own.
          top_k: classes per clip (at most num_classes are given).

        Returns:
          One list per clip (a list of one for a single clip).

        Raises:
          ValueError: as `probabilities`, or for top_k < 1. TypeError: as `probabilities`.
        """
        _validation.check_positive_int("top_k", top_k)
        results = []
        for probs in self.probabilities(clips, sample_rate):
            order = np.argsort(-probs, kind="stable")[:top_k]
            results.append([(self.class_names[i], float(probs[i])) for i in order])
        return results
