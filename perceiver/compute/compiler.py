"""XLA compiler options for one compiled function, where they are measured to be faster.

XLA's process-wide settings (`XLA_FLAGS`) are never set here: these options
go to one `jax.jit` at a time (`jax.jit(fn, compiler_options=...)`), so a
user's other functions compile as they would without this library.

    low = compute.configure(model, compute_dtype=jnp.bfloat16)
    forward = compute.jit(low.apply, compute_dtype=jnp.bfloat16)
    weights = compute.cast_params(low.apply, params, state, None, x)  # once
    out, _ = forward(weights, state, None, x)

What is chosen, and why (`benchmarks/vs_torch.py` measures each option; the
numbers are in benchmarks/README.md):

- CPU without bfloat16 dot instructions (neither AVX-512 BF16 nor AMX in
  `/proc/cpuinfo`), bfloat16 compute dtype: XLA:CPU hands dots to YNNPACK
  by default; with YNNPACK's dots off (`xla_cpu_experimental_ynn_fusion_type=""`)
  they go to Eigen, whose bf16 x bf16 -> f32 product is faster there; the
  five models ran 1.2-1.4x faster in bf16 that way (Intel Xeon, AVX-512
  without BF16).
- CPU with them, bfloat16: nothing. On an AMD EPYC with AVX-512 BF16,
  XLA's default (YNNPACK) dots ran the five models 1.6-1.8x faster than
  Eigen's. AMX was not measured (no such machine was at hand); it is left
  to XLA's defaults too, since YNNPACK has AMX bf16 dot kernels and Eigen
  none, as is a CPU whose features cannot be read.
- CPU, float32: nothing. No option measured faster for whole models (Eigen,
  XNNPACK and YNNPACK dots were within noise of each other there).

An option this jaxlib does not know is left out (checked once, by compiling
a small product with it), so a newer or older jax never fails on it.
"""

import functools
from typing import Any, Callable, Dict, FrozenSet, Optional

import jax
import jax.numpy as jnp

from perceiver.compute import precision

# Off: dots are left to XLA's own (Eigen) kernels instead of YNNPACK.
YNN_DOTS_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}
# /proc/cpuinfo flags of instructions that multiply bfloat16 pairs into float32.
BF16_DOT_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_flags(path: str = "/proc/cpuinfo") -> Optional[FrozenSet[str]]:
    """The x86 feature flags this CPU reports, or None where there are none to read.

    None on other CPUs (an Arm CPU lists "Features") and systems without
    /proc/cpuinfo: nothing was measured there, so nothing is chosen.
    """
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def has_bf16_dots(flags: Optional[FrozenSet[str]] = None) -> Optional[bool]:
    """Whether the CPU has bfloat16 dot instructions (AVX-512 BF16, AMX); None if unknown."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    return any(flag in flags for flag in BF16_DOT_FLAGS)


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
    if backend != "cpu" or has_bf16_dots() is not False:
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
