"""Attention kernels (plain, fused, tiled) and the choice among them under the options."""

import math
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from perceiver.compute import settings
from perceiver.compute.logits import (
    attention_logits,
    causal_allowed,
    causal_offset_of,
    check_kernel_args,
    full_bias,
    weighted_values,
)
from perceiver.compute.tiled import tiled_attention


def choose_attention(
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    *,
    dtype=jnp.float32,
    qk_dim: int = 64,
    v_dim: int = 64,
    dropout: bool = False,
    has_bias: bool = False,
) -> str:
    """The kernel the current options pick for an attention of this size.

    Returns:
      'plain', 'tiled' or 'fused'.
    """
    kind = settings.current().attention
    if dropout:
        return "plain"  # Attention-weight dropout needs the whole matrix.
    if kind != settings.AUTO:
        return kind
    if (
        settings.planned_batch(batch) * heads * q_len * kv_len > settings.ONE_TILE_MAX_ELEMENTS
        and _cudnn_eligible(dtype, qk_dim, v_dim, has_bias)
    ):
        return "fused"
    # Small attention is one tile: the same work as 'plain', but training
    # stores the softmax statistics instead of the weights.
    return "tiled"


def _cudnn_eligible(dtype, qk_dim, v_dim, has_bias) -> bool:
    return (
        jax.default_backend() == "gpu"
        and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        and qk_dim == v_dim
        and qk_dim <= 128
        and qk_dim % 8 == 0
        and not has_bias
    )


