"""The compute options' fast paths against plain computations.

Every fast path (tiled and fused attention, folded projections, chunked
decoding, looped blocks, rematerialisation, bfloat16) must leave parameter
trees alone and compute what the plain path computes. Expected values come
from numpy written here, from the reference's recorded outputs, or from the
plain path, which tests/test_reference.py ties to the reference.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import compute, io_processors, models, perceiver, position_encoding
from perceiver.compute import attention as _seam
from perceiver.compute import chunks as _chunks
from perceiver.compute import folding as _folding
from perceiver.compute import kernels as _kernels
from perceiver.compute import settings as _settings
from perceiver.compute import tiled as _tiled

PLAIN = dict(attention="plain", absorb_projections=False, decoder_chunk_size=None, scan_blocks=False)
# bfloat16 keeps 8 bits of mantissa: outputs of these small models stay within
# this fraction of their largest magnitude (see benchmarks/README.md for the
# published models).
BF16_TOLERANCE = 0.05


def _rng(seed=0):
    return np.random.default_rng(seed)


def np_attention(q, k, v, mask=None, bias=None, scale=None):
    """float64 softmax attention `[B, T, H, Dv]`; queries with no valid key give 0."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = np.einsum("bthd,bshd->bhts", q, k) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)[:, :, None, :]
    valid = np.ones(logits.shape, bool)
    if mask is not None:
        valid = np.broadcast_to((np.asarray(mask) != 0)[:, None], logits.shape)
    logits = np.where(valid, logits, -np.inf)
    top = np.max(np.where(valid, logits, -1e300), axis=-1, keepdims=True)
    weights = np.where(valid, np.exp(logits - top), 0.0)
    total = weights.sum(-1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.einsum("bhts,bshd->bthd", weights, v)


def _random_mask(shape, rng, empty_rows=((0, 1),)):
    mask = (rng.uniform(size=shape) > 0.4).astype(np.int32)
    for b, t in empty_rows:
        mask[b % shape[0], t] = 0  # a query that may attend to nothing
    return mask


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def test_options_nest_and_restore():
    assert _settings.current() == compute.Options()
    with compute.options(attention="tiled") as outer:
        assert outer.attention == "tiled"
        with compute.options(remat=True) as inner:
            assert inner.attention == "tiled" and inner.remat
        assert not _settings.current().remat
    assert _settings.current() == compute.Options()


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(attention="flash"), ValueError, "attention"),
        (dict(query_chunk_size=0), ValueError, "query_chunk_size"),
        (dict(key_chunk_size=2.5), ValueError, "key_chunk_size"),
        (dict(decoder_chunk_size=-3), ValueError, "decoder_chunk_size"),
        (dict(absorb_projections="yes"), TypeError, "absorb_projections"),
        (dict(scan_blocks=1), TypeError, "scan_blocks"),
        (dict(remat="no"), TypeError, "remat"),
        (dict(compute_dtype=jnp.int32), ValueError, "compute_dtype"),
        (dict(chunking=True), TypeError, "chunking"),
    ],
)
def test_bad_options_name_the_argument(kwargs, error, words):
    with pytest.raises(error, match=words):
        with compute.options(**kwargs):
            pass


def test_configure_rejects_non_transformed():
    with pytest.raises(TypeError, match="transformed"):
        compute.configure(lambda x: x)


