"""Optimisers as the reference configures them, on optax.

LAMB (You et al. 2019) and AdamW (Loshchilov & Hutter 2019) with decoupled
weight decay that can skip biases, normalisation parameters and position
embeddings; clipping by global norm; the reference's learning-rate
schedules (constant then cosine, cosine with warm-up, step decay).
"""

from typing import Any, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from perceiver import _validation
from perceiver.train.config import OPTIMIZERS, SCHEDULES, OptimizerSettings

# A module is a normalisation layer when its path contains one of these
# (Haiku's LayerNorm and BatchNorm modules, as the reference names them).
NORM_MODULE_NAMES = ("layer_norm", "batchnorm", "batch_norm")
BIAS_NAMES = ("b", "bias")  # hk.Linear / hk.Conv 'b'; EmbeddingDecoder 'bias'
POS_EMB_NAMES = ("pos_embs",)  # TrainablePositionEncoding's table


def weight_decay_mask(
    params: Mapping[str, Mapping[str, Any]],
    *,
    decay_biases: bool = False,
    decay_norms: bool = False,
    decay_pos_embs: bool = True,
) -> Mapping[str, Mapping[str, bool]]:
    """Which parameters weight decay applies to, as a tree of bools.

    Args:
      params: a Haiku tree `{module: {name: array}}`.
      decay_biases: decay biases (names 'b' and 'bias').
      decay_norms: decay the scale and offset of layer and batch norms.
      decay_pos_embs: decay learned position embeddings ('pos_embs'; this
        includes the multimodal padding and mask tokens, which are stored as
        position encodings).

    Returns:
      `{module: {name: bool}}`, True where the parameter is decayed.
    """

    def decayed(module: str, name: str) -> bool:
        if not decay_norms and any(n in module for n in NORM_MODULE_NAMES):
            return False
        if not decay_biases and name in BIAS_NAMES:
            return False
        if not decay_pos_embs and name in POS_EMB_NAMES:
            return False
        return True

    return {m: {n: decayed(m, n) for n in ps} for m, ps in params.items()}


def learning_rate_schedule(
    config: OptimizerSettings, total_steps: int, batch_size: int
) -> optax.Schedule:
    """The learning rate at each step (0-based) of a run of `total_steps`.

    Raises:
      ValueError: for an unknown schedule or inconsistent settings.
    """
    _validation.check_choice("optimizer.schedule", config.schedule, SCHEDULES)
    _validation.check_positive_int("total_steps", total_steps)
    scale = batch_size / 256 if config.scale_by_batch else 1.0
    base, init, end = config.base_lr * scale, config.init_lr * scale, config.end_lr * scale
    if config.schedule == "constant":
        return optax.constant_schedule(base)
    if config.schedule == "constant_cosine":
        if not 0 <= config.constant_fraction <= 1:
            raise ValueError(
                f"optimizer.constant_fraction must be in [0, 1]; got {config.constant_fraction}."
            )
        constant_steps = int(config.constant_fraction * total_steps)
        decay_steps = max(total_steps - constant_steps, 1)
        alpha = end / base if base else 0.0
        return optax.join_schedules(
            [
                optax.constant_schedule(base),
                optax.cosine_decay_schedule(base, decay_steps=decay_steps, alpha=alpha),
            ],
            boundaries=[constant_steps],
        )
    if config.schedule == "cosine":
        if not 0 <= config.warmup_steps <= total_steps:
            raise ValueError(
                f"optimizer.warmup_steps must be in [0, total_steps={total_steps}]; "
                f"got {config.warmup_steps}."
            )
        # optax counts the warm-up inside decay_steps: the cosine ends at total_steps.
        return optax.warmup_cosine_decay_schedule(
            init_value=init,
            peak_value=base,
            warmup_steps=config.warmup_steps,
            decay_steps=max(total_steps, config.warmup_steps + 1),
            end_value=end,
        )
    boundaries = sorted(config.decay_boundaries)
    if any(not 0 <= b <= 1 for b in boundaries):
        raise ValueError(
            f"optimizer.decay_boundaries must be fractions in [0, 1]; got {config.decay_boundaries}."
        )
    scales = {}
    for b in boundaries:
        step = int(b * total_steps)
        scales[step] = scales.get(step, 1.0) * config.decay_rate
    return optax.piecewise_constant_schedule(base, scales)