def attention_tiles(batch: int, heads: int, q_len: int, kv_len: int) -> Tuple[int, int]:
    """`(query_chunk, key_chunk)` for the tiled kernel under the current options."""
    opts = settings.current()
    per_row = max(1, settings.planned_batch(batch) * heads)
    if (
        opts.query_chunk_size == settings.AUTO
        and opts.key_chunk_size == settings.AUTO
        and per_row * q_len * kv_len <= settings.ONE_TILE_MAX_ELEMENTS
    ):
        return q_len, kv_len  # One tile.
    if opts.key_chunk_size != settings.AUTO:
        key_chunk = int(opts.key_chunk_size)
    elif per_row * kv_len * min(q_len, 256) <= settings.TILE_ELEMENTS:
        key_chunk = kv_len  # Whole rows fit: no running softmax needed.
    else:
        key_chunk = max(128, settings.TILE_ELEMENTS // (per_row * min(q_len, 2048)))
    key_chunk = min(key_chunk, kv_len)
    if opts.query_chunk_size != settings.AUTO:
        query_chunk = int(opts.query_chunk_size)
    else:
        query_chunk = max(8, settings.TILE_ELEMENTS // (per_row * key_chunk))
    return min(query_chunk, q_len), key_chunk


def dot_product_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    mask: Optional[jnp.ndarray] = None,
    bias: Optional[jnp.ndarray] = None,
    scale: Optional[float] = None,
    kind: str = settings.AUTO,
    kv_transform: Optional[Callable] = None,
    kv_params: Any = None,
    causal: bool = False,
    query_offset=0,
) -> jnp.ndarray:
    """Softmax attention without dropout, by the chosen kernel.

    Rows that may attend to no key come out finite but unspecified (the
    plain softmax leaves the mean of the values); callers zero them where
    the model says so.

    Args:
      q: `[B, T, H, D]`.
      k: `[B, S, H, D]`.
      v: `[B, S, H, Dv]`.
      mask: `[B or 1, T, S]`, nonzero where query t may attend to key s.
      bias: added to the scaled logits: any of `[B|1, H|1, T|1, S|1]`, or
        `[B|1, H|1, S]` (one value per key).
      scale: logit scale (default `1 / sqrt(D)`).
      kind: 'auto', 'plain', 'tiled' or 'fused'.
      kv_transform: `f(x, kv_params)` applied to k and v before use, acting
        on each key position alone (e.g. a layer norm); the tiled kernel
        applies it tile by tile, so the transformed keys are never stored.
      kv_params: the transform's (differentiable) parameters.
      causal: query t sees key s only when `s <= query_offset + t`; the
        tiled kernel skips key tiles that no query of a tile may see.
      query_offset: int scalar (may be traced): the key position of query 0.

    Returns:
      `[B, T, H, Dv]` in v's dtype (logits and softmax in at least float32).

    Raises:
      ValueError: for shapes that do not fit, or an unknown kind.
    """
    check_kernel_args(q, k, v, mask, bias)
    causal_offset_of(causal, query_offset)  # checked here, whichever kernel runs
    batch, q_len, heads, qk_dim = q.shape
    kv_len = k.shape[1]
    if scale is None:
        scale = 1.0 / math.sqrt(qk_dim)
    if kind == settings.AUTO:
        kind = choose_attention(
            batch, heads, q_len, kv_len, dtype=q.dtype, qk_dim=qk_dim, v_dim=v.shape[-1],
            has_bias=bias is not None,
        )
    if kind == "tiled":
        query_chunk, key_chunk = attention_tiles(batch, heads, q_len, kv_len)
        return tiled_attention(
            q, k, v, mask=mask, bias=bias, scale=scale,
            query_chunk_size=query_chunk, key_chunk_size=key_chunk,
            kv_transform=kv_transform, kv_params=kv_params, causal=causal, query_offset=query_offset,
        )
    if kv_transform is not None:
        shared = k is v
        k = kv_transform(k, kv_params)
        v = k if shared else kv_transform(v, kv_params)
    if kind == "plain":
        return plain_attention(
            q, k, v, mask=mask, bias=bias, scale=scale, causal=causal, query_offset=query_offset
        )
    if kind == "fused":
        if q.shape[-1] != v.shape[-1]:
            # jax.nn.dot_product_attention needs equal key and value sizes.
            return dot_product_attention(
                q, k, v, mask=mask, bias=bias, scale=scale, causal=causal, query_offset=query_offset,
                kind="plain" if batch * heads * q_len * kv_len <= settings.ONE_TILE_MAX_ELEMENTS
                else "tiled",
            )
        return fused_attention(
            q, k, v, mask=mask, bias=bias, scale=scale, causal=causal, query_offset=query_offset
        )
    raise ValueError(f"kind must be one of {settings.ATTENTION_KINDS}; got {kind!r}.")


def plain_attention(
    q, k, v, *, mask=None, bias=None, scale=None, causal=False, query_offset=0
) -> jnp.ndarray:
    """The whole `[B, H, T, S]` softmax at once, as the reference computes it."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    offset = causal_offset_of(causal, query_offset)
    return weighted_values(jax.nn.softmax(attention_logits(q, k, scale, mask, bias, offset)), v)


def _static_zero(query_offset) -> bool:
    try:
        return int(query_offset) == 0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False


def fused_attention(
    q, k, v, *, mask=None, bias=None, scale=None, causal=False, query_offset=0
) -> jnp.ndarray:
    """`jax.nn.dot_product_attention`: cuDNN's fused kernel where it applies, else XLA's.

    Causal order with offset 0 is its `is_causal` (cuDNN then skips the
    masked blocks); another offset becomes part of the mask.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    implementation = None
    if _cudnn_eligible(q.dtype, q.shape[-1], v.shape[-1], bias is not None):
        implementation = "cudnn"
    is_causal = causal and _static_zero(query_offset)
    mask = None if mask is None else (mask[:, None, :, :] != 0)
    if causal and not is_causal:
        offset = causal_offset_of(causal, query_offset)
        allowed = causal_allowed(0, q.shape[1], 0, k.shape[1], offset)[None, None]
        mask = allowed if mask is None else mask & allowed
    bias = full_bias(bias)
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        bias=None if bias is None else bias.astype(q.dtype),
        mask=mask,
        scale=float(scale),
        is_causal=is_causal,
        implementation=implementation,
    )
    return out.astype(v.dtype)
