"""Gradients compile and agree on every path: chunked decoders, and each published model at full size."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import compute, models

REPO = pathlib.Path(__file__).resolve().parents[2]


def _mlm_loss(model, state):
    # The batch is an argument, as in training: traced integer inputs closed
    # over by a chunk's recomputation once leaked into the backward pass.
    def loss(params, tokens, mask):
        out, _ = model.apply(params, state, None, tokens, mask, is_training=False)
        return jnp.mean(jnp.square(out))

    return loss


@pytest.mark.slow  # 20 s; the published MLM's gradient lowering below is the fast guard
def test_chunked_decoder_gradient_compiles_and_equals_the_unchunked_one():
    # jit(grad) through the chunked decoder once failed to lower ("No constant
    # handler for type: DynamicJaxprTracer"), so no MLM could be fine-tuned.
    base = models.masked_language_model(
        max_seq_len=64, d_model=32, num_latents=8, num_latent_channels=32, num_self_attends=1,
        num_heads=2, qk_channels=16,
    )
    rng = np.random.default_rng(0)
    tokens = rng.integers(6, 262, (2, 64)).astype(np.int32)
    mask = np.ones((2, 64), np.int32)
    params, state = base.init(jax.random.PRNGKey(0), tokens, mask, is_training=False)
    grads = {}
    for chunk in (16, None):
        model = compute.configure(base, decoder_chunk_size=chunk)
        grads[chunk] = jax.jit(jax.grad(_mlm_loss(model, state)))(params, tokens, mask)
    expected = jax.tree_util.tree_leaves(grads[None])
    scale = max(float(np.abs(b).max()) for b in expected)
    for a, b in zip(jax.tree_util.tree_leaves(grads[16]), expected):
        # Chunks sum the shared weights' gradients in another order.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def _benchmark_run():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "model",
    # The MLM's chunked decoder is the case that once failed: it lowers in a few seconds.
    ["mlm"] + [
        pytest.param(m, marks=pytest.mark.slow)
        for m in ("imagenet_learned", "imagenet_fourier", "imagenet_conv", "flow", "video_autoencoding")
    ],
)
def test_gradient_lowers_for_each_published_model_at_full_size(model):
    # Tracing and lowering only: shapes, no weights, nothing run.
    run = _benchmark_run()
    config = run.Config(name=model, model=model)
    transformed = run.build("ours", config, None)
    inputs = run.make_inputs(config)
    params, state = jax.eval_shape(
        lambda: transformed.init(jax.random.PRNGKey(0), *inputs, is_training=True)
    )

    def loss(params, state, rng, inputs):
        out, _ = transformed.apply(params, state, rng, *inputs, is_training=True)
        return sum(jnp.mean(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(out))

    # The inputs are traced arguments, as a training step's batch is.
    lowered = jax.jit(jax.grad(loss)).lower(params, state, jax.random.PRNGKey(0), inputs)
    assert lowered.as_text()
