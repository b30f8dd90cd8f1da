"""Precision: the compute dtype, parameters read in it, matmuls accumulated in float32."""

import contextlib
from typing import Any, Callable, Iterator

import haiku as hk
import jax.numpy as jnp

from perceiver.compute import settings


def compute_dtype(default) -> Any:
    """The dtype activations should have: the option, or `default`'s dtype."""
    chosen = settings.current().compute_dtype
    if chosen is None or settings.running_init():
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


def in_compute_dtype(fn: Callable[..., jnp.ndarray], *arrays: jnp.ndarray) -> jnp.ndarray:
    """`fn(*arrays)` run in the compute dtype, returned in the dtype of `arrays`.

    Without a compute dtype this is `fn(*arrays)` with the arrays promoted to
    one dtype, as jax would promote them.
    """
    out_dtype = jnp.result_type(*arrays)
    dtype = compute_dtype(out_dtype)
    with parameter_dtype(dtype if dtype != out_dtype else None):
        out = fn(*(x.astype(dtype) for x in arrays))
    return out.astype(out_dtype)


def is_low_precision(dtype) -> bool:
    """Whether `dtype` is a floating type narrower than float32."""
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
