"""How Perceiver modules compute: attention kernels, chunking, precision, loops.

Options choose *how* the modules of `perceiver.perceiver` evaluate the same
function; they never change a parameter's name, shape or initial value, and
outputs agree with the plain computation within float32 rounding (the opt-in
bfloat16 mode aside). The default, 'auto', takes the fast paths where they
help:

- attention runs in tiles with a running softmax, never materialising a
  large `[queries, keys]` matrix, and its gradient recomputes the tiles;
- large decoders run over chunks of queries inside one compiled loop, and
  fold a narrow output layer (e.g. to RGB or to 2 flow channels) into the
  last product of their MLP (`AffineTail`);
- single-head cross-attentions over long inputs fold their projections (and
  the inputs' layer norm) into the side with fewer positions;
- weight-shared encoder blocks run in a loop instead of unrolled.

Options are read when a module is *traced*, so enter them inside the function
that jax transforms:

    def forward(images):
        with compute.options(compute_dtype=jnp.bfloat16):
            return model(images, is_training=False)

or wrap a transformed model, which does the same in its `init` and `apply`:

    model = compute.configure(models.optical_flow(), decoder_chunk_size=4096)

Beware of `with compute.options(...): jax.jit(model.apply)(...)`: jax caches
one trace per function, so only the first trace of `model.apply` sees those
options, and later calls under other options (even through a new `jax.jit`
wrapper) silently reuse it. `configure` makes new functions each time and so
cannot be mixed up.
"""

import contextlib
import contextvars
import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, NamedTuple, Optional, Tuple, Union

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

ATTENTION_KINDS = ("auto", "plain", "tiled", "fused")

# Attention logits up to this many elements (4 MiB in float32) are computed
# as one tile; beyond it 'auto' cuts them into tiles of TILE_ELEMENTS. Tiles
# this small also run faster on CPU: glibc hands larger temporary buffers
# back to the kernel after each use, and paging them in again cost the
# ImageNet models a quarter of their time (1.1 GiB of page faults a forward
# pass with 16 MiB tiles, 0.1 GiB with these; benchmarks/README.md).
ONE_TILE_MAX_ELEMENTS = 1 << 20
# Elements of one tile of attention logits (4 MiB in float32).
TILE_ELEMENTS = 1 << 20
# 'auto' folds projections only when the logits are at least this large, so
# that small models compute exactly as the reference writes them.
ABSORB_MIN_ELEMENTS = 1 << 20
# ... and only when that saves at least this fraction of the multiply-adds.
ABSORB_MIN_SAVING = 0.05

_AUTO = "auto"


def _check_auto_bool(name: str, value: Any) -> None:
    if value != _AUTO and not isinstance(value, bool):
        raise TypeError(f"{name} must be 'auto', True or False; got {value!r}.")