def _sub_jaxprs(params):
    for value in params.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def _count_loops(jaxpr) -> int:
    """Loops (scan or while) anywhere in a jaxpr."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("scan", "while"):
            count += 1
        for sub in _sub_jaxprs(eqn.params):
            count += _count_loops(sub)
    return count


def test_configure_applies_its_options_under_jit():
    # Whether the tiled kernel ran shows in the program: it loops over tiles.
    def forward(q, k, v):
        return perceiver.attend(q, k, v)

    model = hk.transform(forward)
    rng = _rng()
    q, k, v = (rng.standard_normal((1, 9, 2, 4)).astype(np.float32) for _ in range(3))
    tiled = compute.configure(model, attention="tiled", query_chunk_size=4, key_chunk_size=4)
    plain = compute.configure(model, attention="plain")
    assert _count_loops(jax.make_jaxpr(tiled.apply)({}, None, q, k, v).jaxpr) > 0
    assert _count_loops(jax.make_jaxpr(plain.apply)({}, None, q, k, v).jaxpr) == 0
    np.testing.assert_allclose(
        jax.jit(tiled.apply)({}, None, q, k, v), np_attention(q, k, v).reshape(1, 9, 8),
        rtol=1e-5, atol=1e-6,
    )


def test_auto_choices_follow_size():
    assert _kernels.choose_attention(1, 1, 2048, 182528) == "tiled"
    assert _kernels.choose_attention(1, 1, 2048, 182528, dropout=True) == "plain"
    with compute.options(attention="plain"):
        assert _kernels.choose_attention(1, 1, 2048, 182528) == "plain"
    # Small attention is a single tile; large attention is cut into tiles.
    assert _kernels.attention_tiles(1, 8, 256, 512) == (256, 512)
    # The latents of the ImageNet models (8 heads, 512 x 512) go in two tiles.
    assert _kernels.attention_tiles(1, 8, 512, 512) == (256, 512)
    query_chunk, key_chunk = _kernels.attention_tiles(1, 1, 2048, 182528)
    assert query_chunk * key_chunk <= _settings.TILE_ELEMENTS < 2048 * 182528
    # A decoder of 182,528 queries over 2,048 latents runs in chunks; 48 do not.
    chunk = _chunks.decoder_chunk(1, 1, 182528, 2048)
    assert chunk is not None and chunk * 2048 <= 2 * _settings.TILE_ELEMENTS
    assert _chunks.decoder_chunk(1, 8, 48, 16) is None
    with compute.options(decoder_chunk_size=None):
        assert _chunks.decoder_chunk(1, 1, 182528, 2048) is None


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("query_chunk, key_chunk", [(4, 5), (16, 3), (7, 64), (1, 1)])
@pytest.mark.parametrize("masked", [False, True])
def test_tiled_kernel_matches_numpy(query_chunk, key_chunk, masked):
    rng = _rng(1)
    b, t, s, h = 2, 11, 13, 3  # sizes that no chunk divides
    q = rng.standard_normal((b, t, h, 4)).astype(np.float32)
    k = rng.standard_normal((b, s, h, 4)).astype(np.float32)
    v = rng.standard_normal((b, s, h, 5)).astype(np.float32)
    bias = rng.standard_normal((b, 1, s)).astype(np.float32)
    mask = _random_mask((b, t, s), rng, empty_rows=((0, 2), (1, 10))) if masked else None
    out = _tiled.tiled_attention(
        q, k, v, mask=mask, bias=bias, query_chunk_size=query_chunk, key_chunk_size=key_chunk
    )
    expected = np_attention(q, k, v, mask, bias)
    keep = np.ones((b, t, 1, 1), bool)
    if masked:  # rows with no valid key are the caller's to zero
        keep = (mask != 0).any(-1)[:, :, None, None]
    np.testing.assert_allclose(np.where(keep, out, 0), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["plain", "tiled", "fused"])
def test_attend_zeroes_fully_masked_rows_and_broadcasts_batch_one_mask(kind):
    rng = _rng(2)
    q = rng.standard_normal((2, 9, 2, 4)).astype(np.float32)
    k = rng.standard_normal((2, 6, 2, 4)).astype(np.float32)
    v = rng.standard_normal((2, 6, 2, 4)).astype(np.float32)
    mask = _random_mask((1, 9, 6), rng, empty_rows=((0, 0), (0, 8)))
    with compute.options(attention=kind, query_chunk_size=4, key_chunk_size=4):
        out = np.asarray(perceiver.attend(q, k, v, attention_mask=mask))
    np.testing.assert_allclose(
        out, np_attention(q, k, v, np.broadcast_to(mask, (2, 9, 6))).reshape(2, 9, 8),
        rtol=1e-5, atol=1e-6,
    )
    assert np.all(out[:, [0, 8]] == 0)


@pytest.mark.parametrize("masked", [False, True])
def test_tiled_gradients_match_plain(masked):
    rng = _rng(3)
    q, k, v = (rng.standard_normal((1, 10, 2, 4)).astype(np.float32) for _ in range(3))
    bias = rng.standard_normal((1, 1, 10)).astype(np.float32)
    mask = _random_mask((1, 10, 10), rng) if masked else None
    weights = (np.arange(80).reshape(1, 10, 2, 4) % 7 - 3).astype(np.float32)

    def loss(kernel):
        return lambda q, k, v, bias: jnp.sum(kernel(q, k, v, bias) * weights)

    def tiled(q, k, v, bias):  # 4 tiles of queries and 3 of keys, both overlapping
        return _tiled.tiled_attention(
            q, k, v, mask=mask, bias=bias, query_chunk_size=3, key_chunk_size=4
        )

    def plain(q, k, v, bias):
        return _kernels.plain_attention(q, k, v, mask=mask, bias=bias)

    expected = jax.grad(loss(plain), argnums=(0, 1, 2, 3))(q, k, v, bias)
    got = jax.jit(jax.grad(loss(tiled), argnums=(0, 1, 2, 3)))(q, k, v, bias)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Folded projections (single-head attention)
# ---------------------------------------------------------------------------


def _np_attention_module(params, xq, xkv, mask):
    def linear(name, x):
        p = params[f"attention/{name}"]
        return np.asarray(x, np.float64) @ p["w"] + (p["b"] if "b" in p else 0)

    q, k, v = linear("linear", xq), linear("linear_1", xkv), linear("linear_2", xkv)
    out = np_attention(q[:, :, None], k[:, :, None], v[:, :, None], mask)[:, :, 0]
    return linear("linear_3", out)


@pytest.mark.parametrize(
    "t, s, cq, ckv, out_channels, fold",
    [
        # Few queries, many narrow keys: the queries move into the keys' space.
        (3, 40, 16, 6, 16, _folding.Fold(
            _folding.Logits.QUERIES_IN_KEY_SPACE, _folding.Values.WEIGHTS_ON_KEY_INPUTS)),
        # Many narrow queries, few keys: keys and values move to the queries' side.
        (40, 3, 6, 16, 6, _folding.Fold(
            _folding.Logits.KEYS_IN_QUERY_SPACE, _folding.Values.VALUES_IN_OUTPUT_SPACE)),
    ],
)
@pytest.mark.parametrize("with_final_bias", [True, False])
def test_folded_projections_match_numpy(
    t, s, cq, ckv, out_channels, fold, with_final_bias, chosen_folds
):
    rng = _rng(4)
    xq = rng.standard_normal((2, t, cq)).astype(np.float32)
    xkv = rng.standard_normal((2, s, ckv)).astype(np.float32)
    mask = _random_mask((2, t, s), rng, empty_rows=((1, 1),))

    def forward(xq, xkv, mask):
        attention = perceiver.Attention(
            num_heads=1, qk_channels=12, v_channels=10, output_channels=out_channels,
            with_final_bias=with_final_bias,
        )
        return attention(xq, xkv, attention_mask=mask)

    model = hk.transform(forward)
    params = model.init(jax.random.PRNGKey(0), xq, xkv, mask)
    assert chosen_folds == [_folding.NO_FOLD]  # init computes as the reference writes it
    # Output-layer biases of zero would hide a mistake in adding them.
    params = jax.tree_util.tree_map(lambda p: p + 0.3, params)
    with compute.options(absorb_projections=True):
        out = model.apply(params, None, xq, xkv, mask)
    assert chosen_folds[1:] == [fold]
    expected = _np_attention_module(params, xq, xkv, mask)
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


def test_auto_keeps_small_attention_unfolded(chosen_folds):
    def forward(xq, xkv):
        return perceiver.Attention(num_heads=1, qk_channels=12)(xq, xkv)

    model = hk.transform(forward)
    xq, xkv = np.zeros((1, 3, 12), np.float32), np.zeros((1, 40, 6), np.float32)
    params = model.init(jax.random.PRNGKey(0), xq, xkv)
    model.apply(params, None, xq, xkv)
    assert chosen_folds == [_folding.NO_FOLD, _folding.NO_FOLD]


def test_cross_attention_norm_of_keys_inside_kernel_matches_numpy(chosen_folds):
    # Keys and values are the (normalised) inputs: the kernel normalises them
    # tile by tile; the block written out in numpy must agree.
    rng = _rng(13)
    xq = rng.standard_normal((2, 3, 16)).astype(np.float32)
    xkv = rng.standard_normal((2, 50, 6)).astype(np.float32)

    def forward(xq, xkv):
        return perceiver.CrossAttention(num_heads=1, qk_channels=12, widening_factor=1)(
            xq, xkv, is_training=False
        )

    model = hk.transform(forward)
    params = model.init(jax.random.PRNGKey(0), xq, xkv)
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * rng.standard_normal(p.shape), params)
    with compute.options(absorb_projections=True, attention="tiled", key_chunk_size=7):
        out = np.asarray(jax.jit(model.apply)(params, None, xq, xkv))
    assert chosen_folds[-1].keys_are_inputs

    def ln(x, scope):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * params[scope]["scale"] + params[scope]["offset"]

    root = "cross_attention"
    prefix = f"{root}/attention/"
    normed = {f"attention/{k[len(prefix):]}": v for k, v in params.items() if k.startswith(prefix)}
    x = xq + _np_attention_module(
        normed, ln(np.float64(xq), f"{root}/layer_norm"), ln(np.float64(xkv), f"{root}/layer_norm_1"),
        None,
    )
    hidden = ln(x, f"{root}/layer_norm_2") @ params[f"{root}/mlp/linear"]["w"]
    hidden = np.asarray(jax.nn.gelu(hidden + params[f"{root}/mlp/linear"]["b"], approximate=True))
    expected = x + hidden @ params[f"{root}/mlp/linear_1"]["w"] + params[f"{root}/mlp/linear_1"]["b"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def _np_weights(q, k, mask=None):
    """float64 softmax weights `[B, H, T, S]`; rows with no valid key are zero."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    logits = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    valid = np.ones(logits.shape, bool)
    if mask is not None:
        valid = np.broadcast_to((np.asarray(mask) != 0)[:, None], logits.shape)
    logits = np.where(valid, logits, -np.inf)
    top = np.max(np.where(valid, logits, -1e300), axis=-1, keepdims=True)
    weights = np.where(valid, np.exp(logits - top), 0.0)
    total = weights.sum(-1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


@pytest.mark.parametrize("num_heads, absorb", [(2, False), (1, False), (1, True)])
def test_seam_returns_attention_weights_on_every_path(num_heads, absorb, chosen_folds):
    # Asking the seam for weights gives the softmax of the unfolded attention,
    # whichever form (fold, kernel) computed the output.
    rng = _rng(14)
    xq = rng.standard_normal((2, 3, 8)).astype(np.float32)
    xkv = rng.standard_normal((2, 30, 5)).astype(np.float32)
    mask = _random_mask((2, 3, 30), rng, empty_rows=((1, 2),))

    def forward(xq, xkv, mask):
        def linear(name, c_in, c_out):
            return compute.Linear(c_out, name=name).params(c_in)

        projections = compute.Projections(
            linear("q", 8, 8), linear("k", 5, 8), linear("v", 5, 6), linear("o", 6, 4), num_heads
        )
        normed = compute.LayerNormed(xkv, 1.0 + 0.1 * jnp.arange(5.0), 0.1 * jnp.ones(5))
        return compute.attention_layer(xq, normed, projections, mask=mask, want_weights=True)

    model = hk.transform(forward)
    params = model.init(jax.random.PRNGKey(0), xq, xkv, mask)
    params = jax.tree_util.tree_map(lambda p: p + 0.2, params)
    with compute.options(absorb_projections=absorb, attention="tiled", key_chunk_size=7):
        attended = model.apply(params, None, xq, xkv, mask)
    # Folded, the keys are the inputs and the kernel applies their norm.
    assert chosen_folds[-1].keys_are_inputs == absorb
    x = np.asarray(xkv, np.float64)
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    normed = normed * (1.0 + 0.1 * np.arange(5.0)) + 0.1

    def project(name, x):
        return (x @ params[name]["w"] + params[name]["b"]).reshape(2, x.shape[1], num_heads, -1)

    q, k = project("q", np.float64(xq)), project("k", normed)
    expected = _np_weights(q, k, mask)
    assert attended.weights.shape == (2, num_heads, 3, 30)
    np.testing.assert_allclose(attended.weights, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(attended.weights).sum(-1)[1, :, 2], 0.0)
    out = np_attention(q, k, project("v", normed), mask).reshape(2, 3, -1)
    expected_out = out @ params["o"]["w"] + params["o"]["b"]
    np.testing.assert_allclose(attended.output, expected_out, rtol=1e-4, atol=1e-5)


def test_seam_computes_no_weights_unless_asked():
    q, k, v = (np.ones((1, 4, 1, 2), np.float32) for _ in range(3))
    assert _seam.attend_heads(q, k, v).weights is None
    assert _seam.attend_heads(q, k, v, want_weights=True).weights.shape == (1, 1, 4, 4)


# ---------------------------------------------------------------------------
# Chunked decoding
# ---------------------------------------------------------------------------


def _decoder_model(**decoder_kwargs):
    def forward(inputs, z, query_mask=None, subsampled_points=None):
        decoder = perceiver.BasicDecoder(
            output_num_channels=3,
            position_encoding_type="fourier",
            output_index_dims=(13,),
            fourier_position_encoding_kwargs=dict(num_bands=3, max_resolution=(13,)),
            qk_channels=8,
            **decoder_kwargs,
        )
        query = decoder.decoder_query(inputs, subsampled_points=subsampled_points)
        return decoder(query, z, is_training=False, query_mask=query_mask)

    return hk.transform(forward)


@pytest.mark.parametrize("num_heads, subsample", [(1, True), (2, False)])
def test_chunked_decoder_matches_one_piece(num_heads, subsample):
    rng = _rng(5)
    model = _decoder_model(num_heads=num_heads, use_query_residual=True)
    inputs = np.zeros((2, 13, 4), np.float32)
    z = rng.standard_normal((2, 5, 16)).astype(np.float32)
    points = np.array([12, 0, 5, 7, 3, 9, 1], np.int32) if subsample else None
    queries = 7 if subsample else 13
    query_mask = np.ones((2, queries), np.int32)
    query_mask[1, 2] = 0  # decodes from nothing
    params = model.init(jax.random.PRNGKey(0), inputs, z, query_mask, points)
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * rng.standard_normal(p.shape), params)
    plain = compute.configure(model, **PLAIN)
    expected = jax.jit(plain.apply)(params, None, inputs, z, query_mask, points)
    for chunk in (1, 4):
        # configure makes new functions: jax.jit's cache cannot mix them up.
        chunked = compute.configure(model, decoder_chunk_size=chunk, absorb_projections=True)
        jaxpr = jax.make_jaxpr(chunked.apply)(params, None, inputs, z, query_mask, points)
        assert _count_loops(jaxpr.jaxpr) > 0
        out = jax.jit(chunked.apply)(params, None, inputs, z, query_mask, points)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_query_residual", [True, False])
