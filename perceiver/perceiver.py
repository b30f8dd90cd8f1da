"""Perceiver and Perceiver IO: attention primitives, encoder, decoders.

Jaegle et al., "Perceiver: General Perception with Iterative Attention" (ICML
2021) and "Perceiver IO: A General Architecture for Structured Inputs &
Outputs" (arXiv 2107.14795). Names, signatures and parameter layouts follow
DeepMind's reference (`perceiver.perceiver`), so its checkpoints load here.

Modules create their parameters and say what they compute; how it is
computed (attention kernels, folded projections, chunks, precision) is
`perceiver.compute`'s choice, behind `compute.attention_layer`.

Unlike the reference, inference needs no random key: dropout with rate 0 (or
`is_training=False`) draws none, so `apply(params, state, None, ...)` works.
When a key is given, keys are drawn in the reference's order.
"""

import abc
import functools
from typing import Mapping, Optional, Sequence, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import _recording as _inspect
from perceiver import _validation
from perceiver import compute
from perceiver import io_processors
from perceiver import position_encoding
from perceiver.compute import attention as _seam
from perceiver.compute import chunks as _chunks
from perceiver.compute import folding as _folding
from perceiver.compute import layers as _layers
from perceiver.compute import precision as _precision

# ---------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------


def _dropout(x: jnp.ndarray, rate: float) -> jnp.ndarray:
    """`hk.dropout` that needs a key only when it drops something."""
    # Draw the key whenever one exists so later draws match the reference.
    return _apply_dropout(x, hk.maybe_next_rng_key(), rate)


def _apply_dropout(x: jnp.ndarray, key: Optional[jax.Array], rate: float) -> jnp.ndarray:
    """`hk.dropout` with a key drawn beforehand (`_dropout`'s draw, made earlier)."""
    if rate == 0:
        return x
    if key is None:
        raise ValueError(
            f"dropout with rate {rate} needs a random key: pass an rng to apply(), "
            "or use is_training=False."
        )
    return hk.dropout(key, rate, x)


def _attention_dropout(rate: float) -> Optional[compute.Dropout]:
    """The attention weights' dropout; its key is drawn only for a nonzero rate."""
    if rate == 0:
        return None
    key = hk.maybe_next_rng_key()
    if key is None:
        raise ValueError(
            f"attention dropout_prob {rate} needs a random key: pass an rng "
            "to apply(), or use is_training=False."
        )
    return compute.Dropout(rate, key)


def _check_attention_mask(attention_mask, batch: int, q_len: int, kv_len: int) -> None:
    if attention_mask is None:
        return
    want = (batch, q_len, kv_len)
    got = tuple(np.shape(attention_mask))
    if len(got) != 3 or got[1:] != want[1:] or got[0] not in (1, batch):
        raise ValueError(
            f"attention_mask must have shape [batch, q_indices, kv_indices] = {want}; got {got}."
        )


def _check_attend_args(q, k, v, attention_mask):
    for name, x in (("q", q), ("k", k), ("v", v)):
        _validation.check_rank(name, x, (4,), "[batch, indices, num_heads, head_dim]")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"q and k must agree in batch, num_heads and head_dim; got {q.shape} and {k.shape}."
        )
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"k and v must agree in batch, kv_indices and num_heads; got {k.shape} and {v.shape}."
        )
    _check_attention_mask(attention_mask, q.shape[0], q.shape[1], k.shape[1])


