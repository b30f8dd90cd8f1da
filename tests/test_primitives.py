"""Primitives checked against independent numpy references.

Every expected value here is computed with plain numpy (loops or closed-form
formulas) written in this file; the code under test is never used to build an
expected value.
"""

import itertools
import math

import haiku as hk
import jax
import numpy as np
import pytest

from perceiver import io_processors
from perceiver import perceiver
from perceiver import position_encoding
from perceiver.compute import layers as _layers

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


# ---------------------------------------------------------------------------
# Fourier features and linear positions
# ---------------------------------------------------------------------------


def _np_fourier(pos, num_bands, max_resolution, concat_pos, sine_only):
    pos = np.asarray(pos, np.float64)
    n, d = pos.shape
    rows = []
    for i in range(n):
        row = []
        if concat_pos:
            row.extend(pos[i, dd] for dd in range(d))
        sins, coss = [], []
        for dd in range(d):
            freqs = np.linspace(1.0, max_resolution[dd] / 2.0, num_bands)
            for kk in range(num_bands):
                sins.append(math.sin(math.pi * freqs[kk] * pos[i, dd]))
                coss.append(math.cos(math.pi * freqs[kk] * pos[i, dd]))
        row.extend(sins)
        if not sine_only:
            row.extend(coss)
        rows.append(row)
    return np.asarray(rows, np.float64)


@pytest.mark.parametrize("sine_only", [False, True])
@pytest.mark.parametrize("concat_pos", [True, False])
@pytest.mark.parametrize(
    "max_resolution,num_bands", [((8,), 4), ((6, 10), 3), ((4, 6, 8), 2), ((5, 7), 1)]
)
def test_generate_fourier_features_matches_numpy(sine_only, concat_pos, max_resolution, num_bands):
    d = len(max_resolution)
    pos = _rng(d).uniform(-1, 1, size=(7, d)).astype(np.float32)
    got = np.asarray(
        position_encoding.generate_fourier_features(
            pos,
            num_bands=num_bands,
            max_resolution=max_resolution,
            concat_pos=concat_pos,
            sine_only=sine_only,
        )
    )
    want = _np_fourier(pos, num_bands, max_resolution, concat_pos, sine_only)
    expected_c = d * num_bands * (1 if sine_only else 2) + (d if concat_pos else 0)
    assert got.shape == (7, expected_c)
    # Angles reach pi * res / 2 ~ 12.6; float32 rounding of the angle bounds the error.
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-5)


def test_generate_fourier_features_explicit_values_1d():
    # pos = 0.5, max_resolution 4, 2 bands -> freqs (1, 2).
    pos = np.array([[0.5]], np.float32)
    got = np.asarray(
        position_encoding.generate_fourier_features(pos, num_bands=2, max_resolution=(4,))
    )
    want = np.array(
        [[0.5, math.sin(math.pi * 0.5), math.sin(math.pi * 1.0),
          math.cos(math.pi * 0.5), math.cos(math.pi * 1.0)]]
    )
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def _np_linear_positions(index_dims, lo=-1.0, hi=1.0):
    d = len(index_dims)
    out = np.zeros(tuple(index_dims) + (d,), np.float64)
    for idx in itertools.product(*[range(n) for n in index_dims]):
        for j in range(d):
            n = index_dims[j]
            out[idx + (j,)] = lo + (hi - lo) * idx[j] / (n - 1) if n > 1 else lo
    return out


@pytest.mark.parametrize("index_dims", [(1,), (5,), (3, 4), (2, 3, 4), (4, 1)])
def test_build_linear_positions_default_range(index_dims):
    got = np.asarray(position_encoding.build_linear_positions(index_dims))
    assert got.shape == tuple(index_dims) + (len(index_dims),)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _np_linear_positions(index_dims), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("output_range", [(0.0, 1.0), (-3.0, 5.0), (2.0, -2.0)])
@pytest.mark.parametrize("index_dims", [(4,), (3, 5)])
def test_build_linear_positions_custom_range(output_range, index_dims):
    got = np.asarray(position_encoding.build_linear_positions(index_dims, output_range=output_range))
    want = _np_linear_positions(index_dims, *output_range)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_build_linear_positions_ij_indexing():
    grid = np.asarray(position_encoding.build_linear_positions((2, 3)))
    # First coordinate varies along axis 0, second along axis 1.
    np.testing.assert_allclose(grid[:, 0, 0], [-1.0, 1.0], atol=ATOL)
    np.testing.assert_allclose(grid[0, :, 1], [-1.0, 0.0, 1.0], atol=ATOL)
    np.testing.assert_allclose(grid[:, :, 0], [[-1, -1, -1], [1, 1, 1]], atol=ATOL)


# ---------------------------------------------------------------------------
# Position encoding modules
# ---------------------------------------------------------------------------


def _run(fn, seed=0):
    t = hk.transform(fn)
    params = t.init(jax.random.PRNGKey(seed))
    return params, t.apply(params, None)