def test_folded_output_layer_matches_numpy(folds, use_query_residual):
    # A narrow output layer (16 -> 3 channels) over many queries is folded
    # into the MLP's output layer; the block written out in numpy must agree.
    rng = _rng(11)
    channels, num_queries = 16, 300

    def forward(query, z):
        decoder = perceiver.BasicDecoder(
            output_num_channels=3, output_index_dims=(num_queries,), num_heads=1,
            qk_channels=8, use_query_residual=use_query_residual, position_encoding_type="none",
        )
        return decoder(query, z, is_training=False)

    model = hk.transform(forward)
    query = rng.standard_normal((2, num_queries, channels)).astype(np.float32)
    z = rng.standard_normal((2, 5, 12)).astype(np.float32)
    params = model.init(jax.random.PRNGKey(0), query, z)
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * rng.standard_normal(p.shape), params)
    chunked = compute.configure(model, decoder_chunk_size=64)
    out = np.asarray(jax.jit(chunked.apply)(params, None, query, z))
    assert folds and all(folds)

    def ln(x, scope):
        x = np.asarray(x, np.float64)
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * params[scope]["scale"] + params[scope]["offset"]

    def dense(x, scope):
        return x @ np.asarray(params[scope]["w"], np.float64) + params[scope]["b"]

    root = "basic_decoder/cross_attention"
    q = dense(ln(query, f"{root}/layer_norm"), f"{root}/attention/linear")
    normed_z = ln(z, f"{root}/layer_norm_1")
    k, v = dense(normed_z, f"{root}/attention/linear_1"), dense(normed_z, f"{root}/attention/linear_2")
    attended = np_attention(q[:, :, None], k[:, :, None], v[:, :, None])[:, :, 0]
    x = dense(attended, f"{root}/attention/linear_3")
    if use_query_residual:
        x = x + query
    hidden = dense(ln(x, f"{root}/layer_norm_2"), f"{root}/mlp/linear")
    hidden = np.asarray(jax.nn.gelu(hidden, approximate=True), np.float64)
    x = x + dense(hidden, f"{root}/mlp/linear_1")
    np.testing.assert_allclose(out, dense(x, "basic_decoder/output"), rtol=1e-4, atol=1e-5)


