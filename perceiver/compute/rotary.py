"""Rotary position encodings of query and key heads (Su et al. 2021, "RoFormer").

As google-research/perceiver-ar applies them: to the first
`fraction_channels` of each head's channels (rounded down to an even count)
of the first `fraction_heads` of the heads, rotating adjacent pairs of
channels `(2i, 2i + 1)` by `position / max_wavelength ** (2 j / d)` with
`j` spread over `linspace(0, d / 2, d / 2)`, `d` the rotated channel count.
"""

import dataclasses
import math
from typing import Tuple

import jax.numpy as jnp


def _rotation(positions: jnp.ndarray, channels: int, max_wavelength: float) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """`(cos, sin)` `[B, L, 1, channels]` for `positions` `[B, L]`."""
    bands = channels // 2
    freq = max_wavelength ** ((2.0 / channels) * jnp.linspace(0, bands, bands))
    inv_freq = jnp.repeat(1.0 / freq, 2, axis=0)
    radians = positions[..., None] * inv_freq  # [B, L, channels]
    return jnp.cos(radians)[:, :, None, :], jnp.sin(radians)[:, :, None, :]


def _pairs_turned(x: jnp.ndarray) -> jnp.ndarray:
    """`(x0, x1, x2, x3, ...)` -> `(-x1, x0, -x3, x2, ...)`: each pair turned a quarter."""
    even, odd = x[..., ::2], x[..., 1::2]
    return jnp.stack((-odd, even), axis=-1).reshape(x.shape)


def rotate(x: jnp.ndarray, positions: jnp.ndarray, max_wavelength: float) -> jnp.ndarray:
    """All channels of heads `x` `[B, L, H, D]` (D even) rotated by `positions` `[B|1, L]`."""
    positions = jnp.broadcast_to(positions, x.shape[:2])
    cos, sin = _rotation(positions, x.shape[-1], max_wavelength)
    return (x * cos + _pairs_turned(x) * sin).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Rotary:
    """Rotary encodings of a fraction of the channels and heads; a heads transform of the seam.

    Attributes:
      max_wavelength: the longest wavelength, in positions.
      fraction_channels: share of each head's channels rotated, in (0, 1].
      fraction_heads: share of the heads rotated (the first ones), in [0, 1].

    Raises:
      ValueError: for fractions out of range or a wavelength not > 0.
    """

    max_wavelength: float = 10_000.0
    fraction_channels: float = 1.0
    fraction_heads: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.fraction_channels <= 1.0:
            raise ValueError(f"fraction_channels must be in (0, 1]; got {self.fraction_channels}.")
        if not 0.0 <= self.fraction_heads <= 1.0:
            raise ValueError(f"fraction_heads must be in [0, 1]; got {self.fraction_heads}.")
        if not self.max_wavelength > 0:
            raise ValueError(f"max_wavelength must be > 0; got {self.max_wavelength}.")

    def _apply(self, x: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
        num_heads, head_dim = x.shape[2:]
        channels = math.floor(head_dim * self.fraction_channels / 2.0) * 2
        heads = math.floor(self.fraction_heads * num_heads)
        if channels == 0 or heads == 0:
            return x
        part = x[:, :, :heads, :channels]
        part = rotate(part, positions, self.max_wavelength)
        if channels < head_dim:
            part = jnp.concatenate([part, x[:, :, :heads, channels:]], axis=-1)
        if heads < num_heads:
            part = jnp.concatenate([part, x[:, :, heads:]], axis=2)
        return part

    def queries(self, q: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
        """Query heads `[B, T, H, D]` at `positions` `[B|1, T]`, rotated."""
        return self._apply(q, positions)

    def keys(self, k: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
        """Key heads `[B, S, H, D]` at `positions` `[B|1, S]`, rotated."""
        return self._apply(k, positions)
