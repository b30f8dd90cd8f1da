"""perceiver.inspect: attention weights and hidden states against numpy.

Expected values come from a float64 numpy Perceiver written here from the
parameters (layer norms, attention, MLPs), run layer by layer.
"""

import math

import haiku as hk
import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import _recording, compute, inspect, models, perceiver
from perceiver.compute import attention as _seam
from perceiver.compute import folding as _folding

B, N, C, LATENTS, CHANNELS, OUTPUTS, QUERY_CHANNELS = 2, 11, 4, 5, 8, 7, 6
SELF_HEADS, DECODER_HEADS, NUM_BLOCKS, SELF_ATTENDS = 2, 2, 2, 2

PLAIN = dict(attention="plain", absorb_projections=False, decoder_chunk_size=None, scan_blocks=False)
# Tiles of queries and keys, folded single-head projections, a chunked
# decoder, looped and rematerialised encoder blocks: every fast path at once.
FAST = dict(
    attention="tiled", query_chunk_size=2, key_chunk_size=3, absorb_projections=True,
    decoder_chunk_size=3, scan_blocks=True, remat=True,
)


def _forward(inputs, input_mask, query_mask):
    encoder = perceiver.PerceiverEncoder(
        num_self_attends_per_block=SELF_ATTENDS, num_blocks=NUM_BLOCKS, z_index_dim=LATENTS,
        num_z_channels=CHANNELS, num_cross_attend_heads=1, num_self_attend_heads=SELF_HEADS,
        qk_channels=8, v_channels=8,
    )
    decoder = perceiver.BasicDecoder(
        output_num_channels=3, output_index_dims=(OUTPUTS,), qk_channels=8,
        num_heads=DECODER_HEADS, trainable_position_encoding_kwargs=dict(num_channels=QUERY_CHANNELS),
    )
    model = perceiver.Perceiver(encoder=encoder, decoder=decoder)
    return model(inputs, is_training=False, input_mask=input_mask, query_mask=query_mask)


MODEL = hk.transform_with_state(_forward)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((B, N, C)).astype(np.float32)
    input_mask = (rng.uniform(size=(B, N)) > 0.3).astype(np.int32)
    input_mask[1] = 0  # example 1: latents may attend to nothing
    query_mask = np.ones((B, OUTPUTS), np.int32)
    query_mask[0, [2, 5]] = 0  # padded outputs attend to nothing
    params, state = jax.jit(MODEL.init)(jax.random.PRNGKey(0), inputs, input_mask, query_mask)
    # Away from init's unit scales and zero offsets, so every parameter matters.
    leaves, tree = jax.tree_util.tree_flatten(params)
    noise = [0.3 * rng.standard_normal(x.shape).astype(np.float32) for x in leaves]
    params = jax.tree_util.tree_unflatten(tree, [x + e for x, e in zip(leaves, noise)])
    return params, state, (inputs, input_mask, query_mask)


# ---------------------------------------------------------------------------
# The numpy Perceiver
# ---------------------------------------------------------------------------


def _ln(x, p):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["offset"]


def _lin(x, p):
    return x @ np.float64(p["w"]) + np.float64(p["b"])


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _attention(params, prefix, xq, xkv, heads, mask):
    """`(output [B, T, C], weights [B, H, T, S])`; `mask` `[B, T, S]`."""
    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, -1)

    q, k, v = (split(_lin(x, params[f"{prefix}/{n}"])) for x, n in
               ((xq, "linear"), (xkv, "linear_1"), (xkv, "linear_2")))
    logits = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    valid = np.broadcast_to(mask[:, None] != 0, logits.shape)
    top = np.where(valid, logits, -np.inf).max(-1, keepdims=True, initial=-np.inf)
    e = np.exp(np.where(valid, logits - np.where(np.isfinite(top), top, 0), -np.inf))
    total = e.sum(-1, keepdims=True)
    weights = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    out = np.einsum("bhts,bshd->bthd", weights, v).reshape(q.shape[0], q.shape[1], -1)
    return _lin(out, params[f"{prefix}/linear_3"]), weights