def test_decoder_with_tail_equals_decoder_then_projection(folds):
    rng = _rng(12)
    num_queries = 200

    def forward(query, z, fold):
        decoder = perceiver.BasicDecoder(
            output_num_channels=16, output_index_dims=(num_queries,), num_heads=1,
            use_query_residual=False, position_encoding_type="none",
        )
        head = io_processors.ProjectionPostprocessor(num_outputs=3)
        if fold:
            return decoder._with_tail(query, z, [head.linear_head()], is_training=False)
        return head(decoder(query, z, is_training=False), is_training=False)

    model = hk.transform(forward)
    query = rng.standard_normal((1, num_queries, 24)).astype(np.float32)
    z = rng.standard_normal((1, 7, 12)).astype(np.float32)
    params = model.init(jax.random.PRNGKey(0), query, z, False)
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * rng.standard_normal(p.shape), params)
    expected = jax.jit(model.apply, static_argnums=4)(params, None, query, z, False)
    got = jax.jit(model.apply, static_argnums=4)(params, None, query, z, True)
    assert folds == [True]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_only_a_projection_postprocessor_has_a_linear_head():
    def heads():
        projection = io_processors.ProjectionPostprocessor(num_outputs=3)
        others = [
            io_processors.ImagePostprocessor(postproc_type="pixels"),
            io_processors.AudioPostprocessor(samples_per_patch=4),
            io_processors.ClassificationPostprocessor(num_classes=5),
            io_processors.IdentityPostprocessor(),
        ]
        multimodal = io_processors.MultimodalPostprocessor(
            {"image": projection, "audio": others[1]}
        )
        head = projection.linear_head()
        assert head.module_name == "projection_postprocessor/linear"
        assert [p.linear_head() for p in others + [multimodal]] == [None] * 5
        modalities = multimodal.modalities
        assert dict(modalities) == {"image": projection, "audio": others[1]}
        with pytest.raises(TypeError):
            modalities["label"] = others[2]  # read-only
        x = jnp.ones((1, 2, 4))
        return head(x), projection(x, is_training=False)

    model = hk.transform(heads)
    params = model.init(jax.random.PRNGKey(0))
    assert list(params) == ["projection_postprocessor/linear"]
    folded, called = model.apply(params, None)
    np.testing.assert_array_equal(folded, called)


