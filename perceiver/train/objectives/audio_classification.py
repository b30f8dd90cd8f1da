"""Audio classification on raw waveforms: the audio-folder section, the objective, its description.

Data are folders named by class (`datasets.audio_folders`), read once into
memory as mono waveforms at `data.sample_rate`, cut or padded to
`model.num_samples`; tiny runs generate spoken words with espeak-ng
(`datasets.spoken_words`), speakers held out for evaluation.
"""

import dataclasses
import os
from typing import Any, Dict, Sequence

import grain.python as grain
import jax.numpy as jnp
import numpy as np

from perceiver import checkpoint as inference_checkpoint
from perceiver import hub
from perceiver import models
from perceiver.datasets import audio_folders, spoken_words
from perceiver.train import data as data_lib
from perceiver.train import finetune
from perceiver.train.config import Config, ranged
from perceiver.train.objectives import classification, evaluation, generated
from perceiver.train.objectives import pretrained as pretrained_lib
from perceiver.train.objectives.kind import ObjectiveKind, size_rules
from perceiver.train.trainer import Objective

FACTORY = "audio_classifier"
# What tiny runs say: four words, six voices to train on and two others to evaluate.
TINY_WORDS = ("yes", "no", "up", "down")
TINY_TRAIN_SPEAKERS = spoken_words.SPEAKERS[:6]
TINY_EVAL_SPEAKERS = spoken_words.SPEAKERS[16:18]


@dataclasses.dataclass
class AudioDataSettings:
    """The `data` section: a folder of class folders of WAV/FLAC/MP3 per split, and augmentation.

    Clips are mixed to mono, resampled to `sample_rate` and cut or padded
    (centred) to `model.num_samples`; with `normalize` each is scaled to a
    peak of 1 (as the task does at inference). Training shifts each clip by
    up to `max_shift` of its length (zeros fill) and lowers its level by up
    to `gain_db` dB.
    """

    train_dir: str = ""
    eval_dir: str = ""  # '' : no evaluation
    sample_rate: int = ranged(16000, "[1, inf)")  # Hz: the rate the model hears
    generate: bool = False  # spoken words from espeak-ng under WORKDIR/generated
    normalize: bool = True
    max_shift: float = ranged(0.1, "[0, 1)")
    gain_db: float = ranged(6.0, "[0, inf)")
    workers: int = ranged(0, "[0, inf)")  # grain worker processes (0: a reader thread)


# The sizes of models.audio_classifier; num_classes 0 is training's value: one per class folder.
MODEL_RULES = size_rules(FACTORY, num_classes="int [0, inf)")


def peak_normalized(waves: np.ndarray) -> np.ndarray:
    """`waves [..., samples]` each scaled to a peak of 1 (silent ones left as they are)."""
    peak = np.abs(waves).max(axis=-1, keepdims=True)
    return (waves / np.where(peak > 0, peak, 1)).astype(np.float32)


