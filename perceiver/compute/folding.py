"""Folded projections: cheaper forms of the same attention and of a decoder's last layers.

Single-head attention `softmax(q . k / sqrt(d)) v W_o` with `q = x_q W_q + b_q`,
`k = x_kv W_k + b_k`, `v = x_kv W_v + b_v` can be regrouped so that the
side with fewer positions carries the projections (`Fold`, chosen by cost in
`choose_fold`). A decoder whose output goes through narrow linear layers
(pixels to RGB, flow to 2 channels) can multiply those into its MLP's output
layer (`AffineTail`, `fold_tail`). Results agree to float rounding.
"""

import enum
import math
from typing import NamedTuple, Optional, Sequence, Tuple

import jax.numpy as jnp

from perceiver.compute import settings
from perceiver.compute.layers import Projection, linear
from perceiver.compute.precision import matmul


class Projections(NamedTuple):
    """An attention layer's parameters, as its module created them: what a kernel is handed.

    Attributes:
      q: query projection, `[Cq, qk_channels]`.
      k: key projection, `[Ckv, qk_channels]`.
      v: value projection, `[Ckv, v_channels]`.
      o: output projection, `[v_channels, output_channels]`.
      num_heads: heads that qk_channels and v_channels are split into.
    """

    q: Projection
    k: Projection
    v: Projection
    o: Projection
    num_heads: int

    @property
    def head_dim(self) -> int:
        return self.q.w.shape[-1] // self.num_heads


# ---------------------------------------------------------------------------
# Which fold
# ---------------------------------------------------------------------------


class Logits(enum.Enum):
    """How the logits `q . k` are formed (single head)."""

    PROJECTED = "q . k"
    # x_q . (k W_q^T) + b_q . k: the keys moved into the query inputs' space.
    KEYS_IN_QUERY_SPACE = "x_q . (k W_q^T) + b_q . k"
    # (q W_k^T) . x_kv, dropping q . b_k, a per-query constant the softmax ignores.
    QUERIES_IN_KEY_SPACE = "(q W_k^T) . x_kv"


class Values(enum.Enum):
    """How the attended values `P v` reach the output projection (single head)."""

    PROJECTED = "(P v) W_o"
    # P (v W_o): the output projection applied to the values, before attending.
    VALUES_IN_OUTPUT_SPACE = "P (v W_o)"
    # (P x_kv) W_v + b_v, as the rows of P sum to one.
    WEIGHTS_ON_KEY_INPUTS = "(P x_kv) W_v + b_v"


class Fold(NamedTuple):
    """A form of the attention: how logits and values are computed."""

    logits: Logits = Logits.PROJECTED
    values: Values = Values.PROJECTED

    @property
    def keys_are_inputs(self) -> bool:
        """Whether keys and values are the key inputs themselves (so a norm of them can go into the kernel)."""
        return (
            self.logits is Logits.QUERIES_IN_KEY_SPACE
            and self.values is Values.WEIGHTS_ON_KEY_INPUTS
        )


NO_FOLD = Fold()


def absorb_enabled(num_queries: int, num_keys: int, batch: int) -> Optional[bool]:
    """Whether projections may be folded: True, False, or None for 'by cost'."""
    chosen = settings.current().absorb_projections
    if settings.running_init():
        return False  # init creates parameters exactly as the reference does.
    if chosen != settings.AUTO:
        return chosen
    if settings.planned_batch(batch) * num_queries * num_keys < settings.ABSORB_MIN_ELEMENTS:
        return False
    return None


