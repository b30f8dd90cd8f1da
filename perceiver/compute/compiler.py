"""XLA compiler options for one compiled function, where they are measured to be faster.

XLA's process-wide settings (`XLA_FLAGS`) are never set here: these options
go to one `jax.jit` at a time (`jax.jit(fn, compiler_options=...)`), so a
user's other functions compile as they would without this library.

    forward = compute.jit(model.apply, compute_dtype=jnp.bfloat16)

What is chosen, and why (`benchmarks/vs_torch.py` measures each option; the
numbers are in benchmarks/README.md):

- CPU, bfloat16 compute dtype: XLA:CPU hands dots to YNNPACK by default;
  with YNNPACK's dots off (`xla_cpu_experimental_ynn_fusion_type=""`) they
  go to Eigen, whose bf16 x bf16 -> f32 product is faster on CPUs without
  bf16 matrix units; the five models ran 1.2-1.4x faster in bf16 that way.
- CPU, float32: nothing. No option measured faster for whole models (Eigen,
  XNNPACK and YNNPACK dots were within noise of each other there).

An option this jaxlib does not know is left out (checked once, by compiling
a small product with it), so a newer or older jax never fails on it.
"""

import functools
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp

from perceiver.compute import precision

# Off: dots are left to XLA's own (Eigen) kernels instead of YNNPACK.
YNN_DOTS_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=None)
def _supported(backend: str, items: tuple) -> bool:
    """Whether this jaxlib compiles a small bf16 product with these options."""
    x = jax.device_put(jnp.ones((8, 8), jnp.bfloat16), jax.devices(backend)[0])
    try:
        jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32)).lower(x).compile(
            compiler_options=dict(items)
        )
    except RuntimeError:  # Unknown option or value (XlaRuntimeError): another jaxlib.
        return False
    return True


def compiler_options(compute_dtype: Any = None, backend: Optional[str] = None) -> Dict[str, Any]:
    """The XLA options measured to speed up a function computing in `compute_dtype`.

    Args:
      compute_dtype: the dtype the model computes in (as given to
        `compute.configure`); None means float32.
      backend: 'cpu', 'gpu', 'tpu'; None means jax's default backend.

    Returns:
      A dict for `jax.jit(..., compiler_options=...)`; empty where nothing
      was measured to help.
    """
    backend = backend or jax.default_backend()
    if compute_dtype is None or not precision.is_low_precision(compute_dtype):
        return {}
    if backend != "cpu":
        return {}
    options = dict(YNN_DOTS_OFF)
    return options if _supported(backend, tuple(sorted(options.items()))) else {}


def jit(fn: Callable, *, compute_dtype: Any = None, **jit_kwargs) -> Callable:
    """`jax.jit(fn)` with `compiler_options(compute_dtype)` for this function alone.

    Args:
      fn: the function to compile.
      compute_dtype: the dtype `fn` computes in (see `compiler_options`).
      **jit_kwargs: passed to `jax.jit`; `compiler_options` given here are
        added to (and override) the chosen ones.
    """
    options = compiler_options(compute_dtype, jit_kwargs.get("backend"))
    options.update(jit_kwargs.pop("compiler_options", None) or {})
    return jax.jit(fn, compiler_options=options or None, **jit_kwargs)
