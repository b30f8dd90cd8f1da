"""The tiled attention kernel: a running softmax over tiles, and its recomputing gradient."""

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from perceiver.compute.chunks import chunk_start, join_chunks, split_evenly
from perceiver.compute.logits import (
    causal_allowed,
    causal_offset_of,
    check_kernel_args,
    full_bias,
    heads_major,
    logits_dtype,
    masked_logits,
)


def tiled_attention(
    q,
    k,
    v,
    *,
    mask=None,
    bias=None,
    scale=None,
    query_chunk_size: int = 1024,
    key_chunk_size: int = 4096,
    kv_transform: Optional[Callable] = None,
    kv_params: Any = None,
    causal: bool = False,
    query_offset=0,
) -> jnp.ndarray:
    """Attention over tiles of queries and keys with a running (online) softmax.

    Memory is one `[B, H, query_chunk, key_chunk]` tile instead of the whole
    `[B, H, T, S]` matrix, and no padded copy of the inputs is made: sizes
    need not divide the chunks (the last chunk overlaps the one before, and
    its repeated keys get no weight). The gradient recomputes the tiles from
    the inputs, the output and the softmax statistics, so training stores
    nothing of size `T x S` either (Rabe & Staats 2021; Dao et al. 2022).
    In causal order, key tiles that no query of a tile may see are skipped,
    forward and backward.

    Args:
      q, k, v, mask, bias, scale, kv_transform, kv_params, causal,
        query_offset: as for `dot_product_attention`.
      query_chunk_size: queries per tile.
      key_chunk_size: keys per tile.

    Returns:
      `[B, T, H, Dv]`.
    """
    check_kernel_args(q, k, v, mask, bias)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    q_len, kv_len = q.shape[1], k.shape[1]
    num_q, q_chunk = split_evenly(q_len, int(query_chunk_size))
    num_k, k_chunk = split_evenly(kv_len, int(key_chunk_size))
    shared = k is v  # one transform (and one gradient) for both
    offset = causal_offset_of(causal, query_offset)
    bias = full_bias(bias)
    tiles = _Tiles(
        float(scale), q_len, q_chunk, num_q, kv_len, k_chunk, num_k, shared, offset is not None,
        None if bias is None else (bias.shape[2] > 1, bias.shape[3] > 1),
    )
    if mask is not None:
        mask = mask != 0
    kh = heads_major(k)
    vh = kh if shared else heads_major(v)
    out = _tiled(heads_major(q), kh, vh, mask, bias, kv_params, offset, tiles, kv_transform)
    return heads_major(out).astype(v.dtype)


class _Tiles(NamedTuple):
    scale: float
    q_len: int
    q_chunk: int
    num_q: int
    kv_len: int
    k_chunk: int
    num_k: int
    shared_kv: bool
    causal: bool
    # For a bias: whether it varies along (queries, keys), i.e. is sliced by tiles.
    bias_axes: Optional[tuple]

    def key_tiles_needed(self, offset, q_start):
        """Key tiles (a prefix) holding a key some query of the tile at `q_start` may see."""
        if not self.causal:
            return self.num_k
        last = offset + q_start + self.q_chunk - 1
        starts = chunk_start(jnp.arange(self.num_k), self.kv_len, self.k_chunk)
        # At least one: a row that sees nothing stays finite (callers zero it).
        return jnp.maximum(1, jnp.sum(starts <= last))


def _slice(x, start, size, axis):
    return None if x is None else jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _key_tiles(tiles, kh, vh, kv_params, kv_fn, start):
    """Key and value tiles at `start`, transformed if there is a transform."""
    k_tile = _slice(kh, start, tiles.k_chunk, 2)
    v_tile = k_tile if tiles.shared_kv else _slice(vh, start, tiles.k_chunk, 2)
    if kv_fn is not None:
        k_tile = kv_fn(k_tile, kv_params)
        v_tile = k_tile if tiles.shared_kv else kv_fn(v_tile, kv_params)
    return k_tile, v_tile


