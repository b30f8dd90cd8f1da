"""What tiny runs generate under WORKDIR/generated: their data's folder and stand-in checkpoints."""

import os

import haiku as hk
import jax
import numpy as np

from perceiver import checkpoint as inference_checkpoint


def generated_dir(workdir: str, *parts: str) -> str:
    """WORKDIR/generated/PARTS..., created: where tiny runs write their data."""
    path = os.path.join(workdir, "generated", *parts)
    os.makedirs(path, exist_ok=True)
    return path


def stand_in_checkpoint(path: str, model: hk.TransformedWithState, *inputs) -> str:
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