def _mlp(params, prefix, x):
    return _lin(_gelu(_lin(x, params[f"{prefix}/mlp/linear"])), params[f"{prefix}/mlp/linear_1"])


def _cross_block(params, prefix, xq, xkv, heads, mask, residual=True):
    att, w = _attention(params, f"{prefix}/attention", _ln(xq, params[f"{prefix}/layer_norm"]),
                        _ln(xkv, params[f"{prefix}/layer_norm_1"]), heads, mask)
    x = xq + att if residual else att
    return x + _mlp(params, prefix, _ln(x, params[f"{prefix}/layer_norm_2"])), w


def _self_block(params, prefix, z, heads):
    normed = _ln(z, params[f"{prefix}/layer_norm"])
    att, w = _attention(params, f"{prefix}/attention", normed, normed, heads, np.ones((1, 1, 1)))
    x = z + att
    return x + _mlp(params, prefix, _ln(x, params[f"{prefix}/layer_norm_1"])), w


def _numpy_perceiver(params, inputs, input_mask, query_mask):
    """`(outputs, weights, states)`, the latter two by the names inspect gives them."""
    params = jax.tree_util.tree_map(np.float64, params)
    enc = "perceiver_encoder/~/"
    weights, states = {}, {}
    z = np.broadcast_to(params[enc + "trainable_position_encoding"]["pos_embs"], (B, LATENTS, CHANNELS))
    mask = np.ones((B, LATENTS, 1)) * input_mask[:, None, :]
    z, weights[enc + "cross_attention/attention"] = _cross_block(
        params, enc + "cross_attention", z, np.float64(inputs), 1, mask)
    states[enc + "cross_attention"] = z
    names = ["self_attention"] + [f"self_attention_{i}" for i in range(1, SELF_ATTENDS)]
    for block in range(NUM_BLOCKS):
        for name in names:
            z, weights[f"{enc}{name}/attention[{block}]"] = _self_block(params, enc + name, z, SELF_HEADS)
            states[f"{enc}{name}[{block}]"] = z
    dec = "basic_decoder/"
    query = np.broadcast_to(params[dec + "~/trainable_position_encoding"]["pos_embs"],
                            (B, OUTPUTS, QUERY_CHANNELS))
    mask = query_mask[:, :, None] * np.ones((1, 1, LATENTS))
    x, weights[dec + "cross_attention/attention"] = _cross_block(
        params, dec + "cross_attention", query, z, DECODER_HEADS, mask, residual=False)
    states[dec + "cross_attention"] = x  # before the output layer
    return _lin(x, params[dec + "output"]), weights, states


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["plain", "fast"])
def test_weights_and_states_equal_numpy(setup, path, chosen_folds):
    params, state, args = setup
    model = compute.configure(MODEL, **(PLAIN if path == "plain" else FAST))
    outputs, maps = inspect.attention_maps(model, params, state, *args, layers=["*"])
    _, states = inspect.hidden_states(model, params, state, *args)
    if path == "fast":  # the folded single-head cross-attention did run
        assert any(fold != _folding.NO_FOLD for fold in chosen_folds)
    expected_out, expected_maps, expected_states = _numpy_perceiver(params, *args)
    assert list(maps) == list(expected_maps)  # names, in the order the layers ran
    for name, expected in expected_maps.items():
        np.testing.assert_allclose(maps[name], expected, rtol=1e-4, atol=1e-5, err_msg=name)
    assert list(states) == list(expected_states)
    for name, expected in expected_states.items():
        np.testing.assert_allclose(states[name], expected, rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(outputs, expected_out, rtol=1e-4, atol=1e-4)

    # Rows sum to one; queries with no valid key are exactly zero.
    cross = np.asarray(maps["perceiver_encoder/~/cross_attention/attention"])
    np.testing.assert_allclose(cross[0].sum(-1), 1.0, rtol=1e-5)
    assert np.all(cross[1] == 0)
    decoder = np.asarray(maps["basic_decoder/cross_attention/attention"])
    assert np.all(decoder[0, :, [2, 5]] == 0)
    np.testing.assert_allclose(decoder[1].sum(-1), 1.0, rtol=1e-5)
    if path == "fast":  # the decoder's states of chosen outputs (it runs in chunks of 3)
        _, chosen = inspect.hidden_states(model, params, state, *args, decoder_queries=[6, 0, 2])
        name = "basic_decoder/cross_attention"
        np.testing.assert_allclose(chosen[name], expected_states[name][:, [6, 0, 2]], rtol=1e-4, atol=1e-4)


def test_default_is_the_encoder_and_outputs_are_unchanged(setup):
    params, state, args = setup
    outputs, maps = inspect.attention_maps(MODEL, params, state, *args)
    names = ["perceiver_encoder/~/cross_attention/attention"] + [
        f"perceiver_encoder/~/{n}/attention[{b}]"
        for b in range(NUM_BLOCKS) for n in ("self_attention", "self_attention_1")
    ]
    assert list(maps) == names
    plain, _ = jax.jit(MODEL.apply)(params, state, None, *args)
    np.testing.assert_array_equal(outputs, plain)
    # A scanned encoder is unrolled while inspecting; its outputs agree.
    scanned = compute.configure(MODEL, scan_blocks=True)
    looped, _ = jax.jit(scanned.apply)(params, state, None, *args)
    outputs, _ = inspect.hidden_states(scanned, params, state, *args)
    np.testing.assert_allclose(outputs, looped, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 3])
