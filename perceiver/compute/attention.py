"""The attention seam: what a module hands over, what it gets back, and the calls between.

A module creates its parameters and hands them over as `Projections`; the
functions here decide how to compute (which `Fold`, which kernel, tiles, a
layer norm applied inside the kernel) and return an `Attended`:

    attended = attention_layer(inputs_q, inputs_kv, projections, mask=mask)
    attended.output  # [B, T, output_channels]

New attention math is an argument of the same call, on every path:
`bias` (added to the logits, any shape up to `[B, H, T, S]`), `causal`
with a `query_offset`, a `heads` transform of the projected query and key
heads at their positions (`Rotary`, or your own: an object with
`queries(q, positions)` and `keys(k, positions)`), and a `KVCache` that the
new keys and values are appended to before attending (returned in
`Attended.cache`).

A decoder that attends from many chunks of queries to the same keys splits
the call in two, so the keys' side is computed once:

    keys = prepare_keys(inputs_kv, projections, num_queries=T)
    out = attend_keys(queries_chunk, keys, mask=mask_chunk).output

Asking for the attention weights is part of the call (`want_weights`); the
fast paths never form them otherwise, so nothing is computed or held when
nobody asks.
"""

import math
from typing import Any, NamedTuple, Optional, Protocol, Union

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver.compute import folding
from perceiver.compute.cache import KVCache
from perceiver.compute.folding import NO_FOLD, Fold, Projections
from perceiver.compute.kernels import dot_product_attention
from perceiver.compute.layers import LayerNormed, layer_norm, normalised
from perceiver.compute.logits import (
    attention_logits,
    causal_offset_of,
    full_bias,
    rows_without_keys,
    weighted_values,
)

KeyInputs = Union[jnp.ndarray, LayerNormed]