@pytest.mark.parametrize(
    "index_dims, kwargs",
    [
        ((13,), dict(num_bands=3)),
        ((6, 8), dict(num_bands=4, max_resolution=(9, 11))),
        ((3, 6, 8), dict(num_bands=5, concat_pos=False)),
        ((4, 7), dict(num_bands=2, sine_only=True)),
        ((46, 62), dict(num_bands=64)),
    ],
)
def test_fourier_grid_parts_equal_the_positions_path_bit_for_bit(index_dims, kwargs):
    """The grid form (`grid_parts`, concatenated) against features of explicit positions."""

    def forward():
        encoding = position_encoding.FourierPositionEncoding(index_dims=index_dims, **kwargs)
        grid = position_encoding.build_linear_positions(index_dims)
        pos = grid.reshape(1, -1, len(index_dims))
        pos = jnp.broadcast_to(pos, (2,) + pos.shape[1:])
        parts = position_encoding.concat_in_place(encoding.grid_parts(batch_size=2))
        return parts, encoding(batch_size=2), encoding(batch_size=2, pos=pos)

    model = hk.transform(forward)
    for apply in (model.apply, jax.jit(model.apply)):
        parts, called, from_pos = apply({}, None)
        np.testing.assert_array_equal(parts, from_pos)
        np.testing.assert_array_equal(called, from_pos)