def test_decoder_weights_for_chosen_queries(setup, chunk, monkeypatch):
    params, state, args = setup
    model = compute.configure(MODEL, decoder_chunk_size=chunk)
    layer = "basic_decoder/cross_attention/attention"
    _, whole = inspect.attention_maps(model, params, state, *args, layers=[layer])
    assert list(whole) == [layer]
    _, chosen = inspect.attention_maps(
        model, params, state, *args, layers=["basic_decoder*"], decoder_queries=[6, 0, 2])
    assert chosen[layer].shape == (B, DECODER_HEADS, 3, LATENTS)
    np.testing.assert_allclose(chosen[layer], np.asarray(whole[layer])[:, :, [6, 0, 2]], atol=1e-6)

    # Too large to return whole (here: more than 20 pairs): ask for queries.
    monkeypatch.setattr(inspect, "MAX_DECODER_PAIRS", 20)
    with pytest.raises(ValueError, match="decoder_queries"):
        inspect.attention_maps(model, params, state, *args, layers=[layer])
    with pytest.raises(ValueError, match=r"decoder_queries must lie in \[0, 7\)"):
        inspect.attention_maps(model, params, state, *args, layers=[layer], decoder_queries=[7])


def test_asking_for_nothing_changes_nothing(setup, monkeypatch):
    params, state, args = setup
    formed = []
    original = _seam._weights

    def spy(*a, **k):
        formed.append(1)
        return original(*a, **k)

    monkeypatch.setattr(_seam, "_weights", spy)
    jaxpr = str(jax.make_jaxpr(MODEL.apply)(params, state, None, *args))
    assert not formed  # no weights formed without an inspection
    inspect.attention_maps(MODEL, params, state, *args)
    assert len(formed) == 1 + NUM_BLOCKS * SELF_ATTENDS
    # The same program as with the modules' hook removed, before and after.
    assert str(jax.make_jaxpr(MODEL.apply)(params, state, None, *args)) == jaxpr
    monkeypatch.setattr(_recording, "record_attention", lambda *a: None)
    monkeypatch.setattr(inspect, "record_attention", lambda *a: None)  # Its old name.
    assert str(jax.make_jaxpr(MODEL.apply)(params, state, None, *args)) == jaxpr

    # Parameters and state: the same tree, inspected or not.
    def init():
        return MODEL.init(jax.random.PRNGKey(0), *args)

    expected = jax.eval_shape(init)
    with inspect._recording(inspect._Recorder(["*"], None, True, True)):
        assert jax.eval_shape(init) == expected


