"""The byte language model: its tokens, sizes, and the factory's compute modes (bf16, remat)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import compute, language_model, models

SIZES = dict(max_context_length=64, num_latents=8, num_channels=32, num_layers=1, num_heads=4)


def test_tokens_are_the_references_bytes_plus_three():
    tokens = language_model.encode("añ")
    np.testing.assert_array_equal(tokens, [2, ord("a") + 3, 0xC3 + 3, 0xB1 + 3])
    assert language_model.decode(np.append(tokens, [language_model.EOS, 0])) == "añ"
    assert language_model.decode([0xFF + 3, ord("b") + 3]) == "\ufffdb"  # invalid UTF-8, never an error
    with pytest.raises(TypeError, match="str or bytes"):
        language_model.encode(3)


@pytest.mark.parametrize("sizes, words", [
    (dict(num_latents=5000), "must not exceed max_context_length"),
    (dict(num_channels=30), "divisible by num_heads"),
    (dict(num_layers=0), "num_layers must be an int >= 1"),
    (dict(num_heads=2.0), "num_heads must be an int"),
])
def test_bad_sizes_are_named(sizes, words):
    with pytest.raises(ValueError, match=words):
        language_model.perceiver_ar_config(**sizes)


@pytest.fixture(scope="module")
def model_and_params():
    model = models.byte_language_model(**SIZES)
    tokens = jnp.asarray(language_model.encode("the quick brown fox jumps over the lazy dog. " * 2)[None, :58])
    params, state = jax.jit(model.init, static_argnames="is_training")(
        jax.random.PRNGKey(0), tokens, is_training=True
    )
    # Away from the zero-initialised logits layer, so that outputs differ by token.
    params = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params
    )
    return model, params, state, tokens


def test_the_factory_predicts_after_the_last_latent_positions_of_padded_rows(model_and_params):
    model, params, state, tokens = model_and_params
    apply = jax.jit(model.apply)
    padded = jnp.pad(tokens, ((0, 0), (0, 6)))  # 64, the context
    out, _ = apply(params, state, None, padded)
    np.testing.assert_array_equal(out.latent_last_steps[0], np.arange(58 - 8, 58))
    unpadded, _ = apply(params, state, None, tokens)
    np.testing.assert_allclose(out.input_events_logits, unpadded.input_events_logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="length <= 64"):
        model.apply(params, state, None, jnp.ones((1, 65), jnp.int32))


def test_bfloat16_compute_runs_in_bfloat16_and_stays_close(model_and_params):
    model, params, state, tokens = model_and_params
    low = compute.configure(model, compute_dtype=jnp.bfloat16)
    text = jax.jit(low.apply).lower(params, state, None, tokens).as_text()
    products = [line.rsplit(":", 1)[-1] for line in text.splitlines() if "dot_general" in line]
    # Every product takes bfloat16 operands (the layer norms and the loss stay float32).
    assert products and all("bf16" in p.split("->")[0] for p in products)
    full = jax.jit(model.apply)(params, state, None, tokens)[0].input_events_logits
    half = jax.jit(low.apply)(params, state, None, tokens)[0].input_events_logits
    assert half.dtype == jnp.float32  # logits come back in float32 for the loss
    scale = float(jnp.abs(full).max())
    assert float(jnp.abs(full - half).max()) < 0.03 * scale
    assert float(jnp.abs(full - half).max()) > 0  # it did compute in another precision


@pytest.mark.slow  # hk.remat around each layer; Perceiver IO's remat is checked in test_fast_paths
def test_remat_recomputes_the_same_gradient(model_and_params):
    model, params, state, tokens = model_and_params

    def loss(p, remat):
        out = model.apply(p, state, None, tokens, use_remat=remat)[0].input_events_logits
        return jnp.sum(jnp.square(out))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    plain, remat = (grad(params, r) for r in (False, True))
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(a).max()))
