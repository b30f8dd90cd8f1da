"""Bad input fails early with a ValueError/TypeError that names the argument."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import haiku as hk
import jax
import numpy as np
import pytest

from perceiver import io_processors
from perceiver import perceiver
from perceiver import position_encoding

KEY = jax.random.PRNGKey(0)
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _init(fn, *args):
    """Builds `fn` under hk.transform_with_state and runs init (traced, for speed).

    Argument checks run while tracing, so errors surface exactly as eagerly.
    """
    return jax.jit(hk.transform_with_state(fn).init)(KEY, *args)


def _jit(f):
    return jax.jit(f, static_argnames="is_training")


def _fourier_kwargs(num_bands=2, **extra):
    return dict(fourier_position_encoding_kwargs=dict(num_bands=num_bands, **extra))


def _image_prep(**kwargs):
    args = dict(
        prep_type="patches",
        spatial_downsample=2,
        temporal_downsample=1,
        position_encoding_type="fourier",
        **_fourier_kwargs(),
    )
    args.update(kwargs)
    return io_processors.ImagePreprocessor(**args)


def _small_encoder(**kwargs):
    args = dict(
        num_self_attends_per_block=1,
        num_blocks=1,
        z_index_dim=4,
        num_z_channels=8,
        num_cross_attend_heads=1,
        num_self_attend_heads=2,
        cross_attend_widening_factor=1,
        self_attend_widening_factor=1,
        dropout_prob=0.0,
        z_pos_enc_init_scale=0.02,
        cross_attention_shape_for_attn="kv",
    )
    args.update(kwargs)
    return perceiver.PerceiverEncoder(**args)


def _small_decoder(**kwargs):
    args = dict(
        output_num_channels=3,
        position_encoding_type="fourier",
        output_index_dims=(4, 4),
        num_z_channels=8,
        use_query_residual=False,
        **_fourier_kwargs(),
    )
    args.update(kwargs)
    return perceiver.BasicDecoder(**args)


# ---------------------------------------------------------------------------
# ImagePreprocessor
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 4, 4), (1, 2, 2, 4, 4, 3), (4, 4)])
def test_image_preprocessor_wrong_rank(shape):
    x = np.zeros(shape, np.float32)

    def fn(x):
        return _image_prep()(x, is_training=False)

    with pytest.raises(ValueError, match=r"inputs must have rank 4 or 5"):
        _init(fn, x)


@pytest.mark.parametrize("prep_type", ["patches", "pixels", "conv1x1"])
def test_image_preprocessor_wrong_rank_any_prep_type(prep_type):
    def fn(x):
        return _image_prep(prep_type=prep_type)(x, is_training=False)

    with pytest.raises(ValueError, match=r"inputs"):
        _init(fn, np.zeros((2, 4, 4), np.float32))


@pytest.mark.parametrize(
    "shape,what",
    [((1, 5, 4, 3), "height"), ((1, 4, 6, 3), None), ((1, 4, 7, 3), "width"), ((1, 2, 3, 4, 3), "height")],
)
def test_image_preprocessor_patches_spatial_not_divisible(shape, what):
    def fn(x):
        return _image_prep(spatial_downsample=4 if shape == (1, 4, 6, 3) else 2)(x, is_training=False)

    match = r"inputs (height|width).*divisible" if what is None else rf"inputs {what}.*divisible"
    with pytest.raises(ValueError, match=match):
        _init(fn, np.zeros(shape, np.float32))


def test_image_preprocessor_patches_time_not_divisible():
    def fn(x):
        return _image_prep(spatial_downsample=1, temporal_downsample=2)(x, is_training=False)

    with pytest.raises(ValueError, match=r"inputs time size \(3\).*divisible.*\(2\)"):
        _init(fn, np.zeros((1, 3, 4, 4, 3), np.float32))


def test_image_preprocessor_patches_divisible_works():
    def fn(x):
        return _image_prep(spatial_downsample=2, temporal_downsample=2)(x, is_training=False)

    x = np.zeros((1, 4, 4, 6, 3), np.float32)
    params, state = _init(fn, x)
    out, _ = hk.transform_with_state(fn).apply(params, state, None, x)
    assert out[0].shape[:2] == (1, 2 * 2 * 3)


def test_image_preprocessor_unknown_prep_type():
    with pytest.raises(ValueError, match=r"prep_type.*'bogus'"):
        _init(lambda: _image_prep(prep_type="bogus"))


def test_image_preprocessor_unknown_concat_or_add_pos():
    with pytest.raises(ValueError, match=r"concat_or_add_pos.*'sum'"):
        _init(lambda: _image_prep(concat_or_add_pos="sum"))


@pytest.mark.parametrize("bad", ["learned", "none", "Fourier", ""])
def test_image_preprocessor_unknown_position_encoding_type_at_construction(bad):
    # Raised by the constructor, before any input is seen.
    with pytest.raises(ValueError, match=r"position_encoding_type"):
        _init(lambda: _image_prep(position_encoding_type=bad))


@pytest.mark.parametrize("spatial_downsample", [2, 8, 3, 32])
def test_image_preprocessor_conv_needs_power_of_4(spatial_downsample):
    with pytest.raises(ValueError, match=r"spatial_downsample.*power of 4"):
        _init(lambda: _image_prep(prep_type="conv", spatial_downsample=spatial_downsample))


@pytest.mark.parametrize("spatial_downsample", [1, 4, 16])
def test_image_preprocessor_conv_power_of_4_constructs(spatial_downsample):
    _init(lambda: _image_prep(prep_type="conv", spatial_downsample=spatial_downsample))


def test_image_preprocessor_conv_temporal_downsample_rejected():
    with pytest.raises(ValueError, match=r"temporal_downsample"):
        _init(lambda: _image_prep(prep_type="conv", spatial_downsample=4, temporal_downsample=2))


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)])
def test_image_preprocessor_bad_downsample_values(bad, exc):
    with pytest.raises(exc, match=r"spatial_downsample"):
        _init(lambda: _image_prep(spatial_downsample=bad))
    with pytest.raises(exc, match=r"temporal_downsample"):
        _init(lambda: _image_prep(temporal_downsample=bad))


def test_image_preprocessor_add_with_mismatched_channels():
    def fn(x):
        return _image_prep(concat_or_add_pos="add")(x, is_training=False)

    with pytest.raises(ValueError, match=r"concat_or_add_pos='add'"):
        _init(fn, np.zeros((1, 4, 4, 3), np.float32))


# ---------------------------------------------------------------------------
# Postprocessors and audio
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["bogus", "PIXELS", "flow"])
def test_image_postprocessor_unknown_type(bad):
    with pytest.raises(ValueError, match=r"postproc_type.*" + repr(bad)):
        _init(lambda: io_processors.ImagePostprocessor(postproc_type=bad))


def test_image_postprocessor_conv_needs_n_outputs():
    with pytest.raises(ValueError, match=r"n_outputs"):
        _init(lambda: io_processors.ImagePostprocessor(postproc_type="conv"))


def test_image_postprocessor_pixels_cannot_upsample():
    with pytest.raises(ValueError, match=r"spatial_upsample"):
        _init(lambda: io_processors.ImagePostprocessor(postproc_type="pixels", spatial_upsample=2))


def test_audio_preprocessor_unknown_prep_type():
    with pytest.raises(ValueError, match=r"prep_type.*'spectrogram'"):
        _init(lambda: io_processors.AudioPreprocessor(prep_type="spectrogram", **_fourier_kwargs()))


def test_audio_preprocessor_unknown_position_encoding_type():
    with pytest.raises(ValueError, match=r"position_encoding_type"):
        _init(lambda: io_processors.AudioPreprocessor(position_encoding_type="sinusoid"))


def test_audio_preprocessor_unknown_concat_or_add_pos():
    with pytest.raises(ValueError, match=r"concat_or_add_pos"):
        _init(lambda: io_processors.AudioPreprocessor(concat_or_add_pos="x", **_fourier_kwargs()))


def test_audio_postprocessor_unknown_type():
    with pytest.raises(ValueError, match=r"postproc_type.*'pixels'"):
        _init(lambda: io_processors.AudioPostprocessor(postproc_type="pixels"))


@pytest.mark.parametrize("shape", [(2, 10), (1, 7, 2), (1, 5, 1)])
def test_audio_preprocessor_samples_not_divisible(shape):
    def fn(x):
        prep = io_processors.AudioPreprocessor(
            samples_per_patch=4, **_fourier_kwargs(max_resolution=(8,))
        )
        return prep(x, is_training=False)

    with pytest.raises(ValueError, match=r"samples.*divisible by samples_per_patch \(4\)"):
        _init(fn, np.zeros(shape, np.float32))


def test_audio_preprocessor_divisible_works():
    def fn(x):
        prep = io_processors.AudioPreprocessor(samples_per_patch=4, **_fourier_kwargs())
        return prep(x, is_training=False)

    x = np.zeros((2, 12, 1), np.float32)
    params, state = _init(fn, x)
    (out, sizes, without_pos), _ = hk.transform_with_state(fn).apply(params, state, None, x)
    assert out.shape == (2, 3, 4 + 1 + 2 * 2)
    assert sizes is None
    assert without_pos.shape == (2, 3, 4)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-4, ValueError), (4.0, TypeError)])
def test_audio_preprocessor_bad_samples_per_patch(bad, exc):
    with pytest.raises(exc, match=r"samples_per_patch"):
        _init(lambda: io_processors.AudioPreprocessor(samples_per_patch=bad, **_fourier_kwargs()))


# ---------------------------------------------------------------------------
# build_position_encoding
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["learned", "none", "sin", "TRAINABLE"])
def test_build_position_encoding_unknown_type(bad):
    with pytest.raises(ValueError, match=r"position_encoding_type.*" + repr(bad)):
        position_encoding.build_position_encoding(bad, index_dims=(4,))


def test_build_position_encoding_missing_trainable_kwargs():
    with pytest.raises(ValueError, match=r"trainable_position_encoding_kwargs"):
        _init(lambda: position_encoding.build_position_encoding("trainable", index_dims=(4,)))


def test_build_position_encoding_missing_fourier_kwargs():
    with pytest.raises(ValueError, match=r"fourier_position_encoding_kwargs"):
        _init(lambda: position_encoding.build_position_encoding("fourier", index_dims=(4,)))


def test_build_position_encoding_missing_kwargs_via_preprocessor():
    def fn(x):
        return io_processors.ImagePreprocessor(
            prep_type="pixels", spatial_downsample=1, position_encoding_type="trainable"
        )(x, is_training=False)

    with pytest.raises(ValueError, match=r"trainable_position_encoding_kwargs"):
        _init(fn, np.zeros((1, 2, 2, 3), np.float32))


def test_generate_fourier_features_bad_pos():
    with pytest.raises(ValueError, match=r"pos must have rank 2"):
        position_encoding.generate_fourier_features(np.zeros((2, 3, 2), np.float32), 2, (4, 4))
    with pytest.raises(ValueError, match=r"max_resolution"):
        position_encoding.generate_fourier_features(np.zeros((3, 2), np.float32), 2, (4, 4, 4))


def test_fourier_position_encoding_pos_with_wrong_dims():
    def fn():
        return position_encoding.FourierPositionEncoding(index_dims=(2, 2), num_bands=2)(
            batch_size=1, pos=np.zeros((1, 4, 3), np.float32)
        )

    with pytest.raises(ValueError, match=r"pos must have 2 coordinates"):
        _init(fn)


# ---------------------------------------------------------------------------
# Attention / encoder head counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(num_heads=3, qk_channels=8), "qk_channels"),
        (dict(num_heads=2, qk_channels=8, v_channels=5), "v_channels"),
        (dict(num_heads=4), "qk_channels"),  # default: query channels (6)
    ],
)
def test_attention_channels_not_divisible_by_heads(kwargs, arg):
    def fn(q, kv):
        return perceiver.Attention(**kwargs)(q, kv)

    q = np.zeros((1, 3, 6), np.float32)
    kv = np.zeros((1, 5, 7), np.float32)
    with pytest.raises(ValueError, match=rf"{arg} \(\d+\) must be divisible by num_heads"):
        _init(fn, q, kv)


def test_attention_batch_mismatch_and_rank():
    def fn(q, kv):
        return perceiver.Attention(num_heads=1)(q, kv)

    with pytest.raises(ValueError, match=r"batch size"):
        _init(fn, np.zeros((1, 3, 4), np.float32), np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"inputs_q must have rank 3"):
        _init(fn, np.zeros((3, 4), np.float32), np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"inputs_kv must have rank 3"):
        _init(fn, np.zeros((1, 3, 4), np.float32), np.zeros((1, 2, 5, 4), np.float32))


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(num_z_channels=10, num_self_attend_heads=4), "num_self_attend_heads"),
        (dict(num_z_channels=9, num_self_attend_heads=3, num_cross_attend_heads=2), "num_cross_attend_heads"),
    ],
)
def test_encoder_num_z_channels_not_divisible(kwargs, arg):
    with pytest.raises(ValueError, match=rf"num_z_channels \(\d+\) must be divisible by {arg}"):
        _init(lambda: _small_encoder(**kwargs))


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        (dict(qk_channels=6, num_self_attend_heads=4), "qk_channels"),
        (dict(qk_channels=8, v_channels=6, num_self_attend_heads=4), "v_channels"),
        (dict(qk_channels=6, num_cross_attend_heads=4, num_self_attend_heads=2), "qk_channels"),
    ],
)
def test_encoder_qk_v_channels_not_divisible(kwargs, arg):
    def fn(x):
        enc = _small_encoder(**kwargs)
        return enc(x, enc.latents(x), is_training=False)

    with pytest.raises(ValueError, match=rf"{arg} \(\d+\) must be divisible by num_heads"):
        _init(fn, np.zeros((1, 5, 3), np.float32))


@pytest.mark.parametrize("bad", ["k", "v", "qkv", None])
def test_cross_attention_unknown_shape_for_attn(bad):
    with pytest.raises(ValueError, match=r"shape_for_attn"):
        _init(lambda: perceiver.CrossAttention(shape_for_attn=bad))


def test_encoder_unknown_shape_for_attn():
    with pytest.raises(ValueError, match=r"shape_for_attn"):
        _init(lambda: _small_encoder(cross_attention_shape_for_attn="queries"))


# ---------------------------------------------------------------------------
# attend / masks
# ---------------------------------------------------------------------------


def test_attend_shape_errors():
    q = np.zeros((2, 3, 2, 4), np.float32)
    k = np.zeros((2, 5, 2, 4), np.float32)
    v = np.zeros((2, 5, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"q must have rank 4"):
        perceiver.attend(q[0], k, v)
    with pytest.raises(ValueError, match=r"q and k"):
        perceiver.attend(q, k[..., :3], v)
    with pytest.raises(ValueError, match=r"k and v"):
        perceiver.attend(q, k, v[:, :4])
    with pytest.raises(ValueError, match=r"attention_mask"):
        perceiver.attend(q, k, v, attention_mask=np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"attention_mask"):
        perceiver.attend(q, k, v, attention_mask=np.ones((3, 3, 5)))
    with pytest.raises(ValueError, match=r"attention_mask"):
        perceiver.attend(q, k, v, attention_mask=np.ones((3, 5)))


def test_make_cross_attention_mask_errors():
    with pytest.raises(ValueError, match=r"query_mask must have rank 2"):
        perceiver.make_cross_attention_mask(np.ones((2, 3, 1)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"kv_mask must have rank 2"):
        perceiver.make_cross_attention_mask(np.ones((2, 3)), np.ones((4,)))
    with pytest.raises(ValueError, match=r"same batch size"):
        perceiver.make_cross_attention_mask(np.ones((2, 3)), np.ones((3, 4)))


# ---------------------------------------------------------------------------
# MultimodalPreprocessor
# ---------------------------------------------------------------------------


def _multimodal(mask_probs=None):
    return io_processors.MultimodalPreprocessor(
        modalities={
            "audio": io_processors.AudioPreprocessor(
                samples_per_patch=2, **_fourier_kwargs(max_resolution=(8,))
            ),
            "label": io_processors.OneHotPreprocessor(),
        },
        mask_probs=mask_probs,
        min_padding_size=2,
    )


def _mm_inputs():
    return {"audio": np.ones((2, 8), np.float32), "label": np.eye(2, 3, dtype=np.float32)}


@pytest.mark.parametrize(
    "inputs,pattern",
    [
        ({"audio": np.ones((2, 8), np.float32)}, r"inputs must have exactly.*missing \['label'\]"),
        (
            dict(_mm_inputs(), video=np.ones((2, 4, 4, 3), np.float32)),
            r"inputs must have exactly.*unexpected \['video'\]",
        ),
        ({"audio": np.ones((2, 8), np.float32), "lable": np.eye(2, 3)}, r"inputs.*'lable'"),
    ],
)
def test_multimodal_inputs_keys(inputs, pattern):
    def fn(inputs):
        return _multimodal()(inputs, is_training=False)

    with pytest.raises(ValueError, match=pattern):
        _init(fn, inputs)


def test_multimodal_inputs_not_a_dict():
    def fn(x):
        return _multimodal()(x, is_training=False)

    with pytest.raises(TypeError, match=r"inputs must be a dict"):
        _init(fn, np.ones((2, 8), np.float32))


@pytest.mark.parametrize(
    "mask_probs,pattern",
    [
        ({"audio": 0.0}, r"mask_probs.*missing \['label'\]"),
        ({"audio": 0.0, "label": 1.0, "image": 0.5}, r"mask_probs.*unexpected \['image'\]"),
        ({"audio": 0.1, "video": 0.0}, r"mask_probs"),
    ],
)
def test_multimodal_mask_probs_keys(mask_probs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _init(lambda: _multimodal(mask_probs))


@pytest.mark.parametrize("bad", [-0.1, 1.5, 2, float("nan")])
def test_multimodal_mask_prob_out_of_range(bad):
    with pytest.raises(ValueError, match=r"mask_probs\['audio'\] must be in \[0, 1\]"):
        _init(lambda: _multimodal({"audio": bad, "label": 0.0}))


def test_multimodal_random_mask_without_rng_raises():
    def fn(inputs):
        return _multimodal({"audio": 0.5, "label": 0.0})(inputs, is_training=False)

    t = hk.transform_with_state(fn)
    params, state = t.init(KEY, _mm_inputs())
    with pytest.raises(ValueError, match=r"mask_probs\['audio'\]=0.5.*random key"):
        t.apply(params, state, None, _mm_inputs())
    # With a key it works.
    (out, sizes, _), _ = t.apply(params, state, KEY, _mm_inputs())
    assert sizes == {"audio": 4, "label": 1}
    assert out.shape[:2] == (2, 5)


def test_multimodal_mask_probs_0_and_1_need_no_rng():
    def fn(inputs):
        return _multimodal({"audio": 0.0, "label": 1.0})(inputs, is_training=False)

    t = hk.transform_with_state(fn)
    params, state = t.init(KEY, _mm_inputs())
    (out, sizes, _), _ = t.apply(params, state, None, _mm_inputs())
    (out_k, _, _), _ = t.apply(params, state, KEY, _mm_inputs())
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out_k))
    out = np.asarray(out)
    # 'audio' (sorted first, 4 positions) is unmasked; 'label' is the mask token.
    (token_module,) = [m for m in params if m.endswith("label_mask_token")]
    token = np.asarray(params[token_module]["pos_embs"])[0]
    np.testing.assert_array_equal(out[:, 4], np.broadcast_to(token, out[:, 4].shape))
    assert not np.allclose(out[:, 0], out[:, 1])


# ---------------------------------------------------------------------------
# BasicDecoder
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "points,pattern",
    [
        (np.array([-1, 0, 3]), r"subsampled_points must lie in \[0, 16\)"),
        (np.array([0, 16]), r"subsampled_points must lie in \[0, 16\)"),
        (np.array([100]), r"subsampled_points must lie in \[0, 16\)"),
        (np.array([[0, 1], [2, 3]]), r"subsampled_points must be a 1D array"),
        (np.array(3), r"subsampled_points must be a 1D array"),
    ],
)
@pytest.mark.parametrize("pe_type", ["fourier", "trainable"])
def test_basic_decoder_bad_subsampled_points(points, pattern, pe_type):
    def fn(z):
        kwargs = {}
        if pe_type == "trainable":
            kwargs = dict(trainable_position_encoding_kwargs=dict(num_channels=8))
        dec = _small_decoder(position_encoding_type=pe_type, **kwargs)
        return dec.decoder_query(z, subsampled_points=points)

    with pytest.raises(ValueError, match=pattern):
        _init(fn, np.zeros((1, 4, 8), np.float32))


def test_basic_decoder_float_subsampled_points_type_error():
    def fn(z):
        return _small_decoder().decoder_query(z, subsampled_points=np.array([0.0, 1.5]))

    with pytest.raises(TypeError, match=r"subsampled_points must be integers"):
        _init(fn, np.zeros((1, 4, 8), np.float32))


def test_basic_decoder_valid_subsampled_points():
    def fn(z):
        return _small_decoder().decoder_query(z, subsampled_points=np.array([0, 5, 15]))

    params, state = _init(fn, np.zeros((2, 4, 8), np.float32))
    q, _ = hk.transform_with_state(fn).apply(params, state, None, np.zeros((2, 4, 8), np.float32))
    assert q.shape == (2, 3, 2 + 2 * 2 * 2)


@pytest.mark.parametrize("bad", ["learned", "Fourier", "sine"])
def test_basic_decoder_unknown_position_encoding_type(bad):
    with pytest.raises(ValueError, match=r"position_encoding_type.*" + repr(bad)):
        _init(lambda: _small_decoder(position_encoding_type=bad))


def test_basic_decoder_none_position_encoding_has_no_queries():
    def fn(z):
        return _small_decoder(position_encoding_type="none").decoder_query(z)

    with pytest.raises(ValueError, match=r"position_encoding_type='none'"):
        _init(fn, np.zeros((1, 4, 8), np.float32))


@pytest.mark.parametrize("mask_shape", [(2, 15), (1, 16), (2, 16, 1), (16,)])
def test_basic_decoder_query_mask_wrong_shape(mask_shape):
    def fn(z):
        dec = _small_decoder()
        q = dec.decoder_query(z)
        return dec(q, z, is_training=False, query_mask=np.ones(mask_shape, np.int32))

    with pytest.raises(ValueError, match=r"query_mask must have shape \(2, 16\)"):
        _init(fn, np.zeros((2, 4, 8), np.float32))


# ---------------------------------------------------------------------------
# Perceiver / PerceiverEncoder masks
# ---------------------------------------------------------------------------


def _small_perceiver(dropout_prob=0.0):
    return perceiver.Perceiver(
        input_preprocessor=_image_prep(spatial_downsample=2),
        encoder=_small_encoder(dropout_prob=dropout_prob),
        decoder=_small_decoder(output_index_dims=(2, 2)),
    )


@pytest.mark.parametrize("mask_shape", [(2, 3), (1, 4), (2, 4, 1), (4,)])
def test_perceiver_input_mask_wrong_shape(mask_shape):
    # 4x4 images, spatial_downsample 2 -> 4 inputs after preprocessing.
    def fn(x):
        return _small_perceiver()(x, is_training=False, input_mask=np.ones(mask_shape, np.int32))

    with pytest.raises(ValueError, match=r"input_mask must have shape \(2, 4\)"):
        _init(fn, np.zeros((2, 4, 4, 3), np.float32))


def test_perceiver_query_mask_wrong_shape():
    def fn(x):
        return _small_perceiver()(x, is_training=False, query_mask=np.ones((2, 5), np.int32))

    with pytest.raises(ValueError, match=r"query_mask must have shape \(2, 4\)"):
        _init(fn, np.zeros((2, 4, 4, 3), np.float32))


def test_encoder_input_mask_wrong_shape():
    def fn(x):
        enc = _small_encoder()
        return enc(x, enc.latents(x), is_training=False, input_mask=np.ones((1, 5)))

    with pytest.raises(ValueError, match=r"input_mask must have shape \(2, 5\)"):
        _init(fn, np.zeros((2, 5, 3), np.float32))


def test_encoder_inputs_wrong_rank():
    def fn(x):
        enc = _small_encoder()
        return enc(x, enc.latents(x), is_training=False)

    with pytest.raises(ValueError, match=r"inputs must have rank 3"):
        _init(fn, np.zeros((2, 5, 3, 1), np.float32))


def test_perceiver_correct_masks_work():
    def fn(x, im, qm):
        return _small_perceiver()(x, is_training=False, input_mask=im, query_mask=qm)

    x = np.ones((2, 4, 4, 3), np.float32)
    im = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.int32)
    qm = np.array([[1, 0, 1, 1], [1, 1, 1, 1]], np.int32)
    t = hk.transform_with_state(fn)
    params, state = jax.jit(t.init)(KEY, x, im, qm)
    out, _ = jax.jit(t.apply)(params, state, None, x, im, qm)
    assert out.shape == (2, 4, 3)
    assert np.all(np.isfinite(np.asarray(out)))


# ---------------------------------------------------------------------------
# space_to_depth / extract_patches / patches_for_flow
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 4, 3), (1, 1, 2, 4, 4, 3), (4,)])
def test_space_to_depth_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"frames must have rank 4 or 5"):
        io_processors.space_to_depth(np.zeros(shape, np.float32), spatial_block_size=1)
    with pytest.raises(ValueError, match=r"frames must have rank 4 or 5"):
        io_processors.reverse_space_to_depth(np.zeros(shape, np.float32))


@pytest.mark.parametrize(
    "shape,t,s,pattern",
    [
        ((1, 5, 4, 3), 1, 2, r"frames height \(5\).*spatial_block_size \(2\)"),
        ((1, 4, 6, 3), 1, 4, r"frames height \(4\)|frames width \(6\)"),
        ((1, 4, 6, 3), 1, 3, r"frames height \(4\).*spatial_block_size \(3\)"),
        ((1, 3, 4, 4, 3), 2, 1, r"frames time size \(3\).*temporal_block_size \(2\)"),
        ((1, 4, 4, 4, 3), 1, 0, r"spatial_block_size must be >= 1; got 0"),
        ((1, 4, 4, 4, 3), -1, 1, r"temporal_block_size must be >= 1; got -1"),
    ],
)
def test_space_to_depth_not_divisible(shape, t, s, pattern):
    with pytest.raises(ValueError, match=pattern):
        io_processors.space_to_depth(
            np.zeros(shape, np.float32), temporal_block_size=t, spatial_block_size=s
        )


def test_reverse_space_to_depth_channels_not_divisible():
    with pytest.raises(ValueError, match=r"frames channels \(6\)"):
        io_processors.reverse_space_to_depth(np.zeros((1, 2, 2, 6), np.float32), spatial_block_size=2)
    with pytest.raises(ValueError, match=r"frames channels \(8\)"):
        io_processors.reverse_space_to_depth(
            np.zeros((1, 2, 2, 2, 8), np.float32), temporal_block_size=3, spatial_block_size=1
        )


_GOOD_WINDOW = dict(sizes=[1, 2, 2, 1], strides=[1, 1, 1, 1], rates=[1, 1, 1, 1])


@pytest.mark.parametrize("shape", [(4, 4, 3), (1, 2, 4, 4, 3), (4,)])
def test_extract_patches_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"images must have rank 4"):
        io_processors.extract_patches(np.zeros(shape, np.float32), **_GOOD_WINDOW)


@pytest.mark.parametrize("arg", ["sizes", "strides", "rates"])
@pytest.mark.parametrize("bad", [[1, 2, 2], [2, 2, 2, 1], [1, 2, 2, 3], [2, 2], [1, 1, 1, 1, 1]])
def test_extract_patches_malformed_window(arg, bad):
    kwargs = dict(_GOOD_WINDOW)
    kwargs[arg] = bad
    with pytest.raises(ValueError, match=rf"{arg} must be \[1, rows, cols, 1\]"):
        io_processors.extract_patches(np.zeros((1, 4, 4, 1), np.float32), **kwargs)


@pytest.mark.parametrize("bad", ["same", "valid", "FULL", "CAUSAL", ""])
def test_extract_patches_unknown_padding(bad):
    with pytest.raises(ValueError, match=r"padding must be one of"):
        io_processors.extract_patches(np.zeros((1, 4, 4, 1), np.float32), padding=bad, **_GOOD_WINDOW)


@pytest.mark.parametrize("arg", ["sizes", "strides", "rates"])
@pytest.mark.parametrize("bad", [[1, 0, 2, 1], [1, 2, -1, 1], [1, 2.0, 2, 1], [1, 2.5, 2, 1]])
def test_extract_patches_nonpositive_window_names_argument(arg, bad):
    kwargs = dict(_GOOD_WINDOW)
    kwargs[arg] = bad
    with pytest.raises(ValueError, match=rf"{arg} must be \[1, rows, cols, 1\] of positive ints"):
        io_processors.extract_patches(np.zeros((1, 4, 4, 1), np.float32), **kwargs)


@pytest.mark.parametrize("shape", [(1, 4, 4, 3), (1, 1, 2, 4, 4, 3)])
def test_patches_for_flow_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"inputs must have rank 5"):
        io_processors.patches_for_flow(np.zeros(shape, np.float32))


# ---------------------------------------------------------------------------
# Dropout and random keys
# ---------------------------------------------------------------------------


def test_mlp_dropout_without_rng_in_training_raises():
    def fn(x, is_training):
        return perceiver.MLP(dropout_prob=0.2)(x, is_training=is_training)

    t = hk.transform(fn)
    init, apply = _jit(t.init), _jit(t.apply)
    x = np.ones((1, 3, 4), np.float32)
    params = init(KEY, x, is_training=True)
    with pytest.raises(ValueError, match=r"random key"):
        apply(params, None, x, is_training=True)
    out = apply(params, None, x, is_training=False)
    assert out.shape == (1, 3, 4)


def test_attention_dropout_without_rng_raises():
    def fn(x):
        return perceiver.Attention(num_heads=2, dropout_prob=0.3)(x, x)

    t = hk.transform(fn)
    init, apply = jax.jit(t.init), jax.jit(t.apply)
    x = np.ones((1, 3, 4), np.float32)
    params = init(KEY, x)
    with pytest.raises(ValueError, match=r"attention dropout_prob 0.3 needs a random key"):
        apply(params, None, x)
    assert apply(params, KEY, x).shape == (1, 3, 4)


def test_encoder_dropout_is_training_without_rng_raises():
    def fn(x, is_training):
        enc = _small_encoder(dropout_prob=0.1)
        return enc(x, enc.latents(x), is_training=is_training)

    t = hk.transform(fn)
    init, apply = _jit(t.init), _jit(t.apply)
    x = np.ones((2, 5, 3), np.float32)
    params = init(KEY, x, is_training=True)
    with pytest.raises(ValueError, match=r"dropout with rate 0.1 needs a random key"):
        apply(params, None, x, is_training=True)
    out = apply(params, None, x, is_training=False)
    assert out.shape == (2, 4, 8)
    # Training with a key runs, and actually drops something.
    out_train = apply(params, KEY, x, is_training=True)
    assert not np.allclose(np.asarray(out_train), np.asarray(out))


def test_inference_needs_no_key():
    def fn(x, is_training):
        return _small_perceiver(dropout_prob=0.1)(x, is_training=is_training)

    t = hk.transform_with_state(fn)
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
    params, state = _jit(t.init)(KEY, x, is_training=True)
    # Under jit: op by op, these calls took 15 s of the suite.
    apply = jax.jit(t.apply, static_argnames="is_training")
    out_none, _ = apply(params, state, None, x, is_training=False)
    out_key, _ = apply(params, state, jax.random.PRNGKey(42), x, is_training=False)
    assert out_none.shape == (2, 4, 3)
    np.testing.assert_array_equal(np.asarray(out_none), np.asarray(out_key))
    # Training with dropout > 0 still demands a key (checked while tracing).
    with pytest.raises(ValueError, match=r"random key"):
        apply(params, state, None, x, is_training=True)


# ---------------------------------------------------------------------------
# Deprecation warnings
# ---------------------------------------------------------------------------


def _own_deprecations(records):
    return [
        f"{r.filename}:{r.lineno}: {r.message}"
        for r in records
        if issubclass(r.category, DeprecationWarning)
        and "/perceiver/" in r.filename.replace(os.sep, "/")
    ]


@pytest.mark.slow  # setup.cfg already turns the package's DeprecationWarnings into errors in every test
def test_running_a_model_emits_no_deprecation_warning_from_package():
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")

        def fn(x, is_training):
            return _small_perceiver(dropout_prob=0.1)(x, is_training=is_training)

        t = hk.transform_with_state(fn)
        x = np.ones((2, 4, 4, 3), np.float32)
        params, state = _jit(t.init)(KEY, x, is_training=False)
        t.apply(params, state, None, x, is_training=False)  # eager
        _jit(t.apply)(params, state, KEY, x, is_training=True)  # traced, with dropout
        io_processors.patches_for_flow(np.ones((1, 2, 4, 4, 1), np.float32))
    assert _own_deprecations(records) == []


_FRESH_IMPORT_SCRIPT = textwrap.dedent(
    """
    import json, os, warnings
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        import haiku as hk
        import jax
        import numpy as np
        from perceiver import bytes_tokenizer, io_processors, perceiver, position_encoding

        def fn(x, is_training):
            model = perceiver.Perceiver(
                input_preprocessor=io_processors.ImagePreprocessor(
                    prep_type="patches", spatial_downsample=2,
                    position_encoding_type="fourier",
                    fourier_position_encoding_kwargs=dict(num_bands=2)),
                encoder=perceiver.PerceiverEncoder(
                    num_self_attends_per_block=1, num_blocks=1, z_index_dim=4,
                    num_z_channels=8, num_self_attend_heads=2, dropout_prob=0.1),
                decoder=perceiver.ClassificationDecoder(
                    5, num_z_channels=8, position_encoding_type="trainable",
                    trainable_position_encoding_kwargs=dict(num_channels=8)))
            return model(x, is_training=is_training)

        t = hk.transform_with_state(fn)
        x = np.ones((1, 4, 4, 3), np.float32)
        init = jax.jit(t.init, static_argnames="is_training")
        apply = jax.jit(t.apply, static_argnames="is_training")
        params, state = init(jax.random.PRNGKey(0), x, is_training=True)
        out, _ = apply(params, state, None, x, is_training=False)
        bytes_tokenizer.BytesTokenizer().to_string(np.array([70, 71]))
    found = [
        f"{r.filename}:{r.lineno}: {r.message}" for r in records
        if issubclass(r.category, DeprecationWarning)
        and "/perceiver/" in r.filename.replace(os.sep, "/")
    ]
    print(json.dumps({"shape": list(out.shape), "found": found}))
    """
)


@pytest.mark.slow  # a fresh interpreter; the in-process check runs by default
def test_fresh_import_and_run_emits_no_deprecation_warning_from_package():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=_REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_IMPORT_SCRIPT],
        cwd=_REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, 5]
    assert result["found"] == []


# ---------------------------------------------------------------------------
# Regressions found while writing this suite
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("project_pos_dim", [-1, 6])
def test_trainable_decoder_subsampling_picks_rows(project_pos_dim):
    points = np.array([0, 5, 15])

    def fn(z, subsample):
        dec = perceiver.BasicDecoder(
            output_num_channels=3,
            position_encoding_type="trainable",
            output_index_dims=(4, 4),
            project_pos_dim=project_pos_dim,
            trainable_position_encoding_kwargs=dict(num_channels=8),
        )
        return dec.decoder_query(z, subsampled_points=points if subsample else None)

    t = hk.transform(fn)
    z = np.zeros((2, 4, 8), np.float32)
    params = t.init(jax.random.PRNGKey(0), z, False)
    full = t.apply(params, None, z, False)
    picked = t.apply(params, None, z, True)
    assert picked.shape == (2, 3, full.shape[-1])
    np.testing.assert_allclose(picked, full[:, points], rtol=1e-6)


def test_fourier_encoding_accepts_array_max_resolution():
    def fn():
        return position_encoding.FourierPositionEncoding(
            index_dims=(4, 4), num_bands=2, max_resolution=np.array([8, 8])
        )(2)

    assert hk.transform(fn).apply({}, None).shape == (2, 16, 2 + 2 * 2 * 2)


def test_mask_probs_must_be_numbers():
    def fn():
        io_processors.MultimodalPreprocessor(
            {"a": io_processors.OneHotPreprocessor()}, mask_probs={"a": "0.5"}
        )

    with pytest.raises(TypeError, match=r"mask_probs\['a'\] must be a number"):
        hk.transform(fn).init(None)


def test_patches_error_names_the_downsample_argument():
    def fn(x):
        return io_processors.ImagePreprocessor(
            prep_type="patches",
            spatial_downsample=4,
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=dict(num_bands=2),
        )(x, is_training=False)

    with pytest.raises(ValueError, match=r"inputs height \(6\) must be divisible by spatial_downsample \(4\)"):
        hk.transform(fn).init(None, np.zeros((1, 6, 8, 3), np.float32))
