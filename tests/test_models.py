"""The `perceiver.models` factories beyond the recorded fixtures."""

import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import bytes_tokenizer, models


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
    out_short, _ = model.apply(params, state, None, short, np.ones_like(short))
    out_padded, _ = model.apply(params, state, None, padded, mask)
    assert out_short.shape == (1, length, tokenizer.vocab_size)
    np.testing.assert_allclose(out_short, out_padded[:, :length], rtol=1e-5, atol=1e-5)


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
    out, _ = model.apply(params, state, jax.random.PRNGKey(0), inputs["images"], is_training=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_parameter_shapes_rejects_unknown_factory():
    with pytest.raises(ValueError, match="factory"):
        models.parameter_shapes("resnet50")
