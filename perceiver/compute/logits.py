"""The pieces every attention kernel shares: heads-major layout, masked logits, weighted values.

A kernel sees four things besides q, k and v that decide which keys each
query weighs, and how much:

- `mask` `[B|1, T, S]`: nonzero where query t may attend to key s;
- `bias` added to the scaled logits: `[B|1, H|1, T|1, S|1]`, or
  `[B|1, H|1, S]` (one value per key, as a folded projection makes);
- causal order: query t sees key s only when `s <= offset + t` (`offset`
  may be traced, e.g. a chunk's start);
- the scale of the logits.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from perceiver.compute.precision import is_low_precision


def large_negative(dtype) -> jnp.ndarray:
    # A large finite value rather than -inf keeps rows with no valid key
    # finite (callers zero those rows), as in the reference.
    return jnp.array(1e4 if dtype == jnp.float16 else 1e30, dtype=dtype)


def logits_dtype(q) -> Any:
    """Logits and softmax statistics run in at least float32."""
    return jnp.float32 if is_low_precision(q.dtype) else q.dtype


def heads_major(x: jnp.ndarray) -> jnp.ndarray:
    # [B, L, H, D] -> [B, H, L, D]: XLA:CPU multiplies batched matrices far
    # faster with the batch (heads) leading than with the einsum layouts.
    return x.transpose(0, 2, 1, 3)


def full_bias(bias: Optional[jnp.ndarray]) -> Optional[jnp.ndarray]:
    """A bias as `[B|1, H|1, T|1, S|1]` (a per-key `[B|1, H|1, S]` gains its query axis)."""
    if bias is None or bias.ndim == 4:
        return bias
    return bias[:, :, None, :]


def check_kernel_args(q, k, v, mask, bias) -> None:
    """Raises ValueError unless q, k, v are `[B, L, H, D]` and mask, bias fit them."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k and v must be [batch, length, heads, dim]; got shapes {q.shape}, "
            f"{k.shape} and {v.shape}."
        )
    (batch, q_len, heads, _), kv_len = q.shape, k.shape[1]
    if mask is not None:
        if mask.ndim != 3 or mask.shape[1:] != (q_len, kv_len) or mask.shape[0] not in (1, batch):
            raise ValueError(f"mask must be [{batch} or 1, {q_len}, {kv_len}]; got {mask.shape}.")
    if bias is None:
        return
    full = (batch, heads, q_len, kv_len)
    if bias.ndim == 3:
        fits = bias.shape[-1] == kv_len and all(b in (1, f) for b, f in zip(bias.shape, full[:2]))
    else:
        fits = bias.ndim == 4 and all(b in (1, f) for b, f in zip(bias.shape, full))
    if not fits:
        raise ValueError(
            f"bias must broadcast to [batch, heads, queries, keys] = {list(full)} with each "
            f"axis full or 1 (or be [batch or 1, heads or 1, {kv_len}]); got {bias.shape}."
        )


def causal_allowed(q_start, q_len: int, k_start, k_len: int, offset) -> jnp.ndarray:
    """`[q_len, k_len]`: True where query `q_start + t` may see key `k_start + s` (`s <= offset + t`)."""
    queries = q_start + jnp.arange(q_len)[:, None]
    keys = k_start + jnp.arange(k_len)[None, :]
    return keys <= offset + queries


def masked_logits(qh, kh, scale, mask=None, bias=None, allowed=None) -> jnp.ndarray:
    """Logits `[B, H, T, S]` of heads-major q `[B, H, T, D]` and k `[B, H, S, D]`.

    Args:
      mask: `[B|1, T, S]` or None.
      bias: `[B|1, H|1, T|1, S|1]` or None.
      allowed: `[T, S]` causal order (`causal_allowed`) or None.
    """
    logits = jnp.matmul(qh, kh.swapaxes(-1, -2), preferred_element_type=logits_dtype(qh))
    logits = logits * jnp.asarray(scale, logits.dtype)
    if bias is not None:
        logits = logits + bias.astype(logits.dtype)
    if mask is not None:
        logits = jnp.where(mask[:, None, :, :], logits, -large_negative(logits.dtype))
    if allowed is not None:
        logits = jnp.where(allowed, logits, -large_negative(logits.dtype))
    return logits


def attention_logits(q, k, scale, mask=None, bias=None, causal_offset=None) -> jnp.ndarray:
    """Scaled, biased, masked logits `[B, H, T, S]` of q `[B, T, H, D]`, k `[B, S, H, D]`.

    `causal_offset`: None, or the offset of causal order (query t sees keys
    `s <= offset + t`).
    """
    allowed = None
    if causal_offset is not None:
        allowed = causal_allowed(0, q.shape[1], 0, k.shape[1], causal_offset)
    return masked_logits(heads_major(q), heads_major(k), scale, mask, full_bias(bias), allowed)


def weighted_values(weights: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """`weights` `[B, H, T, S]` times values `[B, S, H, Dv]`: `[B, T, H, Dv]`."""
    out = jnp.matmul(
        weights.astype(v.dtype), heads_major(v), preferred_element_type=logits_dtype(v)
    )
    return heads_major(out).astype(v.dtype)


def no_valid_key(mask: jnp.ndarray) -> jnp.ndarray:
    """`[B, T, 1]`: True for queries whose mask row `[B, T, S]` is all zero."""
    return jnp.all(mask == 0, axis=2, keepdims=True)


def rows_without_keys(mask, causal_offset, q_len: int, kv_len: int) -> Optional[jnp.ndarray]:
    """`[B|1, T, 1]`: queries that may attend to no key under mask and causal order, or None."""
    if causal_offset is None:
        return None if mask is None else no_valid_key(mask)
    allowed = causal_allowed(0, q_len, 0, kv_len, causal_offset)
    if mask is None:
        return ~jnp.any(allowed, axis=1)[None, :, None]
    return no_valid_key(jnp.where(allowed[None], mask, 0))


def causal_offset_of(causal: bool, query_offset) -> Optional[jnp.ndarray]:
    """The offset as an int32 scalar when `causal`, else None (checked: a scalar)."""
    if not causal:
        return None
    offset = jnp.asarray(query_offset)
    if offset.ndim != 0 or not jnp.issubdtype(offset.dtype, jnp.integer):
        raise ValueError(f"query_offset must be an integer scalar; got {query_offset!r}.")
    return jax.lax.convert_element_type(offset, jnp.int32)
