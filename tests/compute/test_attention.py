"""The seam's new attention math: bias of any shape, causal order, rotary heads, a key/value cache.

Every kernel (plain, tiled with overlapping tiles, fused) is held to a
float64 numpy attention, and the tiled gradients to the dense ones.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import compute, perceiver
from perceiver.compute import tiled as tiled_module

B, T, S, H, D = 2, 13, 17, 3, 8


def _rng(seed=0):
    return np.random.default_rng(seed)


def np_attention(q, k, v, mask=None, bias=None, causal_offset=None):
    """float64 attention `[B, T, H, Dv]`; rows that see no key give 0."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    allowed = np.ones(logits.shape, bool)
    if bias is not None:
        bias = np.asarray(bias, np.float64)
        logits = logits + (bias[:, :, None, :] if bias.ndim == 3 else bias)
    if mask is not None:
        allowed = allowed & (np.asarray(mask)[:, None] != 0)
    if causal_offset is not None:
        t, s = np.arange(q.shape[1])[:, None], np.arange(k.shape[1])[None]
        allowed = allowed & (s <= causal_offset + t)
    logits = np.where(allowed, logits, -np.inf)
    top = np.max(logits, axis=-1, keepdims=True)
    weights = np.exp(logits - np.where(np.isfinite(top), top, 0))
    total = weights.sum(-1, keepdims=True)
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1), 0)
    return np.einsum("bhts,bshd->bthd", weights, v)


def _qkv(seed=0, t=T, s=S):
    rng = _rng(seed)
    return tuple(rng.standard_normal(shape).astype(np.float32)
                 for shape in ((B, t, H, D), (B, s, H, D), (B, s, H, D)))


def _has_key(mask, offset, t=T, s=S):
    """`[B, T]` rows that see at least one key (kernels leave the others unspecified)."""
    allowed = np.ones((B, t, s), bool)
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask) != 0, (B, t, s))
    if offset is not None:
        allowed &= np.arange(s)[None, None] <= offset + np.arange(t)[None, :, None]
    return allowed.any(-1)


KERNELS = [
    dict(kind="plain"),
    dict(kind="fused"),
    dict(kind="tiled", tiles=(5, 4)),  # overlapping last tiles of queries and keys
    dict(kind="tiled", tiles=(T, S)),  # one tile
    dict(kind="tiled", tiles=(4, S)),  # whole rows
]
# Each bias shape once with each kernel, under a mask, with and without causal order.
MATH = [((B, 1, S), 0), ((1, H, 1, S), 4), ((B, 1, T, 1), -3), ((B, H, T, S), None)]


def _kernel(q, k, v, kernel, **kwargs):
    if kernel["kind"] == "tiled":
        qc, kc = kernel["tiles"]
        return tiled_module.tiled_attention(q, k, v, query_chunk_size=qc, key_chunk_size=kc, **kwargs)
    return compute.dot_product_attention(q, k, v, kind=kernel["kind"], **kwargs)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: f"{k['kind']}{k.get('tiles', '')}")
@pytest.mark.parametrize("bias_shape, offset", MATH, ids=str)
def test_kernels_match_numpy_with_bias_and_causal_order(kernel, bias_shape, offset):
    q, k, v = _qkv(1)
    rng = _rng(2)
    bias = None if bias_shape is None else rng.standard_normal(bias_shape).astype(np.float32)
    mask = (rng.uniform(size=(B, T, S)) > 0.3).astype(np.int32)
    kwargs = dict(mask=mask, bias=bias)
    if offset is not None:
        kwargs.update(causal=True, query_offset=offset)
    out = np.asarray(jax.jit(lambda q, k, v: _kernel(q, k, v, kernel, **kwargs))(q, k, v))
    expected = np_attention(q, k, v, mask, bias, offset)
    rows = _has_key(mask, offset)
    np.testing.assert_allclose(out[rows], expected[rows], rtol=2e-5, atol=2e-5)


