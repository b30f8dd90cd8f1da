"""The training recipes, as configs in code, each runnable by name.

    imagenet        ImageNet classification with the reference's hyper-parameters
    finetune_image  a published ImageNet model on a new image folder, new head
    finetune_text   text classification from the published byte MLM, new decoder
    mlm             masked byte language model pre-training on a text corpus
    flow            optical flow from scratch on synthetic pairs
    flow_small      the small flow model shipped as perceiver/data/flow_small.pystate

`get_config(name, tiny=False)` returns a `Config`; `build_task(config,
workdir)` the `Task` the trainer runs; `describe(config, task, step)` the
description written beside an exported checkpoint (factory, sizes, task
settings, labels), one function per recipe family. Tiny variants run in
about a minute on a laptop CPU and generate their data (and, to fine-tune, a
stand-in pretrained checkpoint) under WORKDIR/generated.
"""

import dataclasses
import os
from typing import Any, Callable, Dict, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import checkpoint as inference_checkpoint
from perceiver import models
from perceiver.train import augment
from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train import finetune
from perceiver.train import images as images_lib
from perceiver.train import losses
from perceiver.train import synthetic_flow
from perceiver.train import text as text_lib
from perceiver.train import trainer
from perceiver.train.config import SEED, CheckpointConfig, Config, Interval, OptimizerConfig
from perceiver.train.config import TrainConfig, ranged
from perceiver.train.trainer import Task

# ---------------------------------------------------------------------------
# Recipe-specific config sections
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ImageData:
    """An image folder per split (ImageNet layout), cropping and augmentation.

    Crops (a centred square to evaluate, a random box to train) are resized
    (bicubic) to model.image_size. Evaluation takes a centred square of `eval_crop_fraction` of the short
    side; 0 (the default) is the reference's image_size / (image_size + 32)
    (224/256 at 224) but never fewer than image_size pixels, so images no
    larger than the model's input are seen whole (8 x 8 digits stay 8 x 8,
    then are resized). Training takes a random crop covering `crop_area` of
    the image (the reference's Inception crop, 8% to 100%), except that with
    `keep_small_images` an image whose short side is at most image_size gets
    the evaluation crop instead (flips and RandAugment still apply).
    """

    train_dir: str = ""
    eval_dir: str = ""  # '' : no evaluation
    generate: bool = False  # write a small generated folder under WORKDIR/generated
    crop_area: Tuple[float, float] = ranged((0.08, 1.0), Interval("(0, 1]", length=2))
    keep_small_images: bool = True
    eval_crop_fraction: float = ranged(0.0, "[0, 1]")  # 0: auto (see above)
    randaugment_layers: int = ranged(4, "[0, inf)")  # 0 disables RandAugment
    randaugment_magnitude: float = ranged(5.0, "[0, 10]")  # the reference's scale: 10 is the strongest
    flip: bool = True
    mixup_alpha: float = ranged(0.2, "[0, inf)")  # 0 disables MixUp
    cutmix: bool = True
    workers: int = ranged(0, "[0, inf)")  # grain worker processes (0: a reader thread in this process)


@dataclasses.dataclass
class ClassificationTask:
    label_smoothing: float = ranged(0.1, "[0, 1)")
    pretrained: str = ""  # checkpoint file, or a published name ('imagenet_fourier', 'mlm')
    new_modules: Tuple[str, ...] = ()  # initialised afresh instead of loaded (the new head)


@dataclasses.dataclass
class TextData:
    train_paths: Tuple[str, ...] = ()  # files, folders or globs (.txt, .jsonl)
    eval_paths: Tuple[str, ...] = ()
    seq_len: int = ranged(2048, "[1, inf)")  # <= model.max_seq_len
    text_field: str = "text"
    label_field: str = "label"
    generate: bool = False
    workers: int = ranged(0, "[0, inf)")


@dataclasses.dataclass
class MlmTask:
    mask_prob: float = ranged(0.15, "[0, 1]")
    mean_span: float = ranged(3.0, "[1, inf)")  # mean masked span length in bytes (geometric)
    max_span: int = ranged(10, "[1, inf)")


@dataclasses.dataclass
class FlowData:
    """Synthetic scenes (see `synthetic_flow.FlowSceneSpec`); image size is model.image_shape."""

    min_objects: int = ranged(1, "[0, inf)")
    max_objects: int = ranged(4, "[0, inf)")  # >= min_objects
    max_translation: float = ranged(24.0, "[0, inf)")
    max_background_translation: float = ranged(12.0, "[0, inf)")
    max_rotation: float = ranged(10.0, "[0, inf)")
    max_background_rotation: float = ranged(3.0, "[0, inf)")
    max_log_scale: float = ranged(0.1, "[0, inf)")
    max_background_log_scale: float = ranged(0.03, "[0, inf)")
    min_object_size: float = ranged(0.12, "(0, inf)")
    max_object_size: float = ranged(0.35, "(0, inf)")  # >= min_object_size
    num_waves: int = ranged(12, "[1, inf)")
    min_frequency: float = ranged(0.02, "(0, inf)")
    max_frequency: float = ranged(0.2, "(0, inf)")  # >= min_frequency
    seed: int = ranged(0, SEED)  # the training scenes
    train_examples: int = ranged(0, "[0, inf)")  # 0: a new scene every time; N: cycle through N scenes
    eval_seed: int = ranged(1_000_003, SEED)  # held-out scenes (a different stream)
    eval_examples: int = ranged(256, "[1, inf)")
    workers: int = ranged(0, "[0, inf)")


