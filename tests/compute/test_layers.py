"""perceiver.compute.layers: linear and layer norm against numpy, in float32 and bfloat16."""

import numpy as np
import pytest

from perceiver.compute import layers as _layers


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), ("bfloat16", 2e-2)])
def test_compute_linear_and_layer_norm_match_numpy(dtype, tol):
    import jax.numpy as jnp

    from perceiver import compute

    rng = _rng(21)
    x = rng.standard_normal((2, 3, 5))
    w, b = rng.standard_normal((5, 4)), rng.standard_normal(4)
    scale, offset = 1 + rng.standard_normal(5) * 0.1, rng.standard_normal(5) * 0.1
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    got = _layers.linear(cast(x), compute.Projection(cast(w), cast(b)))
    assert got.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(got, np.float64), x @ w + b, rtol=tol, atol=tol * 4)
    normed = _layers.layer_norm(cast(x), jnp.asarray(scale, np.float32), jnp.asarray(offset, np.float32))
    assert normed.dtype == jnp.dtype(dtype)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(
        np.asarray(normed, np.float64), expected * scale + offset, rtol=tol, atol=tol
    )
