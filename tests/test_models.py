"""The `perceiver.models` factories beyond the recorded fixtures."""

import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import bytes_tokenizer, checkpoint, models


def _small(model):
    factory, kwargs = ref.SMALL_FACTORIES[model]
    return models.load_for(factory, ref.checkpoint_path(model), **kwargs)


def test_mlm_short_input_equals_masked_padding():
    model, params, state = _small("mlm")
    tokenizer = bytes_tokenizer.BytesTokenizer()
    text = tokenizer.to_int("Perceiver IO reads bytes.")
    length = len(text)
    short = text[None]
    padded = np.full((1, 48), tokenizer.pad_token, np.int32)
    padded[0, :length] = text
    mask = np.zeros((1, 48), np.int32)
    mask[0, :length] = 1
    apply = jax.jit(model.apply)  # Op by op, these two calls took 16 s.
    out_short, _ = apply(params, state, None, short, np.ones_like(short))
    out_padded, _ = apply(params, state, None, padded, mask)
    assert out_short.shape == (1, length, tokenizer.vocab_size)
    np.testing.assert_allclose(out_short, out_padded[:, :length], rtol=1e-5, atol=1e-5)


def test_loaded_weights_are_on_the_device_with_the_file_values():
    _, params, state = _small("imagenet_conv")  # has both params and state
    want_params, want_state = checkpoint.load(ref.checkpoint_path("imagenet_conv"))
    for got, want in ((params, want_params), (state, want_state)):
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            assert isinstance(a, jax.Array)  # not copied in again on every compiled call
            np.testing.assert_array_equal(np.asarray(a), b)


def test_mlm_rejects_too_long_input():
    model, params, state = _small("mlm")
    tokens = np.zeros((1, 49), np.int32)
    with pytest.raises(ValueError, match="max_seq_len=48"):
        model.apply(params, state, None, tokens, np.ones_like(tokens))


def test_mlm_rejects_mismatched_mask():
    model, params, state = _small("mlm")
    tokens = np.zeros((2, 48), np.int32)
    with pytest.raises(ValueError, match="input_mask"):
        model.apply(params, state, None, tokens, np.ones((2, 47), np.int32))


def test_imagenet_rejects_wrong_size():
    model, params, state = _small("imagenet_fourier")
    with pytest.raises(ValueError, match=r"images must be \[B, 16, 16, 3\]"):
        model.apply(params, state, None, np.zeros((1, 17, 16, 3), np.float32))


def test_imagenet_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        models.imagenet_classifier("resnet")


def test_flow_rejects_wrong_frames():
    model, params, state = _small("flow")
    with pytest.raises(ValueError, match="two frames"):
        model.apply(params, state, None, np.zeros((1, 3, 12, 16, 3), np.float32))
    with pytest.raises(ValueError, match="rank 5"):
        model.apply(params, state, None, np.zeros((2, 12, 16, 3), np.float32))