@dataclasses.dataclass
class FlowTask:
    valid_only: bool = False  # end-point error only where the point stays visible


# The values each factory's sizes allow (the `model` section is a dict of them).
_SIZE = "int [1, inf)"
_MLM_RULES = dict(
    max_seq_len=_SIZE,
    d_model=_SIZE,
    num_latents=_SIZE,
    num_latent_channels=_SIZE,
    num_self_attends=_SIZE,
    num_heads=_SIZE,
    qk_channels=_SIZE,
)
MODEL_RULES: Dict[str, Dict[str, Any]] = {
    "imagenet_classifier": dict(
        variant=models.IMAGENET_VARIANTS,
        num_classes="int [0, inf)",  # 0: one per class folder of data.train_dir
        image_size=_SIZE,
        num_latents=_SIZE,
        num_latent_channels=_SIZE,
        num_blocks=_SIZE,
        num_self_attends_per_block=_SIZE,
        num_self_attend_heads=_SIZE,
        num_bands=_SIZE,
        learned_pos_channels=_SIZE,
    ),
    "masked_language_model": _MLM_RULES,
    "text_classifier": dict(_MLM_RULES, num_classes="int [0, inf)"),  # 0: one per label
    "optical_flow": dict(
        image_shape=Interval("int [1, inf)", length=2),
        num_latents=_SIZE,
        num_latent_channels=_SIZE,
        num_self_attends=_SIZE,
        num_self_attend_heads=_SIZE,
        num_bands=_SIZE,
    ),
}


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------

# The published sizes, from the factories themselves.
IMAGENET_MODEL = models.factory_sizes("imagenet_classifier", variant="fourier_position_encoding")
TINY_IMAGE_MODEL = dict(
    variant="fourier_position_encoding",
    num_classes=1000,
    image_size=32,
    num_latents=32,
    num_latent_channels=64,
    num_blocks=2,
    num_self_attends_per_block=1,
    num_self_attend_heads=4,
    num_bands=8,
)
MLM_MODEL = models.factory_sizes("masked_language_model")
TINY_MLM_MODEL = dict(
    max_seq_len=64,
    d_model=32,
    num_latents=16,
    num_latent_channels=64,
    num_self_attends=2,
    num_heads=4,
    qk_channels=16,
)
FLOW_MODEL = models.factory_sizes("optical_flow")
# The model shipped as perceiver/data/flow_small.pystate.
FLOW_SMALL_MODEL = dict(
    image_shape=(32, 32),
    num_latents=64,
    num_latent_channels=128,
    num_self_attends=4,
    num_self_attend_heads=4,
    num_bands=16,
)
# flow_small at half its size per dimension: its tiny variant.
TINY_FLOW_SMALL_MODEL = dict(
    image_shape=(16, 16),
    num_latents=32,
    num_latent_channels=64,
    num_self_attends=2,
    num_self_attend_heads=4,
    num_bands=8,
)
TINY_FLOW_MODEL = dict(
    image_shape=(16, 16),
    num_latents=16,
    num_latent_channels=32,
    num_self_attends=1,
    num_self_attend_heads=2,
    num_bands=4,
)


def _tiny_optimizer(**kwargs) -> OptimizerConfig:
    base = dict(
        optimizer="adamw",
        base_lr=2e-3,
        scale_by_batch=False,
        eps=1e-8,
        weight_decay=1e-4,
        max_norm=1.0,
        schedule="cosine",
        warmup_steps=10,
        end_lr=2e-4,
    )
    base.update(kwargs)
    return OptimizerConfig(**base)


def _tiny_train(**kwargs) -> TrainConfig:
    base = dict(batch_size=16, num_steps=120, log_every=20, eval_batch_size=16)
    base.update(kwargs)
    return TrainConfig(**base)


def _tiny_checkpoint() -> CheckpointConfig:
    return CheckpointConfig(every_steps=50, keep=2)


def imagenet_config(tiny: bool = False) -> Config:
    """ImageNet from scratch: the reference's recipe (Perceiver IO paper, sec. 4.5).

    LAMB, base learning rate 5e-4 x batch/256, weight decay 0.1 (not on
    biases and norms), clip at global norm 10, constant for half the run then
    cosine to 0, 110 epochs of batch 1024, label smoothing 0.1, RandAugment
    (4 layers, magnitude 5), CutMix and MixUp (alpha 0.2); the Fourier-feature
    model at 224 x 224. Set data.train_dir and data.eval_dir to ImageNet's
    train/ and val/ folders.
    """
    if tiny:
        return Config(
            recipe="imagenet",
            model=dict(TINY_IMAGE_MODEL, num_classes=0),
            data=ImageData(generate=True, randaugment_layers=1, randaugment_magnitude=2.0),
            task=ClassificationTask(label_smoothing=0.1),
            optimizer=_tiny_optimizer(optimizer="lamb", eps=1e-6),
            train=_tiny_train(),
            checkpoint=_tiny_checkpoint(),
        )
    return Config(
        recipe="imagenet",
        model=dict(IMAGENET_MODEL),
        data=ImageData(),
        task=ClassificationTask(label_smoothing=0.1),
        optimizer=OptimizerConfig(),
        train=TrainConfig(batch_size=1024, epochs=110, eval_every=10_000, log_every=100),
        checkpoint=CheckpointConfig(every_steps=1000),
    )


