"""docs/architecture.md's worked example of a new attention variant runs, on the fast paths, as numpy computes it."""

import math
import pathlib
import re

import haiku as hk
import jax
import numpy as np
import pytest

from perceiver import compute

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def _example() -> dict:
    text = DOC.read_text()
    found = re.search(r"<!-- example: new-attention -->\s*```python\n(.*?)```", text, re.S)
    assert found, "docs/architecture.md lost its example"
    namespace = {}
    exec(compile(found.group(1), str(DOC), "exec"), namespace)
    return namespace


def _np_layer_norm(x, p):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["offset"]


def _np_block(params, x, num_heads):
    """The example's block in float64 numpy: layer norm, QK-norm, ALiBi, causal softmax, residual."""
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    root = "causal_self_attention"
    normed = _np_layer_norm(np.float64(x), params[f"{root}/layer_norm"])

    def project(name):
        p = params[f"{root}/attention/{name}"]
        y = normed @ p["w"] + p["b"]
        return y.reshape(y.shape[0], y.shape[1], num_heads, -1)

    q, k, v = project("linear"), project("linear_1"), project("linear_2")
    unit = lambda a: a / np.sqrt(np.sum(a * a, -1, keepdims=True) + 1e-6)  # noqa: E731
    q = unit(q) * params[root]["temperature"][:, None]
    k = unit(k)
    t = np.arange(x.shape[1])
    behind = t[:, None] - t[None, :]
    slopes = 2.0 ** (-8.0 * np.arange(1, num_heads + 1) / num_heads)
    logits = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    logits = logits - slopes[:, None, None] * np.maximum(behind, 0)
    logits = np.where(behind >= 0, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshd->bthd", weights, v).reshape(x.shape[0], x.shape[1], -1)
    p = params[f"{root}/attention/linear_3"]
    return x + out @ p["w"] + p["b"]


@pytest.mark.parametrize("attention", ["plain", "tiled"])
def test_new_attention_example_matches_numpy_on_every_kernel(attention):
    example = _example()
    num_heads = 4
    model = hk.without_apply_rng(hk.transform(lambda x: example["CausalSelfAttention"](num_heads)(x)))
    x = np.random.default_rng(0).standard_normal((2, 21, 16)).astype(np.float32)
    params = model.init(jax.random.PRNGKey(0), x)
    with compute.options(attention=attention, query_chunk_size=8, key_chunk_size=8):
        got = np.asarray(jax.jit(model.apply)(params, x))
        grads = jax.jit(jax.grad(lambda p: model.apply(p, x).sum()))(params)
    np.testing.assert_allclose(got, _np_block(params, x, num_heads), rtol=1e-4, atol=1e-4)
    with compute.options(attention="plain"):
        dense = jax.grad(lambda p: model.apply(p, x).sum())(params)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(dense)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
