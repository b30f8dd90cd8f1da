"""perceiver.io_processors: space_to_depth, patches, restructure against numpy; bad input refused.

Every expected value is computed with plain numpy written here; the pre- and
postprocessors' bad input fails early with a ValueError/TypeError that names
the argument.
"""

import itertools

import haiku as hk
import jax
import numpy as np
import pytest

from perceiver import io_processors


RTOL = 1e-5
ATOL = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# space_to_depth / reverse_space_to_depth
# ---------------------------------------------------------------------------


def _np_space_to_depth_image(x, s):
    b, h, w, c = x.shape
    out = np.zeros((b, h // s, w // s, s * s * c), x.dtype)
    for i in range(h // s):
        for j in range(w // s):
            ch = 0
            for dh in range(s):
                for dw in range(s):
                    for cc in range(c):
                        out[:, i, j, ch] = x[:, i * s + dh, j * s + dw, cc]
                        ch += 1
    return out


def _np_space_to_depth_video(x, t, s):
    b, tt, h, w, c = x.shape
    out = np.zeros((b, tt // t, h // s, w // s, t * s * s * c), x.dtype)
    for ti in range(tt // t):
        for i in range(h // s):
            for j in range(w // s):
                ch = 0
                for dt in range(t):
                    for dh in range(s):
                        for dw in range(s):
                            for cc in range(c):
                                out[:, ti, i, j, ch] = x[:, ti * t + dt, i * s + dh, j * s + dw, cc]
                                ch += 1
    return out


@pytest.mark.parametrize("shape,s", [((2, 4, 6, 3), 2), ((1, 6, 3, 2), 3), ((2, 4, 4, 1), 1), ((1, 8, 4, 2), 4)])
def test_space_to_depth_image(shape, s):
    x = _rng(1).standard_normal(shape).astype(np.float32)
    got = np.asarray(io_processors.space_to_depth(x, spatial_block_size=s))
    want = _np_space_to_depth_image(x, s)
    np.testing.assert_array_equal(got, want)
    back = np.asarray(io_processors.reverse_space_to_depth(got, spatial_block_size=s))
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize(
    "shape,t,s",
    [((2, 4, 4, 6, 3), 2, 2), ((1, 3, 6, 3, 2), 3, 3), ((1, 2, 4, 4, 1), 1, 2), ((2, 4, 2, 2, 2), 2, 1)],
)
def test_space_to_depth_video(shape, t, s):
    x = _rng(2).standard_normal(shape).astype(np.float32)
    got = np.asarray(io_processors.space_to_depth(x, temporal_block_size=t, spatial_block_size=s))
    want = _np_space_to_depth_video(x, t, s)
    np.testing.assert_array_equal(got, want)
    back = np.asarray(
        io_processors.reverse_space_to_depth(got, temporal_block_size=t, spatial_block_size=s)
    )
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("t,s", [(1, 2), (2, 1), (2, 2)])
def test_reverse_space_to_depth_video_matches_numpy(t, s):
    # Reverse direction on its own: input built by hand, not by space_to_depth.
    b, tt, h, w, c = 1, 2, 2, 3, 2
    y = _rng(4).standard_normal((b, tt, h, w, t * s * s * c)).astype(np.float32)
    want = np.zeros((b, tt * t, h * s, w * s, c), np.float32)
    for ti, i, j in itertools.product(range(tt), range(h), range(w)):
        ch = 0
        for dt, dh, dw, cc in itertools.product(range(t), range(s), range(s), range(c)):
            want[:, ti * t + dt, i * s + dh, j * s + dw, cc] = y[:, ti, i, j, ch]
            ch += 1
    got = np.asarray(io_processors.reverse_space_to_depth(y, temporal_block_size=t, spatial_block_size=s))
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# extract_patches (tf.image.extract_patches semantics)
# ---------------------------------------------------------------------------


def _np_extract_patches(images, size, stride, rate, padding):
    b, h, w, c = images.shape
    kr, kc = size
    sr, sc = stride
    rr, rc = rate
    eff_r = (kr - 1) * rr + 1
    eff_c = (kc - 1) * rc + 1
    if padding == "VALID":
        out_r = (h - eff_r) // sr + 1 if h >= eff_r else 0
        out_c = (w - eff_c) // sc + 1 if w >= eff_c else 0
        pad_top = pad_left = 0
    else:
        out_r = -(-h // sr)
        out_c = -(-w // sc)
        pad_r = max((out_r - 1) * sr + eff_r - h, 0)
        pad_c = max((out_c - 1) * sc + eff_c - w, 0)
        pad_top, pad_left = pad_r // 2, pad_c // 2
    out = np.zeros((b, out_r, out_c, kr * kc * c), images.dtype)
    for i in range(out_r):
        for j in range(out_c):
            ch = 0
            for r in range(kr):
                for cc_ in range(kc):
                    y = i * sr + r * rr - pad_top
                    x = j * sc + cc_ * rc - pad_left
                    for ci in range(c):
                        if 0 <= y < h and 0 <= x < w:
                            out[:, i, j, ch] = images[:, y, x, ci]
                        ch += 1
    return out


_PATCH_CASES = [
    # (image shape, size, stride, rate)
    ((1, 5, 5, 1), (2, 2), (1, 1), (1, 1)),
    ((2, 6, 7, 3), (3, 3), (1, 1), (1, 1)),
    ((1, 7, 8, 2), (3, 2), (2, 3), (1, 1)),
    ((2, 9, 8, 2), (2, 3), (2, 2), (2, 1)),
    ((1, 10, 9, 1), (3, 3), (3, 2), (2, 3)),
    ((1, 6, 6, 2), (1, 1), (2, 2), (1, 1)),
    ((1, 4, 6, 1), (4, 2), (1, 4), (1, 2)),
    ((1, 8, 8, 3), (2, 2), (2, 2), (1, 1)),
]


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("shape,size,stride,rate", _PATCH_CASES)
def test_extract_patches_matches_tf_semantics(shape, size, stride, rate, padding):
    images = _rng(sum(shape)).standard_normal(shape).astype(np.float32)
    got = np.asarray(
        io_processors.extract_patches(
            images,
            sizes=[1, *size, 1],
            strides=[1, *stride, 1],
            rates=[1, *rate, 1],
            padding=padding,
        )
    )
    want = _np_extract_patches(images, size, stride, rate, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_extract_patches_channel_order_explicit():
    # 1x2x2 image, 2 channels; one 2x2 VALID patch -> (row, col, c) order.
    img = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    got = np.asarray(
        io_processors.extract_patches(img, [1, 2, 2, 1], [1, 1, 1, 1], [1, 1, 1, 1], "VALID")
    )
    np.testing.assert_array_equal(got.reshape(-1), np.arange(8, dtype=np.float32))


def _np_patches_for_flow(x):
    b, t, h, w, c = x.shape
    out = np.zeros((b, t, h, w, 9 * c), x.dtype)
    for i in range(h):
        for j in range(w):
            ch = 0
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    for cc in range(c):
                        y, xx = i + di, j + dj
                        if 0 <= y < h and 0 <= xx < w:
                            out[:, :, i, j, ch] = x[:, :, y, xx, cc]
                        ch += 1
    return out


@pytest.mark.parametrize("shape", [(1, 2, 4, 5, 3), (2, 2, 3, 3, 1), (1, 1, 1, 2, 2)])
def test_patches_for_flow_matches_numpy(shape):
    x = _rng(9).standard_normal(shape).astype(np.float32)
    got = np.asarray(io_processors.patches_for_flow(x))
    assert got.shape == shape[:-1] + (9 * shape[-1],)
    np.testing.assert_array_equal(got, _np_patches_for_flow(x))
    # Centre of the 3x3 neighbourhood is the pixel itself.
    c = shape[-1]
    np.testing.assert_array_equal(got[..., 4 * c:5 * c], x)


# ---------------------------------------------------------------------------
# restructure
# ---------------------------------------------------------------------------


def test_restructure_splits_in_sorted_modality_order():
    x = np.arange(2 * 9 * 3, dtype=np.float32).reshape(2, 9, 3)
    sizes = {"video": 4, "audio": 2, "label": 3}  # insertion order is not sorted
    out = io_processors.restructure(sizes, x)
    assert set(out) == {"audio", "label", "video"}
    np.testing.assert_array_equal(np.asarray(out["audio"]), x[:, 0:2])
    np.testing.assert_array_equal(np.asarray(out["label"]), x[:, 2:5])
    np.testing.assert_array_equal(np.asarray(out["video"]), x[:, 5:9])


def test_restructure_single_and_shorter_than_inputs():
    x = _rng(0).standard_normal((1, 5, 2)).astype(np.float32)
    out = io_processors.restructure({"b": 2, "a": 1}, x)
    np.testing.assert_array_equal(np.asarray(out["a"]), x[:, 0:1])
    np.testing.assert_array_equal(np.asarray(out["b"]), x[:, 1:3])
    out = io_processors.restructure({"only": 5}, x)
    np.testing.assert_array_equal(np.asarray(out["only"]), x)


def test_restructure_too_many_positions_raises():
    with pytest.raises(ValueError, match="modality_sizes"):
        io_processors.restructure({"a": 3, "b": 3}, np.zeros((1, 5, 2), np.float32))


# ===========================================================================
# Bad input fails early with a ValueError/TypeError that names the argument
# ===========================================================================


KEY = jax.random.PRNGKey(0)


def _init(fn, *args):
    """Builds `fn` under hk.transform_with_state and runs init (traced, for speed).

    Argument checks run while tracing, so errors surface exactly as eagerly.
    """
    return jax.jit(hk.transform_with_state(fn).init)(KEY, *args)


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
# Regressions found while writing this suite
# ---------------------------------------------------------------------------


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