class AudioSource:
    """Clips of an `AudioFolder` as `{'audio': [num_samples], 'label': int}` records.

    Args:
      folder: the clips read.
      classes: the class names in output order; the folder's classes must be among them.

    Raises:
      ValueError: for a class folder whose name is not in `classes`.
    """

    def __init__(self, folder: audio_folders.AudioFolder, classes: Sequence[str], normalize: bool):
        index = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in folder.classes if c not in index]
        if unknown:
            where = os.path.dirname(os.path.dirname(folder.paths[0])) if folder.paths else ""
            raise ValueError(
                f"{where}: class folders {unknown[:5]} are not among the training classes {list(classes)[:10]}."
            )
        self.waves = peak_normalized(folder.waves) if normalize else folder.waves
        self.labels = np.array([index[folder.classes[i]] for i in folder.labels], np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        return {"audio": self.waves[int(i)], "label": self.labels[int(i)]}


class ShiftAndGain(grain.RandomMapTransform):
    """Shifts a clip by up to `max_shift` of its length (zeros fill) and lowers it by up to `gain_db` dB."""

    def __init__(self, max_shift: float, gain_db: float):
        self.max_shift = max_shift
        self.gain_db = gain_db

    def random_map(self, element, rng: np.random.Generator):
        audio = np.asarray(element["audio"], np.float32)
        most = int(self.max_shift * len(audio))
        shift = int(rng.integers(-most, most + 1)) if most else 0
        if shift > 0:
            audio = np.concatenate([np.zeros(shift, np.float32), audio[:-shift]])
        elif shift < 0:
            audio = np.concatenate([audio[-shift:], np.zeros(-shift, np.float32)])
        # Only quieter: a louder clip would clip at full scale.
        gain = 10 ** (-rng.uniform(0, self.gain_db) / 20) if self.gain_db else 1.0
        return dict(element, audio=(audio * gain).astype(np.float32))


def _spoken_words(workdir: str, sample_rate: int) -> Dict[str, str]:
    """Train and eval folders of tiny runs (made once, at `sample_rate`): TINY_WORDS, speakers held out.

    Raises:
      ValueError: in one line, if espeak-ng is missing.
    """
    root = generated.generated_dir(workdir, f"spoken_words_{sample_rate}")
    folders = {}
    for split, speakers in (("train", TINY_TRAIN_SPEAKERS), ("eval", TINY_EVAL_SPEAKERS)):
        folder = os.path.join(root, split)
        done = os.path.join(folder, ".complete")
        if not os.path.exists(done):
            try:
                spoken_words.make_spoken_words(folder, TINY_WORDS, speakers, sample_rate)
            except RuntimeError as e:
                raise ValueError(
                    f"finetune_audio --tiny: {e}, or pass data.train_dir=PATH (folders named by class)."
                ) from None
            open(done, "w").close()
        folders[split] = folder
    return folders


def _load_pretrained(config: Config):
    """The loader of `task.pretrained` (an audio_classifier checkpoint), or None to start from scratch.

    Raises:
      ValueError: for a published or described checkpoint of another model.
      FileNotFoundError: for a path to nothing.
    """
    t = config.task
    if not t.pretrained or t.pretrained == "none":
        return None
    entry = hub.CHECKPOINTS.get(t.pretrained) or hub.SHIPPED.get(t.pretrained)
    if entry is not None and entry.factory != FACTORY:
        raise ValueError(
            f"task.pretrained {t.pretrained!r} is a checkpoint of {entry.factory}; {config.recipe} starts "
            f"from a checkpoint of {FACTORY} (an earlier {config.recipe} export) or from scratch ('')."
        )
    path = finetune.resolve_pretrained(t.pretrained)
    described = inference_checkpoint.read_description(path).get("factory", FACTORY)
    if described != FACTORY:
        raise ValueError(
            f"task.pretrained {path} is described as a checkpoint of {described}; {config.recipe} "
            f"starts from a checkpoint of {FACTORY} (an earlier {config.recipe} export) or from scratch ('')."
        )
    return pretrained_lib.load_pretrained_fn(path, t.new_modules)


def audio_objective(config: Config, workdir: str, pretrained: bool = True) -> Objective:
    """The audio classifier's `Objective` on `data.train_dir`'s class folders (spoken words for tiny runs).

    `model.num_classes` 0 is set to the number of class folders. With
    `task.pretrained` (training only) the checkpoint is loaded but for
    `task.new_modules`.
    """
    d, t = config.data, config.task
    sizes = {k: v for k, v in config.model.items() if k != "num_classes"}
    num_samples = int(config.model["num_samples"])
    # First: a missing or wrong checkpoint fails before any data is made.
    load_pretrained = _load_pretrained(config) if pretrained else None
    if d.generate:
        folders = _spoken_words(workdir, d.sample_rate)
        d.train_dir, d.eval_dir = folders["train"], folders["eval"]
    if not d.train_dir:
        raise ValueError(
            f"recipe {config.recipe!r} needs data.train_dir=PATH (a folder with one sub-folder of "
            "WAV/FLAC/MP3 clips per class), or --tiny for generated spoken words."
        )
    train_folder = audio_folders.read_audio_folder(d.train_dir, d.sample_rate, num_samples)
    classes = list(train_folder.classes)
    train_source = AudioSource(train_folder, classes, d.normalize)
    eval_source = None
    if d.eval_dir:
        eval_folder = audio_folders.read_audio_folder(d.eval_dir, d.sample_rate, num_samples)
        eval_source = AudioSource(eval_folder, classes, d.normalize)
    num_classes = config.model.get("num_classes") or len(classes)
    if num_classes < len(classes):
        raise ValueError(
            f"model.num_classes ({num_classes}) is smaller than the {len(classes)} classes of {d.train_dir}."
        )
    config.model["num_classes"] = num_classes
    model = models.audio_classifier(num_classes, **sizes)

    def apply_logits(params, state, key, batch, is_training):
        return model.apply(params, state, key, batch["audio"], is_training=is_training)

    cls_loss, cls_evaluate = classification.classification_fns(apply_logits, t.label_smoothing)

    def as_labels(batch):
        return dict(batch, labels=batch["label"])

    def init(key):
        return model.init(key, jnp.zeros((1, num_samples), jnp.float32), is_training=True)

    def train_loader(batch_size, seed):
        augment = [ShiftAndGain(d.max_shift, d.gain_db)] if d.max_shift or d.gain_db else []
        return data_lib.make_loader(
            train_source, augment, batch_size=batch_size, seed=seed, worker_count=d.workers
        )

    eval_loader = evaluation.eval_loader_fn(eval_source, [], d.workers)

    return Objective(
        init=init,
        loss=lambda params, state, key, batch: cls_loss(params, state, key, as_labels(batch)),
        evaluate=lambda params, state, batch: cls_evaluate(params, state, as_labels(batch)),
        train_loader=train_loader,
        eval_loader=eval_loader,
        num_train_examples=len(train_source),
        load_pretrained=load_pretrained,
        export_info=dict(factory=FACTORY, classes=classes, **config.model),
    )


def describe(config: Config, objective: Objective) -> Dict[str, Any]:
    """The classifier, how clips are read for it (rate, length, normalisation) and class names."""
    sizes = dict(config.model)
    return {
        "factory": FACTORY,
        "sizes": sizes,
        "task": {
            "sample_rate": config.data.sample_rate,
            "num_samples": sizes["num_samples"],
            "normalize": config.data.normalize,
        },
        "labels": classification.labels(objective, sizes["num_classes"]),
    }


# An audio classifier on raw waveforms, from scratch or from `task.pretrained` (new_modules afresh).
AUDIO_CLASSIFICATION = ObjectiveKind(
    factory=FACTORY, model_rules=MODEL_RULES, build=audio_objective, describe=describe,
)
