"""Stacks of layers: rematerialised as the options say, weight-shared repeats run in a loop."""

from typing import Callable, Sequence

import haiku as hk
import jax.numpy as jnp

from perceiver.compute import settings
from perceiver.compute.recompute import haiku_checkpoint


def layer(fn: Callable) -> Callable:
    """`fn`, recomputed in the backward pass instead of stored when the `remat` option is on."""
    return haiku_checkpoint(fn) if settings.remat() else fn


def repeat_layers(layers: Sequence[Callable], x: jnp.ndarray, num_repeats: int) -> jnp.ndarray:
    """`x` through `layers` in turn, all of it `num_repeats` times (the repeats share weights).

    Each layer is a `layer` (remat per the options); the repeats run in one
    compiled loop where `scan_blocks` says so, so compile time does not grow
    with `num_repeats`. Random keys are drawn in the same order either way.

    Args:
      layers: functions `[B, N, C] -> [B, N, C]` of Haiku modules.
      x: `[B, N, C]`.
      num_repeats: how many times the whole stack runs.
    """
    layers = [layer(fn) for fn in layers]

    def block(x):
        for fn in layers:
            x = fn(x)
        return x

    if settings.scan_blocks(num_repeats):
        return hk.fori_loop(0, num_repeats, lambda _, x: block(x), x)
    for _ in range(num_repeats):
        x = block(x)
    return x