def finetune_image_config(tiny: bool = False) -> Config:
    """A published ImageNet model fine-tuned on a new image folder with a new head.

    Loads every parameter of `task.pretrained` but the classification
    decoder's output layer (`task.new_modules`), which is rebuilt for the
    folder's classes (`model.num_classes=0`: one per sub-folder). Defaults
    are a starting point, not tuned: LAMB at 2e-4 with warm-up and cosine
    decay, 30 epochs of batch 256, lighter augmentation.
    """
    head = ("classification_decoder/~/basic_decoder/output",)
    if tiny:
        return Config(
            recipe="finetune_image",
            model=dict(TINY_IMAGE_MODEL, num_classes=0),
            data=ImageData(
                generate=True,
                randaugment_layers=1,
                randaugment_magnitude=2.0,
                mixup_alpha=0.0,
                cutmix=False,
            ),
            task=ClassificationTask(label_smoothing=0.0, pretrained="", new_modules=head),
            optimizer=_tiny_optimizer(),
            train=_tiny_train(num_steps=80),
            checkpoint=_tiny_checkpoint(),
        )
    return Config(
        recipe="finetune_image",
        model=dict(IMAGENET_MODEL, num_classes=0),
        data=ImageData(randaugment_layers=2, mixup_alpha=0.0, cutmix=False),
        task=ClassificationTask(label_smoothing=0.1, pretrained="imagenet_fourier", new_modules=head),
        optimizer=OptimizerConfig(
            base_lr=2e-4, scale_by_batch=False, weight_decay=0.05, max_norm=1.0,
            schedule="cosine", warmup_steps=500,
        ),
        train=TrainConfig(batch_size=256, epochs=30, log_every=50),
        checkpoint=CheckpointConfig(every_steps=1000),
    )


def mlm_config(tiny: bool = False) -> Config:
    """Masked byte language-model pre-training (Perceiver IO paper, sec. 4.1).

    The published architecture on a corpus of plain text or JSON lines
    (`data.train_paths`); 15% of the bytes masked in spans. The paper's full
    pre-training schedule was not released; defaults are a starting point:
    LAMB at 1e-3, 1000 warm-up steps then cosine, batch 512 of 2048 bytes.
    """
    if tiny:
        return Config(
            recipe="mlm",
            model=dict(TINY_MLM_MODEL),
            data=TextData(generate=True, seq_len=64),
            task=MlmTask(),
            optimizer=_tiny_optimizer(),
            train=_tiny_train(num_steps=150),
            checkpoint=_tiny_checkpoint(),
        )
    return Config(
        recipe="mlm",
        model=dict(MLM_MODEL),
        data=TextData(seq_len=2048),
        task=MlmTask(),
        optimizer=OptimizerConfig(
            base_lr=1e-3, scale_by_batch=False, weight_decay=0.01, max_norm=1.0,
            schedule="cosine", warmup_steps=1000,
        ),
        train=TrainConfig(batch_size=512, num_steps=500_000, eval_every=10_000, log_every=100),
        checkpoint=CheckpointConfig(every_steps=2000),
    )


def finetune_text_config(tiny: bool = False) -> Config:
    """Text classification from the published byte MLM, with a new classification decoder.

    `data.train_paths` / `data.eval_paths`: JSON lines with 'text' and 'label'
    (or a folder of class folders of .txt files). The MLM's embedding and
    encoder are loaded from `task.pretrained`; its decoder is dropped.
    Defaults (AdamW 3e-5, warm-up, 3 epochs of batch 64) are a starting point.
    """
    if tiny:
        return Config(
            recipe="finetune_text",
            model=dict(TINY_MLM_MODEL, num_classes=0),
            data=TextData(generate=True, seq_len=64),
            task=ClassificationTask(label_smoothing=0.0, new_modules=("classification_decoder",)),
            optimizer=_tiny_optimizer(),
            train=_tiny_train(num_steps=120),
            checkpoint=_tiny_checkpoint(),
        )
    return Config(
        recipe="finetune_text",
        model=dict(MLM_MODEL, num_classes=0),
        data=TextData(seq_len=2048),
        task=ClassificationTask(
            label_smoothing=0.0, pretrained="mlm", new_modules=("classification_decoder",)
        ),
        optimizer=OptimizerConfig(
            optimizer="adamw", base_lr=3e-5, scale_by_batch=False, eps=1e-8, weight_decay=0.01,
            max_norm=1.0, schedule="cosine", warmup_steps=300,
        ),
        train=TrainConfig(batch_size=64, epochs=3, log_every=50),
        checkpoint=CheckpointConfig(every_steps=1000),
    )


def flow_config(tiny: bool = False) -> Config:
    """Optical flow from scratch on synthetic layered scenes with exact flow.

    The published architecture at 368 x 496 by default (trained on
    AutoFlow in the paper; here on `synthetic_flow` pairs). LAMB at 4e-4 with
    warm-up and cosine decay; loss: mean end-point error.
    """
    if tiny:
        return Config(
            recipe="flow",
            model=dict(TINY_FLOW_MODEL),
            # 64 scenes seen over and over: within a minute the loss visibly falls
            # (learning flow that generalises takes the ~35 minutes of flow_small).
            data=FlowData(
                max_translation=2.0, max_background_translation=1.5, train_examples=64, eval_examples=32
            ),
            task=FlowTask(),
            optimizer=_tiny_optimizer(),
            train=_tiny_train(batch_size=8, eval_batch_size=8, num_steps=150),
            checkpoint=_tiny_checkpoint(),
        )
    return Config(
        recipe="flow",
        model=dict(FLOW_MODEL),
        data=FlowData(),
        task=FlowTask(),
        optimizer=OptimizerConfig(
            base_lr=4e-4, scale_by_batch=False, weight_decay=1e-4, max_norm=1.0,
            schedule="cosine", warmup_steps=5000, eps=1e-6,
        ),
        train=TrainConfig(batch_size=64, num_steps=200_000, eval_every=5000, log_every=100),
        checkpoint=CheckpointConfig(every_steps=2000),
    )


