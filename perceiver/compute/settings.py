"""Compute options: what they are, how to set them, and reading them while tracing."""

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Iterator, Optional, Union

import haiku as hk
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

AUTO = "auto"


def _check_auto_bool(name: str, value: Any) -> None:
    if value != AUTO and not isinstance(value, bool):
        raise TypeError(f"{name} must be 'auto', True or False; got {value!r}.")


def _check_chunk(name: str, value: Any, allow_none: bool) -> None:
    if value == AUTO or (allow_none and value is None):
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

    attention: str = AUTO
    query_chunk_size: Union[str, int] = AUTO
    key_chunk_size: Union[str, int] = AUTO
    decoder_chunk_size: Union[str, int, None] = AUTO
    absorb_projections: Union[str, bool] = AUTO
    scan_blocks: Union[str, bool] = AUTO
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


def planned_batch(batch: Any) -> int:
    """`batch` for choosing tiles and chunks: itself, or 1 when it is symbolic.

    A model exported with a dynamic batch (`jax.export` symbolic shapes) is
    planned per example: its tiles then grow with the batch it is given.
    """
    return batch if isinstance(batch, (int, np.integer)) else 1


def running_init() -> bool:
    """Whether an `init` is being traced (False outside Haiku transforms)."""
    try:
        return hk.running_init()
    except ValueError:
        return False


def scan_blocks(num_blocks: int) -> bool:
    """Whether `num_blocks` weight-shared encoder blocks run in a loop."""
    chosen = current().scan_blocks
    if chosen == AUTO:
        return num_blocks > 1
    return bool(chosen) and num_blocks > 1


def remat() -> bool:
    """Whether encoder layers recompute their activations in the backward pass."""
    return current().remat