class HeadsTransform(Protocol):
    """A map of projected heads at their positions, applied before the kernel (e.g. `Rotary`).

    Each call must treat every position alone (chunks of queries are
    transformed separately); a layer with a transform never folds.
    """

    def queries(self, q: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
        """`[B, T, H, D]` at `[B|1, T]` -> `[B, T, H, D]`."""

    def keys(self, k: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
        """`[B, S, H, D]` at `[B|1, S]` -> `[B, S, H, D]`."""


class Dropout(NamedTuple):
    """Dropout on the attention weights: its rate and the key the module drew for it."""

    rate: float
    key: jax.Array


class Attended(NamedTuple):
    """What an attention call returns.

    Attributes:
      output: `[B, T, C]`.
      weights: the softmax weights `[B, H, T, S]` (before any dropout; rows
        of queries with no valid key are zero), only when asked for.
      cache: the `KVCache` with this call's keys appended, when one was given.
    """

    output: jnp.ndarray
    weights: Optional[jnp.ndarray] = None
    cache: Optional[KVCache] = None


class Keys(NamedTuple):
    """The keys' side of an attention, ready for queries (`prepare_keys`).

    Attributes:
      projections: the layer's parameters.
      fold: the form chosen for the layer.
      k: keys `[B, S, H, D]` in the fold's space.
      v: values `[B, S, H, Dv]` in the fold's space (the same array as k
        when both are the inputs).
      bias: logit bias `[B, 1, S]` of the fold, or None.
      scale: the kernel's logit scale.
      kv_norm: `(scale, offset)` of a layer norm the kernel applies to k and
        v, or None.
      heads: the heads transform whose `queries` the queries still need, or None.
      valid: `[B, S]` keys that exist (a cache's filled slots), or None.
      cache: the cache holding k and v, or None.
      first_new: index in k of the first key of this call (query offsets
        count from it; negative when the cache kept only the last of them),
        0 without a cache.
      positions: `[B|1, S]` the keys' positions (for the queries' default).
    """

    projections: Projections
    fold: Fold
    k: jnp.ndarray
    v: jnp.ndarray
    bias: Optional[jnp.ndarray]
    scale: float
    kv_norm: Optional[tuple]
    heads: Any = None
    valid: Optional[jnp.ndarray] = None
    cache: Optional[KVCache] = None
    first_new: int = 0
    positions: Optional[jnp.ndarray] = None


def _layer_norm_transform(x, params):
    return layer_norm(x, *params)


def _default_positions(length: int, start=0) -> jnp.ndarray:
    return (start + jnp.arange(length, dtype=jnp.int32))[None]


def prepare_keys(
    inputs_kv: KeyInputs,
    projections: Projections,
    *,
    num_queries: int,
    heads: Optional[HeadsTransform] = None,
    kv_positions: Optional[jnp.ndarray] = None,
    cache: Optional[KVCache] = None,
    unfolded: bool = False,
) -> Keys:
    """The keys' side of attending from `num_queries` queries to `inputs_kv`.

    Args:
      inputs_kv: `[B, S, Ckv]`, or a `LayerNormed` of it: the norm is then
        applied inside the kernel where the fold allows (never stored), else first.
      projections: the layer's parameters.
      num_queries: the queries that will attend to these keys (all chunks
        together), for the choice of fold.
      heads: a transform of the projected heads at their positions, or None.
      kv_positions: `[B|1, S]` positions of the keys (default `0..S-1`, or
        with a cache the positions after those it holds).
      cache: a `KVCache` to append the keys and values to and attend over.
      unfolded: compute the projections as written (e.g. for weight dropout).
    """
    raw = inputs_kv.inputs if isinstance(inputs_kv, LayerNormed) else inputs_kv
    batch, num_keys = raw.shape[:2]
    if unfolded or heads is not None or cache is not None:
        fold = NO_FOLD  # the transform and the cache need the heads themselves
    else:
        fold = folding.choose_fold(projections, batch, num_queries, num_keys)
    kv_norm = None
    if isinstance(inputs_kv, LayerNormed) and fold.keys_are_inputs:
        kv_norm = (inputs_kv.scale, inputs_kv.offset)
    else:
        raw = normalised(inputs_kv)
    k, v, bias, scale = folding.keys_and_values(raw, projections, fold)
    if kv_positions is None and (heads is not None or cache is not None):
        kv_positions = (
            _default_positions(num_keys) if cache is None else cache.next_positions(num_keys)
        )
    if heads is not None:
        k = heads.keys(k, kv_positions)
    if cache is None:
        return Keys(projections, fold, k, v, bias, scale, kv_norm, heads, positions=kv_positions)
    cache = cache.append(k, v, kv_positions)
    return Keys(
        projections, fold, cache.k, cache.v, bias, scale, kv_norm, heads, cache.valid, cache,
        # May be negative: with more new keys than slots, the first ones are gone.
        first_new=cache.capacity - num_keys, positions=kv_positions,
    )


def _zero_rows_without_keys(x: jnp.ndarray, empty: Optional[jnp.ndarray]) -> jnp.ndarray:
    # Queries that may attend to nothing output exactly zero, as in the reference.
    if empty is None:
        return x
    return jnp.where(empty, jnp.zeros_like(x), x)


def _weights(q, k, scale, mask, bias=None, offset=None, zero_empty_rows=True) -> jnp.ndarray:
    weights = jax.nn.softmax(attention_logits(q, k, scale, mask, bias, offset))
    if not zero_empty_rows:
        return weights
    empty = rows_without_keys(mask, offset, q.shape[1], k.shape[1])
    if empty is not None:
        weights = jnp.where(empty[:, None], jnp.zeros_like(weights), weights)
    return weights


def _sum_bias(a, b):
    if a is None or b is None:
        return b if a is None else a
    return full_bias(a) + full_bias(b)


def attend_keys(
    inputs_q: jnp.ndarray,
    keys: Keys,
    *,
    mask: Optional[jnp.ndarray] = None,
    bias: Optional[jnp.ndarray] = None,
    causal: bool = False,
    query_offset=0,
    q_positions: Optional[jnp.ndarray] = None,
    dropout: Optional[Dropout] = None,
    want_weights: bool = False,
    zero_empty_rows: bool = True,
) -> Attended:
    """Attends from `inputs_q` `[B, T, Cq]` to prepared keys.

    Args:
      inputs_q: `[B, T, Cq]`.
      keys: from `prepare_keys`.
      mask: `[B|1, T, S]` over all keys attended (a cache's slots included).
      bias: added to the logits, `[B|1, H|1, T|1, S|1]`.
      causal: query t sees keys up to `query_offset + t`, counted from the
        first key of this call (a cache's older keys are all seen).
      query_offset: int scalar (may be traced).
      q_positions: `[B|1, T]` positions for the heads transform (default:
        the causal positions `query_offset + t` past the first new key).
      dropout: dropout on the weights (needs `prepare_keys(unfolded=True)`).
      want_weights: also return the softmax weights `[B, H, T, S]`.
      zero_empty_rows: queries that may attend to no key output zero (as
        Perceiver IO's reference), and so do their weights; False gives
        them the mean of all values, whatever the kernel (as the plain
        softmax, and Perceiver AR's reference, do).
    """
    p, fold = keys.projections, keys.fold
    q_len = inputs_q.shape[1]
    q = folding.queries(inputs_q, p, fold)
    offset = causal_offset_of(causal, query_offset)
    if offset is not None:
        offset = offset + keys.first_new
    if keys.heads is not None:
        if q_positions is None:
            q_positions = _query_positions(keys, q_len, query_offset)
        q = keys.heads.queries(q, q_positions)
    if keys.valid is not None:
        valid = jnp.broadcast_to(keys.valid[:, None, :], (q.shape[0], q_len, keys.k.shape[1]))
        mask = valid if mask is None else (mask != 0) & valid
    bias = _sum_bias(keys.bias, bias)
    k, v = keys.k, keys.v
    if keys.cache is not None and k.dtype != q.dtype:
        # A cache stores in its own dtype; the kernels take one dtype.
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    empty = rows_without_keys(mask, offset, q_len, keys.k.shape[1]) if zero_empty_rows else None
    weights = None
    if dropout is not None:
        # Dropout on the weights needs them whole: the plain softmax.
        if keys.kv_norm is not None:
            raise ValueError("dropout on the weights needs keys from prepare_keys(unfolded=True).")
        weights = _weights(q, k, keys.scale, mask, bias, offset, zero_empty_rows)
        out = weighted_values(hk.dropout(dropout.key, dropout.rate, weights), v)
    else:
        kv_transform = None if keys.kv_norm is None else _layer_norm_transform
        out = dot_product_attention(
            q, k, v, mask=mask, bias=bias, scale=keys.scale,
            kv_transform=kv_transform, kv_params=keys.kv_norm,
            causal=offset is not None, query_offset=0 if offset is None else offset,
        )
        if not zero_empty_rows:
            out = _mean_where_no_keys(out, v, keys.kv_norm, mask, offset)
        if want_weights:
            if keys.kv_norm is not None:
                k = _layer_norm_transform(k, keys.kv_norm)
            weights = _weights(q, k, keys.scale, mask, bias, offset, zero_empty_rows)
    out = folding.attended_values(out.reshape(out.shape[0], q_len, -1), p, fold)
    out = folding.outputs(_zero_rows_without_keys(out, empty), p, fold)
    return Attended(out, weights if want_weights else None, keys.cache)


def _mean_where_no_keys(out, v, kv_norm, mask, offset):
    """Kernel output `[B, T, H, Dv]` with queries that see no key given the mean of all values.

    That is what the plain softmax gives them (every logit equally masked),
    made independent of the kernel (tiles skipped in causal order, cuDNN).
    """
    empty = rows_without_keys(mask, offset, out.shape[1], v.shape[1])
    if empty is None:
        return out
    values = v if kv_norm is None else _layer_norm_transform(v, kv_norm)
    mean = jnp.mean(values.astype(jnp.float32), axis=1, keepdims=True).astype(out.dtype)
    return jnp.where(empty[..., None], mean, out)


def _query_positions(keys: Keys, q_len: int, query_offset) -> jnp.ndarray:
    """Queries' default positions: `query_offset + t` past the first new key's position."""
    if keys.positions is None:
        return _default_positions(q_len, query_offset)
    return keys.positions[:, :1] + query_offset + jnp.arange(q_len, dtype=jnp.int32)[None]


def attend_heads(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    mask: Optional[jnp.ndarray] = None,
    dropout: Optional[Dropout] = None,
    want_weights: bool = False,
    bias: Optional[jnp.ndarray] = None,
    causal: bool = False,
    query_offset=0,
) -> Attended:
    """Scaled dot-product attention of heads `[B, T, H, D]`, `[B, S, H, D]`, `[B, S, H, Dv]`.

    Returns:
      `output` `[B, T, H * Dv]`; rows of queries with no valid key are zero.
    """
    batch, q_len, _, qk_dim = q.shape
    scale = 1.0 / math.sqrt(qk_dim)
    offset = causal_offset_of(causal, query_offset)
    weights = None
    if dropout is not None:
        # Dropout on the weights needs them whole: the plain softmax.
        weights = _weights(q, k, scale, mask, bias, offset)
        out = weighted_values(hk.dropout(dropout.key, dropout.rate, weights), v)
    else:
        # The kernel (plain, tiled or fused) follows the compute options.
        out = dot_product_attention(
            q, k, v, mask=mask, bias=bias, causal=causal, query_offset=query_offset
        )
        if want_weights:
            weights = _weights(q, k, scale, mask, bias, offset)
    empty = rows_without_keys(mask, offset, q_len, k.shape[1])
    out = _zero_rows_without_keys(out.reshape(batch, q_len, -1), empty)
    return Attended(out, weights if want_weights else None)


def attention_layer(
    inputs_q: jnp.ndarray,
    inputs_kv: KeyInputs,
    projections: Projections,
    *,
    mask: Optional[jnp.ndarray] = None,
    dropout: Optional[Dropout] = None,
    want_weights: bool = False,
    bias: Optional[jnp.ndarray] = None,
    causal: bool = False,
    query_offset=0,
    heads: Optional[HeadsTransform] = None,
    q_positions: Optional[jnp.ndarray] = None,
    kv_positions: Optional[jnp.ndarray] = None,
    cache: Optional[KVCache] = None,
) -> Attended:
    """Multi-head attention with its projections, computed as the options choose.

    Args:
      inputs_q: `[B, T, Cq]`.
      inputs_kv: `[B, S, Ckv]`, or a `LayerNormed` of it (see `prepare_keys`).
      projections: the layer's parameters.
      mask: `[B or 1, T, S]` (with a cache: `[B or 1, T, capacity]`),
        nonzero where query t may attend to key s.
      dropout: dropout on the attention weights, or None.
      want_weights: also return the softmax weights `[B, H, T, S]`.
      bias: added to the scaled logits, any of `[B|1, H|1, T|1, S|1]`.
      causal: query t sees key s only when `s <= query_offset + t` (keys
        counted from this call's first; a cache's older keys are all seen).
      query_offset: int scalar (may be traced).
      heads: a transform of the projected heads at their positions (e.g.
        `Rotary`); the layer is then never folded.
      q_positions: `[B|1, T]` (default `query_offset + t` past the first
        new key's position).
      kv_positions: `[B|1, S]` (default `0..S-1`, or after a cache's).
      cache: a `KVCache`: the keys and values are appended to it and the
        queries attend to all it holds; `Attended.cache` is the new cache.

    Returns:
      `Attended`: output `[B, T, output_channels]` (and the weights, the
      cache, if asked or given).
    """
    keys = prepare_keys(
        inputs_kv, projections, num_queries=inputs_q.shape[1], heads=heads,
        kv_positions=kv_positions, cache=cache, unfolded=dropout is not None,
    )
    return attend_keys(
        inputs_q, keys, mask=mask, bias=bias, causal=causal, query_offset=query_offset,
        q_positions=q_positions, dropout=dropout, want_weights=want_weights,
    )
