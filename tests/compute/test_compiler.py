"""perceiver.compute.compiler: per-function XLA options, chosen by backend and dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import compute, models
from perceiver.compute import compiler


XEON_NO_BF16 = frozenset("fpu sse2 avx2 fma avx512f avx512bw avx512_vnni".split())
EPYC_BF16 = XEON_NO_BF16 | {"avx512_bf16"}
AMX = XEON_NO_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}


@pytest.fixture
def cpu(monkeypatch):
    """Pretend the CPU reports these flags (None: none readable)."""
    def set_flags(flags):
        monkeypatch.setattr(compiler, "cpu_flags", lambda: flags)

    return set_flags


def test_float32_gets_no_options_and_bfloat16_turns_ynnpack_dots_off_only_without_bf16_dots(cpu):
    cpu(XEON_NO_BF16)
    assert compiler.compiler_options() == {}
    assert compiler.compiler_options(jnp.float32, backend="cpu") == {}
    assert compiler.compiler_options(jnp.bfloat16, backend="gpu") == {}
    assert compiler.compiler_options(jnp.bfloat16, backend="cpu") == compiler.YNN_DOTS_OFF
    for flags in (EPYC_BF16, AMX, None):
        cpu(flags)
        assert compiler.compiler_options(jnp.bfloat16, backend="cpu") == {}, flags


def test_cpu_flags_are_read_from_the_x86_flags_line_only(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx512f avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert compiler.cpu_flags.__wrapped__(str(x86)) == {"fpu", "avx512f", "avx512_bf16"}
    assert compiler.has_bf16_dots(compiler.cpu_flags.__wrapped__(str(x86))) is True
    assert compiler.cpu_flags.__wrapped__(str(arm)) is None
    assert compiler.cpu_flags.__wrapped__(str(tmp_path / "missing")) is None
    assert compiler.has_bf16_dots(XEON_NO_BF16) is False


def test_an_option_this_jaxlib_does_not_know_is_left_out(monkeypatch, cpu):
    cpu(XEON_NO_BF16)
    monkeypatch.setattr(compiler, "YNN_DOTS_OFF", {"xla_cpu_no_such_option_anywhere": ""})
    compiler._supported.cache_clear()
    try:
        assert compiler.compiler_options(jnp.bfloat16, backend="cpu") == {}
        x = jnp.ones((4, 4), jnp.bfloat16)
        np.testing.assert_array_equal(compiler.jit(lambda a: a @ a, compute_dtype=jnp.bfloat16)(x), x @ x)
    finally:
        compiler._supported.cache_clear()


def _product(a, b):
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's dot libraries")
def test_the_options_reach_the_compiled_function_alone(cpu):
    cpu(XEON_NO_BF16)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 64)), jnp.bfloat16)
    plain = jax.jit(_product).lower(x, x).compile().as_text()
    chosen = compiler.jit(_product, compute_dtype=jnp.bfloat16).lower(x, x).compile().as_text()
    if "ynn_fusion" not in plain:
        pytest.skip("this jaxlib does not hand dots to YNNPACK")
    assert "ynn_fusion" not in chosen
    # The same function compiled again without them is as before: nothing is process-wide.
    assert "ynn_fusion" in jax.jit(_product).lower(x, x).compile().as_text()
    np.testing.assert_allclose(
        np.asarray(compiler.jit(_product, compute_dtype=jnp.bfloat16)(x, x)),
        np.asarray(x, np.float32) @ np.asarray(x, np.float32),
        rtol=1e-6,
        atol=1e-4,
    )


def test_options_given_to_jit_are_added_and_win():
    x = jnp.ones((4, 4), jnp.bfloat16)
    fn = compiler.jit(_product, compute_dtype=jnp.bfloat16, compiler_options={"xla_cpu_enable_fast_math": False})
    np.testing.assert_array_equal(fn(x, x), np.full((4, 4), 4.0, np.float32))


@pytest.mark.parametrize("model", ["mlm", "flow"])
def test_bfloat16_outputs_with_the_options_stay_close_to_the_reference(model, cpu):
    cpu(XEON_NO_BF16)  # the CPU kind that gets options
    factory, kwargs = ref.SMALL_FACTORIES[model]
    transformed, params, state = models.load_for(factory, ref.checkpoint_path(model), **kwargs)
    inputs, expected = ref.recorded(model)
    low = compute.configure(transformed, compute_dtype=jnp.bfloat16)
    out, _ = compute.jit(low.apply, compute_dtype=jnp.bfloat16)(
        params, state, None, *ref.factory_inputs(model, inputs)
    )
    got = np.asarray(jax.tree_util.tree_leaves(out)[0], np.float64)
    want = np.asarray(jax.tree_util.tree_leaves(expected)[0], np.float64)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 0.05 * np.max(np.abs(want))