@pytest.mark.parametrize("sine_only", [False, True])
@pytest.mark.parametrize("concat_pos", [True, False])
@pytest.mark.parametrize("index_dims", [(6,), (3, 4), (2, 2, 3)])
def test_fourier_position_encoding_shape_and_values(index_dims, concat_pos, sine_only):
    num_bands, batch = 3, 2

    def fn():
        return position_encoding.FourierPositionEncoding(
            index_dims=index_dims, num_bands=num_bands, concat_pos=concat_pos, sine_only=sine_only
        )(batch_size=batch)

    params, out = _run(fn)
    assert params == {}  # no parameters
    d = len(index_dims)
    n = int(np.prod(index_dims))
    c = d * num_bands * (1 if sine_only else 2) + (d if concat_pos else 0)
    out = np.asarray(out)
    assert out.shape == (batch, n, c)
    # Default grid: flattened linear positions; max_resolution defaults to index_dims.
    pos = _np_linear_positions(index_dims).reshape(n, d)
    want = _np_fourier(pos, num_bands, index_dims, concat_pos, sine_only)
    for b in range(batch):
        np.testing.assert_allclose(out[b], want, rtol=RTOL, atol=1e-5)


def test_fourier_position_encoding_explicit_pos_and_resolution():
    pos = _rng(3).uniform(-1, 1, size=(2, 5, 2)).astype(np.float32)

    def fn():
        return position_encoding.FourierPositionEncoding(
            index_dims=(5, 5), num_bands=4, max_resolution=(10, 12)
        )(batch_size=2, pos=pos)

    _, out = _run(fn)
    out = np.asarray(out)
    assert out.shape == (2, 5, 2 + 2 * 4 * 2)
    for b in range(2):
        np.testing.assert_allclose(
            out[b], _np_fourier(pos[b], 4, (10, 12), True, False), rtol=RTOL, atol=1e-5
        )


@pytest.mark.parametrize("sine_only", [False, True])
@pytest.mark.parametrize("concat_pos", [True, False])
@pytest.mark.parametrize("index_dims", [(6,), (3, 4), (2, 2, 3)])
def test_fourier_grid_parts_are_the_channel_blocks(index_dims, concat_pos, sine_only):
    num_bands, batch = 3, 2

    def fn():
        return position_encoding.FourierPositionEncoding(
            index_dims=index_dims, num_bands=num_bands, concat_pos=concat_pos, sine_only=sine_only
        ).grid_parts(batch_size=batch)

    _, parts = _run(fn)
    d = len(index_dims)
    n = int(np.prod(index_dims))
    # One block per coordinate (if concat_pos), then sin of each axis's bands, then cos.
    widths = [1] * d * concat_pos + [num_bands] * d * (1 if sine_only else 2)
    assert [np.shape(p) for p in parts] == [(batch, n, w) for w in widths]
    pos = _np_linear_positions(index_dims).reshape(n, d)
    want = _np_fourier(pos, num_bands, index_dims, concat_pos, sine_only)
    got = np.concatenate([np.asarray(p) for p in parts], axis=-1)
    for b in range(batch):
        np.testing.assert_allclose(got[b], want, rtol=RTOL, atol=1e-5)


def test_grid_parts_is_none_without_a_grid_form():
    def fn():
        trainable = position_encoding.TrainablePositionEncoding(index_dim=6, num_channels=4)
        projected = position_encoding.build_position_encoding(
            "fourier", index_dims=(2, 3), project_pos_dim=5,
            fourier_position_encoding_kwargs=dict(num_bands=2),
        )
        # A resolution for other than the grid's dimensions: only __call__, which raises.
        mismatched = position_encoding.FourierPositionEncoding(
            index_dims=(2, 3), num_bands=2, max_resolution=(4,)
        )
        return [e.grid_parts(batch_size=2) for e in (trainable, projected, mismatched)]

    params, parts = _run(fn)
    assert parts == [None, None, None]
    assert params == {}  # asking creates no parameters


@pytest.mark.parametrize("batch_size", [1, 3])
def test_trainable_position_encoding_broadcasts_over_batch(batch_size):
    def fn():
        return position_encoding.TrainablePositionEncoding(index_dim=7, num_channels=5)(batch_size)

    params, out = _run(fn)
    (module_params,) = params.values()
    table = np.asarray(module_params["pos_embs"])
    assert table.shape == (7, 5)
    out = np.asarray(out)
    assert out.shape == (batch_size, 7, 5)
    for b in range(batch_size):
        np.testing.assert_array_equal(out[b], table)


def test_trainable_position_encoding_none_batch_returns_table():
    def fn():
        return position_encoding.TrainablePositionEncoding(index_dim=4, num_channels=3)(None)

    params, out = _run(fn)
    (module_params,) = params.values()
    assert np.asarray(out).shape == (4, 3)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(module_params["pos_embs"]))


def test_trainable_position_encoding_init_scale():
    def fn():
        return position_encoding.TrainablePositionEncoding(
            index_dim=64, num_channels=64, init_scale=0.02
        )(None)

    _, out = _run(fn)
    out = np.asarray(out)
    # Truncated normal with stddev 0.02: bounded by 2 stddevs, std close to 0.02.
    assert np.abs(out).max() <= 0.04 + 1e-6
    assert 0.01 < out.std() < 0.03


def test_build_position_encoding_projected_shape():
    def fn():
        enc = position_encoding.build_position_encoding(
            "fourier",
            index_dims=(3, 4),
            project_pos_dim=6,
            fourier_position_encoding_kwargs=dict(num_bands=2),
        )
        return enc(batch_size=2)

    _, out = _run(fn)
    assert np.asarray(out).shape == (2, 12, 6)


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