def test_traced_query_offset_is_a_value_not_a_trace_constant():
    q, k, v = _qkv(3)

    @jax.jit
    def run(offset):
        return tiled_module.tiled_attention(
            q, k, v, causal=True, query_offset=offset, query_chunk_size=4, key_chunk_size=5
        )

    for offset in (0, 2, 9):
        rows = _has_key(None, offset)
        np.testing.assert_allclose(
            np.asarray(run(offset))[rows], np_attention(q, k, v, None, None, offset)[rows],
            rtol=2e-5, atol=2e-5,
        )


def test_causal_tiles_that_no_query_sees_are_skipped():
    # 4 key tiles of 8; queries 0-7 with offset 0 see only the first.
    tiles = tiled_module._Tiles(1.0, 32, 8, 4, 32, 8, 4, False, True, None)
    assert [int(tiles.key_tiles_needed(0, start)) for start in (0, 8, 16, 24)] == [1, 2, 3, 4]
    assert int(tiles.key_tiles_needed(-20, 0)) == 1  # never none: rows stay finite
    assert int(tiles.key_tiles_needed(100, 0)) == 4
    # The loop over key tiles then has a bound computed from the data.
    q, k, v = _qkv(0, 32, 32)
    jaxpr = jax.make_jaxpr(
        lambda q: tiled_module.tiled_attention(q, k, v, causal=True, query_chunk_size=8, key_chunk_size=8)
    )(q)
    assert "while" in str(jaxpr)


@pytest.mark.parametrize(
    "bias_shape, offset", [(None, 0), ((B, 1, S), None), ((1, H, T, 1), 5), ((B, H, T, S), 0)], ids=str
)
def test_tiled_gradients_match_dense(bias_shape, offset):
    q, k, v = _qkv(4)
    rng = _rng(5)
    bias = None if bias_shape is None else rng.standard_normal(bias_shape).astype(np.float32)
    mask = (rng.uniform(size=(1, T, S)) > 0.2).astype(np.int32)
    target = rng.standard_normal((B, T, H, D)).astype(np.float32)
    causal = dict(causal=offset is not None, query_offset=offset or 0)

    def loss(kernel, q, k, v, bias):
        out = _kernel(q, k, v, kernel, mask=mask, bias=bias, **causal)
        rows = jnp.asarray(_has_key(mask, offset))[:, :, None, None]
        return jnp.sum(jnp.where(rows, out * target, 0))

    args = (q, k, v, bias)
    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    dense = jax.grad(lambda *a: loss(dict(kind="plain"), *a), argnums)(*args)
    tiled = jax.jit(jax.grad(lambda *a: loss(dict(kind="tiled", tiles=(5, 4)), *a), argnums))(*args)
    for got, want in zip(tiled, dense):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bias_of_the_wrong_shape_is_named():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="bias must broadcast"):
        compute.dot_product_attention(q, k, v, bias=np.zeros((B, H, T + 1, S)))
    with pytest.raises(ValueError, match="query_offset must be an integer"):
        compute.dot_product_attention(q, k, v, causal=True, query_offset=1.5)


# ---------------------------------------------------------------------------
# Rotary
# ---------------------------------------------------------------------------


def np_rotary(x, positions, max_wavelength, fraction_channels=1.0, fraction_heads=1.0):
    """Perceiver AR's rotary encoding, written out in float64: interleaved pairs."""
    x = np.asarray(x, np.float64).copy()
    heads = math.floor(fraction_heads * x.shape[2])
    channels = math.floor(x.shape[3] * fraction_channels / 2) * 2
    bands = channels // 2
    inv_freq = 1.0 / max_wavelength ** ((2.0 / channels) * np.linspace(0, bands, bands))
    angle = np.asarray(positions, np.float64)[:, :, None] * inv_freq  # [B, L, bands]
    cos, sin = np.cos(angle)[:, :, None], np.sin(angle)[:, :, None]
    even = x[:, :, :heads, 0:channels:2].copy()
    odd = x[:, :, :heads, 1:channels:2].copy()
    x[:, :, :heads, 0:channels:2] = even * cos - odd * sin
    x[:, :, :heads, 1:channels:2] = odd * cos + even * sin
    return x