def test_bad_arguments_are_named(setup):
    params, state, args = setup
    with pytest.raises(ValueError, match="match none of the model's attention layers.*basic_decoder"):
        inspect.attention_maps(MODEL, params, state, *args, layers=["*nothing*"])
    with pytest.raises(TypeError, match="layers must be a sequence"):
        inspect.attention_maps(MODEL, params, state, *args, layers="*")
    with pytest.raises(TypeError, match="hk.TransformedWithState"):
        inspect.attention_maps(_forward, params, state, *args)
    with pytest.raises(ValueError, match="decoder_queries must be a 1D"):
        inspect.attention_maps(MODEL, params, state, *args, layers=["*"], decoder_queries=[[1]])


def test_latent_grid_draws_each_latent_over_the_image():
    pytest.importorskip("matplotlib")
    from perceiver import inspect_plots

    weights = np.zeros((1, 1, 3, 6), np.float32)
    weights[0, 0, np.arange(3), [0, 4, 5]] = 1  # latent i looks at one pixel
    fig = inspect_plots.latent_grid(weights, (2, 3), columns=2)
    drawn = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(drawn) == 3
    np.testing.assert_array_equal(drawn[1], [[0, 0, 0], [0, 1, 0]])  # pixel 4 = row 1, column 1
    with pytest.raises(ValueError, match="H \\* W = 8"):
        inspect_plots.latent_grid(weights, (2, 4))


def test_repeated_calls_compile_once(setup):
    params, state, args = setup
    traces = []

    def counted(*a):
        traces.append(1)
        return _forward(*a)

    model = hk.transform_with_state(counted)
    layer = "basic_decoder/cross_attention/attention"
    found = [
        inspect.attention_maps(model, params, state, *args, layers=[layer], decoder_queries=queries)[1]
        for queries in ([1], [1], [4])
    ]
    assert len(traces) == 2  # once per option, not per call
    np.testing.assert_array_equal(found[0][layer], found[1][layer])
    assert not np.array_equal(found[0][layer], found[2][layer])  # other queries: another program
    inspect.clear_cache()
    assert not inspect._CACHE


def _figure_images(fig):
    return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]


def test_decoder_reads_draws_the_latents_each_pixel_reads():
    pytest.importorskip("matplotlib")
    from perceiver import inspect_plots

    rng = np.random.default_rng(0)
    frame, latents, pixels = (2, 3), 5, [(0, 2), (1, 0)]
    assert inspect_plots.pixel_queries(pixels, frame) == [2, 3]
    decoder = rng.dirichlet(np.ones(latents), size=(1, 2, len(pixels))).astype(np.float32)
    encoder = rng.dirichlet(np.ones(6), size=(1, 1, latents)).astype(np.float32)
    fig = inspect_plots.decoder_reads(
        decoder, encoder, frame, pixels, top=2, image=np.zeros((2, 3, 3)), overlay=False
    )
    mean = decoder[0].mean(0)  # heads averaged
    for row in range(len(pixels)):
        bars = fig.axes[row * 4 + 1]
        np.testing.assert_allclose([p.get_height() for p in bars.patches], mean[row], rtol=1e-6)
        top = np.argsort(-mean[row])[:2]
        assert inspect_plots.top_latents(decoder, row, top=2).tolist() == top.tolist()
        for column, latent in enumerate(top):
            drawn = fig.axes[row * 4 + 2 + column].images[0].get_array()
            np.testing.assert_array_equal(drawn, encoder[0, 0, latent].reshape(frame))
    with pytest.raises(ValueError, match="one query per pixel"):
        inspect_plots.decoder_reads(decoder, encoder, frame, pixels[:1])
    with pytest.raises(ValueError, match="6 = H \\* W keys"):
        inspect_plots.decoder_reads(decoder, encoder[..., :4], frame, pixels)
    with pytest.raises(ValueError, match="pixels must lie in the 2x3 frame"):
        inspect_plots.pixel_queries([(2, 0)], frame)