def test_chunked_decoder_keeps_the_random_stream():
    inputs = np.zeros((1, 13, 4), np.float32)
    z = np.ones((1, 5, 16), np.float32)

    def forward_and_key(inputs, z):
        decoder = perceiver.BasicDecoder(
            output_num_channels=3, position_encoding_type="trainable", output_index_dims=(13,),
            trainable_position_encoding_kwargs=dict(num_channels=8),
        )
        decoder(decoder.decoder_query(inputs), z, is_training=True)
        return hk.next_rng_key()

    keyed = hk.transform(forward_and_key)
    params = keyed.init(jax.random.PRNGKey(0), inputs, z)
    key = jax.random.PRNGKey(3)
    with compute.options(**PLAIN):
        expected = keyed.apply(params, key, inputs, z)
    with compute.options(decoder_chunk_size=4):
        got = keyed.apply(params, key, inputs, z)
    np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(expected))


# ---------------------------------------------------------------------------
# Published models (small): trees and outputs under every option
# ---------------------------------------------------------------------------

FAST = {
    "tiled": dict(attention="tiled", query_chunk_size=5, key_chunk_size=7),
    "fused": dict(attention="fused"),
    "all": dict(
        attention="tiled", query_chunk_size=4, key_chunk_size=9, decoder_chunk_size=5,
        absorb_projections=True, scan_blocks=True, remat=True,
    ),
}
# Each model with every fast path at once; a few with one path each.
FAST_CASES = [(model, "all") for model in ref.MODELS] + [
    ("mlm", "fused"),
    pytest.param("mlm", "tiled", marks=pytest.mark.slow),
    pytest.param("flow", "tiled", marks=pytest.mark.slow),
    pytest.param("video_autoencoding", "tiled", marks=pytest.mark.slow),
]