def _check_chunk(name: str, value: Any, allow_none: bool) -> None:
    if value == _AUTO or (allow_none and value is None):
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        extra = ", None" if allow_none else ""
        raise ValueError(f"{name} must be 'auto'{extra} or an int >= 1; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Options:
    """How to compute; every field's default lets the library decide.

    Attributes:
      attention: 'auto' (the tiled kernel, in one tile when the logits are
        small, or cuDNN's fused kernel on GPU in half precision for large
        ones), 'plain' (the whole softmax at once, as the reference computes
        it), 'tiled' (tiles of queries and keys with a running softmax) or
        'fused' (`jax.nn.dot_product_attention`: cuDNN on GPU in half
        precision, XLA elsewhere). Attention-weight dropout always runs plain.
      query_chunk_size: queries per attention tile ('auto' or an int).
      key_chunk_size: keys per attention tile ('auto' or an int).
      decoder_chunk_size: decoder queries per chunk: the cross-attention, MLP
        and output projection run over chunks of this many queries inside one
        compiled loop. 'auto' chunks large decoders, None never chunks.
      absorb_projections: for single-head attention, fold the query/key or
        value/output projections into the side with fewer positions
        ('auto': where it saves work on large inputs).
      scan_blocks: run the `num_blocks` weight-shared encoder blocks in a loop
        instead of unrolled ('auto': whenever num_blocks > 1), so compile time
        does not grow with num_blocks.
      remat: in training, recompute each encoder layer's activations in the
        backward pass instead of storing them (less memory, about a third
        more compute). Unlike `jax.checkpoint`, this also saves memory on
        XLA:CPU, which would otherwise merge the recomputation away.
      compute_dtype: e.g. `jnp.bfloat16`: activations and matmuls of the
        encoder and decoders in this dtype; parameters stay float32, layer
        norms and softmax statistics run in float32, and the encoder and
        decoder return float32. None: compute in the parameters' dtype.
    """

    attention: str = _AUTO
    query_chunk_size: Union[str, int] = _AUTO
    key_chunk_size: Union[str, int] = _AUTO
    decoder_chunk_size: Union[str, int, None] = _AUTO
    absorb_projections: Union[str, bool] = _AUTO
    scan_blocks: Union[str, bool] = _AUTO
    remat: bool = False
    compute_dtype: Optional[Any] = None

    def __post_init__(self):
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(
                f"attention must be one of {', '.join(map(repr, ATTENTION_KINDS))}; "
                f"got {self.attention!r}."
            )
        _check_chunk("query_chunk_size", self.query_chunk_size, allow_none=False)
        _check_chunk("key_chunk_size", self.key_chunk_size, allow_none=False)
        _check_chunk("decoder_chunk_size", self.decoder_chunk_size, allow_none=True)
        _check_auto_bool("absorb_projections", self.absorb_projections)
        _check_auto_bool("scan_blocks", self.scan_blocks)
        if not isinstance(self.remat, bool):
            raise TypeError(f"remat must be True or False; got {self.remat!r}.")
        if self.compute_dtype is not None:
            dtype = jnp.dtype(self.compute_dtype)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(f"compute_dtype must be a float dtype or None; got {dtype}.")
            object.__setattr__(self, "compute_dtype", dtype)


_CURRENT: contextvars.ContextVar = contextvars.ContextVar("perceiver_compute", default=Options())


def current() -> Options:
    """The options in force (set by the innermost `options` context)."""
    return _CURRENT.get()


@contextlib.contextmanager
def options(base: Optional[Options] = None, **overrides) -> Iterator[Options]:
    """Sets compute options for modules traced inside the `with` block.

    Args:
      base: options to start from (default: the ones in force, so nested
        contexts change only the fields they name).
      **overrides: fields of `Options` to change.

    Yields:
      The options in force inside the block.

    Raises:
      TypeError: for an unknown option, or `base` not an `Options`.
      ValueError: for an invalid value.
    """
    if base is None:
        base = current()
    elif not isinstance(base, Options):
        raise TypeError(f"base must be a perceiver.compute.Options; got {type(base).__name__}.")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Options)})
    if unknown:
        raise TypeError(
            f"unknown compute options {unknown}; expected some of "
            f"{[f.name for f in dataclasses.fields(Options)]}."
        )
    new = dataclasses.replace(base, **overrides)
    token = _CURRENT.set(new)
    try:
        yield new
    finally:
        _CURRENT.reset(token)


