"""Sampling from Perceiver AR: the reference's cached sampler replayed, cache == no cache, and the draws."""

import json
import pathlib

import jax
import numpy as np
import pytest

from perceiver import perceiver_ar_sampling as sampling

DATA = pathlib.Path(__file__).parent / "data" / "perceiver_ar"
CONFIGS = json.loads((DATA / "configs.json").read_text())


def _params(data):
    params = {}
    for key in data.files:
        if key.startswith("param/"):
            module, name = key[len("param/"):].rsplit("/", 1)
            params.setdefault(module, {})[name] = data[key]
    return params


@pytest.mark.parametrize("name", ["rotary_sampler_cached", "absolute_sampler_cached"])
def test_cached_steps_and_refill_replay_the_references_sampler(name):
    # The reference's tokens fed back: every step's logits, the memory refill
    # (when the latent memories are full) included, are the reference's.
    config = CONFIGS[name]
    protocol = config["protocol"]
    data = np.load(DATA / config["file"])
    model = sampling.Model(config["constructor_kwargs"], _params(data))
    start = protocol["start_step"]
    kinds = [step["kind"] for step in protocol["steps"]]
    assert "reset" in kinds  # the replay passes through a refill

    def choose(step, logits):
        expected = data[f"step{step:02d}/logits"].reshape(logits.shape[0], -1, logits.shape[-1])[:, -1]
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        return data[f"step{step:02d}/tokens"].reshape(-1)

    sampling.run_steps(
        model, data["in/events_initial"][:, :start], protocol["num_steps"],
        protocol["max_context_length_memory"], protocol["z_index_dim_memory"], True, choose,
    )


def _random_config():
    config = dict(CONFIGS["rotary_sampler_cached"]["constructor_kwargs"])
    params = _params(np.load(DATA / CONFIGS["rotary_sampler_cached"]["file"]))
    return config, params


def test_greedy_decoding_is_the_same_with_and_without_the_cache():
    config, params = _random_config()
    prompt = np.random.default_rng(0).integers(1, 24, (2, 5)).astype(np.int32)
    kwargs = dict(max_new=12, context=32, latents=4, options=sampling.SamplingOptions(temperature=0))
    cached = sampling.generate(config, params, prompt, use_cache=True, **kwargs)
    plain = sampling.generate(config, params, prompt, use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached, plain)  # 12 steps through two refills


def test_past_the_context_the_window_slides_the_same_with_and_without_the_cache():
    # A prompt longer than the window, then three slides of latents // 2 events.
    config, params = _random_config()
    prompt = np.random.default_rng(1).integers(1, 24, (2, 20)).astype(np.int32)
    kwargs = dict(max_new=8, context=16, latents=4, options=sampling.SamplingOptions(temperature=0))
    cached = sampling.generate(config, params, prompt, use_cache=True, **kwargs)
    plain = sampling.generate(config, params, prompt, use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached, plain)
    # Only the window is read: the prompt's first events change nothing.
    other = prompt.copy()
    other[:, :4] = 1
    np.testing.assert_array_equal(sampling.generate(config, params, other, use_cache=True, **kwargs),
                                  cached)


def test_a_stop_token_ends_each_row_and_never_lists_what_is_not_drawn():
    config, params = _random_config()
    prompt = np.random.default_rng(2).integers(1, 24, (3, 5)).astype(np.int32)
    kwargs = dict(max_new=6, context=32, latents=4, options=sampling.SamplingOptions(temperature=2.0))
    free = sampling.generate(config, params, prompt, seed=5, **kwargs)
    # Each row draws from its own key: rows in another order draw what they drew.
    moved = sampling.generate(config, params, prompt[::-1], seed=5, row_ids=[2, 1, 0], **kwargs)
    np.testing.assert_array_equal(moved, free[::-1])
    stop = int(free[0, 2])  # row 0 draws it third
    stopped = sampling.generate(config, params, prompt, seed=5, stop=stop, **kwargs)
    for row, tokens in zip(free, stopped):
        hits = np.flatnonzero(row == stop)
        end = hits[0] + 1 if hits.size else len(row)
        np.testing.assert_array_equal(tokens[:end], row[:end])  # the same draws up to the stop
        assert (tokens[end:] == 0).all()
    logits = jax.random.normal(jax.random.PRNGKey(0), (64, 24))
    drawn = sampling.draw(jax.random.PRNGKey(1), logits, sampling.SamplingOptions(temperature=3.0),
                          never=(0, 5))
    assert not np.isin(np.asarray(drawn), [0, 5]).any() and len(np.unique(drawn)) > 5