def _close_to_recorded(actual, expected, rtol):
    if isinstance(expected, dict):
        for key in expected:
            _close_to_recorded(actual[key], expected[key], rtol)
        return
    actual = np.asarray(actual, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("model, option", FAST_CASES)
def test_fast_paths_reproduce_recorded_outputs(model, option):
    factory, kwargs = ref.SMALL_FACTORIES[model]
    transformed, params, state = models.load_for(factory, ref.checkpoint_path(model), **kwargs)
    inputs, expected = ref.recorded(model)
    fast = compute.configure(transformed, **FAST[option])
    out, _ = jax.jit(fast.apply)(params, state, None, *ref.factory_inputs(model, inputs))
    _close_to_recorded(jax.tree_util.tree_map(np.asarray, out), expected, 1e-5)


def _small_model(model):
    """The small variant's transformed model and its recorded inputs as apply's arguments."""
    factory, kwargs = ref.SMALL_FACTORIES[model]
    inputs, _ = ref.recorded(model)
    return getattr(models, factory)(**kwargs), ref.factory_inputs(model, inputs)


@pytest.mark.parametrize("model", ref.MODELS)
def test_options_leave_parameter_trees_unchanged(model):
    transformed, args = _small_model(model)
    key = jax.random.PRNGKey(5)

    def shapes(**options):
        init = compute.configure(transformed, **options).init
        return jax.eval_shape(lambda: init(key, *args, is_training=True))

    expected = shapes(**PLAIN)
    for options in list(FAST.values()) + [dict(compute_dtype=jnp.bfloat16)]:
        assert shapes(**options) == expected


@pytest.mark.parametrize("model", ["flow"])
def test_options_leave_initial_values_unchanged(model):
    transformed, args = _small_model(model)
    key = jax.random.PRNGKey(5)

    def init(**options):
        fn = compute.configure(transformed, **options).init
        return jax.jit(lambda key, *args: fn(key, *args, is_training=True))(key, *args)

    expected = init(**PLAIN)
    got = init(**FAST["all"], compute_dtype=jnp.bfloat16)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        assert a.dtype == b.dtype == np.float32 or a.dtype == b.dtype == np.int32
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model", ["mlm", "imagenet_conv", "video_autoencoding"])
def test_bfloat16_is_close_to_float32(model):
    factory, kwargs = ref.SMALL_FACTORIES[model]
    transformed, params, state = models.load_for(factory, ref.checkpoint_path(model), **kwargs)
    inputs, expected = ref.recorded(model)
    low = compute.configure(transformed, compute_dtype=jnp.bfloat16)
    out, _ = jax.jit(low.apply)(params, state, None, *ref.factory_inputs(model, inputs))
    for leaf in jax.tree_util.tree_leaves(out):
        assert leaf.dtype == jnp.float32
    _close_to_recorded(jax.tree_util.tree_map(np.asarray, out), expected, BF16_TOLERANCE)


@pytest.mark.parametrize("model", ["mlm", "imagenet_conv", "video_autoencoding"])
def test_params_cast_once_give_the_same_bfloat16_outputs_bit_for_bit(model):
    factory, kwargs = ref.SMALL_FACTORIES[model]
    transformed, params, state = models.load_for(factory, ref.checkpoint_path(model), **kwargs)
    inputs, _ = ref.recorded(model)
    args = (state, None, *ref.factory_inputs(model, inputs))
    low = compute.configure(transformed, compute_dtype=jnp.bfloat16)
    cast = compute.cast_params(low.apply, params, *args)
    dtypes = {(m, n): v.dtype for m, leaves in cast.items() for n, v in leaves.items()}
    # Layer norms run in float32; pre- and postprocessors (the conv stem and
    # its batch norm, the byte embedding) run outside the compute dtype.
    for (module, name), dtype in dtypes.items():
        outside = not module.startswith(("perceiver_encoder", "encoder", "basic_decoder", "flow_decoder",
                                         "classification_decoder", "multimodal_decoder"))
        if "layer_norm" in module.rsplit("/", 1)[-1] or outside:
            assert dtype == params[module][name].dtype, (module, name)
    assert sum(d == jnp.bfloat16 for d in dtypes.values()) > len(dtypes) // 2
    assert all(isinstance(v, jax.Array) for v in jax.tree_util.tree_leaves(cast))
    forward = jax.jit(low.apply)
    expected = jax.tree_util.tree_leaves(forward(params, *args)[0])
    got = jax.tree_util.tree_leaves(forward(cast, *args)[0])
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    # The compiled function (traced already) gives the same; cast params come back as they are.
    again = compute.cast_params(forward, params, *args)
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(cast)):
        assert a.dtype == b.dtype
    for a, b in zip(jax.tree_util.tree_leaves(compute.cast_params(low.apply, cast, *args)),
                    jax.tree_util.tree_leaves(cast)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_cast_params_needs_a_compute_dtype():
    transformed, args = _small_model("flow")
    params, state = jax.eval_shape(lambda: transformed.init(jax.random.PRNGKey(0), *args, is_training=True))
    with pytest.raises(ValueError, match="half-precision compute dtype"):
        compute.cast_params(transformed.apply, params, state, None, *args, is_training=False)
    with pytest.raises(TypeError, match="params must be a Haiku parameter mapping"):
        compute.cast_params(transformed.apply, [params], state, None, *args)


# ---------------------------------------------------------------------------
# Weight-shared blocks in a loop; rematerialisation
# ---------------------------------------------------------------------------


def _encoder_model():
    def forward(inputs, is_training):
        encoder = perceiver.PerceiverEncoder(
            num_self_attends_per_block=1, num_blocks=3, z_index_dim=6, num_z_channels=16,
            num_self_attend_heads=2, dropout_prob=0.2,
        )
        return encoder(inputs, encoder.latents(inputs), is_training=is_training)

    return hk.transform(forward)


def test_looped_blocks_equal_unrolled_with_dropout_keys():
    model = _encoder_model()
    inputs = _rng(6).standard_normal((2, 9, 5)).astype(np.float32)
    params = jax.jit(model.init, static_argnums=2)(jax.random.PRNGKey(0), inputs, True)
    key = jax.random.PRNGKey(1)
    unrolled = compute.configure(model, scan_blocks=False)
    looped = compute.configure(model, scan_blocks=True)
    assert _count_loops(jax.make_jaxpr(looped.apply, static_argnums=3)(
        params, key, inputs, True).jaxpr) > 0
    expected = jax.jit(unrolled.apply, static_argnums=3)(params, key, inputs, True)
    got = jax.jit(looped.apply, static_argnums=3)(params, key, inputs, True)
    # Dropout is on: equal outputs mean equal keys, drawn in the same order.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # 15 s; tests/train/test_train_compute.py checks that training's remat recomputes
def test_remat_gives_the_same_gradients():
    model = _encoder_model()
    inputs = _rng(7).standard_normal((2, 9, 5)).astype(np.float32)
    params = jax.jit(model.init, static_argnums=2)(jax.random.PRNGKey(0), inputs, True)
    key = jax.random.PRNGKey(2)

    def grads(**options):
        def loss(params):
            with compute.options(**options):
                return jnp.sum(model.apply(params, key, inputs, True) ** 2)

        return jax.jit(jax.grad(loss))(params)

    expected = grads(remat=False, scan_blocks=False)
    got = grads(remat=True, scan_blocks=True)
    # Some gradients are sums that cancel to rounding noise: compare on the
    # scale of the largest gradient.
    scale = max(np.abs(b).max() for b in jax.tree_util.tree_leaves(expected))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.slow
def test_auto_at_published_widths_matches_plain():
    # Published flow widths on 96x128 frames: large enough for every 'auto'
    # fast path (multi-tile attention, folded projections and layer norm,
    # chunked decoding), small enough to compare against the plain path.
    model = models.optical_flow(image_shape=(96, 128), num_self_attends=2)
    frames = _rng(8).uniform(-1, 1, (1, 2, 96, 128, 3)).astype(np.float32)
    params, state = jax.jit(lambda f: model.init(jax.random.PRNGKey(0), f, is_training=True))(
        frames
    )
    rng = _rng(9)
    # The output layer starts at zero; perturb every weight so the flow is not.
    params = jax.tree_util.tree_map(lambda p: p + 0.02 * rng.standard_normal(p.shape), params)
    fast = compute.configure(model)
    plain = compute.configure(model, **PLAIN)
    jaxpr = jax.make_jaxpr(fast.apply)(params, state, None, frames)
    assert _count_loops(jaxpr.jaxpr) >= 2  # tiled encoder attention, chunked decoder
    expected, _ = jax.jit(plain.apply)(params, state, None, frames)
    got, _ = jax.jit(fast.apply)(params, state, None, frames)
    _close_to_recorded(np.asarray(got), np.asarray(expected, np.float64), 1e-5)