def configure(transformed, base: Optional[Options] = None, **overrides):
    """A transformed model whose `init` and `apply` run under these options.

    The options are entered inside the returned functions, so they apply
    whether those functions are called directly or under `jax.jit`, `grad`
    and friends.

    Args:
      transformed: an `hk.Transformed` or `hk.TransformedWithState`.
      base, **overrides: as for `options`.

    Returns:
      The same kind of object, with wrapped `init` and `apply`.
    """
    if not hasattr(transformed, "init") or not hasattr(transformed, "apply"):
        raise TypeError(
            f"transformed must be an hk.Transformed or hk.TransformedWithState; got "
            f"{type(transformed).__name__}."
        )
    with options(base, **overrides) as chosen:
        pass  # Validates now rather than at the first call.

    def wrap(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with options(chosen):
                return fn(*args, **kwargs)

        return wrapped

    return type(transformed)(init=wrap(transformed.init), apply=wrap(transformed.apply))


# ---------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------


def _running_init() -> bool:
    """Whether an `init` is being traced (False outside Haiku transforms)."""
    try:
        return hk.running_init()
    except ValueError:
        return False


def compute_dtype(default) -> Any:
    """The dtype activations should have: the option, or `default`'s dtype."""
    chosen = current().compute_dtype
    if chosen is None or _running_init():
        # Parameters are always created (and init always runs) in float32.
        return jnp.dtype(default)
    return chosen


def _cast_getter(dtype):
    def getter(next_getter, value, context):
        # Layer norms run in float32, so their parameters stay float32.
        if isinstance(context.module, hk.LayerNorm):
            return next_getter(value)
        if jnp.issubdtype(value.dtype, jnp.floating) and value.dtype != dtype:
            value = value.astype(dtype)
        return next_getter(value)

    return getter


@contextlib.contextmanager
def parameter_dtype(dtype) -> Iterator[None]:
    """Inside a Haiku transform: floating parameters are read as `dtype`.

    Parameters are stored (and created) unchanged; layer-norm parameters are
    left in their own dtype.
    """
    if dtype is None:
        yield
        return
    with hk.custom_getter(_cast_getter(jnp.dtype(dtype))):
        yield


def is_low_precision(dtype) -> bool:
    return jnp.dtype(dtype).itemsize < 4 and jnp.issubdtype(dtype, jnp.floating)


def matmul(a: jnp.ndarray, b: jnp.ndarray, precision=None) -> jnp.ndarray:
    """`a @ b` in the operands' dtype, accumulated in float32 when that is half precision.

    Asking XLA:CPU for a float32 result is also what selects its fast bf16
    kernels (about twice float32's speed); a bf16 result falls back to a loop
    no faster than float32.
    """
    dtype = jnp.result_type(a, b)
    if not is_low_precision(dtype):
        return jnp.matmul(a, b, precision=precision)
    return jnp.matmul(a, b, precision=precision, preferred_element_type=jnp.float32).astype(dtype)


class Linear(hk.Linear):
    """`hk.Linear` whose parameters can also be read without applying it."""

    def params(self, input_size: int, dtype=jnp.float32):
        """`(w [input_size, output_size], b [output_size] or None)`, created as `__call__` would."""
        w_init = self.w_init
        if w_init is None:
            w_init = hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(input_size))
        w = hk.get_parameter("w", [input_size, self.output_size], dtype, init=w_init)
        b = None
        if self.with_bias:
            b = hk.get_parameter("b", [self.output_size], dtype, init=self.b_init)
        return w, b

    def __call__(self, inputs: jnp.ndarray, *, precision=None) -> jnp.ndarray:
        if not is_low_precision(inputs.dtype):
            return super().__call__(inputs, precision=precision)
        w, b = self.params(inputs.shape[-1], inputs.dtype)
        out = matmul(inputs, w.astype(inputs.dtype), precision=precision)
        return out if b is None else out + b.astype(out.dtype)


class AffineTail:
    """Linear layers applied in turn to a decoder's output.

    Calling it applies them. A chunked decoder may instead multiply them out
    (`affine`) and fold them into its last layer, so that a wide output
    projected to a few channels (pixels to RGB, flow to 2) never computes the
    wide result.
    """

    def __init__(self, layers):
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


# ---------------------------------------------------------------------------
# Attention kernels
# ---------------------------------------------------------------------------


def _large_negative(dtype) -> jnp.ndarray:
    # A large finite value rather than -inf keeps rows with no valid key
    # finite (callers zero those rows), as in the reference.
    return jnp.array(1e4 if dtype == jnp.float16 else 1e30, dtype=dtype)


