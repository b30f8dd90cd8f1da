"""The pieces every attention kernel shares: heads-major layout, masked logits, weighted values."""

from typing import Any

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


def check_kernel_args(q, k, v, mask, bias) -> None:
    """Raises ValueError unless q, k, v are `[B, L, H, D]` and mask, bias fit them."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k and v must be [batch, length, heads, dim]; got shapes {q.shape}, "
            f"{k.shape} and {v.shape}."
        )
    if mask is not None:
        if mask.ndim != 3 or mask.shape[1:] != (q.shape[1], k.shape[1]):
            raise ValueError(
                f"mask must be [batch or 1, {q.shape[1]}, {k.shape[1]}]; got {mask.shape}."
            )
    if bias is not None and (bias.ndim != 3 or bias.shape[-1] != k.shape[1]):
        raise ValueError(f"bias must be [batch or 1, heads or 1, {k.shape[1]}]; got {bias.shape}.")


def masked_logits(qh, kh, scale, mask=None, bias=None) -> jnp.ndarray:
    """Logits `[B, H, T, S]` of heads-major q `[B, H, T, D]` and k `[B, H, S, D]`."""
    logits = jnp.matmul(qh, kh.swapaxes(-1, -2), preferred_element_type=logits_dtype(qh))
    logits = logits * jnp.asarray(scale, logits.dtype)
    if bias is not None:
        logits = logits + bias[:, :, None, :].astype(logits.dtype)
    if mask is not None:
        logits = jnp.where(mask[:, None, :, :], logits, -large_negative(logits.dtype))
    return logits


def attention_logits(q, k, scale, mask=None, bias=None) -> jnp.ndarray:
    """Scaled, biased, masked logits `[B, H, T, S]` of q `[B, T, H, D]`, k `[B, S, H, D]`."""
    return masked_logits(heads_major(q), heads_major(k), scale, mask, bias)


def weighted_values(weights: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """`weights` `[B, H, T, S]` times values `[B, S, H, Dv]`: `[B, T, H, Dv]`."""
    out = jnp.matmul(
        weights.astype(v.dtype), heads_major(v), preferred_element_type=logits_dtype(v)
    )
    return heads_major(out).astype(v.dtype)


def no_valid_key(mask: jnp.ndarray) -> jnp.ndarray:
    """`[B, T, 1]`: True for queries whose mask row `[B, T, S]` is all zero."""
    return jnp.all(mask == 0, axis=2, keepdims=True)