def _bias_rows(tiles, bias, q_start):
    """The bias of the query tile at `q_start`."""
    if bias is None or not tiles.bias_axes[0] or tiles.num_q == 1:
        return bias
    return _slice(bias, q_start, tiles.q_chunk, 2)


def _tile_logits(tiles, q_tile, k_tile, mask_rows, bias_rows, index, start, q_start, offset):
    """`(logits, mask, allowed)` of the query tile at `q_start` against key tile `index` (at `start`)."""
    mask_tile = _slice(mask_rows, start, tiles.k_chunk, 2)
    bias_tile = bias_rows
    if bias_rows is not None and tiles.bias_axes[1]:
        bias_tile = _slice(bias_rows, start, tiles.k_chunk, 3)
    allowed = None
    if tiles.causal:
        allowed = causal_allowed(q_start, q_tile.shape[2], start, tiles.k_chunk, offset)
    logits = masked_logits(q_tile, k_tile, tiles.scale, mask_tile, bias_tile, allowed)
    if tiles.num_k > 1:
        # Keys the previous tile already covered get no weight here.
        fresh = start + jnp.arange(tiles.k_chunk) >= index * tiles.k_chunk
        logits = jnp.where(fresh, logits, -jnp.inf)
    return logits, mask_tile, allowed


def _key_loop(tiles, offset, q_start, step, init):
    """`step` over the key tiles the query tile at `q_start` needs: all, or a causal prefix."""
    if not tiles.causal:
        return jax.lax.scan(step, init, jnp.arange(tiles.num_k))[0]
    needed = tiles.key_tiles_needed(offset, q_start)
    return jax.lax.fori_loop(0, needed, lambda index, carry: step(carry, index)[0], init)


def _tiled_forward(qh, kh, vh, mask, bias, kv_params, offset, tiles: _Tiles, kv_fn):
    """`(out [B, H, T, Dv], row max [B, H, T, 1], row sum [B, H, T, 1])`, in float32."""
    acc_dtype = logits_dtype(qh)
    v_dim = vh.shape[-1]

    def query_tile(q_tile, mask_rows, q_start):
        bias_rows = _bias_rows(tiles, bias, q_start)

        def step(carry, index):
            running_max, denominator, acc = carry
            start = chunk_start(index, tiles.kv_len, tiles.k_chunk)
            k_tile, v_tile = _key_tiles(tiles, kh, vh, kv_params, kv_fn, start)
            logits, _, _ = _tile_logits(
                tiles, q_tile, k_tile, mask_rows, bias_rows, index, start, q_start, offset
            )
            new_max = jnp.maximum(running_max, logits.max(axis=-1, keepdims=True))
            correction = jnp.exp(running_max - new_max)
            weights = jnp.exp(logits - new_max)
            denominator = denominator * correction + weights.sum(axis=-1, keepdims=True)
            acc = acc * correction + jnp.matmul(
                weights.astype(v_tile.dtype), v_tile, preferred_element_type=acc_dtype
            )
            return (new_max, denominator, acc), None

        if tiles.num_k == 1:
            # One tile of keys: normalise the weights before multiplying,
            # which XLA:CPU runs faster than normalising the product.
            k_tile, v_tile = _key_tiles(tiles, kh, vh, kv_params, kv_fn, 0)
            logits, _, _ = _tile_logits(
                tiles, q_tile, k_tile, mask_rows, bias_rows, 0, 0, q_start, offset
            )
            row_max = logits.max(axis=-1, keepdims=True)
            weights = jnp.exp(logits - row_max)
            denominator = weights.sum(axis=-1, keepdims=True)
            weights = (weights / denominator).astype(v_tile.dtype)
            out = jnp.matmul(weights, v_tile, preferred_element_type=acc_dtype)
            return out, row_max, denominator
        rows = q_tile.shape[:3] + (1,)
        init = (
            jnp.full(rows, -jnp.inf, acc_dtype),
            jnp.zeros(rows, acc_dtype),
            jnp.zeros(rows[:3] + (v_dim,), acc_dtype),
        )
        row_max, denominator, acc = _key_loop(tiles, offset, q_start, step, init)
        return acc / denominator, row_max, denominator

    if tiles.num_q == 1:
        return query_tile(qh, mask, 0)

    def by_index(index):
        start = chunk_start(index, tiles.q_len, tiles.q_chunk)
        return query_tile(
            _slice(qh, start, tiles.q_chunk, 2), _slice(mask, start, tiles.q_chunk, 1), start
        )

    stacked = jax.lax.map(by_index, jnp.arange(tiles.num_q))
    return tuple(join_chunks(x, tiles.q_len, tiles.q_chunk, axis=2) for x in stacked)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _tiled(qh, kh, vh, mask, bias, kv_params, offset, tiles, kv_fn):
    return _tiled_forward(qh, kh, vh, mask, bias, kv_params, offset, tiles, kv_fn)[0]


