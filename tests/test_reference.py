"""Our package against facts recorded from DeepMind's reference.

Trees: the reference notebooks' construction (colab_models.py), run unchanged
on our modules, and our `perceiver.models` factories must both build exactly
the recorded parameter and state trees, at the published sizes and small.
Outputs: the small checkpoints, in the 2021 file format, must reproduce the
reference's recorded outputs.
"""

import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint, models

RTOL = 1e-5


def assert_close(actual, expected):
    """float32 agreement, relative to each output's scale."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected)
        for key in expected:
            assert_close(actual[key], expected[key])
        return
    actual = np.asarray(actual)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale)


@pytest.fixture(scope="module")
def colab():
    return ref.colab_models()


@pytest.fixture(scope="module")
def trees():
    return ref.param_trees()


@pytest.mark.parametrize("size", ["full", "small"])
@pytest.mark.parametrize("model", ref.MODELS)
def test_reference_script_builds_recorded_tree(colab, trees, model, size):
    params, state = colab.init_spec(ref.package(), model, size)
    assert params == trees[model][size]["params"]
    assert state == trees[model][size]["state"]


@pytest.mark.parametrize("model", ref.MODELS)
def test_factory_builds_published_tree(trees, model):
    factory, kwargs = ref.FULL_FACTORIES[model]
    params, state = models.parameter_shapes(factory, **kwargs)
    assert ref.tree_spec(params) == trees[model]["full"]["params"]
    assert ref.tree_spec(state) == trees[model]["full"]["state"]
    counter = [v for m in state.values() for n, v in m.items() if n == "counter"]
    assert all(c.dtype == np.int32 for c in counter)
    assert all(v.dtype == np.float32 for m in params.values() for v in m.values())


@pytest.mark.parametrize("model", ref.MODELS)
def test_factory_builds_small_tree(trees, model):
    factory, kwargs = ref.SMALL_FACTORIES[model]
    params, state = models.parameter_shapes(factory, **kwargs)
    assert ref.tree_spec(params) == trees[model]["small"]["params"]
    assert ref.tree_spec(state) == trees[model]["small"]["state"]


@pytest.mark.parametrize("model", ref.MODELS)
def test_reference_script_reproduces_outputs_from_checkpoint(colab, model):
    transformed, _ = colab.build(ref.package(), model, "small")
    params, state = checkpoint.load(ref.checkpoint_path(model))
    inputs, expected = ref.recorded(model)
    args = ref.factory_inputs(model, inputs)
    if model == "video_autoencoding":
        args[2]["label"] = None
    # No random key: inference must not need one.
    out, _ = jax.jit(transformed.apply)(params, state, None, *args)
    assert_close(jax.tree_util.tree_map(np.asarray, out), expected)


@pytest.mark.parametrize("model", ref.MODELS)
def test_reference_script_runs_unchanged(colab, model):
    """colab_models.run: seeded weights, a random key, jit, as against the reference."""
    _, expected = ref.recorded(model)
    assert_close(colab.run(ref.package(), model, "small"), expected)


@pytest.mark.parametrize("model", ref.MODELS)
def test_factory_reproduces_outputs_from_checkpoint(model):
    factory, kwargs = ref.SMALL_FACTORIES[model]
    transformed, params, state = models.load_for(factory, ref.checkpoint_path(model), **kwargs)
    inputs, expected = ref.recorded(model)
    out, _ = jax.jit(transformed.apply)(params, state, None, *ref.factory_inputs(model, inputs))
    assert_close(jax.tree_util.tree_map(np.asarray, out), expected)


# Op by op is slow (flow: 12 s); the flow case runs with --runslow.
@pytest.mark.parametrize("model", ["imagenet_conv", pytest.param("flow", marks=pytest.mark.slow)])
def test_outputs_without_jit_match(model):
    factory, kwargs = ref.SMALL_FACTORIES[model]
    transformed, params, state = models.load_for(factory, ref.checkpoint_path(model), **kwargs)
    inputs, expected = ref.recorded(model)
    out, _ = transformed.apply(params, state, None, *ref.factory_inputs(model, inputs))
    assert_close(np.asarray(out), expected)


def test_imagenet_conv_batchnorm_state_updates_only_in_training():
    factory, kwargs = ref.SMALL_FACTORIES["imagenet_conv"]
    transformed, params, state = models.load_for(
        factory, ref.checkpoint_path("imagenet_conv"), **kwargs
    )
    inputs, _ = ref.recorded("imagenet_conv")
    _, same = transformed.apply(params, state, None, inputs["images"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, same, state)
    _, updated = transformed.apply(params, state, None, inputs["images"], is_training=True)
    counters = [m["counter"] for m in updated.values()]
    assert all(int(c) == int(state_m["counter"]) + 1 for c, state_m in zip(counters, state.values()))


def test_load_for_lists_every_difference(tmp_path):
    factory, kwargs = ref.SMALL_FACTORIES["flow"]
    params, state = checkpoint.load(ref.checkpoint_path("flow"))
    params = {m: dict(p) for m, p in params.items()}
    del params["image_preprocessor/patches_linear"]
    params["flow_decoder/~/basic_decoder/output"]["w"] = np.zeros((3, 3), np.float32)
    params["extra/module"] = {"w": np.zeros(2, np.float32)}
    path = tmp_path / "damaged.pystate"
    checkpoint.save(path, params, state)
    with pytest.raises(checkpoint.CheckpointError) as info:
        models.load_for(factory, path, **kwargs)
    message = str(info.value)
    assert "missing image_preprocessor/patches_linear/b" in message
    assert "missing image_preprocessor/patches_linear/w" in message
    assert "unexpected extra/module/w" in message
    assert "mismatched flow_decoder/~/basic_decoder/output/w" in message
    assert "4 differences" in message