def _logits_dtype(q) -> Any:
    return jnp.float32 if is_low_precision(q.dtype) else q.dtype


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
    kind = current().attention
    if dropout:
        return "plain"  # Attention-weight dropout needs the whole matrix.
    if kind != _AUTO:
        return kind
    if (
        batch * heads * q_len * kv_len > ONE_TILE_MAX_ELEMENTS
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


def _split_evenly(length: int, max_chunk: int) -> Tuple[int, int]:
    """`(num_chunks, chunk)`: near-equal chunks of at most `max_chunk` covering `length`."""
    max_chunk = max(1, min(max_chunk, length))
    num = -(-length // max_chunk)
    return num, -(-length // num)


def chunk_start(index, length: int, chunk: int):
    """Start of chunk `index`; the last chunk ends at `length`, overlapping its neighbour.

    Overlapping (rather than padding) the last chunk means no padded copy of
    a large input is ever made.
    """
    return jnp.minimum(index * chunk, length - chunk)


def join_chunks(stacked: jnp.ndarray, length: int, chunk: int, axis: int) -> jnp.ndarray:
    """Joins `[num, ..., chunk (at axis + 1), ...]` outputs of overlapping chunks along `axis`."""
    num = stacked.shape[0]
    parts = jnp.moveaxis(stacked, 0, axis)  # [..., num, chunk, ...]
    shape = parts.shape[:axis] + (num * chunk,) + parts.shape[axis + 2 :]
    flat = parts.reshape(shape)
    tail = length - (num - 1) * chunk  # rows the last chunk adds
    if tail == chunk:
        return flat
    head = jax.lax.slice_in_dim(flat, 0, (num - 1) * chunk, axis=axis)
    last = jax.lax.slice_in_dim(flat, num * chunk - tail, num * chunk, axis=axis)
    return jnp.concatenate([head, last], axis=axis)


def attention_tiles(batch: int, heads: int, q_len: int, kv_len: int) -> Tuple[int, int]:
    """`(query_chunk, key_chunk)` for the tiled kernel under the current options."""
    opts = current()
    per_row = max(1, batch * heads)
    if (
        opts.query_chunk_size == _AUTO
        and opts.key_chunk_size == _AUTO
        and per_row * q_len * kv_len <= ONE_TILE_MAX_ELEMENTS
    ):
        return q_len, kv_len  # One tile.
    if opts.key_chunk_size != _AUTO:
        key_chunk = int(opts.key_chunk_size)
    elif per_row * kv_len * min(q_len, 256) <= TILE_ELEMENTS:
        key_chunk = kv_len  # Whole rows fit: no running softmax needed.
    else:
        key_chunk = max(128, TILE_ELEMENTS // (per_row * min(q_len, 2048)))
    key_chunk = min(key_chunk, kv_len)
    if opts.query_chunk_size != _AUTO:
        query_chunk = int(opts.query_chunk_size)
    else:
        query_chunk = max(8, TILE_ELEMENTS // (per_row * key_chunk))
    return min(query_chunk, q_len), key_chunk


def _check_kernel_args(q, k, v, mask, bias):
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


def dot_product_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    mask: Optional[jnp.ndarray] = None,
    bias: Optional[jnp.ndarray] = None,
    scale: Optional[float] = None,
    kind: str = _AUTO,
    kv_transform: Optional[Callable] = None,
    kv_params: Any = None,
) -> jnp.ndarray:
    """Softmax attention without dropout, by the chosen kernel.

    Rows whose mask is all zero come out as the plain softmax leaves them
    (the mean of the values); callers zero them where the model says so.

    Args:
      q: `[B, T, H, D]`.
      k: `[B, S, H, D]`.
      v: `[B, S, H, Dv]`.
      mask: `[B or 1, T, S]`, nonzero where query t may attend to key s.
      bias: `[B or 1, H or 1, S]`, added to the scaled logits.
      scale: logit scale (default `1 / sqrt(D)`).
      kind: 'auto', 'plain', 'tiled' or 'fused'.
      kv_transform: `f(x, kv_params)` applied to k and v before use, acting
        on each key position alone (e.g. a layer norm); the tiled kernel
        applies it tile by tile, so the transformed keys are never stored.
      kv_params: the transform's (differentiable) parameters.

    Returns:
      `[B, T, H, Dv]` in v's dtype (logits and softmax in at least float32).
    """
    _check_kernel_args(q, k, v, mask, bias)
    batch, q_len, heads, qk_dim = q.shape
    kv_len = k.shape[1]
    if scale is None:
        scale = 1.0 / math.sqrt(qk_dim)
    if kind == _AUTO:
        kind = choose_attention(
            batch, heads, q_len, kv_len, dtype=q.dtype, qk_dim=qk_dim, v_dim=v.shape[-1],
            has_bias=bias is not None,
        )
    if kind == "tiled":
        query_chunk, key_chunk = attention_tiles(batch, heads, q_len, kv_len)
        return tiled_attention(
            q, k, v, mask=mask, bias=bias, scale=scale,
            query_chunk_size=query_chunk, key_chunk_size=key_chunk,
            kv_transform=kv_transform, kv_params=kv_params,
        )
    if kv_transform is not None:
        shared = k is v
        k = kv_transform(k, kv_params)
        v = k if shared else kv_transform(v, kv_params)
    if kind == "plain":
        return plain_attention(q, k, v, mask=mask, bias=bias, scale=scale)
    if kind == "fused":
        if q.shape[-1] != v.shape[-1]:
            # jax.nn.dot_product_attention needs equal key and value sizes.
            return dot_product_attention(
                q, k, v, mask=mask, bias=bias, scale=scale,
                kind="plain" if batch * heads * q_len * kv_len <= ONE_TILE_MAX_ELEMENTS
                else "tiled",
            )
        return fused_attention(q, k, v, mask=mask, bias=bias, scale=scale)
    raise ValueError(f"kind must be one of {ATTENTION_KINDS}; got {kind!r}.")


def _heads_major(x: jnp.ndarray) -> jnp.ndarray:
    # [B, L, H, D] -> [B, H, L, D]: XLA:CPU multiplies batched matrices far
    # faster with the batch (heads) leading than with the einsum layouts.
    return x.transpose(0, 2, 1, 3)


def _masked_logits(qh, kh, scale, mask=None, bias=None) -> jnp.ndarray:
    """Logits `[B, H, T, S]` of heads-major q `[B, H, T, D]` and k `[B, H, S, D]`."""
    logits = jnp.matmul(qh, kh.swapaxes(-1, -2), preferred_element_type=_logits_dtype(qh))
    logits = logits * jnp.asarray(scale, logits.dtype)
    if bias is not None:
        logits = logits + bias[:, :, None, :].astype(logits.dtype)
    if mask is not None:
        logits = jnp.where(mask[:, None, :, :], logits, -_large_negative(logits.dtype))
    return logits


def attention_logits(q, k, scale, mask=None, bias=None) -> jnp.ndarray:
    """Scaled, biased, masked logits `[B, H, T, S]` of q `[B, T, H, D]`, k `[B, S, H, D]`."""
    return _masked_logits(_heads_major(q), _heads_major(k), scale, mask, bias)


def weighted_values(weights: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """`weights` `[B, H, T, S]` times values `[B, S, H, Dv]`: `[B, T, H, Dv]`."""
    out = jnp.matmul(
        weights.astype(v.dtype), _heads_major(v), preferred_element_type=_logits_dtype(v)
    )
    return _heads_major(out).astype(v.dtype)


def plain_attention(q, k, v, *, mask=None, bias=None, scale=None) -> jnp.ndarray:
    """The whole `[B, H, T, S]` softmax at once, as the reference computes it."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return weighted_values(jax.nn.softmax(attention_logits(q, k, scale, mask, bias)), v)


def fused_attention(q, k, v, *, mask=None, bias=None, scale=None) -> jnp.ndarray:
    """`jax.nn.dot_product_attention`: cuDNN's fused kernel where it applies, else XLA's."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    implementation = None
    if _cudnn_eligible(q.dtype, q.shape[-1], v.shape[-1], bias is not None):
        implementation = "cudnn"
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        bias=None if bias is None else bias[:, :, None, :].astype(q.dtype),
        mask=None if mask is None else (mask[:, None, :, :] != 0),
        scale=float(scale),
        implementation=implementation,
    )
    return out.astype(v.dtype)


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
) -> jnp.ndarray:
    """Attention over tiles of queries and keys with a running (online) softmax.

    Memory is one `[B, H, query_chunk, key_chunk]` tile instead of the whole
    `[B, H, T, S]` matrix, and no padded copy of the inputs is made: sizes
    need not divide the chunks (the last chunk overlaps the one before, and
    its repeated keys get no weight). The gradient recomputes the tiles from
    the inputs, the output and the softmax statistics, so training stores
    nothing of size `T x S` either (Rabe & Staats 2021; Dao et al. 2022).

    Args:
      q, k, v, mask, bias, scale, kv_transform, kv_params: as for
        `dot_product_attention`.
      query_chunk_size: queries per tile.
      key_chunk_size: keys per tile.

    Returns:
      `[B, T, H, Dv]`.
    """
    _check_kernel_args(q, k, v, mask, bias)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    q_len, kv_len = q.shape[1], k.shape[1]
    num_q, q_chunk = _split_evenly(q_len, int(query_chunk_size))
    num_k, k_chunk = _split_evenly(kv_len, int(key_chunk_size))
    shared = k is v  # one transform (and one gradient) for both
    tiles = _Tiles(float(scale), q_len, q_chunk, num_q, kv_len, k_chunk, num_k, shared)
    if mask is not None:
        mask = mask != 0
    kh = _heads_major(k)
    vh = kh if shared else _heads_major(v)
    out = _tiled(_heads_major(q), kh, vh, mask, bias, kv_params, tiles, kv_transform)
    return _heads_major(out).astype(v.dtype)


class _Tiles(NamedTuple):
    scale: float
    q_len: int
    q_chunk: int
    num_q: int
    kv_len: int
    k_chunk: int
    num_k: int
    shared_kv: bool


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


def _tile_logits(tiles, q_tile, k_tile, mask_rows, bias, index, start):
    """`(logits, mask)` of a query tile against key tile `index` (at `start`)."""
    mask_tile = _slice(mask_rows, start, tiles.k_chunk, 2)
    logits = _masked_logits(
        q_tile, k_tile, tiles.scale, mask_tile, _slice(bias, start, tiles.k_chunk, 2)
    )
    if tiles.num_k > 1:
        # Keys the previous tile already covered get no weight here.
        fresh = start + jnp.arange(tiles.k_chunk) >= index * tiles.k_chunk
        logits = jnp.where(fresh, logits, -jnp.inf)
    return logits, mask_tile


def _tiled_forward(qh, kh, vh, mask, bias, kv_params, tiles: _Tiles, kv_fn):
    """`(out [B, H, T, Dv], row max [B, H, T, 1], row sum [B, H, T, 1])`, in float32."""
    acc_dtype = _logits_dtype(qh)
    v_dim = vh.shape[-1]

    def query_tile(q_tile, mask_rows):
        def step(carry, index):
            running_max, denominator, acc = carry
            start = chunk_start(index, tiles.kv_len, tiles.k_chunk)
            k_tile, v_tile = _key_tiles(tiles, kh, vh, kv_params, kv_fn, start)
            logits, _ = _tile_logits(tiles, q_tile, k_tile, mask_rows, bias, index, start)
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
            logits, _ = _tile_logits(tiles, q_tile, k_tile, mask_rows, bias, 0, 0)
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
        (row_max, denominator, acc), _ = jax.lax.scan(step, init, jnp.arange(tiles.num_k))
        return acc / denominator, row_max, denominator

    if tiles.num_q == 1:
        return query_tile(qh, mask)

    def by_index(index):
        start = chunk_start(index, tiles.q_len, tiles.q_chunk)
        return query_tile(_slice(qh, start, tiles.q_chunk, 2), _slice(mask, start, tiles.q_chunk, 1))

    stacked = jax.lax.map(by_index, jnp.arange(tiles.num_q))
    return tuple(join_chunks(x, tiles.q_len, tiles.q_chunk, axis=2) for x in stacked)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _tiled(qh, kh, vh, mask, bias, kv_params, tiles, kv_fn):
    return _tiled_forward(qh, kh, vh, mask, bias, kv_params, tiles, kv_fn)[0]


def _tiled_fwd(qh, kh, vh, mask, bias, kv_params, tiles, kv_fn):
    out, row_max, denominator = _tiled_forward(qh, kh, vh, mask, bias, kv_params, tiles, kv_fn)
    return out, (qh, kh, vh, mask, bias, kv_params, out, row_max, denominator)


def _tiled_bwd(tiles, kv_fn, residuals, d_out):
    """Gradients tile by tile, recomputing each tile's softmax weights."""
    qh, kh, vh, mask, bias, kv_params, out, row_max, denominator = residuals
    acc_dtype = _logits_dtype(qh)
    d_out = d_out.astype(acc_dtype)
    delta = jnp.sum(d_out * out, axis=-1, keepdims=True)  # [B, H, T, 1]

    def query_tile(q_tile, d_out_tile, delta_tile, max_tile, den_tile, mask_rows, carry):
        """Adds this query tile's key gradients to `carry`; returns `(d_q, carry)`."""

        def step(state, index):
            d_q, (d_k, d_v, d_bias, d_params) = state
            start = chunk_start(index, tiles.kv_len, tiles.k_chunk)
            k_tile, v_tile = _key_tiles(tiles, kh, vh, kv_params, kv_fn, start)
            logits, mask_tile = _tile_logits(tiles, q_tile, k_tile, mask_rows, bias, index, start)
            weights = jnp.exp(logits - max_tile) / den_tile
            d_weights = jnp.matmul(
                d_out_tile, v_tile.swapaxes(-1, -2), preferred_element_type=acc_dtype
            )
            d_logits = weights * (d_weights - delta_tile)
            if mask_tile is not None:
                # Masked logits are constants: no gradient flows through them.
                d_logits = jnp.where(mask_tile[:, None], d_logits, 0)
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
                d_bias = add(d_bias, d_logits.sum(axis=2))
            return (d_q, (d_k, d_v, d_bias, d_params)), None

        state = (jnp.zeros(q_tile.shape, acc_dtype), carry)
        if tiles.num_k == 1:
            state, _ = step(state, 0)
        else:
            state, _ = jax.lax.scan(step, state, jnp.arange(tiles.num_k))
        return state

    zeros = (
        jnp.zeros(kh.shape, acc_dtype),
        None if tiles.shared_kv else jnp.zeros(vh.shape, acc_dtype),
        None if bias is None else jnp.zeros(qh.shape[:2] + (tiles.kv_len,), acc_dtype),
        jax.tree_util.tree_map(jnp.zeros_like, kv_params),
    )
    if tiles.num_q == 1:
        d_q, (d_k, d_v, d_bias, d_params) = query_tile(
            qh, d_out, delta, row_max, denominator, mask, zeros
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
            d_q, carry = query_tile(*tile, _slice(mask, start, tiles.q_chunk, 1), carry)
            return carry, d_q

        (d_k, d_v, d_bias, d_params), d_q = jax.lax.scan(step, zeros, jnp.arange(tiles.num_q))
        d_q = join_chunks(d_q, tiles.q_len, tiles.q_chunk, axis=2)
    if bias is not None:
        # Sum over the dimensions the bias was broadcast along.
        axes = tuple(i for i in (0, 1) if bias.shape[i] == 1)
        d_bias = d_bias.sum(axis=axes, keepdims=True).astype(bias.dtype)
    return (
        d_q.astype(qh.dtype),
        d_k.astype(kh.dtype),
        None if d_v is None else d_v.astype(vh.dtype),  # shared: all in d_k
        None,
        d_bias,
        d_params,
    )


_tiled.defvjp(_tiled_fwd, _tiled_bwd)


def no_valid_key(mask: jnp.ndarray) -> jnp.ndarray:
    """`[B, T, 1]`: True for queries whose mask row `[B, T, S]` is all zero."""
    return jnp.all(mask == 0, axis=2, keepdims=True)


# ---------------------------------------------------------------------------
# Chunked decoding, folded projections, loops
# ---------------------------------------------------------------------------


def decoder_chunk(batch: int, heads: int, num_queries: int, num_latents: int) -> Optional[int]:
    """Queries per decoder chunk under the current options, or None for one piece."""
    chosen = current().decoder_chunk_size
    if chosen is None or _running_init():
        return None
    if chosen != _AUTO:
        return int(chosen) if int(chosen) < num_queries else None
    per_query = max(1, batch * max(1, heads) * num_latents)
    max_chunk = max(8, TILE_ELEMENTS // per_query)
    if num_queries <= 2 * max_chunk:
        return None
    _, chunk = _split_evenly(num_queries, max_chunk)
    return chunk


def absorb_enabled(num_queries: int, num_keys: int, batch: int) -> Optional[bool]:
    """Whether projections may be folded: True, False, or None for 'by cost'."""
    chosen = current().absorb_projections
    if _running_init():
        return False  # init creates parameters exactly as the reference does.
    if chosen != _AUTO:
        return chosen
    if batch * num_queries * num_keys < ABSORB_MIN_ELEMENTS:
        return False
    return None


def checkpoint(fun):
    """`jax.checkpoint` whose backward recomputation waits for the cotangent.

    XLA:CPU drops the optimisation barriers that keep `jax.checkpoint`'s
    recomputation apart from the forward pass, merges the two and stores
    every intermediate, so `jax.checkpoint` saves no memory there. Here the
    recomputation's array inputs are made to depend, arithmetically but
    without changing their values, on the incoming cotangent, so it can only
    run in the backward pass, on every backend.

    Args:
      fun: a pure function of arrays (pytrees allowed, keyword arguments too).

    Returns:
      `fun`, with the same values and gradients.
    """

    @functools.wraps(fun)
    def wrapped(*args, **kwargs):
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))

        def call(*leaves):
            a, k = jax.tree_util.tree_unflatten(treedef, leaves)
            return fun(*a, **k)

        pure, consts = jax.closure_convert(call, *leaves)
        num_tied = len(jax.tree_util.tree_leaves(args))
        return _checkpointed(pure, num_tied, *leaves, *consts)

    return wrapped


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _checkpointed(pure, num_tied, *inputs):
    del num_tied
    return pure(*inputs)


def _checkpointed_fwd(pure, num_tied, *inputs):
    del num_tied
    return pure(*inputs), inputs


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _checkpointed_bwd(pure, num_tied, inputs, cotangent):
    floats = [c for c in jax.tree_util.tree_leaves(cotangent) if _is_float(c) and c.size]
    if floats:
        # Zero (even for non-finite cotangents), but only known once the
        # cotangent is: no compiler may move the recomputation before it.
        tie = 0.0 * jnp.nan_to_num(floats[0].ravel()[0])
        inputs = tuple(
            x + tie.astype(x.dtype) if i < num_tied and _is_float(x) else x
            for i, x in enumerate(inputs)
        )
    _, vjp = jax.vjp(pure, *inputs)
    return vjp(cotangent)


_checkpointed.defvjp(_checkpointed_fwd, _checkpointed_bwd)


def haiku_checkpoint(fun, **unused):
    """`hk.remat` built on `checkpoint`, so that it saves memory on every backend."""
    try:
        from haiku._src.stateful import thread_hk_state_in_kwargs  # Haiku's own hk.remat helper
    except ImportError:  # pragma: no cover - a future Haiku without it
        return hk.remat(fun)
    return thread_hk_state_in_kwargs(checkpoint)(fun)


def scan_blocks(num_blocks: int) -> bool:
    chosen = current().scan_blocks
    if chosen == _AUTO:
        return num_blocks > 1
    return bool(chosen) and num_blocks > 1


def remat() -> bool:
    return current().remat