def choose_fold(projections: Projections, batch: int, num_queries: int, num_keys: int) -> Fold:
    """The cheapest form of this attention under the options (`NO_FOLD` for several heads)."""
    if projections.num_heads != 1:
        return NO_FOLD
    allowed = absorb_enabled(num_queries, num_keys, batch)
    if allowed is False:
        return NO_FOLD
    t, s = num_queries, num_keys
    cq, qk = projections.q.w.shape
    ckv, v = projections.v.w.shape
    out = projections.o.w.shape[-1]
    logits_costs = {
        Logits.PROJECTED: t * cq * qk + s * ckv * qk + t * s * qk,
        Logits.KEYS_IN_QUERY_SPACE: s * ckv * qk + s * qk * cq + t * s * cq,
        Logits.QUERIES_IN_KEY_SPACE: t * cq * qk + t * qk * ckv + t * s * ckv,
    }
    values_costs = {
        Values.PROJECTED: s * ckv * v + t * s * v + t * v * out,
        Values.VALUES_IN_OUTPUT_SPACE: s * ckv * v + s * v * out + t * s * out,
        Values.WEIGHTS_ON_KEY_INPUTS: t * s * ckv + t * ckv * v + t * v * out,
    }
    fold = Fold(min(logits_costs, key=logits_costs.get), min(values_costs, key=values_costs.get))
    standard = logits_costs[Logits.PROJECTED] + values_costs[Values.PROJECTED]
    saving = standard - logits_costs[fold.logits] - values_costs[fold.values]
    if allowed is None and saving < settings.ABSORB_MIN_SAVING * standard:
        return NO_FOLD
    return fold


# ---------------------------------------------------------------------------
# The fold's three sides
# ---------------------------------------------------------------------------


def split_heads(x: jnp.ndarray, num_heads: int) -> jnp.ndarray:
    """`[B, L, H * D]` -> `[B, L, H, D]`."""
    return x.reshape(x.shape[0], x.shape[1], num_heads, -1)


def keys_and_values(
    inputs_kv: jnp.ndarray, p: Projections, fold: Fold
) -> Tuple[jnp.ndarray, jnp.ndarray, Optional[jnp.ndarray], float]:
    """`(k [B, S, H, D], v [B, S, H, Dv], logit bias [B, 1, S] or None, logit scale)` in the fold's spaces.

    When `fold.keys_are_inputs`, k and v are one array (the kernel then
    transforms it once).
    """
    scale = 1.0 / math.sqrt(p.head_dim)
    inputs_as_head = inputs_kv[:, :, None, :]  # one head
    bias, kernel_scale = None, scale
    if fold.logits is Logits.PROJECTED:
        k = split_heads(linear(inputs_kv, p.k), p.num_heads)
    elif fold.logits is Logits.KEYS_IN_QUERY_SPACE:
        w_q, b_q = p.q
        projected = linear(inputs_kv, p.k)
        k = (matmul(projected, w_q.T) * scale)[:, :, None, :]
        if b_q is not None:
            bias = (matmul(projected, b_q) * scale)[:, None, :]
        kernel_scale = 1.0
    else:  # QUERIES_IN_KEY_SPACE: the queries carry W_k and the scale
        k, kernel_scale = inputs_as_head, 1.0
    if fold.values is Values.PROJECTED:
        v = split_heads(linear(inputs_kv, p.v), p.num_heads)
    elif fold.values is Values.VALUES_IN_OUTPUT_SPACE:
        v = matmul(linear(inputs_kv, p.v), p.o.w)[:, :, None, :]
    else:  # WEIGHTS_ON_KEY_INPUTS
        v = inputs_as_head
    return k, v, bias, kernel_scale


def queries(inputs_q: jnp.ndarray, p: Projections, fold: Fold) -> jnp.ndarray:
    """Queries `[B, T, H, D]` in the fold's space."""
    if fold.logits is Logits.PROJECTED:
        return split_heads(linear(inputs_q, p.q), p.num_heads)
    if fold.logits is Logits.KEYS_IN_QUERY_SPACE:
        return inputs_q[:, :, None, :]
    q = matmul(linear(inputs_q, p.q), p.k.w.T) * (1.0 / math.sqrt(p.head_dim))
    return q[:, :, None, :]


def attended_values(out: jnp.ndarray, p: Projections, fold: Fold) -> jnp.ndarray:
    """The kernel's output `[B, T, H * Dv]` as attended values `P v` (or `P v W_o`)."""
    if fold.values is not Values.WEIGHTS_ON_KEY_INPUTS:
        return out
    out = matmul(out, p.v.w)
    return out if p.v.b is None else out + p.v.b


