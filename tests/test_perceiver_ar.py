"""Perceiver AR against recorded outputs of its authors' code (google-research/perceiver-ar).

tests/data/perceiver_ar/ holds, per configuration, the reference's
parameters, inputs and outputs (`record_reference.py` made them); ours must
build the same parameter tree and compute the same logits and masks.
"""

import json
import pathlib

import haiku as hk
import jax
import numpy as np
import pytest

from perceiver import perceiver_ar

DATA = pathlib.Path(__file__).parent / "data" / "perceiver_ar"
CONFIGS = json.loads((DATA / "configs.json").read_text()) if (DATA / "configs.json").exists() else {}
PLAIN = sorted(n for n, c in CONFIGS.items() if c.get("call_kwargs", {}).get("memory_type") == "none")


def _params(data, prefix="param"):
    params = {}
    for key in data.files:
        if key.startswith(prefix + "/"):
            module, name = key[len(prefix) + 1:].rsplit("/", 1)
            params.setdefault(module, {})[name] = data[key]
    return params


def _model(config):
    call = dict(config["call_kwargs"])
    z_index_dim = call.get("z_index_dim")

    def forward(inputs, input_idxs):
        model = perceiver_ar.PerceiverAR(**config["constructor_kwargs"])
        return model(inputs, input_idxs, is_training=False, z_index_dim=z_index_dim)

    return hk.transform(forward)


def _inputs(data):
    idxs = data["in/input_idxs"] if "in/input_idxs" in data.files else None
    return data["in/inputs"], idxs


@pytest.mark.parametrize("name", PLAIN)
def test_parameter_tree_is_the_references(name):
    config = CONFIGS[name]
    data = np.load(DATA / config["file"])
    params = jax.eval_shape(_model(config).init, jax.random.PRNGKey(0), *_inputs(data))
    shapes = {m: {n: list(v.shape) for n, v in p.items()} for m, p in params.items()}
    assert shapes == config["param_tree"]


# One of each family of modules: creation order and random draws, checked eagerly.
INIT_CHECKED = [
    "absolute_padded", "rotary_partial", "rotary_mlp_query", "absolute_learned_query",
    "absolute_latents_per_position2", "absolute_z1",
]


# The two rotary families by default (the logits tests run every tree); all with --runslow.
@pytest.mark.parametrize(
    "name", [n if 1 <= i < 3 else pytest.param(n, marks=pytest.mark.slow) for i, n in enumerate(INIT_CHECKED)]
)
def test_parameters_are_created_in_the_references_order_with_its_initial_values(name):
    config = CONFIGS[name]
    data = np.load(DATA / config["file"])
    model = _model(config)
    params = model.init(jax.random.PRNGKey(CONFIGS["_about"]["init_seed"]), *_inputs(data))
    shapes = {m: {n: list(v.shape) for n, v in p.items()} for m, p in params.items()}
    assert shapes == config["param_tree"]
    assert list(params) == list(config["param_tree"])  # created in the reference's order
    # The same random draws in the same order: the same initial values.
    for module, values in _params(data, "init").items():
        for name, value in values.items():
            np.testing.assert_allclose(params[module][name], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", PLAIN)
def test_logits_and_masks_are_the_references(name):
    config = CONFIGS[name]
    data = np.load(DATA / config["file"])
    model = _model(config)
    out = jax.jit(model.apply)(_params(data), None, *_inputs(data))
    expected = data["out/input_events_logits"]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(out.input_events_logits, expected, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(out.latent_last_steps, data["out/latent_last_steps"])
    for key in ("encoder_mask", "processor_mask"):
        if key in config.get("none_outputs", []):
            assert getattr(out, key) is None
        else:
            np.testing.assert_array_equal(getattr(out, key), data[f"out/{key}"])


def _stepper(config):
    def forward(inputs, input_idxs, memory, z_index_dim, memory_type):
        model = perceiver_ar.PerceiverAR(**config["constructor_kwargs"])
        out = model(inputs, input_idxs, is_training=False, memory_type=memory_type,
                    memory=memory, z_index_dim=z_index_dim)
        return out.input_events_logits, out.perceiver_state

    return hk.without_apply_rng(hk.transform(forward))


@pytest.mark.parametrize("name", ["rotary_sampler_cached", "absolute_sampler_cached"])
def test_cached_decoding_replays_the_references_sampler(name):
    # A prompt, then one new event per step with a fixed-size memory, as the
    # reference's sample_utils runs it (until its first memory reset).
    config = CONFIGS[name]
    protocol = config["protocol"]
    data = np.load(DATA / config["file"])
    ctor = config["constructor_kwargs"]
    params = _params(data)
    model = _stepper(config)
    apply = jax.jit(model.apply, static_argnums=(4, 5))
    memory = perceiver_ar.initialize_memory(
        batch_size=data["in/events_initial"].shape[0],
        num_transformers_per_block=ctor["num_transformers_per_block"],
        num_cross_attend_heads=ctor.get("num_cross_attend_heads", 1),
        num_transformer_heads=ctor["num_transformer_heads"],
        num_z_channels=ctor["num_z_channels"],
        max_context_length_memory=protocol["max_context_length_memory"],
        z_index_dim_memory=protocol["z_index_dim_memory"],
        position_encoding_type=ctor["position_encoding_type"],
    )
    checked = 0
    for step in protocol["steps"]:
        if step["kind"] == "reset":
            break
        key = f"step{step['step']:02d}"
        logits, memory = apply(params, data[f"{key}/inputs"], data[f"{key}/input_idxs"], memory,
                               1, "fixed_size_kv")
        expected = data[f"{key}/logits"]
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        checked += 1
    assert checked >= 5


@pytest.mark.slow  # 15-25 s; the cached sampler's tests check the same memory against no cache
def test_growing_kv_memory_equals_the_references():
    config = CONFIGS["rotary_kv_cached"]
    protocol = config["protocol"]
    data = np.load(DATA / config["file"])
    params = _params(data)
    model = _stepper(config)
    memory = None
    steps = 3  # the prompt, then single events into a growing memory
    for step in range(steps):
        key = f"step{step:02d}"
        logits, memory = model.apply(params, data[f"{key}/inputs"], data[f"{key}/input_idxs"],
                                     memory, 1, "kv")
        expected = data[f"{key}/logits"]
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert memory[0].capacity == protocol["start_step"] + steps - 1


def test_other_absolute_position_tables_are_the_references_formulas():
    # 'fourier': Perceiver IO's features of a line of points; 'linear': each row its position.
    table = np.asarray(perceiver_ar._position_table("fourier", 12, 32))
    positions = np.linspace(-1, 1, 32)[:, None] * np.linspace(1.0, 16, 6)[None]
    expected = np.concatenate([np.sin(np.pi * positions), np.cos(np.pi * positions)], axis=-1)
    np.testing.assert_allclose(table, expected, atol=2e-5)
    np.testing.assert_array_equal(perceiver_ar._position_table("linear", 3, 4)[:, 0], [0, 1, 2, 3])
    assert perceiver_ar._position_table("random", 3, 4) is None
    with pytest.raises(ValueError, match="Unknown position_encoding"):
        perceiver_ar._position_table("wavelet", 3, 4)