@pytest.mark.parametrize("fractions", [(1.0, 1.0), (0.5, 1.0), (0.3, 0.67), (1.0, 0.0)])
def test_rotary_matches_numpy_on_a_fraction_of_channels_and_heads(fractions):
    x = _rng(6).standard_normal((B, T, H, D)).astype(np.float32)
    positions = _rng(7).integers(0, 5000, (B, T))
    rotary = compute.Rotary(max_wavelength=8192, fraction_channels=fractions[0],
                            fraction_heads=fractions[1])
    got = np.asarray(rotary.queries(jnp.asarray(x), jnp.asarray(positions)))
    np.testing.assert_allclose(got, np_rotary(x, positions, 8192, *fractions), rtol=1e-4, atol=2e-4)


def test_rotary_logits_depend_on_relative_position_only():
    q, k, _ = _qkv(8)
    rotary = compute.Rotary(max_wavelength=100)

    def logits(shift):
        qr = rotary.queries(q, jnp.arange(T)[None] + shift)
        kr = rotary.keys(k, jnp.arange(S)[None] + shift)
        return np.asarray(jnp.einsum("bthd,bshd->bhts", qr, kr))

    np.testing.assert_allclose(logits(0), logits(37), rtol=1e-3, atol=1e-3)


def test_rotary_rejects_fractions_out_of_range():
    with pytest.raises(ValueError, match="fraction_channels"):
        compute.Rotary(fraction_channels=0.0)
    with pytest.raises(ValueError, match="fraction_heads"):
        compute.Rotary(fraction_heads=1.5)


# ---------------------------------------------------------------------------
# The seam with all of it, and a cache
# ---------------------------------------------------------------------------


def _attention_model(num_heads=H, **call_kwargs):
    def forward(xq, xkv, **kwargs):
        return perceiver.Attention(num_heads=num_heads, qk_channels=num_heads * D)(
            xq, xkv, **call_kwargs, **kwargs
        )

    return hk.without_apply_rng(hk.transform(forward))


def _np_projected(params, xq, xkv, num_heads=H):
    def linear(name, x):
        p = params[f"attention/{name}"]
        return np.asarray(x, np.float64) @ np.asarray(p["w"], np.float64) + np.asarray(p["b"], np.float64)

    split = lambda x: x.reshape(x.shape[0], x.shape[1], num_heads, -1)  # noqa: E731
    return split(linear("linear", xq)), split(linear("linear_1", xkv)), split(linear("linear_2", xkv))


def _np_output(params, attended):
    p = params["attention/linear_3"]
    flat = attended.reshape(attended.shape[0], attended.shape[1], -1)
    return flat @ np.asarray(p["w"], np.float64) + np.asarray(p["b"], np.float64)


@pytest.mark.parametrize("attention", ["plain", "tiled"])
def test_attention_module_with_rotary_bias_and_causal_matches_numpy(attention):
    rng = _rng(9)
    x = rng.standard_normal((B, S, 12)).astype(np.float32)
    bias = rng.standard_normal((1, H, S, S)).astype(np.float32)
    rotary = compute.Rotary(max_wavelength=64, fraction_channels=0.5, fraction_heads=0.67)
    model = _attention_model(bias=bias, causal=True, heads=rotary)
    params = model.init(jax.random.PRNGKey(0), x, x)
    with compute.options(attention=attention, query_chunk_size=4, key_chunk_size=6):
        got = np.asarray(jax.jit(model.apply)(params, x, x))
    q, k, v = _np_projected(params, x, x)
    positions = np.broadcast_to(np.arange(S), (B, S))
    q, k = np_rotary(q, positions, 64, 0.5, 0.67), np_rotary(k, positions, 64, 0.5, 0.67)
    expected = _np_output(params, np_attention(q, k, v, None, bias, 0))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("absorb", [True, False])
def test_single_head_folds_keep_bias_and_causal_order(absorb):
    # Long keys with few queries fold; causal order and a bias must survive the fold.
    rng = _rng(10)
    xq = rng.standard_normal((1, 6, 20)).astype(np.float32)
    xkv = rng.standard_normal((1, 40, 4)).astype(np.float32)
    bias = rng.standard_normal((1, 1, 6, 40)).astype(np.float32)

    def forward(xq, xkv):
        return perceiver.Attention(num_heads=1, qk_channels=16)(
            xq, xkv, bias=bias, causal=True, query_offset=30
        )

    model = hk.without_apply_rng(hk.transform(forward))
    params = model.init(jax.random.PRNGKey(0), xq, xkv)
    with compute.options(absorb_projections=absorb):
        got = np.asarray(jax.jit(model.apply)(params, xq, xkv))
    q, k, v = _np_projected(params, xq, xkv, num_heads=1)
    expected = _np_output(params, np_attention(q, k, v, None, bias, 30))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("capacity", [24, 9])
