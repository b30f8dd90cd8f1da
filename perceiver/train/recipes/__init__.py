"""The training recipes, as configs in code, each runnable by name.

    imagenet        ImageNet classification with the reference's hyper-parameters
    finetune_image  a published ImageNet model on a new image folder, new head
    finetune_text   text classification from the published byte MLM, new decoder
    finetune_tokens  BIO tags per byte (entities, code tokens) from the published byte MLM, new decoder
    finetune_qa     extractive question answering from the published byte MLM, new decoder
    finetune_audio  an audio classifier on raw waveforms, folders of clips by class
    finetune_detection  DETR-style object detection on the ImageNet encoder, COCO files
    mlm             masked byte language model pre-training on a text corpus
    perceiver_ar    a byte-level causal language model (Perceiver AR) on a text corpus
    flow            optical flow from scratch on synthetic pairs
    flow_small      the small flow model from a random start (the shipped one's first stage)
    flow_small_photo  flow_small continued on photo-like scenes: perceiver/data/flow_small.pystate

`get_config(name, tiny=False)` returns a `Config`; `build_task(config,
workdir)` the `Objective` the trainer optimises; `describe(config,
objective, step)` the description written beside an exported checkpoint
(factory, sizes, task settings, labels), one function per kind of
objective. Tiny variants run in about a minute on a laptop CPU and generate
their data (and, to fine-tune, a stand-in pretrained checkpoint) under
WORKDIR/generated.

Layout: one module per recipe in this folder (NAME.py: its config function,
its model sizes, its tiny variant), registered by `@register(NAME, KIND)`;
every module here not named '_*' is imported, so a new recipe is one new file.
The kinds of objective (`ObjectiveKind`: config sections, model size rules,
objective builder, checkpoint description) are in `perceiver.train.objectives`,
which the recipes depend on; a recipe's names are in its own module
(`recipes.flow.flow_config`, `recipes.flow.TINY_FLOW_MODEL`).
"""

import os
from typing import Any, Dict

from perceiver.train import config as config_lib
from perceiver.train import trainer
from perceiver.train.config import Config
from perceiver.train.recipes import _registry
from perceiver.train.recipes._registry import BUILDERS, CONFIGS, DESCRIBERS, FACTORIES
from perceiver.train.recipes._registry import MODEL_RULES, RECIPES, register
from perceiver.train.trainer import Objective

__all__ = [
    "get_config", "validate", "build_task", "describe", "compute_options",
    # The registry (see `_registry`): every recipe, and its tables by name.
    "RECIPES", "CONFIGS", "BUILDERS", "FACTORIES", "DESCRIBERS", "MODEL_RULES", "register",
]

_registry.discover(__name__, __path__)


def get_config(name: str, tiny: bool = False) -> Config:
    """The named recipe's config (its tiny variant with `tiny`).

    Raises:
      ValueError: for an unknown name.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(CONFIGS)}.")
    return CONFIGS[name](tiny)


def validate(config: Config) -> Config:
    """Checks every field against its range, and the fields that bound each other.

    Runs before any data or model is built, so a bad value fails at once.

    Returns:
      `config`.

    Raises:
      ValueError: naming the field (its dotted key), the range or relation
        expected and the value that came.
    """
    if config.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {config.recipe!r}; choose from {', '.join(RECIPES)}.")
    kind = RECIPES[config.recipe].kind
    config_lib.validate(config, {"model": kind.model_rules})
    t, o = config.train, config.optimizer
    if t.num_steps == 0 and kind.steps_only:
        raise ValueError(f"train.num_steps must be >= 1 for {kind.steps_only}; got 0.")
    if t.num_steps == 0 and t.epochs == 0:
        raise ValueError("set train.num_steps (>= 1) or train.epochs (> 0); got 0 for both.")
    if o.schedule == "cosine" and t.num_steps and o.warmup_steps > t.num_steps:
        # Often the recipe's warm-up meeting a short run the user asked for: say both ways out.
        raise ValueError(
            f"optimizer.warmup_steps must be <= train.num_steps ({t.num_steps}); got {o.warmup_steps} "
            f"(the recipe's unless set): give optimizer.warmup_steps={t.num_steps} or less, "
            f"or train.num_steps={o.warmup_steps} or more."
        )
    if kind.check is not None:
        kind.check(config)
    return config


def build_task(config: Config, workdir: str, pretrained: bool = True) -> Objective:
    """The `Objective` of `config.recipe`, with its data (generated under `workdir` if asked).

    Fills in what the data decide (`model.num_classes` 0: one per class)
    and sets the objective's `describe` (see `describe`).

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
    objective = BUILDERS[config.recipe](config, workdir, pretrained)
    _compute_in(objective, config.compute)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    objective.describe = lambda step: describe(config, objective, step, workdir)
    return objective


def compute_options(settings: config_lib.ComputeSettings) -> Dict[str, Any]:
    """The `perceiver.compute` options a config's `compute` section asks for (none for the defaults)."""
    import jax.numpy as jnp

    chosen = {
        "compute_dtype": jnp.bfloat16 if settings.dtype == "bfloat16" else None,
        "remat": settings.remat,
        "attention": settings.attention,
    }
    defaults = {"compute_dtype": None, "remat": False, "attention": "auto"}
    return {k: v for k, v in chosen.items() if v != defaults[k]}


def _compute_in(objective: Objective, settings: config_lib.ComputeSettings) -> None:
    """Makes `objective`'s loss and evaluation trace their model under the `compute` section's options.

    Options are read while the model is traced, so wrapping the two
    functions reaches every model a recipe builds, whatever its factory.
    Initialisation is left alone: options never change initial values.
    """
    from perceiver import compute

    options = compute_options(settings)
    if not options:
        return

    def under(fn):
        def traced(*args, **kwargs):
            with compute.options(**options):
                return fn(*args, **kwargs)

        return traced

    objective.loss = under(objective.loss)
    if objective.evaluate is not None:
        objective.evaluate = under(objective.evaluate)


def describe(config: Config, objective: Objective, step: int, workdir: str = "") -> Dict[str, Any]:
    """The description of a checkpoint of step `step` (see `perceiver.checkpoint.save_description`).

    `factory` and `sizes` rebuild the model: `getattr(perceiver.models,
    factory)(**sizes)` has the checkpoint's parameter tree. Also `task`
    (settings needed at inference),
    `labels`, `tokenizer` (text), one line of `description`, and `trained`:
    the recipe, step and full config.

    Args:
      config: the run's config, as `build_task` completed it.
      objective: its objective (for the class names).
      step: the checkpoint's step.
      workdir: the run's folder, named in the description.
    """
    out = DESCRIBERS[config.recipe](config, objective)
    try:
        total = trainer.total_steps(config, objective)
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
