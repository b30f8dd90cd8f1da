"""perceiver.perceiver: attention, encoder, decoders and masks against numpy; bad input refused.

Every expected value is computed with plain numpy written here; the code under
test never builds one. Bad input fails early with a ValueError/TypeError that
names the argument.
"""

import json
import math
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


RTOL = 1e-5
ATOL = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# attend
# ---------------------------------------------------------------------------


def _np_attend(q, k, v, mask=None):
    """Loop-based multi-head attention in float64.

    q [B, T, H, Dqk], k [B, S, H, Dqk], v [B, S, H, Dv], mask [B or 1, T, S].
    Returns [B, T, H * Dv]; queries with no valid key give zeros.
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b_size, t_len, heads, dqk = q.shape
    s_len, dv = k.shape[1], v.shape[-1]
    out = np.zeros((b_size, t_len, heads, dv))
    for b in range(b_size):
        for h in range(heads):
            for t in range(t_len):
                if mask is not None:
                    row = np.asarray(mask)[0 if mask.shape[0] == 1 else b, t] != 0
                else:
                    row = np.ones(s_len, bool)
                if not row.any():
                    continue  # stays exactly zero
                logits = np.array(
                    [np.dot(q[b, t, h], k[b, s, h]) / math.sqrt(dqk) for s in range(s_len)]
                )
                logits = np.where(row, logits, -np.inf)
                w = np.exp(logits - logits[row].max())
                w = w / w.sum()
                for s in range(s_len):
                    out[b, t, h] += w[s] * v[b, s, h]
    return out.reshape(b_size, t_len, heads * dv).astype(np.float32)


def _qkv(b, t, s, h, dqk, dv, seed=0):
    rng = _rng(seed)
    q = rng.standard_normal((b, t, h, dqk)).astype(np.float32)
    k = rng.standard_normal((b, s, h, dqk)).astype(np.float32)
    v = rng.standard_normal((b, s, h, dv)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize(
    "b,t,s,h,dqk,dv",
    [(1, 1, 1, 1, 1, 1), (2, 3, 5, 2, 4, 3), (3, 4, 2, 4, 2, 5), (1, 6, 7, 3, 8, 1)],
)
def test_attend_no_mask_matches_numpy(b, t, s, h, dqk, dv):
    q, k, v = _qkv(b, t, s, h, dqk, dv, seed=b + t + s)
    got = np.asarray(perceiver.attend(q, k, v))
    assert got.shape == (b, t, h * dv)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _np_attend(q, k, v), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mask_dtype", [np.int32, np.bool_, np.float32])
@pytest.mark.parametrize("b,t,s,h,dqk,dv", [(2, 3, 5, 2, 4, 3), (3, 4, 6, 1, 3, 2)])
def test_attend_with_mask_matches_numpy(mask_dtype, b, t, s, h, dqk, dv):
    q, k, v = _qkv(b, t, s, h, dqk, dv, seed=7)
    rng = _rng(1)
    mask = (rng.uniform(size=(b, t, s)) < 0.6)
    mask[..., 0] = True  # every query has at least one key
    mask = mask.astype(mask_dtype)
    got = np.asarray(perceiver.attend(q, k, v, attention_mask=mask))
    np.testing.assert_allclose(got, _np_attend(q, k, v, mask), rtol=RTOL, atol=ATOL)


def test_attend_mask_changes_result_only_through_masked_keys():
    # Masked keys must have no influence: changing their values changes nothing.
    q, k, v = _qkv(2, 3, 5, 2, 4, 3, seed=3)
    mask = np.ones((2, 3, 5), np.int32)
    mask[:, :, 3:] = 0
    v2, k2 = v.copy(), k.copy()
    v2[:, 3:] = 1e3
    k2[:, 3:] = -7.0
    a = np.asarray(perceiver.attend(q, k, v, attention_mask=mask))
    b = np.asarray(perceiver.attend(q, k2, v2, attention_mask=mask))
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    # ... and equals attention over the unmasked keys only.
    c = np.asarray(perceiver.attend(q, k[:, :3], v[:, :3]))
    np.testing.assert_allclose(a, c, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mask_dtype", [np.int32, np.bool_])
def test_attend_fully_masked_rows_are_exactly_zero(mask_dtype):
    b, t, s, h, dqk, dv = 2, 4, 5, 2, 3, 2
    q, k, v = _qkv(b, t, s, h, dqk, dv, seed=11)
    mask = np.ones((b, t, s), bool)
    mask[0, 1] = False  # query 1 of batch 0 sees nothing
    mask[1, 3] = False  # query 3 of batch 1 sees nothing
    mask[1, 0, 2:] = False  # partial mask elsewhere
    mask = mask.astype(mask_dtype)
    got = np.asarray(perceiver.attend(q, k, v, attention_mask=mask))
    assert np.all(got[0, 1] == 0.0)
    assert np.all(got[1, 3] == 0.0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _np_attend(q, k, v, mask), rtol=RTOL, atol=ATOL)
    # Rows that are not fully masked are generally non-zero.
    assert np.any(got[0, 0] != 0.0)


def test_attend_all_masked_is_all_zero():
    q, k, v = _qkv(2, 3, 4, 2, 2, 2, seed=5)
    got = np.asarray(perceiver.attend(q, k, v, attention_mask=np.zeros((2, 3, 4), np.int32)))
    assert got.shape == (2, 3, 4)
    assert np.all(got == 0.0)


def test_attend_batch1_mask_broadcasts_over_batch():
    b, t, s, h, dqk, dv = 3, 4, 6, 2, 4, 3
    q, k, v = _qkv(b, t, s, h, dqk, dv, seed=13)
    rng = _rng(2)
    mask1 = (rng.uniform(size=(1, t, s)) < 0.5).astype(np.int32)
    mask1[0, 0] = 0  # one fully masked query row, for every batch element
    mask1[0, 1:, 0] = 1
    got = np.asarray(perceiver.attend(q, k, v, attention_mask=mask1))
    want = _np_attend(q, k, v, mask1)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert np.all(got[:, 0] == 0.0)
    # Same as an explicitly tiled mask.
    tiled = np.asarray(perceiver.attend(q, k, v, attention_mask=np.tile(mask1, (b, 1, 1))))
    np.testing.assert_allclose(got, tiled, rtol=RTOL, atol=ATOL)


def test_attend_under_jit_matches_numpy():
    q, k, v = _qkv(2, 3, 4, 2, 4, 2, seed=17)
    mask = np.ones((2, 3, 4), np.int32)
    mask[1, 2] = 0
    mask[0, 0, 1] = 0
    got = np.asarray(jax.jit(lambda a, b_, c, m: perceiver.attend(a, b_, c, attention_mask=m))(q, k, v, mask))
    np.testing.assert_allclose(got, _np_attend(q, k, v, mask), rtol=RTOL, atol=ATOL)
    assert np.all(got[1, 2] == 0.0)


# ---------------------------------------------------------------------------
# Attention: parameters handed to the compute seam
# ---------------------------------------------------------------------------


def test_attention_module_matches_numpy_with_mask():
    rng = _rng(20)
    xq = rng.standard_normal((2, 5, 6)).astype(np.float32)
    xkv = rng.standard_normal((2, 7, 3)).astype(np.float32)
    mask = (rng.uniform(size=(2, 5, 7)) > 0.3).astype(np.int32)
    mask[1, 4] = 0  # a query with no valid key

    def forward(xq, xkv, mask):
        return perceiver.Attention(num_heads=2, qk_channels=4, v_channels=6, output_channels=5)(
            xq, xkv, attention_mask=mask
        )

    model = hk.transform(forward)
    params = model.init(jax.random.PRNGKey(0), xq, xkv, mask)
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * rng.standard_normal(p.shape), params)
    got = np.asarray(model.apply(params, None, xq, xkv, mask))

    def dense(name, x):
        p = params[f"attention/{name}"]
        return np.asarray(x, np.float64) @ p["w"] + p["b"]

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], 2, -1)

    q, k, v = heads(dense("linear", xq)), heads(dense("linear_1", xkv)), heads(dense("linear_2", xkv))
    expected = dense("linear_3", _np_attend(q, k, v, mask))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The row without keys is the output layer's bias alone, as in the reference.
    np.testing.assert_allclose(got[1, 4], params["attention/linear_3"]["b"], rtol=1e-6)


def test_attention_init_draws_the_dropout_key_where_the_reference_does():
    # The reference creates q, k, v, draws the attention-dropout key inside
    # attend(), then creates the output layer: init values depend on it.
    xq = np.ones((1, 3, 4), np.float32)
    xkv = np.ones((1, 5, 4), np.float32)

    def ours(xq, xkv):
        return perceiver.Attention(num_heads=2, dropout_prob=0.5)(xq, xkv)

    def written_out(xq, xkv):
        with hk.experimental.name_scope("attention"):
            layers = [
                hk.Linear(4, w_init=hk.initializers.VarianceScaling(1.0), name=name)
                for name in ("linear", "linear_1", "linear_2")
            ]
            layers[0](xq), layers[1](xkv), layers[2](xkv)
            hk.next_rng_key()  # the dropout key
            hk.Linear(4, w_init=hk.initializers.VarianceScaling(1.0), name="linear_3")(xq)

    key = jax.random.PRNGKey(7)
    got = hk.transform(ours).init(key, xq, xkv)
    expected = hk.transform(written_out).init(key, xq, xkv)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, expected)


def test_attention_rejects_a_mask_of_the_wrong_shape():
    def forward(xq, xkv, mask):
        return perceiver.Attention(num_heads=1)(xq, xkv, attention_mask=mask)

    xq, xkv = np.zeros((2, 3, 4), np.float32), np.zeros((2, 5, 4), np.float32)
    with pytest.raises(ValueError, match=r"attention_mask must have shape .*\(2, 3, 5\)"):
        hk.transform(forward).init(jax.random.PRNGKey(0), xq, xkv, np.ones((2, 5, 3)))


# ---------------------------------------------------------------------------
# make_cross_attention_mask
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("b,t,s", [(1, 1, 1), (2, 3, 4), (3, 5, 2)])
def test_make_cross_attention_mask_is_outer_product(b, t, s):
    rng = _rng(b * 10 + t)
    qm = rng.integers(0, 2, size=(b, t)).astype(np.int32)
    km = rng.integers(0, 2, size=(b, s)).astype(np.int32)
    got = np.asarray(perceiver.make_cross_attention_mask(qm, km))
    want = np.zeros((b, t, s), np.int32)
    for i in range(b):
        for j in range(t):
            for l in range(s):
                want[i, j, l] = qm[i, j] * km[i, l]
    assert got.shape == (b, t, s)
    np.testing.assert_array_equal(got, want)


def test_make_cross_attention_mask_float_values():
    qm = np.array([[1.0, 0.5, 0.0]], np.float32)
    km = np.array([[2.0, 1.0]], np.float32)
    got = np.asarray(perceiver.make_cross_attention_mask(qm, km))
    want = np.array([[[2.0, 1.0], [1.0, 0.5], [0.0, 0.0]]], np.float32)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# ===========================================================================
# Bad input fails early with a ValueError/TypeError that names the argument
# ===========================================================================


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