def _tiled_fwd(qh, kh, vh, mask, bias, kv_params, offset, tiles, kv_fn):
    out, row_max, denominator = _tiled_forward(
        qh, kh, vh, mask, bias, kv_params, offset, tiles, kv_fn
    )
    return out, (qh, kh, vh, mask, bias, kv_params, offset, out, row_max, denominator)


def _bias_gradient_tile(bias_shape, d_logits):
    """A tile's logit gradients `[B, H, tq, tk]` summed over the axes the bias is broadcast along."""
    axes = tuple(i for i in range(4) if bias_shape[i] == 1 and d_logits.shape[i] != 1)
    return d_logits.sum(axis=axes, keepdims=True) if axes else d_logits


def _tiled_bwd(tiles, kv_fn, residuals, d_out):
    """Gradients tile by tile, recomputing each tile's softmax weights."""
    qh, kh, vh, mask, bias, kv_params, offset, out, row_max, denominator = residuals
    acc_dtype = logits_dtype(qh)
    d_out = d_out.astype(acc_dtype)
    delta = jnp.sum(d_out * out, axis=-1, keepdims=True)  # [B, H, T, 1]

    def query_tile(q_tile, d_out_tile, delta_tile, max_tile, den_tile, mask_rows, q_start, carry):
        """Adds this query tile's key gradients to `carry`; returns `(d_q, carry)`."""
        bias_rows = _bias_rows(tiles, bias, q_start)

        def step(state, index):
            d_q, (d_k, d_v, d_bias, d_params) = state
            start = chunk_start(index, tiles.kv_len, tiles.k_chunk)
            k_tile, v_tile = _key_tiles(tiles, kh, vh, kv_params, kv_fn, start)
            logits, mask_tile, allowed = _tile_logits(
                tiles, q_tile, k_tile, mask_rows, bias_rows, index, start, q_start, offset
            )
            weights = jnp.exp(logits - max_tile) / den_tile
            d_weights = jnp.matmul(
                d_out_tile, v_tile.swapaxes(-1, -2), preferred_element_type=acc_dtype
            )
            d_logits = weights * (d_weights - delta_tile)
            if mask_tile is not None:
                # Masked logits are constants: no gradient flows through them.
                d_logits = jnp.where(mask_tile[:, None], d_logits, 0)
            if allowed is not None:
                d_logits = jnp.where(allowed, d_logits, 0)
            d_q = d_q + tiles.scale * jnp.matmul(
                d_logits, k_tile, preferred_element_type=acc_dtype
            )
            d_k_tile = tiles.scale * jnp.matmul(
                d_logits.swapaxes(-1, -2), q_tile, preferred_element_type=acc_dtype
            )
            d_v_tile = jnp.matmul(
                weights.swapaxes(-1, -2).astype(d_out_tile.dtype), d_out_tile
            )
            if tiles.shared_kv:
                d_k_tile, d_v_tile = d_k_tile + d_v_tile, None
            if kv_fn is not None:
                # Back through the transform, tile by tile.
                raw = _slice(kh, start, tiles.k_chunk, 2)
                _, transform_vjp = jax.vjp(kv_fn, raw, kv_params)
                d_k_tile, d_p = transform_vjp(d_k_tile.astype(raw.dtype))
                d_params = jax.tree_util.tree_map(jnp.add, d_params, d_p)
                if d_v_tile is not None:
                    raw = _slice(vh, start, tiles.k_chunk, 2)
                    _, transform_vjp = jax.vjp(kv_fn, raw, kv_params)
                    d_v_tile, d_p = transform_vjp(d_v_tile.astype(raw.dtype))
                    d_params = jax.tree_util.tree_map(jnp.add, d_params, d_p)

            def add(total, tile):
                # In place; repeated keys of the last tile add zero.
                current = _slice(total, start, tiles.k_chunk, 2)
                return jax.lax.dynamic_update_slice_in_dim(
                    total, current + tile.astype(total.dtype), start, axis=2
                )

            d_k = add(d_k, d_k_tile)
            if d_v is not None:
                d_v = add(d_v, d_v_tile)
            if d_bias is not None:
                d_bias = _add_bias_tile(
                    tiles, d_bias, _bias_gradient_tile(bias.shape, d_logits), q_start, start
                )
            return (d_q, (d_k, d_v, d_bias, d_params)), None

        state = (jnp.zeros(q_tile.shape, acc_dtype), carry)
        if tiles.num_k == 1:
            state, _ = step(state, 0)
            return state
        return _key_loop(tiles, offset, q_start, step, state)

    zeros = (
        jnp.zeros(kh.shape, acc_dtype),
        None if tiles.shared_kv else jnp.zeros(vh.shape, acc_dtype),
        # In the bias's own (broadcast) shape: never more than the bias itself.
        None if bias is None else jnp.zeros(bias.shape, acc_dtype),
        jax.tree_util.tree_map(jnp.zeros_like, kv_params),
    )
    if tiles.num_q == 1:
        d_q, (d_k, d_v, d_bias, d_params) = query_tile(
            qh, d_out, delta, row_max, denominator, mask, 0, zeros
        )
    else:

        def step(carry, index):
            start = chunk_start(index, tiles.q_len, tiles.q_chunk)
            # Queries the previous tile already covered contribute nothing here.
            fresh = (start + jnp.arange(tiles.q_chunk) >= index * tiles.q_chunk)[:, None]
            tile = [
                _slice(x, start, tiles.q_chunk, 2)
                for x in (qh, d_out, delta, row_max, denominator)
            ]
            tile[1] = jnp.where(fresh, tile[1], 0)  # d_out
            tile[2] = jnp.where(fresh, tile[2], 0)  # delta
            d_q, carry = query_tile(*tile, _slice(mask, start, tiles.q_chunk, 1), start, carry)
            return carry, d_q

        (d_k, d_v, d_bias, d_params), d_q = jax.lax.scan(step, zeros, jnp.arange(tiles.num_q))
        d_q = join_chunks(d_q, tiles.q_len, tiles.q_chunk, axis=2)
    if bias is not None:
        d_bias = d_bias.astype(bias.dtype)
    return (
        d_q.astype(qh.dtype),
        d_k.astype(kh.dtype),
        None if d_v is None else d_v.astype(vh.dtype),  # shared: all in d_k
        None,
        d_bias,
        d_params,
        None,
    )


def _add_bias_tile(tiles, d_bias, tile, q_start, k_start):
    """Adds a tile's bias gradient `[B, H, tq|1, tk|1]` into `d_bias` at its place."""
    varies_q, varies_k = tiles.bias_axes
    starts = (0, 0, q_start if varies_q else 0, k_start if varies_k else 0)
    current = jax.lax.dynamic_slice(d_bias, starts, tile.shape)
    return jax.lax.dynamic_update_slice(d_bias, current + tile.astype(d_bias.dtype), starts)


_tiled.defvjp(_tiled_fwd, _tiled_bwd)
