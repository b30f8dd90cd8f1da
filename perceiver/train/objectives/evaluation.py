"""What every objective's evaluation uses: metric sums and the one-pass evaluation loader."""

from typing import Tuple

import jax
import jax.numpy as jnp

from perceiver.train import data as data_lib


def sums(values: jax.Array, weights: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """`(sum of values x weights, sum of weights)`: an evaluation metric the trainer averages."""
    return jnp.sum(values * weights), jnp.sum(weights)


def eval_loader_fn(source, transforms, workers: int):
    """batch_size -> a loader over `source` once, in order, the last partial batch kept; None without a source.

    The seed is fixed, so random transforms (e.g. MLM masking) are the same
    at every evaluation. A run with no evaluation data (`source` None) has no
    eval loader, and the trainer skips evaluating.
    """
    if source is None:
        return None

    def eval_loader(batch_size):
        return data_lib.make_loader(
            source, list(transforms), batch_size=batch_size, seed=0, shuffle=False,
            num_epochs=1, drop_remainder=False, worker_count=workers,
        )

    return eval_loader