def continued_schedule(
    config: OptimizerSettings, segments: Sequence[Tuple[int, int]], batch_size: int
) -> optax.Schedule:
    """The learning rate of a run whose length changed at resume steps; continuous there.

    `segments` are `(start step, total steps)`: the run began at step 0 for
    `segments[0][1]` steps, and at each later start S it was resumed with a
    new total T. From S on, the rate follows the schedule of a run of T steps,
    rescaled to start at the rate the run had reached at S:

        lr(s) = floor + (previous(S) - floor) * (new(s) - floor) / (new(S) - floor)

    where floor is `end_lr` for the cosine schedules and 0 otherwise. So the
    rate never jumps; the rest of the decay is stretched over the new total
    (ending at end_lr for the cosine schedules); a run that had already decayed
    to end_lr stays there. With one segment this is `learning_rate_schedule`.

    Raises:
      ValueError: for segments that do not start at 0 and increase, or as
        `learning_rate_schedule`.
    """
    segments = [(int(a), int(b)) for a, b in segments]
    starts = [a for a, _ in segments]
    if not segments or starts[0] != 0 or starts != sorted(set(starts)):
        raise ValueError(f"schedule segments must start at step 0 and increase; got {segments}.")
    schedule = learning_rate_schedule(config, segments[0][1], batch_size)
    scale = batch_size / 256 if config.scale_by_batch else 1.0
    floor = config.end_lr * scale if config.schedule in ("cosine", "constant_cosine") else 0.0
    for start, total in segments[1:]:
        new = learning_rate_schedule(config, total, batch_size)
        reached, planned = float(schedule(start)), float(new(start))
        # new(S) == floor: the new schedule has nothing left to decay; hold the rate.
        ratio = (reached - floor) / (planned - floor) if planned != floor else None
        schedule = _spliced(schedule, new, start, reached, floor, ratio)
    return schedule


def _spliced(previous, new, start, reached, floor, ratio) -> optax.Schedule:
    def schedule(step):
        after = reached if ratio is None else floor + ratio * (new(step) - floor)
        return jnp.where(step < start, previous(step), after)

    return schedule


def make_optimizer(
    config: OptimizerSettings,
    total_steps: int,
    batch_size: int,
    segments: Optional[Sequence[Tuple[int, int]]] = None,
) -> Tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimiser and its learning-rate schedule.

    Gradients are clipped to `max_norm` first (when > 0); then LAMB or AdamW
    with weight decay masked by `weight_decay_mask`. As in the reference, the
    decay is added to the Adam direction before LAMB's trust ratio and before
    scaling by the learning rate.

    Args:
      config: the optimizer section.
      total_steps: the run's length.
      batch_size: the global batch (for `scale_by_batch`).
      segments: a run resumed with other lengths (see `continued_schedule`);
        None: one run of `total_steps`.

    Raises:
      ValueError: for an unknown optimiser or schedule.
    """
    _validation.check_choice("optimizer.optimizer", config.optimizer, OPTIMIZERS)
    if segments and len(segments) > 1:
        schedule = continued_schedule(config, segments, batch_size)
    else:
        schedule = learning_rate_schedule(config, total_steps, batch_size)

    def mask(params):
        return weight_decay_mask(
            params,
            decay_biases=config.decay_biases,
            decay_norms=config.decay_norms,
            decay_pos_embs=config.decay_pos_embs,
        )

    kwargs = dict(
        learning_rate=schedule,
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=mask,
    )
    inner = optax.lamb(**kwargs) if config.optimizer == "lamb" else optax.adamw(**kwargs)
    chain = [inner]
    if config.max_norm > 0:
        chain.insert(0, optax.clip_by_global_norm(config.max_norm))
    return optax.chain(*chain), schedule


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
