"""The `compute` config section: every recipe trains in bfloat16 compute and with rematerialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver.train import config, recipes


def _flow_task(tmp_path, *overrides):
    cfg = recipes.get_config("flow", tiny=True)
    config.apply_overrides(cfg, ["data.train_examples=2", "data.eval_examples=2", *overrides])
    objective = recipes.build_task(cfg, str(tmp_path / "run"), pretrained=False)
    batch = {k: jnp.asarray(v) for k, v in next(iter(objective.train_loader(2, 0))).items()}
    params, state = objective.init(jax.random.PRNGKey(0))
    return objective, params, state, batch


def _gradient_program(objective, params, state, batch) -> str:
    def loss(params):
        return objective.loss(params, state, jax.random.PRNGKey(1), batch)[0]

    return str(jax.make_jaxpr(jax.grad(loss))(params))


def test_compute_options_follow_the_section():
    settings = config.ComputeSettings()
    assert recipes.compute_options(settings) == {}
    settings = config.ComputeSettings(dtype="bfloat16", remat=True, attention="tiled")
    assert recipes.compute_options(settings) == {
        "compute_dtype": jnp.bfloat16, "remat": True, "attention": "tiled",
    }


@pytest.mark.parametrize("value", ["float16", "bf16", ""])
def test_an_unknown_dtype_is_refused_in_one_line(value):
    cfg = recipes.get_config("flow", tiny=True)
    with pytest.raises(ValueError, match="compute.dtype must be one of 'float32', 'bfloat16'"):
        config.apply_overrides(cfg, [f"compute.dtype={value}"])
        recipes.validate(cfg)


def test_a_step_in_each_mode_keeps_float32_parameters_and_changes_the_computation(tmp_path):
    programs, losses = {}, {}
    for mode, overrides in {
        "float32": [],
        "bfloat16": ["compute.dtype=bfloat16", "compute.remat=true"],
    }.items():
        objective, params, state, batch = _flow_task(tmp_path / mode, *overrides)
        programs[mode] = _gradient_program(objective, params, state, batch)
        grads = jax.eval_shape(jax.grad(lambda p: objective.loss(p, state, jax.random.PRNGKey(1), batch)[0]), params)
        assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
        loss, _ = jax.jit(lambda p: objective.loss(p, state, jax.random.PRNGKey(1), batch))(params)
        assert np.isfinite(float(loss))
        losses[mode] = float(loss)
    # bfloat16 products only where asked; the same loss up to bfloat16's rounding.
    assert "bf16" not in programs["float32"] and "bf16" in programs["bfloat16"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)
    # Rematerialisation recomputes in the backward pass: a different gradient program.
    assert "custom_vjp" in programs["bfloat16"] and "custom_vjp" not in programs["float32"]


def test_the_section_is_stored_with_the_run_and_read_back():
    cfg = recipes.get_config("flow", tiny=True)
    config.apply_overrides(cfg, ["compute.dtype=bfloat16", "compute.remat=true"])
    stored = config.to_dict(cfg)
    assert stored["compute"] == {"dtype": "bfloat16", "remat": True, "attention": "auto"}
    resumed = config.from_dict(recipes.get_config("flow", tiny=True), stored)
    assert resumed.compute == cfg.compute