def outputs(attended: jnp.ndarray, p: Projections, fold: Fold) -> jnp.ndarray:
    """The output projection of attended values: `[B, T, output_channels]`."""
    if fold.values is Values.VALUES_IN_OUTPUT_SPACE:
        return attended if p.o.b is None else attended + p.o.b
    return linear(attended, p.o)


# ---------------------------------------------------------------------------
# A decoder's tail
# ---------------------------------------------------------------------------


class AffineTail:
    """Linear layers applied in turn to a decoder's output.

    Calling it applies them. A chunked decoder may instead multiply them out
    (`affine`) and fold them into its last layer, so that a wide output
    projected to a few channels (pixels to RGB, flow to 2) never computes the
    wide result.
    """

    def __init__(self, layers: Sequence):
        self.layers = [layer for layer in layers if layer is not None]

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for layer in self.layers:
            x = layer(x)
        return x

    def output_size(self, in_channels: int) -> int:
        return self.layers[-1].output_size if self.layers else in_channels

    def affine(self, in_channels: int, dtype) -> Tuple[Optional[jnp.ndarray], Optional[jnp.ndarray]]:
        """`(P [in_channels, D], p [D] or None)` with `self(x) == x @ P + p` (P None: identity)."""
        matrix, bias, channels = None, None, in_channels
        for layer in self.layers:
            w, b = layer.params(channels, dtype)
            matrix = w if matrix is None else matmul(matrix, w)
            if bias is not None:
                bias = matmul(bias, w)
            if b is not None:
                bias = b if bias is None else bias + b
            channels = layer.output_size
        return matrix, bias

    def matmul_cost(self, in_channels: int) -> int:
        """Multiply-adds per row of applying the layers one after another."""
        cost, channels = 0, in_channels
        for layer in self.layers:
            cost += channels * layer.output_size
            channels = layer.output_size
        return cost


class FoldedTail(NamedTuple):
    """`tail(x + h @ W2 + b2)` multiplied out: `x @ P + h @ (W2 P) + (b2 P + p)`."""

    tail: jnp.ndarray  # P [C, D]
    mlp_tail: jnp.ndarray  # W2 P [hidden, D]
    bias: Optional[jnp.ndarray]  # b2 P + p [D]

    def __call__(self, x: jnp.ndarray, hidden: jnp.ndarray) -> jnp.ndarray:
        """`x` `[B, T, C]` (the MLP's residual input), `hidden` `[B, T, hidden]`: `[B, T, D]`."""
        out = matmul(x, self.tail) + matmul(hidden, self.mlp_tail)
        return out if self.bias is None else out + self.bias.astype(out.dtype)


def folds_tail(tail: AffineTail, channels: int, hidden: int, num_queries: int) -> bool:
    """Whether folding `tail` into an MLP `channels -> hidden -> channels` saves work.

    The block ends `y = x + W2 gelu(...) + b2`, so `tail(y) = x @ P +
    gelu(...) @ (W2 @ P) + (b2 @ P + p)`: a narrow tail (e.g. to 3 or 2
    channels) skips the block's widest product, once its product is paid.
    """
    if not tail.layers:
        return False
    out = tail.output_size(channels)
    per_row_plain = hidden * channels + tail.matmul_cost(channels)
    per_row_folded = (channels + hidden) * out
    once = channels * tail.matmul_cost(channels) + hidden * channels * out
    return num_queries * per_row_plain > once + num_queries * per_row_folded


def fold_tail(tail: AffineTail, mlp_output: Projection, channels: int, dtype) -> FoldedTail:
    """`tail` multiplied into the MLP's output layer `mlp_output` (`W2 [hidden, C]`, `b2`)."""
    matrix, tail_bias = tail.affine(channels, dtype)
    w2, b2 = mlp_output
    bias = tail_bias
    if b2 is not None:
        bias = matmul(b2, matrix) if bias is None else matmul(b2, matrix) + bias
    return FoldedTail(matrix, matmul(w2, matrix), bias)