def attend(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    dropout_prob: float = 0.0,
    attention_mask: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
    """Multi-head scaled dot-product attention, as the reference's `attend`.

    Kept for code written against the reference; `Attention` does not call
    it. The math every module runs lives in `perceiver.compute`: the seam
    `compute.attention_layer` (and `prepare_keys` / `attend_keys`), which
    takes new attention math (bias, causal order, heads transforms such as
    rotary, a key/value cache) as arguments; the kernels are in
    `compute/kernels.py` and `compute/tiled.py`. This function runs the
    same kernels (`_seam.attend_heads`).

    Args:
      q: queries `[B, T, H, Dqk]`.
      k: keys `[B, S, H, Dqk]`.
      v: values `[B, S, H, Dv]`.
      dropout_prob: dropout rate on the attention weights (needs a key if > 0).
      attention_mask: `[B, T, S]`, nonzero where query t may attend to key s.
        Queries that may attend to nothing output exactly zero.

    Returns:
      `[B, T, H * Dv]`.

    Raises:
      ValueError: if shapes disagree.
    """
    _check_attend_args(q, k, v, attention_mask)
    dropout = _attention_dropout(dropout_prob)
    return _seam.attend_heads(q, k, v, mask=attention_mask, dropout=dropout).output


# The reference's linear layer, plus reading its parameters without applying it.
_Linear = compute.Linear


def conv_1d(
    output_channels: int, init_scale: float = 1.0, with_bias: bool = True, name: Optional[str] = None
) -> hk.Linear:
    """A position-wise linear layer (a 1D convolution of width 1)."""
    return _Linear(
        output_size=output_channels,
        with_bias=with_bias,
        w_init=hk.initializers.VarianceScaling(init_scale),
        # hk.Linear's own default name, so parameter paths stay the reference's.
        name="linear" if name is None else name,
    )


class _LayerNorm(hk.LayerNorm):
    """`hk.LayerNorm` over the last axis, in at least float32; its parameters can be read unapplied."""

    def __init__(self, name: Optional[str] = None):
        # hk.LayerNorm's own default name, so parameter paths stay the reference's.
        super().__init__(
            axis=-1, create_scale=True, create_offset=True, name="layer_norm" if name is None else name
        )

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        # Statistics in at least float32, whatever the activations' dtype.
        if _precision.is_low_precision(x.dtype):
            return super().__call__(x.astype(jnp.float32)).astype(x.dtype)
        return super().__call__(x)

    def deferred(self, x: jnp.ndarray) -> compute.LayerNormed:
        """`x` with this norm's parameters (created as `__call__` would), for a kernel to apply."""
        shape = [x.shape[-1]]
        dtype = jnp.float32 if _precision.is_low_precision(x.dtype) else x.dtype
        scale = hk.get_parameter("scale", shape, dtype, init=self.scale_init or jnp.ones)
        offset = hk.get_parameter("offset", shape, dtype, init=self.offset_init or jnp.zeros)
        return compute.LayerNormed(x, scale, offset)


def layer_norm(x: jnp.ndarray, name: Optional[str] = None) -> jnp.ndarray:
    """Layer norm over the last axis, with learned scale and offset."""
    return _LayerNorm(name)(x)


def make_cross_attention_mask(query_mask: jnp.ndarray, kv_mask: jnp.ndarray) -> jnp.ndarray:
    """Outer product of `query_mask` `[B, T]` and `kv_mask` `[B, S]`: `[B, T, S]`.

    Raises:
      ValueError: if the masks are not rank 2 with the same batch size.
    """
    _validation.check_rank("query_mask", query_mask, (2,), "[batch, query_len]")
    _validation.check_rank("kv_mask", kv_mask, (2,), "[batch, key_len]")
    if query_mask.shape[0] != kv_mask.shape[0]:
        raise ValueError(
            f"query_mask and kv_mask must have the same batch size; got shapes "
            f"{tuple(query_mask.shape)} and {tuple(kv_mask.shape)}."
        )
    return jax.vmap(jnp.outer)(query_mask, kv_mask)


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------


class Attention(hk.Module):
    """Multi-headed {cross, self}-attention with input and output projections."""

    def __init__(
        self,
        num_heads: int = 8,
        init_scale: float = 1.0,
        with_final_bias: bool = True,
        final_init_scale_multiplier: float = 1.0,
        dropout_prob: float = 0.0,
        qk_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        output_channels: Optional[int] = None,
        name: Optional[str] = None,
    ):
        """Configures the attention.

        Args:
          num_heads: number of heads.
          init_scale: variance scale of the q, k and v projections.
          with_final_bias: whether the output projection has a bias.
          final_init_scale_multiplier: output projection's scale / init_scale.
          dropout_prob: dropout on the attention weights.
          qk_channels: query/key channels (default: the query input's).
          v_channels: value channels (default: qk_channels).
          output_channels: output channels (default: v_channels).
          name: module name.
        """
        super().__init__(name=name)
        self._num_heads = num_heads
        self._init_scale = init_scale
        self._with_final_bias = with_final_bias
        self._final_init_scale = final_init_scale_multiplier * init_scale
        self._dropout_prob = dropout_prob
        self._qk_channels = qk_channels
        self._v_channels = v_channels
        self._output_channels = output_channels

    def __call__(
        self,
        inputs_q: jnp.ndarray,
        inputs_kv,
        attention_mask: Optional[jnp.ndarray] = None,
        *,
        bias: Optional[jnp.ndarray] = None,
        causal: bool = False,
        query_offset=0,
        heads=None,
        q_positions: Optional[jnp.ndarray] = None,
        kv_positions: Optional[jnp.ndarray] = None,
        cache: Optional[compute.KVCache] = None,
    ):
        """Attends from `inputs_q` `[B, T, Cq]` to `inputs_kv` `[B, S, Ckv]`.

        `q = inputs_q W_q + b_q`, `k` and `v` likewise from `inputs_kv`, each
        split into heads; the output is `softmax(q k^T / sqrt(head_dim)) v`,
        heads joined, times `W_o` plus `b_o`. `compute.attention_layer`
        chooses how to evaluate it (kernel, tiles, folded projections).

        Args:
          inputs_q: `[B, T, Cq]`.
          inputs_kv: `[B, S, Ckv]`, or a `compute.LayerNormed` of it: the
            kernel then applies the norm, inside its tiles where it can.
          attention_mask: `[B, T, S]`, nonzero where query t may attend to key s.
          bias, causal, query_offset, heads, q_positions, kv_positions, cache:
            new attention math, as for `compute.attention_layer` (not in the
            reference; the defaults compute its function).

        Returns:
          `[B, T, output_channels]`; with a `cache`, `(output, new cache)`.

        Raises:
          ValueError: if qk_channels or v_channels is not divisible by num_heads,
            the inputs are not rank 3 with one batch size, or the mask does
            not fit them.
        """
        keys_inputs = inputs_kv.inputs if isinstance(inputs_kv, compute.LayerNormed) else inputs_kv
        _check_inputs(inputs_q, keys_inputs)
        num_keys = keys_inputs.shape[1] if cache is None else cache.capacity
        _check_attention_mask(attention_mask, *inputs_q.shape[:2], num_keys)
        projections, dropout = self._projections(inputs_q, keys_inputs)
        keys = compute.prepare_keys(
            inputs_kv, projections, num_queries=inputs_q.shape[1], heads=heads,
            kv_positions=kv_positions, cache=cache, unfolded=dropout is not None,
        )
        math = dict(bias=bias, causal=causal, query_offset=query_offset, q_positions=q_positions)

        def weights(index):  # only while perceiver.inspect asks for them
            q = _inspect.select_queries(inputs_q, index)
            mask = _inspect.select_queries(attention_mask, index)
            return compute.attend_keys(q, keys, mask=mask, want_weights=True, **math).weights

        if not (causal or heads is not None or bias is not None or cache is not None):
            # Queries selected for inspection are then independent of their index.
            _inspect.record_attention(self.module_name, weights, inputs_q.shape[1], num_keys)
        attended = compute.attend_keys(
            inputs_q, keys, mask=attention_mask, dropout=dropout, **math
        )
        return attended.output if cache is None else (attended.output, attended.cache)

    @hk.name_like("__call__")
    def _projections(self, inputs_q: jnp.ndarray, inputs_kv: jnp.ndarray):
        """`(compute.Projections, compute.Dropout or None)`: the parameters and the dropout key.

        Parameters are created as the reference's `__call__` creates them (q,
        k, v, output: linear to linear_3, in the inputs' dtype); the dropout
        key is drawn between the value and output projections, where the
        reference's `attend` draws it.
        """
        (_, _, q_channels), (_, _, kv_channels) = inputs_q.shape, inputs_kv.shape
        qk_channels, v_channels, output_channels = self._channels(q_channels)
        init_scale = self._init_scale
        q = conv_1d(qk_channels, init_scale=init_scale).params(q_channels, inputs_q.dtype)
        k = conv_1d(qk_channels, init_scale=init_scale).params(kv_channels, inputs_kv.dtype)
        v = conv_1d(v_channels, init_scale=init_scale).params(kv_channels, inputs_kv.dtype)
        dropout = _attention_dropout(self._dropout_prob)
        output = conv_1d(
            output_channels, with_bias=self._with_final_bias, init_scale=self._final_init_scale
        ).params(v_channels, inputs_kv.dtype)
        return compute.Projections(q, k, v, output, self._num_heads), dropout

    @hk.transparent
    def _channels(self, query_channels: int):
        """`(qk_channels, v_channels, output_channels)`, checked against num_heads."""
        # Unset sizes default to the query input's channels, as in the reference.
        qk_channels = query_channels if self._qk_channels is None else self._qk_channels
        v_channels = qk_channels if self._v_channels is None else self._v_channels
        output_channels = v_channels if self._output_channels is None else self._output_channels
        for arg, channels in (("qk_channels", qk_channels), ("v_channels", v_channels)):
            if channels % self._num_heads:
                raise ValueError(
                    f"{arg} ({channels}) must be divisible by num_heads ({self._num_heads})."
                )
        return qk_channels, v_channels, output_channels


def _check_inputs(inputs_q, inputs_kv) -> None:
    _validation.check_rank("inputs_q", inputs_q, (3,), "[B, T, C]")
    _validation.check_rank("inputs_kv", inputs_kv, (3,), "[B, S, C]")
    if inputs_q.shape[0] != inputs_kv.shape[0]:
        raise ValueError(
            f"inputs_q and inputs_kv must have the same batch size; got shapes "
            f"{tuple(inputs_q.shape)} and {tuple(inputs_kv.shape)}."
        )


class MLP(hk.Module):
    """Transformer feed-forward block: Linear, GELU, Linear, dropout."""

    def __init__(
        self,
        widening_factor: int = 4,
        dropout_prob: float = 0.0,
        init_scale: float = 1.0,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._init_scale = init_scale

    def __call__(self, x: jnp.ndarray, *, is_training: bool) -> jnp.ndarray:
        """`[B, T, C]` -> `[B, T, C]`."""
        hidden, output = self._layers(x.shape[-1])
        x = jax.nn.gelu(hidden(x), approximate=True)
        return _dropout(output(x), self._dropout_prob if is_training else 0.0)

    @hk.name_like("__call__")
    def _layers(self, channels: int) -> Tuple[hk.Linear, hk.Linear]:
        """The two layers, `C -> widening_factor * C -> C`, named as `__call__` names them."""
        return (
            conv_1d(self._widening_factor * channels, init_scale=self._init_scale),
            conv_1d(channels, init_scale=self._init_scale),
        )


class SelfAttention(hk.Module):
    """Pre-norm self-attention block followed by an MLP, both residual."""

    def __init__(
        self,
        widening_factor: int = 4,
        dropout_prob: float = 0.0,
        dropout_attn_prob: float = 0.0,
        num_heads: int = 8,
        att_init_scale: float = 1.0,
        dense_init_scale: float = 1.0,
        qk_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._dropout_attn_prob = dropout_attn_prob
        self._num_heads = num_heads
        self._att_init_scale = att_init_scale
        self._dense_init_scale = dense_init_scale
        self._qk_channels = qk_channels
        self._v_channels = v_channels

    def __call__(
        self,
        inputs: jnp.ndarray,
        *,
        attention_mask: Optional[jnp.ndarray] = None,
        is_training: bool,
    ) -> jnp.ndarray:
        """`[B, N, C]` -> `[B, N, C]`."""
        dropout_prob = self._dropout_prob if is_training else 0.0
        dropout_attn_prob = self._dropout_attn_prob if is_training else 0.0
        normed = layer_norm(inputs)
        attention = Attention(
            num_heads=self._num_heads,
            init_scale=self._att_init_scale,
            qk_channels=self._qk_channels,
            v_channels=self._v_channels,
            dropout_prob=dropout_attn_prob,
        )(normed, normed, attention_mask=attention_mask)
        x = inputs + _dropout(attention, dropout_prob)
        mlp = MLP(
            widening_factor=self._widening_factor,
            dropout_prob=dropout_prob,
            init_scale=self._dense_init_scale,
        )
        return x + mlp(layer_norm(x), is_training=is_training)


class CrossAttention(hk.Module):
    """Pre-norm cross-attention block followed by an MLP.

    The query residual is optional: omit it when queries and outputs mean
    different things (e.g. positions in, pixels out).
    """

    def __init__(
        self,
        widening_factor: int = 1,
        dropout_prob: float = 0.0,
        dropout_attn_prob: float = 0.0,
        num_heads: int = 8,
        att_init_scale: float = 1.0,
        dense_init_scale: float = 1.0,
        shape_for_attn: str = "kv",
        use_query_residual: bool = True,
        qk_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        name: Optional[str] = None,
    ):
        """Configures the block.

        Raises:
          ValueError: if `shape_for_attn` is not 'q' or 'kv'.
        """
        super().__init__(name=name)
        _validation.check_choice("shape_for_attn", shape_for_attn, ("q", "kv"))
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._dropout_attn_prob = dropout_attn_prob
        self._num_heads = num_heads
        self._att_init_scale = att_init_scale
        self._dense_init_scale = dense_init_scale
        self._shape_for_attn = shape_for_attn
        self._use_query_residual = use_query_residual
        self._qk_channels = qk_channels
        self._v_channels = v_channels

    def __call__(
        self,
        inputs_q: jnp.ndarray,
        inputs_kv: jnp.ndarray,
        *,
        attention_mask: Optional[jnp.ndarray] = None,
        is_training: bool,
    ) -> jnp.ndarray:
        """Queries `[B, T, Cq]` attend to `[B, S, Ckv]`; returns `[B, T, Cq]`.

        `x = inputs_q + attention(norm(inputs_q), norm(inputs_kv))` (the
        residual optional), then `x + mlp(norm(x))`, with dropout after the
        attention and in the MLP.

        Raises:
          ValueError: if the inputs are not rank 3 with one batch size, or
            the mask does not fit them.
        """
        return self._run(
            inputs_q, inputs_kv, attention_mask=attention_mask, is_training=is_training
        )

    @hk.transparent
    def _attention(self, inputs_q, inputs_kv, is_training: bool) -> Attention:
        if self._qk_channels is not None:
            qk_channels = self._qk_channels
        elif self._shape_for_attn == "q":
            qk_channels = inputs_q.shape[-1]
        else:
            qk_channels = inputs_kv.shape[-1]
        return Attention(
            num_heads=self._num_heads,
            init_scale=self._att_init_scale,
            dropout_prob=self._dropout_attn_prob if is_training else 0.0,
            qk_channels=qk_channels,
            v_channels=self._v_channels,
            output_channels=inputs_q.shape[-1],
        )

    @hk.transparent
    def _mlp(self, is_training: bool) -> MLP:
        return MLP(
            widening_factor=self._widening_factor,
            dropout_prob=self._dropout_prob if is_training else 0.0,
            init_scale=self._dense_init_scale,
        )

    @hk.name_like("__call__")
    def _decode_in_chunks(
        self,
        inputs_q: jnp.ndarray,
        inputs_kv: jnp.ndarray,
        *,
        query_mask: Optional[jnp.ndarray],
        chunk_size: int,
        is_training: bool,
        post: compute.AffineTail,
    ) -> jnp.ndarray:
        """`post(self(inputs_q, inputs_kv))`, over chunks of `chunk_size` queries.

        Each query's output depends on that query alone, so the block runs in
        a loop over chunks of queries (`compute.over_query_chunks`): memory is
        that of one chunk. The keys' side (layer norm, projections) is
        computed once, before the loop, and `post` is folded into the MLP
        where `_folding.folds_tail` says that saves work. Needs zero dropout
        (decoders have none).

        Args:
          inputs_q: queries `[B, T, Cq]`.
          inputs_kv: `[B, S, Ckv]`.
          query_mask: `[B, T]` or None; masked queries attend to nothing.
          chunk_size: queries per chunk.
          is_training: as for `__call__` (dropout rates must be 0).
          post: linear layers applied to each chunk's output (e.g. the
            decoder's projection).

        Returns:
          `[B, T, D]`: what `post(self(...))` returns.
        """
        if self._dropout_prob or self._dropout_attn_prob:
            raise ValueError("a block with dropout cannot run in chunks; use its __call__.")
        return self._run(
            inputs_q, inputs_kv, query_mask=query_mask, is_training=is_training, post=post,
            chunk_size=chunk_size,
        )

    @hk.transparent
    def _run(
        self,
        inputs_q,
        inputs_kv,
        *,
        is_training: bool,
        attention_mask=None,
        query_mask=None,
        post: Optional[compute.AffineTail] = None,
        chunk_size: Optional[int] = None,
    ):
        """The block, written once: whole, or over chunks of queries with `post` after it.

        Modules and parameters are created, and random keys drawn, in the
        order of the reference's `__call__`. Unchunked, the keys' layer norm
        is left to the kernel (tile by tile); chunked, it is applied once.
        """
        post = compute.AffineTail([]) if post is None else post
        chunked = chunk_size is not None or bool(post.layers)
        rate = self._dropout_prob if is_training else 0.0
        _check_inputs(inputs_q, inputs_kv)
        _check_attention_mask(attention_mask, *inputs_q.shape[:2], inputs_kv.shape[1])
        num_queries, channels = inputs_q.shape[1:]
        attention = self._attention(inputs_q, inputs_kv, is_training)
        norm_q, norm_kv = _LayerNorm(), _LayerNorm()
        norm_q.deferred(inputs_q)  # parameters in the reference's order
        normed_kv = norm_kv(inputs_kv) if chunked else norm_kv.deferred(inputs_kv)
        projections, attention_dropout = attention._projections(inputs_q, inputs_kv)
        keys = compute.prepare_keys(
            normed_kv, projections, num_queries=num_queries,
            unfolded=attention_dropout is not None,
        )
        attended_key = hk.maybe_next_rng_key()
        hidden_layer, output_layer = self._mlp(is_training)._layers(channels)
        norm_x = _LayerNorm()
        norm_x.deferred(inputs_q)
        hidden_params = hidden_layer.params(channels, inputs_q.dtype)
        output_params = output_layer.params(hidden_layer.output_size, inputs_q.dtype)
        mlp_key = hk.maybe_next_rng_key()

        def mask_of(rows):
            attention_rows, query_rows = rows
            if query_rows is None:
                return attention_rows
            return make_cross_attention_mask(query_rows, jnp.ones(inputs_kv.shape[:2], jnp.int32))

        def weights(index):  # only while perceiver.inspect asks for them
            rows = tuple(_inspect.select_queries(x, index) for x in (attention_mask, query_mask))
            q = norm_q(_inspect.select_queries(inputs_q, index))
            return compute.attend_keys(q, keys, mask=mask_of(rows), want_weights=True).weights

        _inspect.record_attention(attention.module_name, weights, num_queries, inputs_kv.shape[1])
        folded = None
        if post.layers and _folding.folds_tail(post, channels, hidden_layer.output_size, num_queries):
            folded = _folding.fold_tail(post, output_params, channels, inputs_q.dtype)

        def block(q_chunk, rows):
            x = compute.attend_keys(
                norm_q(q_chunk), keys, mask=mask_of(rows), dropout=attention_dropout
            ).output
            x = _apply_dropout(x, attended_key, rate)
            if self._use_query_residual:
                x = q_chunk + x
            hidden = jax.nn.gelu(_layers.linear(norm_x(x), hidden_params), approximate=True)
            if folded is not None:
                return folded(x, hidden)  # post(x + mlp(x)), multiplied out
            return post(x + _apply_dropout(_layers.linear(hidden, output_params), mlp_key, rate))

        rows = (attention_mask, query_mask)
        if not chunked:
            return block(inputs_q, rows)
        return compute.over_query_chunks(block, inputs_q, rows, chunk_size or num_queries)


# ---------------------------------------------------------------------------
# Perceiver
# ---------------------------------------------------------------------------


class Perceiver(hk.Module):
    """The Perceiver: preprocess, encode into latents, decode, postprocess."""

    def __init__(
        self,
        encoder: "PerceiverEncoder",
        decoder: "AbstractPerceiverDecoder",
        input_preprocessor=None,
        output_postprocessor=None,
        name: str = "perceiver",
    ):
        super().__init__(name=name)
        self._input_preprocessor = input_preprocessor
        self._output_postprocessor = output_postprocessor
        self._decoder = decoder
        self._encoder = encoder

    def __call__(
        self,
        inputs,
        *,
        is_training: bool,
        subsampled_output_points=None,
        pos: Optional[jnp.ndarray] = None,
        input_mask: Optional[jnp.ndarray] = None,
        query_mask: Optional[jnp.ndarray] = None,
    ):
        """Runs the model.

        Args:
          inputs: raw inputs for the preprocessor, or `[B, N, C]` without one.
          is_training: enables dropout (and BatchNorm statistics updates).
          subsampled_output_points: indices of the outputs to decode (a dict
            by modality for multimodal decoders).
          pos: optional positions for the preprocessor's encoding.
          input_mask: `[B, N]`, nonzero for inputs the encoder may attend to.
          query_mask: `[B, M]`, nonzero for decoder queries to compute.

        Returns:
          The decoder's (postprocessed) outputs.
        """
        if self._input_preprocessor:
            inputs, modality_sizes, inputs_without_pos = self._input_preprocessor(
                inputs,
                pos=pos,
                is_training=is_training,
                network_input_is_1d=self._encoder._input_is_1d,
            )
        else:
            modality_sizes = None
            inputs_without_pos = None

        encoder_query = self._encoder.latents(inputs)
        decoder_query = self._decoder.decoder_query(
            inputs, modality_sizes, inputs_without_pos, subsampled_points=subsampled_output_points
        )
        z = self._encoder(inputs, encoder_query, is_training=is_training, input_mask=input_mask)
        _, output_modality_sizes = self._decoder.output_shape(inputs)
        output_modality_sizes = output_modality_sizes or modality_sizes

        outputs = self._decoder(decoder_query, z, is_training=is_training, query_mask=query_mask)
        if self._output_postprocessor:
            outputs = self._output_postprocessor(
                outputs, is_training=is_training, modality_sizes=output_modality_sizes
            )
        return outputs


class PerceiverEncoder(hk.Module):
    """Cross-attends a learned latent array to the inputs, then self-attends.

    The latents pass `num_blocks` times through one block of
    `num_self_attends_per_block` self-attention layers; blocks share weights.
    """

    def __init__(
        self,
        num_self_attends_per_block: int = 6,
        num_blocks: int = 8,
        z_index_dim: int = 512,
        num_z_channels: int = 1024,
        qk_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        num_cross_attend_heads: int = 1,
        num_self_attend_heads: int = 8,
        cross_attend_widening_factor: int = 1,
        self_attend_widening_factor: int = 1,
        dropout_prob: float = 0.0,
        z_pos_enc_init_scale: float = 0.02,
        cross_attention_shape_for_attn: str = "kv",
        use_query_residual: bool = True,
        name: str = "perceiver_encoder",
    ):
        """Builds the encoder.

        Raises:
          ValueError: if num_z_channels is not divisible by the head counts.
        """
        super().__init__(name=name)
        for arg, heads in (
            ("num_self_attend_heads", num_self_attend_heads),
            ("num_cross_attend_heads", num_cross_attend_heads),
        ):
            if num_z_channels % heads:
                raise ValueError(
                    f"num_z_channels ({num_z_channels}) must be divisible by {arg} ({heads})."
                )
        self._input_is_1d = True
        self._num_blocks = num_blocks
        self._z_index_dim = z_index_dim

        self.z_pos_enc = position_encoding.TrainablePositionEncoding(
            index_dim=z_index_dim, num_channels=num_z_channels, init_scale=z_pos_enc_init_scale
        )
        self.cross_attend = CrossAttention(
            dropout_prob=dropout_prob,
            num_heads=num_cross_attend_heads,
            widening_factor=cross_attend_widening_factor,
            shape_for_attn=cross_attention_shape_for_attn,
            qk_channels=qk_channels,
            v_channels=v_channels,
            use_query_residual=use_query_residual,
        )
        self.self_attends = [
            SelfAttention(
                num_heads=num_self_attend_heads,
                dropout_prob=dropout_prob,
                qk_channels=qk_channels,
                v_channels=v_channels,
                widening_factor=self_attend_widening_factor,
            )
            for _ in range(num_self_attends_per_block)
        ]

    def latents(self, inputs: jnp.ndarray) -> jnp.ndarray:
        """The initial latent array `[B, z_index_dim, num_z_channels]`."""
        return self.z_pos_enc(batch_size=inputs.shape[0])

    def __call__(
        self,
        inputs: jnp.ndarray,
        z: jnp.ndarray,
        *,
        is_training: bool,
        input_mask: Optional[jnp.ndarray] = None,
    ) -> jnp.ndarray:
        """Encodes `inputs` `[B, N, C]` into latents `[B, z_index_dim, num_z_channels]`.

        Raises:
          ValueError: if `input_mask` is not `[B, N]`.
        """
        _validation.check_rank("inputs", inputs, (3,), "[B, N, C] (after preprocessing)")
        attention_mask = None
        if input_mask is not None:
            _validation.check_mask_shape("input_mask", input_mask, inputs.shape[:2])
            attention_mask = make_cross_attention_mask(
                query_mask=jnp.ones(z.shape[:2], dtype=jnp.int32), kv_mask=input_mask
            )
        return compute.in_compute_dtype(
            lambda inputs, z: self._encode(inputs, z, attention_mask, is_training), inputs, z
        )

    @hk.transparent
    def _encode(self, inputs, z, attention_mask, is_training):
        def cross_attend(z, inputs, attention_mask):
            return self.cross_attend(
                z, inputs, is_training=is_training, attention_mask=attention_mask
            )

        z = compute.layer(cross_attend)(z, inputs, attention_mask)
        self_attends = [
            functools.partial(self_attend, is_training=is_training)
            for self_attend in self.self_attends
        ]
        # The blocks share weights: one compiled body, however many blocks.
        return compute.repeat_layers(self_attends, z, self._num_blocks)


class AbstractPerceiverDecoder(hk.Module, metaclass=abc.ABCMeta):
    """Interface of Perceiver decoders: queries, output shape, decoding."""

    @abc.abstractmethod
    def decoder_query(
        self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None
    ):
        raise NotImplementedError

    @abc.abstractmethod
    def output_shape(self, inputs):
        raise NotImplementedError

    @abc.abstractmethod
    def __call__(self, query, z, *, is_training, query_mask=None):
        raise NotImplementedError


class ProjectionDecoder(AbstractPerceiverDecoder):
    """Baseline decoder without cross-attention: mean of latents, then a linear layer."""

    def __init__(
        self, num_classes: int, final_avg_before_project: bool = False, name: str = "projection_decoder"
    ):
        super().__init__(name=name)
        self._final_avg_before_project = final_avg_before_project
        self._num_classes = num_classes
        self.final_layer = hk.Linear(num_classes, w_init=jnp.zeros, name="logits")

    def decoder_query(
        self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None
    ):
        return None

    def output_shape(self, inputs):
        return (inputs.shape[0], self._num_classes), None

    def __call__(self, query, z, *, is_training, query_mask=None):
        """Latents `[B, N, C]` -> logits `[B, num_classes]`."""
        return self.final_layer(jnp.mean(z, axis=1, dtype=z.dtype))


def _check_subsampled_points(points, output_index_dims) -> None:
    """Raises ValueError for non-1D or (when concrete) out-of-grid indices."""
    if np.ndim(points) != 1:
        raise ValueError(
            f"subsampled_points must be a 1D array of flat output indices; got shape "
            f"{tuple(np.shape(points))}."
        )
    values = _validation.concrete_or_none(points)
    if values is None or values.size == 0:
        return  # Traced indices cannot be checked before they run.
    size = int(np.prod(output_index_dims))
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"subsampled_points must be integers; got dtype {values.dtype}.")
    if values.min() < 0 or values.max() >= size:
        raise ValueError(
            f"subsampled_points must lie in [0, {size}) for the output grid "
            f"{tuple(output_index_dims)}; got values in [{values.min()}, {values.max()}]."
        )


class BasicDecoder(AbstractPerceiverDecoder):
    """Cross-attention decoder: queries built from position encodings attend to latents."""

    def __init__(
        self,
        output_num_channels: int,
        position_encoding_type: str = "trainable",
        output_index_dims: Optional[Sequence[int]] = None,
        subsampled_index_dims=None,
        num_z_channels: int = 1024,
        qk_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        use_query_residual: bool = False,
        output_w_init=None,
        concat_preprocessed_input: bool = False,
        num_heads: int = 1,
        name: str = "basic_decoder",
        final_project: bool = True,
        **position_encoding_kwargs,
    ):
        """Builds the decoder.

        Args:
          output_num_channels: channels of the final projection.
          position_encoding_type: 'trainable', 'fourier', or 'none' (queries
            then come from elsewhere, e.g. a MultimodalDecoder).
          output_index_dims: the output grid, e.g. `(T, H, W)`.
          subsampled_index_dims: number of outputs when subsampling.
          num_z_channels: channels of the latents (documentation only).
          qk_channels, v_channels: attention sizes.
          use_query_residual: add the query to the attention output.
          output_w_init: initialiser of the final projection.
          concat_preprocessed_input: prepend the preprocessed inputs to queries.
          num_heads: attention heads.
          name: module name.
          final_project: apply the final projection.
          **position_encoding_kwargs: `trainable_position_encoding_kwargs`,
            `fourier_position_encoding_kwargs`, `project_pos_dim`.

        Raises:
          ValueError: for an unknown `position_encoding_type`.
        """
        super().__init__(name=name)
        _validation.check_choice(
            "position_encoding_type",
            position_encoding_type,
            position_encoding.POSITION_ENCODING_TYPES + ("none",),
        )
        self._position_encoding_type = position_encoding_type
        self.output_pos_enc = None
        if position_encoding_type != "none":
            self.output_pos_enc = position_encoding.build_position_encoding(
                position_encoding_type, index_dims=output_index_dims, **position_encoding_kwargs
            )
        self._output_index_dim = output_index_dims
        if subsampled_index_dims is None:
            subsampled_index_dims = output_index_dims
        self._subsampled_index_dims = subsampled_index_dims
        self._output_num_channels = output_num_channels
        self._output_w_init = output_w_init
        self._use_query_residual = use_query_residual
        self._qk_channels = qk_channels
        self._v_channels = v_channels
        self._final_project = final_project
        self._num_heads = num_heads
        self._concat_preprocessed_input = concat_preprocessed_input

    def output_shape(self, inputs):
        return (inputs.shape[0], self._subsampled_index_dims, self._output_num_channels), None

    def decoder_query(
        self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None
    ):
        """Position-encoded queries `[B, M, C]` for all outputs or the subsampled ones.

        Raises:
          ValueError: with position_encoding_type 'none', for subsampled points
            outside the output grid, or when concat_preprocessed_input lacks
            `inputs_without_pos`.
        """
        if self._position_encoding_type == "none":
            raise ValueError(
                "decoder_query needs position encodings, but position_encoding_type='none': "
                "build the queries yourself (or wrap this decoder in a MultimodalDecoder)."
            )
        batch = inputs.shape[0]
        if subsampled_points is None:
            pos_emb = self.output_pos_enc(batch_size=batch)
        else:
            if self._output_index_dim is None:
                raise ValueError("subsampled_points needs output_index_dims; got None.")
            _check_subsampled_points(subsampled_points, self._output_index_dim)
            dims = tuple(int(d) for d in np.atleast_1d(self._output_index_dim))
            coords = jnp.stack(jnp.unravel_index(subsampled_points, dims), axis=1)  # [M, D]
            # The reference maps index i to -1 + 2 i / n (not to linspace's grid).
            pos = -1 + 2 * coords / jnp.array(dims)[None, :]
            pos = jnp.broadcast_to(pos[None], (batch,) + pos.shape)
            pos_emb = self.output_pos_enc(batch_size=batch, pos=pos)
            if self._position_encoding_type == "trainable":
                # A learned table ignores coordinates: take the subsampled rows
                # (after any projection, which acts per position).
                pos_emb = jnp.take(pos_emb, jnp.asarray(subsampled_points), axis=1)
            pos_emb = pos_emb.reshape(pos_emb.shape[0], -1, pos_emb.shape[-1])
        if self._concat_preprocessed_input:
            if inputs_without_pos is None:
                raise ValueError(
                    "concat_preprocessed_input=True needs inputs_without_pos; got None."
                )
            pos_emb = jnp.concatenate([inputs_without_pos, pos_emb], axis=-1)
        return pos_emb

    def __call__(self, query, z, *, is_training, query_mask=None):
        """Queries `[B, M, Cq]` attend to latents `[B, N, Cz]`; returns `[B, M, C]`.

        Raises:
          ValueError: if `query_mask` is not `[B, M]`.
        """
        _validation.check_rank("query", query, (3,), "[B, M, C]")
        _validation.check_rank("z", z, (3,), "[B, N, C]")
        if query_mask is not None:
            _validation.check_mask_shape("query_mask", query_mask, query.shape[:2])
        return self._run(query, z, query_mask, is_training, ())

    @hk.name_like("__call__")
    def _with_tail(self, query, z, tail: Sequence[hk.Linear], *, is_training: bool):
        """`tail(self(query, z))` for linear layers `tail` applied in turn.

        A chunked decode multiplies the tail out and folds it into the last
        layer, so that e.g. pixels projected to RGB never exist at full
        width; the parameters are those of `__call__` and of the tail's
        layers, wherever those live.
        """
        _validation.check_rank("query", query, (3,), "[B, M, C]")
        _validation.check_rank("z", z, (3,), "[B, N, C]")
        return self._run(query, z, None, is_training, tuple(tail))

    @hk.transparent
    def _run(self, query, z, query_mask, is_training, tail):
        return compute.in_compute_dtype(
            lambda query, z: self._decode(query, z, query_mask, is_training, tail), query, z
        )

    @hk.transparent
    def _decode(self, query, z, query_mask, is_training, tail=()):
        cross_attention = CrossAttention(
            dropout_prob=0.0,
            num_heads=self._num_heads,
            widening_factor=1,
            shape_for_attn="kv",
            qk_channels=self._qk_channels,
            v_channels=self._v_channels,
            use_query_residual=self._use_query_residual,
        )

        output_layer = None
        if self._final_project:
            output_layer = _Linear(self._output_num_channels, w_init=self._output_w_init, name="output")
        # Parameters are created when called, so this comes after the
        # cross-attention's as in the reference.
        head = compute.AffineTail([output_layer, *tail])
        chunk_size = _chunks.decoder_chunk(query.shape[0], self._num_heads, query.shape[1], z.shape[1])
        if chunk_size is not None or tail:
            # A tail always goes this way (one chunk if need be): only here can it be folded.
            return cross_attention._decode_in_chunks(
                query,
                z,
                query_mask=query_mask,
                chunk_size=chunk_size or query.shape[1],
                is_training=is_training,
                post=head,
            )
        attention_mask = None
        if query_mask is not None:
            attention_mask = make_cross_attention_mask(
                query_mask=query_mask, kv_mask=jnp.ones(z.shape[:2], dtype=jnp.int32)
            )
        return head(cross_attention(query, z, is_training=is_training, attention_mask=attention_mask))


class ClassificationDecoder(AbstractPerceiverDecoder):
    """A BasicDecoder with one query whose output is the class logits."""

    def __init__(self, num_classes: int, name: str = "classification_decoder", **decoder_kwargs):
        super().__init__(name=name)
        self._num_classes = num_classes
        self.decoder = BasicDecoder(
            output_index_dims=(1,), output_num_channels=num_classes, **decoder_kwargs
        )

    def decoder_query(
        self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None
    ):
        return self.decoder.decoder_query(
            inputs, modality_sizes, inputs_without_pos, subsampled_points=subsampled_points
        )

    def output_shape(self, inputs):
        return (inputs.shape[0], self._num_classes), None

    def __call__(self, query, z, *, is_training, query_mask=None):
        """Returns logits `[B, num_classes]`."""
        return self.decoder(query, z, is_training=is_training)[:, 0, :]


class MultimodalDecoder(AbstractPerceiverDecoder):
    """Decodes several modalities with one shared cross-attention.

    Each modality's decoder only builds queries; the queries are padded with
    learned channels (`{modality}_padding`) to a common width, concatenated in
    sorted modality order, and decoded together.
    """

    def __init__(
        self,
        modalities: Mapping[str, AbstractPerceiverDecoder],
        num_outputs,
        output_num_channels: int,
        min_padding_size: int = 2,
        subsampled_index_dims: Optional[Mapping[str, int]] = None,
        name: str = "multimodal_decoder",
        **decoder_kwargs,
    ):
        super().__init__(name=name)
        self._modalities = modalities
        self._subsampled_index_dims = subsampled_index_dims
        self._min_padding_size = min_padding_size
        self._output_num_channels = output_num_channels
        self._num_outputs = num_outputs
        self._decoder = BasicDecoder(
            output_index_dims=(num_outputs,),
            output_num_channels=output_num_channels,
            position_encoding_type="none",
            **decoder_kwargs,
        )

    def decoder_query(
        self, inputs, modality_sizes, inputs_without_pos=None, subsampled_points=None
    ):
        """Queries of all modalities, padded and concatenated: `[B, sum M_m, C]`.

        Raises:
          ValueError: if `modality_sizes` or `subsampled_points` name other
            modalities than the configured ones.
        """
        if modality_sizes is None:
            raise ValueError(
                "MultimodalDecoder needs modality_sizes (from a MultimodalPreprocessor); got None."
            )
        if set(modality_sizes) != set(self._modalities):
            raise ValueError(
                f"modality_sizes has modalities {sorted(modality_sizes)}, but the decoder "
                f"is configured for {sorted(self._modalities)}."
            )
        subsampled_points = subsampled_points or {}
        unknown = sorted(set(subsampled_points) - set(self._modalities))
        if unknown:
            raise ValueError(
                f"subsampled_points has unknown modalities {unknown}; expected a subset "
                f"of {sorted(self._modalities)}."
            )
        per_modality = io_processors.restructure(modality_sizes, inputs)
        queries = {}
        for modality, decoder in self._modalities.items():
            without_pos = None
            if inputs_without_pos is not None:
                without_pos = inputs_without_pos.get(modality)
            queries[modality] = decoder.decoder_query(
                inputs=per_modality[modality],
                modality_sizes=None,
                inputs_without_pos=without_pos,
                subsampled_points=subsampled_points.get(modality),
            )

        channels = max(q.shape[2] for q in queries.values()) + self._min_padding_size

        def pad(modality, x):
            x = x.reshape(x.shape[0], int(np.prod(x.shape[1:-1])), x.shape[-1])
            padding = position_encoding.TrainablePositionEncoding(
                1, num_channels=channels - x.shape[2], init_scale=0.02, name=f"{modality}_padding"
            )(x.shape[0])
            padding = jnp.broadcast_to(padding, x.shape[:2] + (channels - x.shape[2],))
            return position_encoding.concat_in_place([x, padding])

        return jnp.concatenate([pad(m, queries[m]) for m in sorted(self._modalities)], axis=1)

    def output_shape(self, inputs):
        if self._subsampled_index_dims is not None:
            num_outputs = sum(self._subsampled_index_dims.values())
        else:
            num_outputs = self._num_outputs
        return (
            (inputs.shape[0], num_outputs, self._output_num_channels),
            self._subsampled_index_dims,
        )

    def __call__(self, query, z, *, is_training, query_mask=None):
        """Returns `[B, sum M_m, output_num_channels]`."""
        return self._decoder(query, z, is_training=is_training)

    def _decode_and_postprocess(
        self, query, z, modality_sizes, postprocessor, *, is_training: bool
    ) -> Mapping[str, jnp.ndarray]:
        """`postprocessor(self(query, z), modality_sizes=...)`, the same function, faster.

        A modality whose postprocessor is one linear layer (its
        `linear_head()`, e.g. a `ProjectionPostprocessor`'s pixels to RGB) has it folded into the
        decoder, so its wide outputs are never formed; the other modalities
        are decoded together and postprocessed as usual.

        Args:
          query: `[B, sum M_m, C]` from `decoder_query`, modalities in sorted order.
          z: latents `[B, N, Cz]`.
          modality_sizes: `{modality: M_m}`.
          postprocessor: an `io_processors.MultimodalPostprocessor`.
        """
        heads = postprocessor.modalities
        queries = io_processors.restructure(modality_sizes, query)
        # A head that is one linear layer is folded into the decoder.
        linear = {m: _linear_head(heads[m]) for m in sorted(modality_sizes)}
        out = {
            m: self._decoder._with_tail(queries[m], z, [head], is_training=is_training)
            for m, head in linear.items()
            if head is not None
        }
        rest = [m for m in sorted(modality_sizes) if linear[m] is None]
        if rest:
            decoded = self._decoder(
                jnp.concatenate([queries[m] for m in rest], axis=1), z, is_training=is_training
            )
            decoded = io_processors.restructure({m: modality_sizes[m] for m in rest}, decoded)
            for m in rest:
                out[m] = heads[m](decoded[m], is_training=is_training, pos=None, modality_sizes=None)
        return out


def _linear_head(postprocessor):
    """The postprocessor's single linear layer, or None (also for a plain callable)."""
    head = getattr(postprocessor, "linear_head", None)
    return None if head is None else head()


class BasicVideoAutoencodingDecoder(AbstractPerceiverDecoder):
    """A BasicDecoder over a `(T, H, W)` grid whose outputs are reshaped to video."""

    def __init__(
        self,
        output_shape: Sequence[int],
        position_encoding_type: str,
        name: str = "basic_video_autoencoding_decoder",
        **decoder_kwargs,
    ):
        """Builds the decoder.

        Args:
          output_shape: `[B, T, H, W]`.
          position_encoding_type: 'trainable' or 'fourier'.
          name: module name.
          **decoder_kwargs: BasicDecoder arguments; must include output_num_channels.

        Raises:
          ValueError: if output_shape is not of length 4.
        """
        super().__init__(name=name)
        if len(output_shape) != 4:
            raise ValueError(
                f"output_shape must be [B, T, H, W] (length 4); got {list(output_shape)}."
            )
        if "output_num_channels" not in decoder_kwargs:
            raise ValueError("BasicVideoAutoencodingDecoder needs output_num_channels.")
        self._output_shape = list(output_shape)
        self._output_num_channels = decoder_kwargs["output_num_channels"]
        self.decoder = BasicDecoder(
            output_index_dims=tuple(self._output_shape[1:4]),
            position_encoding_type=position_encoding_type,
            **decoder_kwargs,
        )

    def decoder_query(
        self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None
    ):
        return self.decoder.decoder_query(
            inputs,
            modality_sizes=modality_sizes,
            inputs_without_pos=inputs_without_pos,
            subsampled_points=subsampled_points,
        )

    def output_shape(self, inputs):
        return [inputs.shape[0]] + self._output_shape[1:] + [self._output_num_channels], None

    def __call__(self, query, z, *, is_training, query_mask=None):
        """Returns video `[B, T, H, W, C]` (all queries must be decoded)."""
        output = self.decoder(query, z, is_training=is_training)
        return output.reshape(self._output_shape + [output.shape[-1]])


class FlowDecoder(AbstractPerceiverDecoder):
    """Decodes one flow vector per input pixel, using the inputs as queries."""

    def __init__(
        self,
        output_image_shape: Sequence[int],
        output_num_channels: int = 2,
        rescale_factor: float = 100.0,
        name: str = "flow_decoder",
        **decoder_kwargs,
    ):
        super().__init__(name=name)
        self._output_image_shape = tuple(output_image_shape)
        self._output_num_channels = output_num_channels
        self._rescale_factor = rescale_factor
        self.decoder = BasicDecoder(output_num_channels=output_num_channels, **decoder_kwargs)

    def output_shape(self, inputs):
        # Channels need not be (u, v): a postprocessor may consume more.
        return (inputs.shape[0],) + self._output_image_shape + (self._output_num_channels,), None

    def decoder_query(
        self, inputs, modality_sizes=None, inputs_without_pos=None, subsampled_points=None
    ):
        """The preprocessed inputs (frames merged in time) are the queries.

        Raises:
          ValueError: if subsampled_points is given (not supported).
        """
        if subsampled_points is not None:
            raise ValueError("FlowDecoder does not support subsampled_points; got some.")
        return inputs

    def __call__(self, query, z, *, is_training, query_mask=None):
        """Returns flow `[B, H, W, C]` divided by rescale_factor.

        Raises:
          ValueError: if the number of queries is not H * W of output_image_shape.
        """
        num_pixels = int(np.prod(self._output_image_shape))
        if query.shape[1] != num_pixels:
            raise ValueError(
                f"FlowDecoder built for images of {self._output_image_shape} ({num_pixels} "
                f"pixels) got {query.shape[1]} queries: the input frames must have that size."
            )
        preds = self.decoder(query, z, is_training=is_training) / self._rescale_factor
        return preds.reshape((preds.shape[0],) + self._output_image_shape + (preds.shape[-1],))