def test_cached_decoding_equals_attention_over_the_whole_sequence(capacity):
    # Feed a sequence a few positions at a time through a cache: each step's
    # outputs are causal attention over the keys the cache still holds.
    rng = _rng(11)
    length = 20
    x = rng.standard_normal((B, length, 12)).astype(np.float32)
    rotary = compute.Rotary(max_wavelength=50)
    model = hk.without_apply_rng(hk.transform(
        lambda xq, xkv, **kw: perceiver.Attention(num_heads=H, qk_channels=H * D)(xq, xkv, **kw)
    ))
    params = model.init(jax.random.PRNGKey(1), x, x)
    step = jax.jit(lambda cache, xs: model.apply(params, xs, xs, causal=True, heads=rotary, cache=cache))
    cache = compute.KVCache.empty(B, capacity, H, D)
    outputs = []
    for start, stop in ((0, 1), (1, 5), (5, 6), (6, 13), (13, 20)):
        out, cache = step(cache, x[:, start:stop])
        outputs.append(np.asarray(out))
    got = np.concatenate(outputs, axis=1)
    q, k, v = _np_projected(params, x, x)
    positions = np.broadcast_to(np.arange(length), (B, length))
    q, k = np_rotary(q, positions, 50), np_rotary(k, positions, 50)
    # A query sees the keys up to itself that are still in the cache: with
    # a small capacity, the latest `capacity` of the keys present at its step.
    t, s = np.arange(length)[:, None], np.arange(length)[None]
    steps_end = np.array([1, 5, 5, 5, 5, 6, 13, 13, 13, 13, 13, 13, 13] + [20] * 7)
    window = (s <= t) & (s >= steps_end[:, None] - capacity)
    expected = _np_output(params, np_attention(q, k, v, np.broadcast_to(window, (B, length, length))))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.asarray(cache.count).tolist() == [length] * B
    assert np.asarray(cache.positions)[0, -1] == length - 1


def test_cache_append_drops_the_oldest():
    cache = compute.KVCache.empty(1, 3, 1, 1)
    for value in range(5):
        cache = cache.append(jnp.full((1, 1, 1, 1), value + 1.0), jnp.zeros((1, 1, 1, 1)))
    assert np.asarray(cache.k)[0, :, 0, 0].tolist() == [3.0, 4.0, 5.0]
    assert np.asarray(cache.valid).tolist() == [[True, True, True]]
    assert np.asarray(cache.positions).tolist() == [[2, 3, 4]]
    with pytest.raises(ValueError, match="new keys must be"):
        cache.append(jnp.zeros((1, 1, 2, 1)), jnp.zeros((1, 1, 2, 1)))


