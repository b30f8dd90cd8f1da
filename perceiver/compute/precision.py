"""Precision: the compute dtype, parameters read in it, matmuls accumulated in float32."""

import contextlib
import contextvars
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver.compute import settings


def compute_dtype(default) -> Any:
    """The dtype activations should have: the option, or `default`'s dtype."""
    chosen = settings.current().compute_dtype
    if chosen is None or settings.running_init():
        # Parameters are always created (and init always runs) in float32.
        return jnp.dtype(default)
    return chosen


# While `cast_params` traces: (module, name) -> the dtype each floating
# parameter is read in under a compute dtype.
_reads: contextvars.ContextVar[Optional[Dict[Tuple[str, str], Any]]] = contextvars.ContextVar(
    "perceiver_parameter_reads", default=None
)


def _cast_getter(dtype):
    def getter(next_getter, value, context):
        # Layer norms run in float32, so their parameters stay float32.
        if isinstance(context.module, hk.LayerNorm):
            return next_getter(value)
        if jnp.issubdtype(value.dtype, jnp.floating):
            reads = _reads.get()
            if reads is not None:
                reads[(context.module_name, context.name)] = dtype
            if value.dtype != dtype:
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


def cast_params(apply_fn: Callable, params: hk.Params, *args, **kwargs) -> hk.Params:
    """`params` with each parameter that `apply_fn` converts to its compute dtype converted already.

    A model configured with a `compute_dtype` converts its float32 parameters
    on every call (layer norms' excepted, which run in float32). Given these
    it has nothing left to convert and computes the same outputs, bit for
    bit; the conversion is found by tracing `apply_fn(params, *args,
    **kwargs)` once, without computing it. The result is for that function
    and those options: another function may read a parameter outside the
    compute dtype. Params already converted come back as they are. Convert
    once, call many times:

        low = compute.configure(model, compute_dtype=jnp.bfloat16)
        forward = compute.jit(low.apply, compute_dtype=jnp.bfloat16)
        low_params = compute.cast_params(low.apply, params, state, None, x)
        out, _ = forward(low_params, state, None, x)

    For inference: to train, keep the float32 weights (the conversion inside
    the call is what carries their gradients).

    Args:
      apply_fn: a configured model's `apply`, taking `params` first (or
        `jax.jit` of it: the function it wraps is traced).
      params: its parameters (as `apply_fn` takes them).
      *args, **kwargs: the rest of a call to `apply_fn`, as it would be called.

    Returns:
      The parameters as jax arrays, those read in the compute dtype in it.

    Raises:
      TypeError: if `params` is not a Haiku parameter mapping
        (`{module: {name: array}}`).
      ValueError: if `apply_fn` reads no parameter in a half-precision
        compute dtype (none was configured).
    """
    if not isinstance(params, Mapping) or not all(isinstance(v, Mapping) for v in params.values()):
        raise TypeError(
            f"cast_params: params must be a Haiku parameter mapping {{module: {{name: array}}}}; "
            f"got {type(params).__name__}."
        )
    # A compiled function traces only once per signature: a second trace
    # would record nothing, so trace the function it wraps.
    while hasattr(apply_fn, "lower") and hasattr(apply_fn, "__wrapped__"):
        apply_fn = apply_fn.__wrapped__
    reads: Dict[Tuple[str, str], Any] = {}
    token = _reads.set(reads)
    try:
        jax.eval_shape(lambda params: apply_fn(params, *args, **kwargs), params)
    finally:
        _reads.reset(token)
    if not reads:
        raise ValueError(
            "cast_params: apply_fn reads none of its parameters in a half-precision compute "
            "dtype; configure the model with one first (compute.configure(model, "
            "compute_dtype=jnp.bfloat16)). In float32 there is nothing to convert."
        )
    out = {}
    for module, leaves in params.items():
        out[module] = dict(leaves)
        for name, value in leaves.items():
            if (module, name) in reads:
                # jnp's conversion: the one the traced call would have made.
                out[module][name] = jnp.asarray(value).astype(reads[(module, name)])
    # All on the device: numpy leaves would be copied in on every call.
    return jax.device_put(out)


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