@pytest.mark.slow  # 19 s; test_task_video checks chunked decoding at small size
def test_video_full_decode_equals_chunks():
    """Decoding all outputs at once equals concatenated chunks of subsampled outputs."""
    model, params, state = _small("video_autoencoding")
    inputs, _ = ref.recorded("video_autoencoding")
    images, audio = inputs["images"], inputs["audio"]
    full, _ = model.apply(params, state, None, images, audio)
    n_image, n_audio = 4 * 16 * 16, 4 * 64 // 8
    assert full["image"].shape == (1, n_image, 3)
    assert full["audio"].shape == (1, n_audio * 8)
    chunks = 4
    parts = []
    for i in range(chunks):
        sub = {
            "image": np.arange(i * n_image // chunks, (i + 1) * n_image // chunks),
            "audio": np.arange(i * n_audio // chunks, (i + 1) * n_audio // chunks),
        }
        out, _ = model.apply(params, state, None, images, audio, sub)
        parts.append(out)
    np.testing.assert_allclose(
        np.concatenate([p["image"] for p in parts], axis=1), full["image"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.concatenate([p["audio"] for p in parts], axis=1), full["audio"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(parts[0]["label"], full["label"], rtol=1e-5, atol=1e-5)


def test_video_rejects_out_of_grid_subsampling():
    model, params, state = _small("video_autoencoding")
    inputs, _ = ref.recorded("video_autoencoding")
    sub = {"image": np.array([0, 4 * 16 * 16]), "audio": np.arange(4)}
    with pytest.raises(ValueError, match="subsampled_points"):
        model.apply(params, state, None, inputs["images"], inputs["audio"], sub)


def test_factories_train_mode_with_key_differs_only_by_dropout():
    """is_training=True with a key runs; with no dropout the result equals inference."""
    model, params, state = _small("flow")
    inputs, expected = ref.recorded("flow")
    apply = jax.jit(model.apply, static_argnames="is_training")  # Op by op: 10 s.
    out, _ = apply(params, state, jax.random.PRNGKey(0), inputs["images"], is_training=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_parameter_shapes_rejects_unknown_factory():
    with pytest.raises(ValueError, match="factory"):
        models.parameter_shapes("resnet50")


def test_parameter_shapes_takes_the_factory_function_or_its_name():
    sizes = ref.SMALL_FACTORIES["flow"][1]
    by_function = models.parameter_shapes(models.optical_flow, **sizes)
    assert by_function == models.parameter_shapes("optical_flow", **sizes)
    assert ref.tree_spec(by_function[0]) == ref.param_trees()["flow"]["small"]["params"]
    assert models.factory_sizes(models.optical_flow)["num_latents"] == 2048
    with pytest.raises(TypeError, match="factory must be a factory name"):
        models.parameter_shapes(len)


def _conv_model():
    sizes = dict(ref.SMALL_FACTORIES["imagenet_conv"][1])
    return models.imagenet_classifier(sizes.pop("variant"), **sizes), sizes["image_size"]


def test_conv_classifier_inits_in_evaluation_mode_as_in_training():
    """BatchNorm state exists after init(rng, images) alone, with the recorded tree."""
    model, size = _conv_model()
    images = np.zeros((2, size, size, 3), np.float32)
    key = jax.random.PRNGKey(3)
    # Traced, not computed: the tree is what init builds.
    params, state = jax.eval_shape(lambda: model.init(key, images))
    trained = jax.eval_shape(lambda: model.init(key, images, is_training=True))
    recorded = ref.param_trees()["imagenet_conv"]["small"]
    assert ref.tree_spec(params) == recorded["params"]
    assert ref.tree_spec(state) == recorded["state"]
    assert (params, state) == trained  # shapes and dtypes
    # Applying is untouched: evaluation mode still reads the moving averages.
    _, ckpt_params, ckpt_state = _small("imagenet_conv")
    inputs, expected = ref.recorded("imagenet_conv")
    out, _ = jax.jit(model.apply)(ckpt_params, ckpt_state, None, inputs["images"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_text_classifier_is_the_finetune_recipes_model():
    """The factory the description names builds the tree `finetune_text` trains, same function."""
    from perceiver.train import finetune

    sizes = ref.SMALL_FACTORIES["mlm"][1]
    ours = models.text_classifier(num_classes=3, **sizes)
    recipe = finetune.text_classifier(3, **sizes)
    tokens = np.full((2, 10), 9, np.int32)
    mask = np.ones_like(tokens)
    key = jax.random.PRNGKey(1)
    trees = [jax.eval_shape(lambda m=m: m.init(key, tokens, mask, is_training=True)) for m in (ours, recipe)]
    assert trees[0] == trees[1]
    assert models.parameter_shapes(models.text_classifier, num_classes=3, **sizes)[0] == trees[0][0]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), trees[0][0])
    state = trees[0][1]
    mask[1, 6:] = 0  # padding is masked out alike
    out, _ = jax.jit(ours.apply)(params, state, None, tokens, mask)
    expected, _ = jax.jit(recipe.apply)(params, state, None, tokens, mask)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, expected)
    # Its embedding and encoder are the MLM's, so the MLM's checkpoint fills them.
    mlm_params, _ = models.parameter_shapes("masked_language_model", **sizes)
    shared = {m for m in params if not m.startswith("classification_decoder")}
    assert shared and shared <= set(mlm_params)
    with pytest.raises(TypeError, match="num_classes"):
        models.factory_sizes("text_classifier")