def test_chunks_of_queries_carry_their_offset_positions_and_bias_rows():
    # A decoder's loop over chunks of queries: each chunk attends to the
    # prepared keys with its own causal offset, rotary positions and bias rows.
    rng = _rng(12)
    length, chunk = 23, 5
    x = rng.standard_normal((B, length, 12)).astype(np.float32)
    bias = rng.standard_normal((B, H, length, length)).astype(np.float32)
    rotary = compute.Rotary(max_wavelength=40, fraction_channels=0.75)

    def projections():
        def linear(name, c_in, c_out):
            return perceiver.conv_1d(c_out, name=name).params(c_in)

        return compute.Projections(
            linear("q", 12, H * D), linear("k", 12, H * D), linear("v", 12, H * D),
            linear("o", H * D, 12), H,
        )

    def whole(x):
        return compute.attention_layer(x, x, projections(), bias=bias, causal=True, heads=rotary).output

    def chunked(x):
        keys = compute.prepare_keys(x, projections(), num_queries=length, heads=rotary)
        index = jnp.arange(length)[None]

        def block(q_chunk, rows):
            start = rows[0, 0]
            bias_rows = jax.lax.dynamic_slice_in_dim(bias, start, q_chunk.shape[1], axis=2)
            return compute.attend_keys(
                q_chunk, keys, bias=bias_rows, causal=True, query_offset=start, q_positions=rows
            ).output

        return compute.over_query_chunks(block, x, index, chunk)

    model_whole = hk.without_apply_rng(hk.transform(whole))
    model_chunked = hk.without_apply_rng(hk.transform(chunked))
    params = model_whole.init(jax.random.PRNGKey(0), x)
    expected = np.asarray(jax.jit(model_whole.apply)(params, x))
    got = np.asarray(jax.jit(model_chunked.apply)(params, x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_more_new_keys_than_the_cache_holds_keep_causal_order():
    # 4 new keys into 2 slots: the cache keeps keys 2 and 3; query t still
    # sees only keys up to t (query 1 sees none that remain).
    rng = _rng(13)
    x = rng.standard_normal((1, 4, 12)).astype(np.float32)
    model = hk.without_apply_rng(hk.transform(
        lambda xs, cache: perceiver.Attention(num_heads=H, qk_channels=H * D)(
            xs, xs, causal=True, cache=cache)
    ))
    cache = compute.KVCache.empty(1, 2, H, D)
    params = model.init(jax.random.PRNGKey(0), x, cache)
    out, _ = model.apply(params, x, cache)
    changed = x.copy()
    changed[:, 3] += 5.0  # only the last key (and query 3) changes
    out2, _ = model.apply(params, changed, cache)
    np.testing.assert_allclose(np.asarray(out)[:, :3], np.asarray(out2)[:, :3], rtol=1e-6, atol=1e-6)


def test_a_float32_cache_serves_bfloat16_queries_on_every_kernel():
    rng = _rng(14)
    x = jnp.asarray(rng.standard_normal((1, 3, 12)), jnp.bfloat16)

    def proj(c_in, c_out):
        return compute.Projection(jnp.asarray(rng.standard_normal((c_in, c_out)) / 4, jnp.bfloat16))

    projections = compute.Projections(proj(12, H * D), proj(12, H * D), proj(12, H * D),
                                      proj(H * D, 12), H)
    cache = compute.KVCache.empty(1, 5, H, D)  # float32 storage
    outs = {}
    for kind in ("plain", "tiled", "fused"):
        with compute.options(attention=kind):
            attended = compute.attention_layer(x, x, projections, causal=True, cache=cache)
        assert attended.output.dtype == jnp.bfloat16 and attended.cache.k.dtype == jnp.float32
        outs[kind] = np.asarray(attended.output, np.float32)
    np.testing.assert_allclose(outs["tiled"], outs["plain"], rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(outs["fused"], outs["plain"], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kernel", KERNELS[:3], ids=lambda k: k["kind"])
def test_queries_without_keys_get_the_mean_of_the_values_when_asked(kernel):
    # Perceiver AR's semantics: a query that sees nothing gets the mean of all
    # values, on every kernel, causal tile skipping included.
    rng = _rng(15)
    x = rng.standard_normal((B, 9, 12)).astype(np.float32)

    def projection(c_in, c_out):
        return compute.Projection(rng.standard_normal((c_in, c_out)).astype(np.float32) / 4)

    projections = compute.Projections(projection(12, H * D), projection(12, H * D),
                                      projection(12, H * D), projection(H * D, 12), H)
    keys = compute.prepare_keys(x, projections, num_queries=9)
    mask = np.ones((B, 9, 9), np.int32)
    mask[:, 2] = 0  # query 2 sees nothing; with offset -1, query 0 sees nothing either
    with compute.options(attention=kernel["kind"], query_chunk_size=4, key_chunk_size=4):
        got = compute.attend_keys(x, keys, mask=mask, causal=True, query_offset=-1,
                                  zero_empty_rows=False).output
    v = np.asarray(x, np.float64) @ np.asarray(projections.v.w, np.float64)
    mean_row = v.mean(axis=1) @ np.asarray(projections.o.w, np.float64)  # [B, 12]
    for row in (0, 2):
        np.testing.assert_allclose(np.asarray(got)[:, row], mean_row, rtol=1e-4, atol=1e-4)