def test_a_huge_max_new_costs_only_the_steps_taken_and_a_huge_seed_is_named():
    # The logits layer always prefers token 7: every row stops at once.
    config, params = _random_config()
    params = dict(params)
    layer = params["perceiver_ar/~/logits"]
    params["perceiver_ar/~/logits"] = {"w": np.zeros_like(layer["w"]),
                                       "b": np.eye(layer["b"].shape[0], dtype=np.float32)[7]}
    prompt = np.full((2, 3), 5, np.int32)
    greedy = sampling.SamplingOptions(temperature=0)
    out = sampling.generate(config, params, prompt, max_new=10**12, context=32, latents=4,
                            options=greedy, stop=7)
    np.testing.assert_array_equal(out, [[7], [7]])
    with pytest.raises(ValueError, match="seed must be an int"):
        sampling.generate(config, params, prompt, max_new=1, context=32, latents=4, seed=2**70)


def test_sampling_is_seeded_and_streams_its_tokens():
    config, params = _random_config()
    prompt = np.full((1, 3), 7, np.int32)
    options = sampling.SamplingOptions(temperature=0.8, top_k=5, top_p=0.9)
    seen = []
    first = sampling.generate(config, params, prompt, max_new=4, context=32, latents=4,
                              options=options, seed=3, on_token=seen.append)
    again = sampling.generate(config, params, prompt, max_new=4, context=32, latents=4,
                              options=options, seed=3)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(np.stack(seen, axis=1), first)


def test_filters_keep_the_top_k_and_the_nucleus():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], np.float32))
    kept = lambda **kw: np.isfinite(np.asarray(  # noqa: E731
        sampling.filter_logits(logits, sampling.SamplingOptions(**kw))))[0].tolist()
    assert kept(top_k=2) == [True, True, False, False, False]
    assert kept(top_p=0.6) == [True, True, False, False, False]  # 0.5 < 0.6, then 0.7 covers it
    assert kept(top_p=0.5) == [True, False, False, False, False]
    assert kept(top_p=1.0) == [True] * 5
    with_padding = np.log(np.array([[0.9, 0.05, 0.03, 0.01, 0.01]], np.float32))
    tokens = sampling.draw(jax.random.PRNGKey(0), np.repeat(with_padding, 200, axis=0),
                           sampling.SamplingOptions(top_k=2))
    assert set(np.asarray(tokens).tolist()) == {1, 2}  # never 0, the padding


@pytest.mark.parametrize("kwargs, words", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
])
def test_bad_sampling_options_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        sampling.SamplingOptions(**kwargs)


def test_bad_prompts_and_lengths_are_named():
    config, params = _random_config()
    ok = np.ones((1, 3), np.int32)
    with pytest.raises(ValueError, match="prompt must be"):
        sampling.generate(config, params, np.zeros((1, 0), np.int32), max_new=1, context=32, latents=4)
    with pytest.raises(ValueError, match="0 is padding"):
        sampling.generate(config, params, np.array([[3, 0]]), max_new=1, context=32, latents=4)
    with pytest.raises(ValueError, match="max_new"):
        sampling.generate(config, params, ok, max_new=0, context=32, latents=4)
    with pytest.raises(ValueError, match="context must be"):
        sampling.generate(config, params, ok, max_new=1, context=3, latents=4)
    with pytest.raises(ValueError, match="latents"):
        sampling.generate(config, params, ok, max_new=1, context=32, latents=3)
    with pytest.raises(ValueError, match="use_positions_from_data"):
        sampling.Model({**config, "use_positions_from_data": False}, params)


def test_padding_is_never_drawn_even_when_the_model_prefers_it():
    # A model whose logits all tie (its last layer zero) would take token 0
    # greedily: 0 is padding and would end the sequence.
    config, params = _random_config()
    params = dict(params)
    params["perceiver_ar/~/logits"] = {k: np.zeros_like(v) for k, v in params["perceiver_ar/~/logits"].items()}
    prompt = np.full((1, 3), 5, np.int32)
    kwargs = dict(max_new=6, context=32, latents=4, options=sampling.SamplingOptions(temperature=0))
    cached = sampling.generate(config, params, prompt, use_cache=True, **kwargs)
    assert (cached > 0).all()
