"""The attention seam: what a module hands over, what it gets back, and the calls between.

A module creates its parameters and hands them over as `Projections`; the
functions here decide how to compute (which `Fold`, which kernel, tiles, a
layer norm applied inside the kernel) and return an `Attended`:

    attended = attention_layer(inputs_q, inputs_kv, projections, mask=mask)
    attended.output  # [B, T, output_channels]

A decoder that attends from many chunks of queries to the same keys splits
the call in two, so the keys' side is computed once:

    keys = prepare_keys(inputs_kv, projections, num_queries=T)
    out = attend_keys(queries_chunk, keys, mask=mask_chunk).output

Asking for the attention weights is part of the call (`want_weights`); the
fast paths never form them otherwise, so nothing is computed or held when
nobody asks.
"""

import math
from typing import NamedTuple, Optional, Union

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver.compute import folding
from perceiver.compute.folding import Fold, Projections, split_heads
from perceiver.compute.kernels import dot_product_attention
from perceiver.compute.layers import LayerNormed, layer_norm, linear, normalised
from perceiver.compute.logits import attention_logits, no_valid_key, weighted_values

KeyInputs = Union[jnp.ndarray, LayerNormed]


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
    """

    output: jnp.ndarray
    weights: Optional[jnp.ndarray] = None


class Keys(NamedTuple):
    """The keys' side of an attention, ready for queries (`prepare_keys`).

    Attributes:
      projections: the layer's parameters.
      fold: the form chosen for the layer.
      k: keys `[B, S, H, D]` in the fold's space.
      v: values `[B, S, H, Dv]` in the fold's space (the same array as k
        when both are the inputs).
      bias: logit bias `[B, 1, S]` or None.
      scale: the kernel's logit scale.
      kv_norm: `(scale, offset)` of a layer norm the kernel applies to k and
        v, or None.
    """

    projections: Projections
    fold: Fold
    k: jnp.ndarray
    v: jnp.ndarray
    bias: Optional[jnp.ndarray]
    scale: float
    kv_norm: Optional[tuple]


def _layer_norm_transform(x, params):
    return layer_norm(x, *params)


def prepare_keys(inputs_kv: KeyInputs, projections: Projections, *, num_queries: int) -> Keys:
    """The keys' side of attending from `num_queries` queries to `inputs_kv`.

    Args:
      inputs_kv: `[B, S, Ckv]`, or a `LayerNormed` of it: the norm is then
        applied inside the kernel where the fold allows (never stored), else first.
      projections: the layer's parameters.
      num_queries: the queries that will attend to these keys (all chunks
        together), for the choice of fold.
    """
    raw = inputs_kv.inputs if isinstance(inputs_kv, LayerNormed) else inputs_kv
    batch, num_keys = raw.shape[:2]
    fold = folding.choose_fold(projections, batch, num_queries, num_keys)
    kv_norm = None
    if isinstance(inputs_kv, LayerNormed) and fold.keys_are_inputs:
        kv_norm = (inputs_kv.scale, inputs_kv.offset)
    else:
        raw = normalised(inputs_kv)
    k, v, bias, scale = folding.keys_and_values(raw, projections, fold)
    return Keys(projections, fold, k, v, bias, scale, kv_norm)


def _zero_rows_without_keys(x: jnp.ndarray, mask: Optional[jnp.ndarray]) -> jnp.ndarray:
    # Queries that may attend to nothing output exactly zero, as in the reference.
    if mask is None:
        return x
    return jnp.where(no_valid_key(mask), jnp.zeros_like(x), x)


def _weights(q, k, scale, mask, bias=None) -> jnp.ndarray:
    weights = jax.nn.softmax(attention_logits(q, k, scale, mask, bias))
    if mask is not None:
        weights = jnp.where(no_valid_key(mask)[:, None], jnp.zeros_like(weights), weights)
    return weights


def attend_keys(
    inputs_q: jnp.ndarray,
    keys: Keys,
    *,
    mask: Optional[jnp.ndarray] = None,
    want_weights: bool = False,
) -> Attended:
    """Attends from `inputs_q` `[B, T, Cq]` to prepared keys; mask `[B or 1, T, S]`."""
    p, fold = keys.projections, keys.fold
    q = folding.queries(inputs_q, p, fold)
    kv_transform = None if keys.kv_norm is None else _layer_norm_transform
    out = dot_product_attention(
        q, keys.k, keys.v, mask=mask, bias=keys.bias, scale=keys.scale,
        kv_transform=kv_transform, kv_params=keys.kv_norm,
    )
    out = folding.attended_values(out.reshape(out.shape[0], out.shape[1], -1), p, fold)
    out = folding.outputs(_zero_rows_without_keys(out, mask), p, fold)
    weights = None
    if want_weights:
        k = keys.k if keys.kv_norm is None else _layer_norm_transform(keys.k, keys.kv_norm)
        weights = _weights(q, k, keys.scale, mask, keys.bias)
    return Attended(out, weights)


def attend_heads(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    mask: Optional[jnp.ndarray] = None,
    dropout: Optional[Dropout] = None,
    want_weights: bool = False,
) -> Attended:
    """Scaled dot-product attention of heads `[B, T, H, D]`, `[B, S, H, D]`, `[B, S, H, Dv]`.

    Returns:
      `output` `[B, T, H * Dv]`; rows of queries with no valid key are zero.
    """
    batch, q_len, _, qk_dim = q.shape
    scale = 1.0 / math.sqrt(qk_dim)
    weights = None
    if dropout is not None:
        # Dropout on the weights needs them whole: the plain softmax.
        weights = _weights(q, k, scale, mask)
        out = weighted_values(hk.dropout(dropout.key, dropout.rate, weights), v)
    else:
        # The kernel (plain, tiled or fused) follows the compute options.
        out = dot_product_attention(q, k, v, mask=mask)
        if want_weights:
            weights = _weights(q, k, scale, mask)
    out = _zero_rows_without_keys(out.reshape(batch, q_len, -1), mask)
    return Attended(out, weights if want_weights else None)


def attention_layer(
    inputs_q: jnp.ndarray,
    inputs_kv: KeyInputs,
    projections: Projections,
    *,
    mask: Optional[jnp.ndarray] = None,
    dropout: Optional[Dropout] = None,
    want_weights: bool = False,
) -> Attended:
    """Multi-head attention with its projections, computed as the options choose.

    Args:
      inputs_q: `[B, T, Cq]`.
      inputs_kv: `[B, S, Ckv]`, or a `LayerNormed` of it (see `prepare_keys`).
      projections: the layer's parameters.
      mask: `[B or 1, T, S]`, nonzero where query t may attend to key s.
      dropout: dropout on the attention weights, or None.
      want_weights: also return the softmax weights `[B, H, T, S]`.

    Returns:
      `Attended`: output `[B, T, output_channels]` (and the weights if asked).
    """
    if dropout is None:
        keys = prepare_keys(inputs_kv, projections, num_queries=inputs_q.shape[1])
        return attend_keys(inputs_q, keys, mask=mask, want_weights=want_weights)
    # Dropout needs the weights themselves: no fold, the plain kernel.
    p, inputs_kv = projections, normalised(inputs_kv)
    attended = attend_heads(
        split_heads(linear(inputs_q, p.q), p.num_heads),
        split_heads(linear(inputs_kv, p.k), p.num_heads),
        split_heads(linear(inputs_kv, p.v), p.num_heads),
        mask=mask,
        dropout=dropout,
        want_weights=want_weights,
    )
    return Attended(linear(attended.output, p.o), attended.weights)
