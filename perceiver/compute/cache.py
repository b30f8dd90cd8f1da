"""A key/value cache of fixed capacity for attention over a growing sequence."""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class KVCache(NamedTuple):
    """Keys and values of the last `capacity` positions, oldest first, as a layer attends to them.

    The keys are stored as the kernel reads them (projected, and after any
    heads transform such as `Rotary`, at their own positions), so a layer
    with a cache never folds its projections: its key space is fixed.

    Attributes:
      k: `[B, C, H, D]`.
      v: `[B, C, H, Dv]`.
      valid: `[B, C]` bool, True where a slot holds a key (empty slots
        are at the front until the cache has filled).
      positions: `[B, C]` int32, each slot's position in the sequence.
      count: `[B]` int32, how many positions have been appended in all.
    """

    k: jnp.ndarray
    v: jnp.ndarray
    valid: jnp.ndarray
    positions: jnp.ndarray
    count: jnp.ndarray

    @classmethod
    def empty(cls, batch: int, capacity: int, num_heads: int, qk_dim: int, v_dim: int = None,
              dtype=jnp.float32) -> "KVCache":
        """An empty cache of `capacity` slots.

        Raises:
          ValueError: for a size below 1.
        """
        v_dim = qk_dim if v_dim is None else v_dim
        for name, value in (("batch", batch), ("capacity", capacity), ("num_heads", num_heads),
                            ("qk_dim", qk_dim), ("v_dim", v_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1; got {value}.")
        return cls(
            k=jnp.zeros((batch, capacity, num_heads, qk_dim), dtype),
            v=jnp.zeros((batch, capacity, num_heads, v_dim), dtype),
            valid=jnp.zeros((batch, capacity), bool),
            positions=jnp.zeros((batch, capacity), jnp.int32),
            count=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    def next_positions(self, length: int) -> jnp.ndarray:
        """`[B, length]`: the positions the next `length` appended keys take."""
        return self.count[:, None] + jnp.arange(length, dtype=jnp.int32)[None]

    def grown(self, n: int) -> "KVCache":
        """The cache with `n` more slots, empty, in front (so appending `n` keys drops nothing)."""
        return KVCache(*(
            jnp.concatenate([jnp.zeros(x.shape[:1] + (n,) + x.shape[2:], x.dtype), x], axis=1)
            for x in (self.k, self.v, self.valid, self.positions)
        ), count=self.count)

    def append(self, k: jnp.ndarray, v: jnp.ndarray, positions: jnp.ndarray = None) -> "KVCache":
        """The cache with `n` new keys `[B, n, H, D]` and values at the end, the oldest dropped when full.

        Args:
          k: `[B, n, H, D]`, as the kernel reads them.
          v: `[B, n, H, Dv]`.
          positions: `[B|1, n]` their positions (default: `next_positions(n)`).

        Raises:
          ValueError: if k or v does not fit the cache.
        """
        if k.shape[0] != self.k.shape[0] or k.shape[2:] != self.k.shape[2:] or k.ndim != 4:
            raise ValueError(f"new keys must be [B, n, H, D] = [{self.k.shape[0]}, n, "
                             f"{self.k.shape[2]}, {self.k.shape[3]}]; got {k.shape}.")
        if v.shape[:2] != k.shape[:2] or v.shape[2:] != self.v.shape[2:]:
            raise ValueError(f"new values must be [B, n, H, Dv] = {list(k.shape[:2]) + list(self.v.shape[2:])};"
                             f" got {v.shape}.")
        n = k.shape[1]
        if positions is None:
            positions = self.next_positions(n)
        positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), k.shape[:2])
        new = (k.astype(self.k.dtype), v.astype(self.v.dtype), jnp.ones(k.shape[:2], bool), positions)
        old = (self.k, self.v, self.valid, self.positions)
        if n >= self.capacity:
            kept = tuple(x[:, n - self.capacity:] for x in new)
        else:
            kept = tuple(
                jnp.concatenate([jax.lax.slice_in_dim(o, n, self.capacity, axis=1), x], axis=1)
                for o, x in zip(old, new)
            )
        return KVCache(*kept, count=self.count + n)
