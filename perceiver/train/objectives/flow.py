"""Optical flow on synthetic scenes: the scene section, the flow model's objective and its description."""

import dataclasses
from typing import Any, Dict

import jax.numpy as jnp

from perceiver import models
from perceiver.train import data as data_lib
from perceiver.train import finetune
from perceiver.train import losses
from perceiver.train import synthetic_flow
from perceiver.train.config import SEED, Config, ranged
from perceiver.train.objectives import evaluation
from perceiver.train.objectives import pretrained as pretrained_lib
from perceiver.train.objectives.kind import ObjectiveKind, size_rules
from perceiver.train.trainer import Objective


@dataclasses.dataclass
class FlowDataSettings:
    """The `data` section: synthetic scenes (`synthetic_flow.FlowSceneSpec`) of model.image_shape."""

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
    # Photo-like scenes (all off by default: the wave scenes above).
    photo_texture_prob: float = ranged(0.0, "[0, 1]")  # chance of a raster texture per layer
    translation_power: float = ranged(1.0, "(0, inf)")  # > 1: small motions more often
    max_brightness_change: float = ranged(0.0, "[0, 1]")  # frame 2's gain and offset
    max_blur: float = ranged(0.0, "[0, inf)")  # sigma of the blur of both frames, pixels
    max_noise: float = ranged(0.0, "[0, 1]")  # std of the noise on each frame
    seed: int = ranged(0, SEED)  # the training scenes
    train_examples: int = ranged(0, "[0, inf)")  # 0: a new scene every time; N: cycle through N scenes
    eval_seed: int = ranged(1_000_003, SEED)  # held-out scenes (a different stream)
    eval_examples: int = ranged(256, "[1, inf)")
    workers: int = ranged(0, "[0, inf)")


@dataclasses.dataclass
class FlowSettings:
    """The `task` section of the flow recipes: the loss's pixels and the starting point."""

    valid_only: bool = False  # end-point error only where the point stays visible
    # A flow checkpoint to start from (a file, e.g. perceiver/data/flow_small.pystate,
    # or a published name) instead of a random start; its sizes must be the model's.
    pretrained: str = ""


# The sizes of models.optical_flow, all read from its signature.
MODEL_RULES = size_rules("optical_flow")


def check(config: Config) -> None:
    """Raises ValueError for a scene range whose maximum is below its minimum."""
    d = config.data
    for low, high in (
        ("min_objects", "max_objects"),
        ("min_object_size", "max_object_size"),
        ("min_frequency", "max_frequency"),
    ):
        if getattr(d, high) < getattr(d, low):
            raise ValueError(
                f"data.{high} must be >= data.{low} ({getattr(d, low)}); got {getattr(d, high)}."
            )


def flow_scene_spec(config: Config) -> synthetic_flow.FlowSceneSpec:
    """The synthetic scene distribution of a flow config (image size from the model)."""
    fields = {f.name for f in dataclasses.fields(synthetic_flow.FlowSceneSpec)} - {"image_shape"}
    values = {k: getattr(config.data, k) for k in fields}
    return synthetic_flow.FlowSceneSpec(image_shape=tuple(config.model["image_shape"]), **values)


def flow_objective(config: Config, workdir: str, pretrained: bool = True) -> Objective:
    """The flow model's `Objective` on synthetic pairs (`flow_scene_spec`), made as they are read."""
    d, t = config.data, config.task
    spec = flow_scene_spec(config)
    model = models.optical_flow(**config.model)
    train_source = synthetic_flow.SyntheticFlowSource(
        spec, num_records=d.train_examples or 2**31 - 1, seed=d.seed
    )
    eval_source = synthetic_flow.SyntheticFlowSource(spec, num_records=d.eval_examples, seed=d.eval_seed)
    height, width = spec.image_shape
    load_pretrained = None
    if pretrained and t.pretrained:
        load_pretrained = pretrained_lib.load_pretrained_fn(finetune.resolve_pretrained(t.pretrained), ())

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
            "epe": evaluation.sums(per_example_epe(flow, batch["flow"]), w),
            "epe_zero_flow": evaluation.sums(per_example_epe(zero, batch["flow"]), w),
            "epe_visible": evaluation.sums(per_example_epe(flow, batch["flow"], batch["valid"]), w),
        }

    def train_loader(batch_size, seed):
        # Scenes are independent draws: no shuffle needed, only the index stream.
        return data_lib.make_loader(
            train_source, [], batch_size=batch_size, seed=seed, shuffle=False, worker_count=d.workers
        )

    return Objective(
        init=init,
        loss=loss,
        evaluate=evaluate,
        train_loader=train_loader,
        eval_loader=evaluation.eval_loader_fn(eval_source, [], d.workers),
        num_train_examples=None,
        load_pretrained=load_pretrained,
        export_info=dict(factory="optical_flow", **config.model),
    )


def describe(config: Config, objective: Objective) -> Dict[str, Any]:
    """The flow model, a tiling that fits its tile and its trained range (for coarse to fine)."""
    sizes = dict(config.model, image_shape=list(config.model["image_shape"]))
    d = config.data
    inference = {
        # Tiles overlap by an eighth of their side (4 px for 32 x 32, as shipped):
        # a quarter measured 5% better on real photos and took 40% longer.
        "min_overlap": min(sizes["image_shape"]) // 8,
        # 32 tiles of 32 x 32 per call; one tile per call from ~180 x 180 up.
        "batch_size": max(1, 32 * 32 * 32 // (sizes["image_shape"][0] * sizes["image_shape"][1])),
        # The largest translation of the training scenes: what one pyramid level resolves.
        "max_flow": float(max(d.max_translation, d.max_background_translation)),
    }
    return {"factory": "optical_flow", "sizes": sizes, "task": inference}


# Optical flow from scratch; scenes are endless, so training is counted in steps.
OPTICAL_FLOW = ObjectiveKind(
    factory="optical_flow", model_rules=MODEL_RULES, build=flow_objective, describe=describe, check=check,
    steps_only="the flow recipes (endless scenes, no epochs)",
)
