"""perceiver.compute.stacks: layers' gradient boundaries (values unchanged, backward linear in depth)."""

import re

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver.compute import stacks


def _residual_stack(depth: int, bounded: bool):
    """`depth` pre-norm residual layers (LayerNorm, Linear, GELU), as the encoder's, then a sum of squares."""

    def loss(x):
        for i in range(depth):
            def one(x, i=i):
                h = hk.LayerNorm(-1, True, True, name=f"norm_{i}")(x)
                return x + hk.Linear(x.shape[-1], name=f"linear_{i}")(jax.nn.gelu(h))

            x = stacks.layer(one)(x) if bounded else one(x)
        return jnp.sum(x**2)

    return hk.transform(loss)


def test_the_boundary_is_the_identity_forward_and_backward():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)), jnp.float32)
    assert jnp.array_equal(stacks.gradient_boundary(x), x)
    weights = jnp.arange(15.0).reshape(3, 5)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(weights * jnp.sin(stacks.gradient_boundary(x)))))(x)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(weights * jnp.cos(x)))
    # A NaN first cotangent takes the other branch: still the cotangent itself.
    nan_first = jax.grad(lambda x: jnp.sum(jnp.where(jnp.arange(5) == 0, jnp.nan, 1.0) * stacks.gradient_boundary(x)))
    got = np.asarray(nan_first(x[0]))
    assert np.isnan(got[0]) and np.array_equal(got[1:], np.ones(4, np.float32))
    # Batched, empty, and half-precision cotangents pass through too.
    batched = jax.vmap(jax.grad(lambda v: jnp.sum(stacks.gradient_boundary(v) ** 2)))(x)
    np.testing.assert_array_equal(np.asarray(batched), np.asarray(2 * x))
    assert jax.grad(lambda v: jnp.sum(stacks.gradient_boundary(v)))(jnp.zeros((0, 2))).shape == (0, 2)
    half = jax.grad(lambda v: jnp.sum(stacks.gradient_boundary(v).astype(jnp.float32)))(x.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16 and np.all(np.asarray(half, np.float32) == 1)


def test_gradients_of_a_stack_are_those_without_boundaries():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 16, 32)), jnp.float32)
    plain, bounded = _residual_stack(6, False), _residual_stack(6, True)
    params = plain.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(bounded.init(jax.random.PRNGKey(0), x)) == jax.tree_util.tree_structure(params)
    want = jax.jit(jax.grad(lambda p: plain.apply(p, None, x)))(params)
    got = jax.jit(jax.grad(lambda p: bounded.apply(p, None, x)))(params)
    for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=1e-5)


def _fused_lines(depth: int) -> int:
    """Lines of XLA's fused computations in the compiled gradient of a bounded stack."""
    model = _residual_stack(depth, True)
    x = jnp.ones((2, 64, 128))
    params = model.init(jax.random.PRNGKey(0), x)
    text = jax.jit(jax.grad(lambda p: model.apply(p, None, x))).lower(params).compile().as_text()
    parts = re.split(r"\n(?=%fused_computation)", text)
    return sum(p.count("\n") for p in parts if p.startswith("%fused_computation"))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the boundary acts on XLA:CPU only")
def test_the_compiled_backward_grows_linearly_with_depth_on_cpu():
    # Without boundaries XLA:CPU fused the residual cotangent's chain into every
    # layer: 1877, 5150, 15438 lines at depths 4, 8, 16 (jax 0.10.2); with
    # them 1505, 3177, 6521.
    eight, sixteen = _fused_lines(8), _fused_lines(16)
    assert sixteen < 2.4 * eight, (eight, sixteen)