def flow_small_config(tiny: bool = False) -> Config:
    """The small flow model that ships with the package (32 x 32 frames).

    `perceiver train --config flow_small --workdir DIR` reproduces
    perceiver/data/flow_small.pystate (as DIR/model.pystate): 5000 steps of
    16 synthetic pairs with motions of a few pixels and richly textured
    layers (AdamW, 2e-3 peak, cosine); under an hour on two CPU cores.
    The tiny variant is the same design at half the size per dimension
    (16 x 16 frames, TINY_FLOW_SMALL_MODEL), the same scenes and optimiser,
    on 64 scenes for 150 steps.
    """
    scenes = dict(
        max_translation=2.5,
        max_background_translation=2.0,
        num_waves=24,
        min_frequency=0.03,
        max_frequency=0.3,
    )
    optimizer = dict(
        optimizer="adamw", base_lr=2e-3, scale_by_batch=False, eps=1e-8, weight_decay=1e-4,
        max_norm=1.0, schedule="cosine", end_lr=1e-5,
    )
    if tiny:
        return Config(
            recipe="flow_small",
            model=dict(TINY_FLOW_SMALL_MODEL),
            data=FlowData(train_examples=64, eval_examples=32, **scenes),
            task=FlowTask(),
            # The full recipe warms up for 4% of its steps; so does this one.
            optimizer=OptimizerConfig(warmup_steps=6, **optimizer),
            train=_tiny_train(batch_size=8, eval_batch_size=8, num_steps=150),
            checkpoint=_tiny_checkpoint(),
        )
    return Config(
        recipe="flow_small",
        model=dict(FLOW_SMALL_MODEL),
        data=FlowData(eval_examples=512, **scenes),
        task=FlowTask(),
        optimizer=OptimizerConfig(warmup_steps=200, **optimizer),
        train=TrainConfig(
            batch_size=16, num_steps=5000, eval_every=1000, log_every=100, eval_batch_size=64
        ),
        checkpoint=CheckpointConfig(every_steps=250, keep=2),
    )


CONFIGS: Dict[str, Callable[[bool], Config]] = {
    "imagenet": imagenet_config,
    "finetune_image": finetune_image_config,
    "finetune_text": finetune_text_config,
    "mlm": mlm_config,
    "flow": flow_config,
    "flow_small": flow_small_config,
}


