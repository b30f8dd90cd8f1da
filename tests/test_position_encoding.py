"""perceiver.position_encoding: Fourier features, linear positions and the encodings against numpy; bad input refused.

Every expected value is computed with plain numpy written here; bad input fails
early with a ValueError/TypeError that names the argument.
"""

import itertools
import math

import haiku as hk
import jax
import numpy as np
import pytest

from perceiver import io_processors
from perceiver import position_encoding


RTOL = 1e-5
ATOL = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


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


# ===========================================================================
# Bad input fails early with a ValueError/TypeError that names the argument
# ===========================================================================


KEY = jax.random.PRNGKey(0)


def _init(fn, *args):
    """Builds `fn` under hk.transform_with_state and runs init (traced, for speed).

    Argument checks run while tracing, so errors surface exactly as eagerly.
    """
    return jax.jit(hk.transform_with_state(fn).init)(KEY, *args)


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
# Regressions found while writing this suite
# ---------------------------------------------------------------------------


def test_fourier_encoding_accepts_array_max_resolution():
    def fn():
        return position_encoding.FourierPositionEncoding(
            index_dims=(4, 4), num_bands=2, max_resolution=np.array([8, 8])
        )(2)

    assert hk.transform(fn).apply({}, None).shape == (2, 16, 2 + 2 * 2 * 2)