def _photo(height, width, block, seed=0):
    """A photo of flat colour blocks in [0.15, 0.85] (no white, smooth at any scale above a block)."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(0.15, 0.85, (-(-height // block), -(-width // block), 3))
    return np.repeat(np.repeat(blocks, block, 0), block, 1)[:height, :width]


def _grey(photo):
    return photo @ np.array([0.299, 0.587, 0.114])


def _chroma(rgb):
    return rgb.max(-1) - rgb.min(-1)


def test_attention_overlay_shows_the_photo_in_grey_and_the_map_as_heat():
    from perceiver import inspect_plots

    photo = _photo(40, 60, 5)
    attention = np.zeros((4, 6))
    attention[2, 4] = 3.0  # one key: the cell of rows 20..29, columns 40..49
    drawn = inspect_plots.attention_overlay(photo, attention)
    assert drawn.shape == (40, 60, 3)
    # Two cells away from the peak nothing is laid over: the photo, in grey.
    far = np.zeros((40, 60), bool)
    far[:5] = far[:, :25] = True
    np.testing.assert_allclose(drawn[far], np.repeat(_grey(photo)[far][:, None], 3, 1), atol=1e-12)
    # The heat's strength (its colourfulness over grey) peaks at the key's cell, at the
    # peak opacity, in yellow laid over grey: (1 - a) * grey + a * (1, 1, 0).
    chroma = _chroma(drawn)
    y, x = np.unravel_index(np.argmax(chroma), chroma.shape)
    assert 20 <= y < 30 and 40 <= x < 50
    assert chroma.max() == pytest.approx(inspect_plots.PEAK_ALPHA)
    a = inspect_plots.PEAK_ALPHA
    np.testing.assert_allclose(drawn[y, x], (1 - a) * _grey(photo)[y, x] + a * np.array([1, 1, 0]))
    # A map of zeros leaves the grey photo; bad shapes are named.
    np.testing.assert_allclose(inspect_plots.attention_overlay(photo, np.zeros((4, 6)))[..., 0], _grey(photo))
    with pytest.raises(ValueError, match="attention must be a map"):
        inspect_plots.attention_overlay(photo, np.zeros(24))
    with pytest.raises(ValueError, match="image must be"):
        inspect_plots.attention_overlay(photo[..., 0], attention)


def test_latent_grid_draws_each_map_over_the_photo_and_the_raw_grid_on_request():
    pytest.importorskip("matplotlib")
    from perceiver import inspect_plots

    photo = _photo(60, 90, 6)
    weights = np.full((1, 1, 3, 6), 1e-3, np.float32)
    weights[0, 0, np.arange(3), [0, 4, 5]] = 1  # latent i looks at one key of a 2x3 grid
    fig = inspect_plots.latent_grid(weights, (2, 3), image=photo, columns=4)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "latent 0", "latent 1", "latent 2"]
    panels = _figure_images(fig)
    np.testing.assert_allclose(panels[0], photo)
    for latent, (row, column) in enumerate([(0, 0), (1, 1), (1, 2)]):
        drawn = np.asarray(panels[latent + 1], np.float64)
        chroma = _chroma(drawn)
        y, x = np.unravel_index(np.argmax(chroma), chroma.shape)
        assert (y // 30, x // 30) == (row, column), latent  # each key covers 30x30 pixels
        quiet = chroma < 0.01
        assert quiet.mean() > 0.3
        assert np.corrcoef(drawn[quiet].mean(-1), _grey(photo)[quiet])[0, 1] > 0.99
    raw = _figure_images(inspect_plots.latent_grid(weights, (2, 3), image=photo, overlay=False))
    np.testing.assert_array_equal(raw[2], weights[0, 0, 1].reshape(2, 3))
    # A large photo is drawn reduced, its colours kept.
    big = _photo(600, 400, 50)
    (shown, _, _, _) = _figure_images(inspect_plots.latent_grid(weights, (2, 3), image=big))
    assert max(shown.shape[:2]) == inspect_plots.MAX_DRAWN_SIDE and shown.shape[:2] == (256, 171)
    np.testing.assert_allclose(np.asarray(shown).mean((0, 1)), big.mean((0, 1)), atol=0.01)


def test_decoder_reads_draws_the_maps_over_the_frame():
    pytest.importorskip("matplotlib")
    from perceiver import inspect_plots

    frame, pixels = (2, 3), [(1, 2)]
    decoder = np.array([[[[0.1, 0.7, 0.2]]]], np.float32)  # the pixel reads latent 1 most
    encoder = np.full((1, 1, 3, 6), 1e-3, np.float32)
    encoder[0, 0, 1, 3] = 1  # latent 1 looks at key (1, 0)
    photo = _photo(20, 30, 2)
    fig = inspect_plots.decoder_reads(decoder, encoder, frame, pixels, top=1, image=photo)
    drawn = np.asarray(fig.axes[2].images[0].get_array(), np.float64)
    assert fig.axes[2].get_title() == "latent 1" and drawn.shape == (20, 30, 3)
    y, x = np.unravel_index(np.argmax(_chroma(drawn)), drawn.shape[:2])
    assert (y // 10, x // 10) == (1, 0)
    # The pixel is marked at its centre on the drawn frame: (1, 2) of 2x3 -> (14.5, 24.5).
    marker = fig.axes[0].lines[0]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (24.5, 14.5)


def test_text_attention_draws_rows_under_the_bytes():
    pytest.importorskip("matplotlib")
    from perceiver import inspect_plots

    text = "aé b"  # 5 bytes: é is two
    weights = np.zeros((1, 2, 3, 8), np.float32)  # 8 keys: 3 of padding
    weights[0, 0, 0, :5] = [1, 2, 0, 4, 1]
    weights[0, 1, 0, :5] = [3, 2, 0, 0, 1]
    weights[0, :, 2, 6] = 1  # weight only on padding: drawn as zeros
    fig = inspect_plots.text_attention(weights, text, rows=[0, 2])
    (drawn,) = _figure_images(fig)
    np.testing.assert_allclose(drawn, [[1, 1, 0, 1, 0.5], [0, 0, 0, 0, 0]])  # mean of heads / row max
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["a", "é", "", "␣", "b"]
    (one_head,) = _figure_images(inspect_plots.text_attention(weights, text.encode(), rows=[0], head=1))
    np.testing.assert_allclose(one_head, [[1, 2 / 3, 0, 0, 1 / 3]])
    with pytest.raises(ValueError, match="9 bytes, more than the 8 keys"):
        inspect_plots.text_attention(weights, "x" * 9, rows=[0])
    with pytest.raises(ValueError, match=r"rows must be .* in \[0, 3\)"):
        inspect_plots.text_attention(weights, text, rows=[3])


# The learned and Fourier classifiers differ from the conv one only before the
# encoder; they run with --runslow.
ARCHITECTURES = [
    pytest.param(n, marks=pytest.mark.slow) if n in ("imagenet_learned", "imagenet_fourier") else n
    for n in ref.SMALL_FACTORIES
]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_published_architecture_shows_its_encoder_and_decoder(name):
    factory, kwargs = ref.SMALL_FACTORIES[name]
    model, params, state = models.load_for(factory, ref.checkpoint_path(name), **kwargs)
    inputs, expected = ref.recorded(name)
    args = ref.factory_inputs(name, inputs)
    outputs, maps = inspect.attention_maps(model, params, state, *args, layers=["*"])
    # The outputs are still the reference's (recorded from DeepMind's code).
    got, want = jax.tree_util.tree_leaves(outputs), jax.tree_util.tree_leaves(expected)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
    encoder = [k for k in maps if k.endswith("cross_attention/attention") and "decoder" not in k]
    decoder = [k for k in maps if "decoder" in k]
    assert len(encoder) == 1 and len(decoder) == 1, sorted(maps)
    enc, dec = np.asarray(maps[encoder[0]]), np.asarray(maps[decoder[0]])
    latents = enc.shape[2]
    assert dec.shape[0] == enc.shape[0] and dec.shape[-1] == latents
    assert any("self_attention" in k and v.shape[2:] == (latents, latents) for k, v in maps.items())
    for weights in maps.values():
        sums = np.asarray(weights, np.float64).sum(-1)
        # Rows of padded or fully masked queries are exactly zero, the others sum to one.
        assert np.all((np.abs(sums - 1) < 1e-4) | (sums == 0)), name
        assert np.all(np.asarray(weights) >= 0)