def get_config(name: str, tiny: bool = False) -> Config:
    """The named recipe's config (its tiny variant with `tiny`).

    Raises:
      ValueError: for an unknown name.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(CONFIGS)}.")
    return CONFIGS[name](tiny)


# The model factory of each recipe, whose sizes the `model` section holds.
FACTORIES: Dict[str, str] = {
    "imagenet": "imagenet_classifier",
    "finetune_image": "imagenet_classifier",
    "finetune_text": "text_classifier",
    "mlm": "masked_language_model",
    "flow": "optical_flow",
    "flow_small": "optical_flow",
}


def validate(config: Config) -> Config:
    """Checks every field against its range, and the fields that bound each other.

    Runs before any data or model is built, so a bad value fails at once.

    Returns:
      `config`.

    Raises:
      ValueError: naming the field (its dotted key), the range or relation
        expected and the value that came.
    """
    if config.recipe not in FACTORIES:
        raise ValueError(f"unknown recipe {config.recipe!r}; choose from {', '.join(FACTORIES)}.")
    config_lib.validate(config, {"model": MODEL_RULES[FACTORIES[config.recipe]]})
    t, o, d = config.train, config.optimizer, config.data
    if t.num_steps == 0 and isinstance(d, FlowData):
        raise ValueError(
            "train.num_steps must be >= 1 for the flow recipes (endless scenes, no epochs); got 0."
        )
    if t.num_steps == 0 and t.epochs == 0:
        raise ValueError("set train.num_steps (>= 1) or train.epochs (> 0); got 0 for both.")
    if o.schedule == "cosine" and t.num_steps and o.warmup_steps > t.num_steps:
        raise ValueError(
            f"optimizer.warmup_steps must be <= train.num_steps ({t.num_steps}); got {o.warmup_steps}."
        )
    if isinstance(d, TextData):
        _check_seq_len(config)
    if isinstance(d, ImageData) and d.crop_area[1] < d.crop_area[0]:
        raise ValueError(
            f"data.crop_area must be (min, max) with min <= max; got {tuple(d.crop_area)}."
        )
    if isinstance(d, FlowData):
        for low, high in (
            ("min_objects", "max_objects"),
            ("min_object_size", "max_object_size"),
            ("min_frequency", "max_frequency"),
        ):
            if getattr(d, high) < getattr(d, low):
                raise ValueError(
                    f"data.{high} must be >= data.{low} ({getattr(d, low)}); got {getattr(d, high)}."
                )
    return config


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------


def _generated_dir(workdir: str, *parts: str) -> str:
    path = os.path.join(workdir, "generated", *parts)
    os.makedirs(path, exist_ok=True)
    return path


def _sums(values: jax.Array, weights: jax.Array) -> Tuple[jax.Array, jax.Array]:
    return jnp.sum(values * weights), jnp.sum(weights)


def _load_pretrained_fn(path: str, fresh, log=print):
    def load(params, state):
        ckpt_params, ckpt_state = inference_checkpoint.load(path)
        params, loaded, dropped = finetune.merge_pretrained(params, ckpt_params, fresh, "params")
        state, _, _ = finetune.merge_pretrained(state, ckpt_state, fresh, "state")
        if jax.process_index() == 0:
            log(
                f"loaded {len(loaded)} modules from {path}; initialised afresh: {list(fresh)}; "
                f"dropped from the checkpoint: {_summarize(dropped) or 'nothing'}"
            )
        return params, state

    return load


def _summarize(modules) -> str:
    """Module names grouped by their top-level module: 'basic_decoder (10 modules), embed'."""
    groups: Dict[str, list] = {}
    for m in modules:
        groups.setdefault(m.split("/")[0], []).append(m)
    return ", ".join(f"{k} ({len(v)} modules)" if len(v) > 1 else v[0] for k, v in groups.items())


def _classification_fns(apply_logits, label_smoothing: float):
    """Loss and evaluation for a model mapping a batch to logits."""

    def loss(params, state, key, batch):
        logits, state = apply_logits(params, state, key, batch, True)
        value = losses.classification_loss(
            logits,
            batch["labels"],
            label_smoothing=label_smoothing,
            mix_labels=batch.get("mix_labels"),
            ratio=batch.get("ratio"),
        )
        acc = losses.topk_correct(logits, batch["labels"], (1,))
        return value, ({"top_1_acc": jnp.mean(acc["top_1_acc"])}, state)

    def evaluate(params, state, batch):
        logits, _ = apply_logits(params, state, None, batch, False)
        w = batch["example_weights"]
        ce = losses.softmax_cross_entropy(logits, jax.nn.one_hot(batch["labels"], logits.shape[-1]))
        # Top-5 only when it says something: with 5 classes or fewer it is always 1.
        acc = losses.topk_correct(logits, batch["labels"], (1, 5) if logits.shape[-1] > 5 else (1,))
        out = {"loss": _sums(ce, w)}
        out.update({name: _sums(v, w) for name, v in acc.items()})
        return out

    return loss, evaluate


def _image_task(config: Config, workdir: str, pretrained: bool = True) -> Task:
    d, t = config.data, config.task
    kwargs = dict(config.model)
    variant = kwargs.pop("variant")
    image_size = int(kwargs["image_size"])
    load_pretrained = None
    # First: a missing checkpoint fails before any data is made.
    if config.recipe == "finetune_image" and pretrained:
        path = t.pretrained
        if d.generate and not path:
            path = _tiny_pretrained_image(workdir, variant, kwargs)
        if not path:
            raise ValueError("finetune_image needs task.pretrained=PATH or a published name.")
        load_pretrained = _load_pretrained_fn(finetune.resolve_pretrained(path), t.new_modules)
    if d.generate:
        root = _generated_dir(workdir, "images")
        d.train_dir = images_lib.write_generated_folder(os.path.join(root, "train"), seed=0)
        d.eval_dir = images_lib.write_generated_folder(
            os.path.join(root, "eval"), images_per_class=8, seed=1
        )
    if not d.train_dir:
        raise ValueError(
            f"recipe {config.recipe!r} needs data.train_dir=PATH (an image folder with one "
            "sub-folder per class), or --tiny for generated data."
        )
    train_source = images_lib.ImageFolder(d.train_dir)
    eval_source = images_lib.ImageFolder(d.eval_dir, train_source.classes) if d.eval_dir else None
    if not kwargs.get("num_classes"):
        kwargs["num_classes"] = len(train_source.classes)
        config.model["num_classes"] = kwargs["num_classes"]
    if kwargs["num_classes"] < len(train_source.classes):
        raise ValueError(
            f"model.num_classes ({kwargs['num_classes']}) is smaller than the "
            f"{len(train_source.classes)} classes of {d.train_dir}."
        )
    model = models.imagenet_classifier(variant, **kwargs)

    def apply_logits(params, state, key, batch, is_training):
        return model.apply(params, state, key, batch["images"], is_training=is_training)

    loss, evaluate = _classification_fns(apply_logits, t.label_smoothing)

    def init(key):
        return model.init(key, jnp.zeros((1, image_size, image_size, 3)), is_training=True)

    mixing = d.cutmix or d.mixup_alpha > 0

    def train_loader(batch_size, seed):
        return data_lib.make_loader(
            train_source,
            [
                images_lib.TrainImageTransform(
                    image_size, d.randaugment_layers, d.randaugment_magnitude, d.flip,
                    crop_area=d.crop_area, keep_small=d.keep_small_images,
                    crop_fraction=d.eval_crop_fraction,
                )
            ],
            batch_size=batch_size,
            seed=seed,
            worker_count=d.workers,
            batch_operations=[images_lib.MixTransform(d.mixup_alpha, d.cutmix)] if mixing else [],
            pre_batch=2 * batch_size if mixing else 0,
        )

    def eval_loader(batch_size):
        return data_lib.make_loader(
            eval_source,
            [images_lib.EvalImageTransform(image_size, d.eval_crop_fraction)],
            batch_size=batch_size,
            seed=0,
            shuffle=False,
            num_epochs=1,
            drop_remainder=False,
            worker_count=d.workers,
        )

    return Task(
        init=init,
        loss=loss,
        evaluate=evaluate,
        train_loader=train_loader,
        eval_loader=eval_loader if eval_source is not None else None,
        num_train_examples=len(train_source),
        load_pretrained=load_pretrained,
        export_info=dict(
            factory="imagenet_classifier", variant=variant, classes=train_source.classes, **kwargs
        ),
    )


def _stand_in_checkpoint(path: str, model: hk.TransformedWithState, *inputs) -> str:
    """A stand-in 'published' checkpoint for tiny runs: random weights of the model's shapes.

    Shapes come from `jax.eval_shape` (nothing is compiled); values follow
    the usual initialisers (weights N(0, 1/fan_in), tables N(0, 0.02), norm
    scales 1, offsets and biases 0, statistics 0): what a fine-tuning smoke
    test needs.
    """
    if os.path.exists(path):
        return path
    params, state = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs, is_training=True))
    rng = np.random.default_rng(1)

    def value(name, s):
        if name == "scale":
            return np.ones(s.shape, s.dtype)
        if name in ("w", "embeddings", "pos_embs") and len(s.shape) >= 2:
            std = 0.02 if name != "w" else 1 / np.sqrt(np.prod(s.shape[:-1]))
            return (std * rng.standard_normal(s.shape)).astype(s.dtype)
        return np.zeros(s.shape, s.dtype)

    fill = lambda tree: {m: {n: value(n, v) for n, v in ps.items()} for m, ps in tree.items()}
    inference_checkpoint.save(path, fill(params), fill(state))
    return path


def _tiny_pretrained_image(workdir: str, variant: str, kwargs: Dict[str, Any]) -> str:
    """A stand-in for a published ImageNet model: the tiny model with a 1000-class head."""
    sizes = dict(kwargs, num_classes=1000)
    size = sizes["image_size"]
    return _stand_in_checkpoint(
        os.path.join(_generated_dir(workdir), "pretrained_image.pystate"),
        models.imagenet_classifier(variant, **sizes),
        jnp.zeros((1, size, size, 3)),
    )


def _tiny_pretrained_mlm(workdir: str, sizes: Dict[str, Any]) -> str:
    """A stand-in for the published MLM: the tiny masked language model."""
    tokens = jnp.zeros((1, sizes["max_seq_len"]), jnp.int32)
    return _stand_in_checkpoint(
        os.path.join(_generated_dir(workdir), "pretrained_mlm.pystate"),
        models.masked_language_model(**sizes),
        tokens,
        jnp.ones_like(tokens),
    )


def _check_seq_len(config: Config) -> int:
    seq_len, max_len = config.data.seq_len, config.model["max_seq_len"]
    if not 1 <= seq_len <= max_len:
        raise ValueError(f"data.seq_len must be in [1, {max_len}] (model.max_seq_len); got {seq_len}.")
    return seq_len


def _mlm_task(config: Config, workdir: str, pretrained: bool = True) -> Task:
    d, t = config.data, config.task
    seq_len = _check_seq_len(config)
    if d.generate:
        paths = text_lib.write_generated_text(_generated_dir(workdir, "text"))
        d.train_paths, d.eval_paths = (paths["corpus"],), (paths["eval"],)
    if not d.train_paths:
        raise ValueError("recipe 'mlm' needs data.train_paths=PATH (text or JSON lines), or --tiny.")
    train_source = text_lib.ByteChunks(d.train_paths, seq_len, d.text_field)
    eval_source = text_lib.ByteChunks(d.eval_paths, seq_len, d.text_field) if d.eval_paths else None
    model = models.masked_language_model(**config.model)
    masking = text_lib.MaskTokens(t.mask_prob, t.mean_span, t.max_span)

    def init(key):
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        return model.init(key, tokens, jnp.ones_like(tokens), is_training=True)

    def loss(params, state, key, batch):
        logits, state = model.apply(
            params, state, key, batch["inputs"], batch["input_mask"], is_training=True
        )
        value, acc = losses.masked_lm_loss(logits, batch["targets"], batch["weights"])
        return value, ({"masked_acc": acc}, state)

    def evaluate(params, state, batch):
        logits, _ = model.apply(params, state, None, batch["inputs"], batch["input_mask"])
        log_probs = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
        w = batch["weights"] * batch["example_weights"][:, None]
        correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
        return {"loss": _sums(nll, w), "masked_acc": _sums(correct, w)}

    def train_loader(batch_size, seed):
        return data_lib.make_loader(
            train_source, [masking], batch_size=batch_size, seed=seed, worker_count=d.workers
        )

    def eval_loader(batch_size):
        # A fixed seed: the same positions are masked at every evaluation.
        return data_lib.make_loader(
            eval_source, [masking], batch_size=batch_size, seed=0, shuffle=False,
            num_epochs=1, drop_remainder=False, worker_count=d.workers,
        )

    return Task(
        init=init,
        loss=loss,
        evaluate=evaluate,
        train_loader=train_loader,
        eval_loader=eval_loader if eval_source is not None else None,
        num_train_examples=len(train_source),
        export_info=dict(factory="masked_language_model", **config.model),
        # 'loss' and 'masked_acc' are means over masked tokens, not examples.
        eval_counts={"masked_tokens": "loss"},
    )


def _text_classification_task(config: Config, workdir: str, pretrained: bool = True) -> Task:
    d, t = config.data, config.task
    seq_len = _check_seq_len(config)
    sizes = {k: v for k, v in config.model.items() if k != "num_classes"}
    # First: a missing checkpoint fails before any data is made.
    load_pretrained = None
    if pretrained:
        path = t.pretrained
        if d.generate and not path:
            path = _tiny_pretrained_mlm(workdir, sizes)
        if not path:
            raise ValueError("finetune_text needs task.pretrained=PATH or 'mlm'.")
        load_pretrained = _load_pretrained_fn(finetune.resolve_pretrained(path), t.new_modules)
    if d.generate:
        paths = text_lib.write_generated_text(_generated_dir(workdir, "text"))
        d.train_paths, d.eval_paths = (paths["train"],), (paths["eval"],)
    if len(d.train_paths) != 1 or len(d.eval_paths) > 1:
        raise ValueError(
            "finetune_text needs one data.train_paths entry (a .jsonl file or a folder of class "
            f"folders) and at most one data.eval_paths entry; got {d.train_paths}, {d.eval_paths}."
        )
    train_source = text_lib.TextClassificationSource(
        d.train_paths[0], seq_len, text_field=d.text_field, label_field=d.label_field
    )
    eval_source = (
        text_lib.TextClassificationSource(
            d.eval_paths[0], seq_len, train_source.classes, d.text_field, d.label_field
        )
        if d.eval_paths
        else None
    )
    num_classes = config.model.get("num_classes") or len(train_source.classes)
    config.model["num_classes"] = num_classes
    model = finetune.text_classifier(num_classes, **sizes)

    def apply_logits(params, state, key, batch, is_training):
        return model.apply(
            params, state, key, batch["tokens"], batch["mask"], is_training=is_training
        )

    cls_loss, evaluate = _classification_fns(apply_logits, t.label_smoothing)

    def init(key):
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        return model.init(key, tokens, jnp.ones_like(tokens), is_training=True)

    def as_labels(batch):
        return dict(batch, labels=batch["label"])

    def loss(params, state, key, batch):
        return cls_loss(params, state, key, as_labels(batch))

    def train_loader(batch_size, seed):
        return data_lib.make_loader(
            train_source, [], batch_size=batch_size, seed=seed, worker_count=d.workers
        )

    def eval_loader(batch_size):
        return data_lib.make_loader(
            eval_source, [], batch_size=batch_size, seed=0, shuffle=False, num_epochs=1,
            drop_remainder=False, worker_count=d.workers,
        )

    return Task(
        init=init,
        loss=loss,
        evaluate=lambda p, s, b: evaluate(p, s, as_labels(b)),
        train_loader=train_loader,
        eval_loader=eval_loader if eval_source is not None else None,
        num_train_examples=len(train_source),
        load_pretrained=load_pretrained,
        export_info=dict(factory="text_classifier", classes=train_source.classes, **config.model),
    )


def flow_scene_spec(config: Config) -> synthetic_flow.FlowSceneSpec:
    """The synthetic scene distribution of a flow config (image size from the model)."""
    fields = {f.name for f in dataclasses.fields(synthetic_flow.FlowSceneSpec)} - {"image_shape"}
    values = {k: getattr(config.data, k) for k in fields}
    return synthetic_flow.FlowSceneSpec(image_shape=tuple(config.model["image_shape"]), **values)


def _flow_task(config: Config, workdir: str, pretrained: bool = True) -> Task:
    d, t = config.data, config.task
    spec = flow_scene_spec(config)
    model = models.optical_flow(**config.model)
    train_source = synthetic_flow.SyntheticFlowSource(
        spec, num_records=d.train_examples or 2**31 - 1, seed=d.seed
    )
    eval_source = synthetic_flow.SyntheticFlowSource(spec, num_records=d.eval_examples, seed=d.eval_seed)
    height, width = spec.image_shape

    def init(key):
        return model.init(key, jnp.zeros((1, 2, height, width, 3)), is_training=True)

    def loss(params, state, key, batch):
        flow, state = model.apply(params, state, key, batch["frames"], is_training=True)
        valid = batch["valid"] if t.valid_only else None
        epe = losses.endpoint_error(flow, batch["flow"], valid)
        return epe, ({"epe": epe}, state)

    def per_example_epe(flow, target, valid=None):
        e = jnp.sqrt(jnp.sum((flow - target) ** 2, axis=-1))  # [B, H, W]
        if valid is None:
            return jnp.mean(e, axis=(1, 2))
        v = valid.astype(e.dtype)
        return jnp.sum(e * v, axis=(1, 2)) / jnp.maximum(jnp.sum(v, axis=(1, 2)), 1.0)

    def evaluate(params, state, batch):
        flow, _ = model.apply(params, state, None, batch["frames"])
        w = batch["example_weights"]
        zero = jnp.zeros_like(batch["flow"])
        return {
            "epe": _sums(per_example_epe(flow, batch["flow"]), w),
            "epe_zero_flow": _sums(per_example_epe(zero, batch["flow"]), w),
            "epe_visible": _sums(per_example_epe(flow, batch["flow"], batch["valid"]), w),
        }

    def train_loader(batch_size, seed):
        # Scenes are independent draws: no shuffle needed, only the index stream.
        return data_lib.make_loader(
            train_source, [], batch_size=batch_size, seed=seed, shuffle=False, worker_count=d.workers
        )

    def eval_loader(batch_size):
        return data_lib.make_loader(
            eval_source, [], batch_size=batch_size, seed=0, shuffle=False, num_epochs=1,
            drop_remainder=False, worker_count=d.workers,
        )

    return Task(
        init=init,
        loss=loss,
        evaluate=evaluate,
        train_loader=train_loader,
        eval_loader=eval_loader,
        num_train_examples=None,
        export_info=dict(factory="optical_flow", **config.model),
    )


# (config, workdir, pretrained: whether to load task.pretrained) -> Task
BUILDERS: Dict[str, Callable[..., Task]] = {
    "imagenet": _image_task,
    "finetune_image": _image_task,
    "mlm": _mlm_task,
    "finetune_text": _text_classification_task,
    "flow": _flow_task,
    "flow_small": _flow_task,
}


def build_task(config: Config, workdir: str, pretrained: bool = True) -> Task:
    """The `Task` of `config.recipe`, with its data (generated under `workdir` if asked).

    Fills in what the data decide (`model.num_classes` 0: one per class)
    and sets the task's `describe` (see `describe`).

    Args:
      config: a recipe's config; changed in place as said.
      workdir: the run's folder.
      pretrained: load `task.pretrained` into a fresh model (training);
        False for evaluating or exporting a checkpoint, which holds them.

    Raises:
      ValueError: for an unknown recipe, a field out of its range (see
        `validate`) or missing data settings.
      FileNotFoundError: for a pretrained checkpoint that is neither a file
        nor in the cache and cannot be downloaded.
    """
    validate(config)
    task = BUILDERS[config.recipe](config, workdir, pretrained)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    task.describe = lambda step: describe(config, task, step, workdir)
    return task


# ---------------------------------------------------------------------------
# Descriptions of exported checkpoints
# ---------------------------------------------------------------------------


def _describe_image(config: Config, task: Task) -> Dict[str, Any]:
    """imagenet, finetune_image: the classifier, its input preparation and class names."""
    sizes = dict(config.model)  # with the variant and the number of classes
    size = int(sizes["image_size"])
    fraction = config.data.eval_crop_fraction
    return {
        "factory": "imagenet_classifier",
        "sizes": sizes,
        "task": {
            "image_size": size,
            # A centred square of crop_fraction of the short side, but (auto
            # crop) never fewer than min_crop_size pixels nor more than the
            # short side; resized to image_size.
            "crop_fraction": fraction or size / (size + augment.CENTER_CROP_PADDING),
            "min_crop_size": 0 if fraction else size,
            "resize": "bicubic",
            "mean_rgb": list(augment.MEAN_RGB),
            "stddev_rgb": list(augment.STDDEV_RGB),
        },
        "labels": _labels(task, sizes["num_classes"]),
    }


def _describe_text_classifier(config: Config, task: Task) -> Dict[str, Any]:
    """finetune_text: the byte classifier, its tokenizer and label names."""
    sizes = dict(config.model)
    return {
        "factory": "text_classifier",
        "sizes": sizes,
        "task": {"seq_len": config.data.seq_len},  # the length it was trained on
        "labels": _labels(task, sizes["num_classes"]),
        "tokenizer": {"kind": "bytes", "max_seq_len": sizes["max_seq_len"]},
    }


def _describe_mlm(config: Config, task: Task) -> Dict[str, Any]:
    """mlm: the masked byte language model and its tokenizer."""
    sizes = dict(config.model)
    return {
        "factory": "masked_language_model",
        "sizes": sizes,
        "task": {"seq_len": config.data.seq_len, "mask_prob": config.task.mask_prob},
        "tokenizer": {"kind": "bytes", "max_seq_len": sizes["max_seq_len"]},
    }


def _describe_flow(config: Config, task: Task) -> Dict[str, Any]:
    """flow, flow_small: the flow model and a tiling that fits its tile."""
    sizes = dict(config.model, image_shape=list(config.model["image_shape"]))
    # Tiles overlap by a quarter of their side (8 px for 32 x 32, as shipped).
    task = {"min_overlap": min(sizes["image_shape"]) // 4}
    return {"factory": "optical_flow", "sizes": sizes, "task": task}


def _labels(task: Task, num_classes: int) -> list:
    """Class names in output order; outputs beyond the data's classes are named by index."""
    names = [str(c) for c in task.export_info.get("classes", [])][:num_classes]
    return names + [str(i) for i in range(len(names), num_classes)]


