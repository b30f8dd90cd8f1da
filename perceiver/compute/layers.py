"""Linear layers and layer norms as parameters: `Projection`, `LayerNormed` and their math.

Modules create parameters (`Linear.params`, as `hk.Linear` would); the
compute side receives them in these small types and applies them with the
pure functions here, which compute exactly what the Haiku layers compute.
"""

from typing import NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver.compute.precision import is_low_precision, matmul


class Projection(NamedTuple):
    """A linear layer's parameters: `x @ w + b`.

    Attributes:
      w: `[C_in, C_out]`.
      b: `[C_out]`, or None for a layer without bias.
    """

    w: jnp.ndarray
    b: Optional[jnp.ndarray] = None


class LayerNormed(NamedTuple):
    """`inputs` that a layer norm with `scale` and `offset` is still to normalise.

    Handed to a kernel, it lets the kernel apply the norm where it is cheapest
    (e.g. tile by tile, never storing the normalised copy).

    Attributes:
      inputs: `[B, S, C]`, before the norm.
      scale: `[C]`.
      offset: `[C]`.
    """

    inputs: jnp.ndarray
    scale: jnp.ndarray
    offset: jnp.ndarray


class Linear(hk.Linear):
    """`hk.Linear` whose parameters can also be read without applying it."""

    def params(self, input_size: int, dtype=jnp.float32) -> Projection:
        """`Projection(w [input_size, output_size], b [output_size] or None)`, created as `__call__` would."""
        w_init = self.w_init
        if w_init is None:
            w_init = hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(input_size))
        w = hk.get_parameter("w", [input_size, self.output_size], dtype, init=w_init)
        b = None
        if self.with_bias:
            b = hk.get_parameter("b", [self.output_size], dtype, init=self.b_init)
        return Projection(w, b)

    def __call__(self, inputs: jnp.ndarray, *, precision=None) -> jnp.ndarray:
        if not is_low_precision(inputs.dtype):
            return super().__call__(inputs, precision=precision)
        return linear(inputs, self.params(inputs.shape[-1], inputs.dtype), precision=precision)


def linear(x: jnp.ndarray, projection: Projection, precision=None) -> jnp.ndarray:
    """`x @ w + b`, as `Linear` computes it (half precision accumulated in float32)."""
    w, b = projection
    if not is_low_precision(x.dtype):
        out = jnp.dot(x, w, precision=precision)
        return out if b is None else out + jnp.broadcast_to(b, out.shape)
    out = matmul(x, w.astype(x.dtype), precision=precision)
    return out if b is None else out + b.astype(out.dtype)


def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, offset: jnp.ndarray) -> jnp.ndarray:
    """`hk.LayerNorm` over the last axis with these parameters, in at least float32."""
    y = x.astype(jnp.float32) if is_low_precision(x.dtype) else x
    mean = jnp.mean(y, axis=-1, keepdims=True)
    variance = jnp.var(y, axis=-1, keepdims=True)
    eps = jax.lax.convert_element_type(1e-5, variance.dtype)  # hk.LayerNorm's default
    inv = scale.astype(y.dtype) * jax.lax.rsqrt(variance + eps)
    return (inv * (y - mean) + offset.astype(y.dtype)).astype(x.dtype)


def normalised(x) -> jnp.ndarray:
    """`x` itself, or a `LayerNormed`'s inputs after its norm."""
    if isinstance(x, LayerNormed):
        return layer_norm(x.inputs, x.scale, x.offset)
    return x