DESCRIBERS: Dict[str, Callable[[Config, Task], Dict[str, Any]]] = {
    "imagenet": _describe_image,
    "finetune_image": _describe_image,
    "finetune_text": _describe_text_classifier,
    "mlm": _describe_mlm,
    "flow": _describe_flow,
    "flow_small": _describe_flow,
}


def describe(config: Config, task: Task, step: int, workdir: str = "") -> Dict[str, Any]:
    """The description of a checkpoint of step `step` (see `perceiver.checkpoint.save_description`).

    `factory` and `sizes` rebuild the model: `getattr(perceiver.models,
    factory)(**sizes)` has the checkpoint's parameter tree. Also `task`
    (settings needed at inference),
    `labels`, `tokenizer` (text), one line of `description`, and `trained`:
    the recipe, step and full config.

    Args:
      config: the run's config, as `build_task` completed it.
      task: its task (for the class names).
      step: the checkpoint's step.
      workdir: the run's folder, named in the description.
    """
    out = DESCRIBERS[config.recipe](config, task)
    try:
        total = trainer.total_steps(config, task)
    except ValueError:
        total = None
    of = f" of {total}" if total else ""
    where = f", workdir {workdir}" if workdir else ""
    out["description"] = f"perceiver train --config {config.recipe}: step {step}{of}{where}"
    out["trained"] = {
        "recipe": config.recipe,
        "step": int(step),
        "num_steps": total,
        "workdir": workdir,
        "config": config_lib.to_dict(config),
    }
    return out
