"""Training recipes: configs as recorded, each runs and learns, 8 devices equal 1, kill and resume.

The recorded configs (tests/data/recipe_configs.json) are rewritten, after a
deliberate change to a recipe, by `python tests/train/test_train_recipes.py --write-golden`.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("orbax.checkpoint")

from perceiver import checkpoint, models  # noqa: E402
from perceiver.train import finetune, main, metrics  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(REPO, "tests", "data", "recipe_configs.json")
# Halves XLA's CPU compile time; runs compared with each other use the same flags.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# Shorter than --tiny, for the default suite; --runslow runs the full tiny variants.
# Evaluation runs in one recipe per evaluation function. The flow recipe's
# micro run is the uninterrupted run of the kill-and-resume test below.
MICRO = {
    "imagenet": ["train.num_steps=30", "data.randaugment_layers=0", "model.num_blocks=1", "train.final_eval=false"],
    "finetune_image": ["train.num_steps=30", "train.final_eval=false", "model.num_blocks=1"],
    "mlm": ["train.num_steps=40", "model.num_self_attends=1"],
    "finetune_text": ["train.num_steps=30", "model.num_self_attends=1"],
}
# Halves XLA's CPU compile time at little cost in speed; for the subprocesses.
FAST_LLVM = "--xla_llvm_disable_expensive_passes=true"
COMMON = ["train.progress=false", "checkpoint.every_steps=1000", "optimizer.warmup_steps=5", "train.log_every=100"]


# ---------------------------------------------------------------------------
# Every recipe's config, as recorded
# ---------------------------------------------------------------------------


def _error(fn, *args, **kwargs) -> str:
    """`'TypeName: message'` of what `fn(*args, **kwargs)` raises."""
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 (any error is recorded, and compared)
        return f"{type(e).__name__}: {e}"
    raise AssertionError(f"{fn.__name__}{args} raised nothing")


def _bad_configs():
    """(case, recipe, tiny, change) refused by `recipes.validate`: every relation it checks."""

    def field(section, name, value):
        return lambda cfg: setattr(getattr(cfg, section), name, value)

    def both(*changes):
        return lambda cfg: [c(cfg) for c in changes]

    return [
        ("unknown recipe", "flow", False, lambda cfg: setattr(cfg, "recipe", "nope")),
        ("unknown model key", "imagenet", False, lambda cfg: cfg.model.update(bogus=1)),
        ("model size out of range", "mlm", False, lambda cfg: cfg.model.update(num_latents=0)),
        ("bad variant", "imagenet", True, lambda cfg: cfg.model.update(variant="nope")),
        ("field out of range", "finetune_text", False, field("optimizer", "base_lr", -1.0)),
        ("flow without steps", "flow_small", True, field("train", "num_steps", 0)),
        ("neither steps nor epochs", "imagenet", False, field("train", "epochs", 0.0)),
        ("warm-up past the end", "mlm", True, field("optimizer", "warmup_steps", 1000)),
        ("seq_len past the model", "finetune_text", True, field("data", "seq_len", 65)),
        ("window shorter than the latents", "perceiver_ar", True, field("data", "seq_len", 63)),
        ("latents past the context", "perceiver_ar", False,
         lambda cfg: cfg.model.update(num_latents=9000)),
        ("crop_area reversed", "finetune_image", False, field("data", "crop_area", (0.5, 0.2))),
        ("objects reversed", "flow", False, both(field("data", "min_objects", 3), field("data", "max_objects", 2))),
        ("sizes reversed", "flow", True, field("data", "max_object_size", 0.1)),
        ("frequencies reversed", "flow_small", False, field("data", "max_frequency", 0.01)),
    ]


def _unbuildable_configs():
    """(case, recipe, change, pretrained) refused by `recipes.build_task` before any data is made."""

    def field(section, name, value):
        return lambda cfg: setattr(getattr(cfg, section), name, value)

    return [
        ("imagenet without data", "imagenet", lambda cfg: None, True),
        ("finetune_image without a checkpoint", "finetune_image", field("task", "pretrained", ""), True),
        ("finetune_text without a checkpoint", "finetune_text", field("task", "pretrained", ""), True),
        ("finetune_text without data", "finetune_text", lambda cfg: None, False),
        ("mlm without data", "mlm", lambda cfg: None, True),
        ("perceiver_ar without data", "perceiver_ar", lambda cfg: None, True),
    ]


def recipes_snapshot():
    """Everything the recipes define, as JSON: names, model rules, sizes, configs, descriptions, errors.

    Each config leaf is kept as `[repr(value), repr(rule)]`, so an int that
    became a float, a tuple that became a list or a changed range shows.
    """
    from perceiver.train import config as config_lib
    from perceiver.train import recipes, trainer

    snapshot = {
        # Listed in this order (help, error messages); every table covers the same recipes.
        "names": list(recipes.CONFIGS),
        "tables": {k: sorted(getattr(recipes, k)) for k in ("CONFIGS", "BUILDERS", "FACTORIES", "DESCRIBERS")},
        "factories": dict(recipes.FACTORIES),
        "model_rules": {
            factory: {k: repr(config_lib.rule(v)) for k, v in rules.items()}
            for factory, rules in recipes.MODEL_RULES.items()
        },
        # Each recipe's sizes, from its own module.
        "sizes": {
            name: repr(getattr(getattr(recipes, module), name))
            for module, name in (
                ("imagenet", "IMAGENET_MODEL"), ("imagenet", "TINY_IMAGE_MODEL"), ("mlm", "MLM_MODEL"),
                ("mlm", "TINY_MLM_MODEL"), ("flow", "FLOW_MODEL"), ("flow_small", "FLOW_SMALL_MODEL"),
                ("flow_small", "TINY_FLOW_SMALL_MODEL"), ("flow", "TINY_FLOW_MODEL"),
            )
        },
        "configs": {},
    }
    # A stand-in objective: what `describe` reads (class names, examples per epoch).
    objective = trainer.Objective(init=None, loss=None, train_loader=None, num_train_examples=1000,
                        export_info={"classes": ["cat", "dog"]})
    for name in recipes.CONFIGS:
        for tiny in (False, True):
            cfg = recipes.get_config(name, tiny)
            sections = {"model": recipes.MODEL_RULES[recipes.FACTORIES[name]]}
            entry = {
                "sections": {f.name: type(getattr(cfg, f.name)).__name__ for f in dataclasses.fields(cfg)},
                "fields": {
                    key: [repr(value), repr(rule)]
                    for key, value, rule, _ in config_lib.field_rules(cfg, sections)
                },
            }
            if cfg.model.get("num_classes") == 0:
                cfg.model["num_classes"] = 3  # as `build_task` fills it in: two named, one not
            entry["description"] = recipes.describe(cfg, objective, 7, "/runs/x")
            snapshot["configs"][f"{name}{' --tiny' if tiny else ''}"] = entry
    errors = {"get_config unknown": _error(recipes.get_config, "nope")}
    for case, name, tiny, change in _bad_configs():
        cfg = recipes.get_config(name, tiny)
        change(cfg)
        errors[case] = _error(recipes.validate, cfg)
    with tempfile.TemporaryDirectory() as workdir:
        for case, name, change, pretrained in _unbuildable_configs():
            cfg = recipes.get_config(name)
            change(cfg)
            errors[case] = _error(recipes.build_task, cfg, workdir, pretrained)
    snapshot["errors"] = errors
    # Recipes added since keep their sizes in their own module.
    snapshot["sizes"].update(
        (name, repr(getattr(recipes.perceiver_ar, name))) for name in ("AR_MODEL", "TINY_AR_MODEL")
    )
    # JSON's own types: what the recorded file holds; the tiny perceiver_ar
    # recipe reads the standard library, wherever this Python keeps it.
    text = json.dumps(snapshot).replace(json.dumps(sysconfig.get_paths()["stdlib"])[1:-1], "<stdlib>")
    return json.loads(text)


def test_recipes_define_what_was_recorded():
    with open(GOLDEN) as f:
        want = json.load(f)
    got = recipes_snapshot()
    for key in ("names", "tables", "factories", "model_rules", "sizes", "errors"):
        assert got[key] == want[key], key
    assert list(got["configs"]) == list(want["configs"])
    for name, entry in want["configs"].items():
        for part in entry:
            assert got["configs"][name][part] == entry[part], (name, part)
    assert got == want


NEW_RECIPE = textwrap.dedent(
    """
    from perceiver.train.recipes._registry import register
    from perceiver.train.recipes.flow import flow_config
    from perceiver.train.objectives.flow import OPTICAL_FLOW


    @register("flow_narrow", OPTICAL_FLOW)
    def flow_narrow_config(tiny: bool = False):
        config = flow_config(tiny=True)
        config.recipe = "flow_narrow"
        config.model["num_latents"] = 8
        return config
    """
)


def test_a_new_recipe_is_one_new_file(tmp_path):
    # A copy of the package with one file added to perceiver/train/recipes/, nothing else changed.
    shutil.copytree(os.path.join(REPO, "perceiver"), tmp_path / "perceiver",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pystate", "*.npz"))
    (tmp_path / "perceiver" / "train" / "recipes" / "flow_narrow.py").write_text(NEW_RECIPE)
    script = (
        "import json, sys; from perceiver.train import main, recipes; "
        "print(json.dumps(list(recipes.CONFIGS))); "
        "sys.exit(main.main(['--config', 'flow_narrow', '--workdir', 'w', '--print-config', 'data.max_objects=7']))"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    names, printed = result.stdout.split("\n", 1)
    # Listed after the others, found by name, validated by its kind's rules.
    assert json.loads(names) == ["imagenet", "finetune_image", "finetune_detection", "finetune_text", "finetune_qa",
                                 "finetune_tokens", "finetune_audio", "mlm", "perceiver_ar",
                                 "flow", "flow_small", "flow_small_photo", "flow_narrow"]
    printed = json.loads(printed)
    assert printed["recipe"] == "flow_narrow" and printed["model"]["num_latents"] == 8
    assert printed["data"]["max_objects"] == 7
    refused = subprocess.run(
        [sys.executable, "-m", "perceiver.train.main", "--config", "flow_narrow", "--workdir", "w",
         "--print-config", "train.num_steps=0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert refused.returncode == 2
    assert "train.num_steps must be >= 1 for the flow recipes" in refused.stderr, refused.stderr


def test_register_refuses_a_second_recipe_of_one_name_and_a_kind_that_is_not_one():
    from perceiver.train import recipes

    def other_flow_config(tiny=False):
        return None

    with pytest.raises(ValueError, match=r"recipe 'flow' is registered twice: by perceiver.train.recipes.flow"
                       r".flow_config and .*other_flow_config\."):
        recipes.register("flow", recipes.RECIPES["flow"].kind)(other_flow_config)
    with pytest.raises(TypeError, match="kind must be an ObjectiveKind; got str"):
        recipes.register("other", "optical_flow")
    assert "other" not in recipes.CONFIGS and recipes.CONFIGS["flow"] is recipes.flow.flow_config


def test_the_recipes_package_offers_its_api_and_each_recipe_its_own_names():
    from perceiver.train import recipes

    assert [n for n in recipes.__all__ if not hasattr(recipes, n)] == []
    # A recipe's config function and sizes are in its module, not repeated in the package.
    assert not hasattr(recipes, "flow_config") and not hasattr(recipes, "TINY_FLOW_MODEL")
    assert recipes.flow.TINY_FLOW_MODEL["image_shape"] == (16, 16)


def test_recipes_register_themselves_in_their_listed_order():
    from perceiver.train import recipes

    listed = ["imagenet", "finetune_image", "finetune_detection", "finetune_text", "finetune_qa",
              "finetune_tokens", "finetune_audio", "mlm", "perceiver_ar", "flow", "flow_small",
              "flow_small_photo"]
    assert list(recipes.CONFIGS) == listed
    for name in listed:
        assert recipes.CONFIGS[name] is recipes.RECIPES[name].config
        assert recipes.get_config(name).recipe == name == recipes.get_config(name, tiny=True).recipe
    # Each recipe's config function is NAME_config in its module NAME.
    for name in listed:
        assert recipes.CONFIGS[name] is getattr(getattr(recipes, name), f"{name}_config")


def _flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_flow_small_photo_is_the_run_that_made_the_shipped_flow_model():
    from perceiver.cli import flow as cli_flow
    from perceiver.train import config as config_lib
    from perceiver.train import recipes

    ran = _flat(checkpoint.read_description(cli_flow._bundled_flow_model())["trained"]["config"])
    recipe = _flat(json.loads(json.dumps(config_lib.to_dict(recipes.get_config("flow_small_photo")))))
    # The compute section came after that run, which computed as its defaults say.
    defaults = _flat({"compute": config_lib.to_dict(config_lib.ComputeSettings())})
    assert set(ran) == set(recipe) - set(defaults)
    assert all(recipe[key] == value for key, value in defaults.items())
    differ = {key: (ran[key], recipe[key]) for key in ran if ran[key] != recipe[key]}
    # The run was flow_small with overrides, from the flow_small model then
    # shipped (now runs/flow_small/model.pystate), without a progress bar.
    assert differ == {
        "recipe": ("flow_small", "flow_small_photo"),
        "task.pretrained": ("perceiver/data/flow_small.pystate", "runs/flow_small/model.pystate"),
        "train.progress": (False, True),
    }


def _train_losses(workdir):
    records = metrics.read(os.path.join(workdir, "metrics.jsonl"))
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert steps == list(range(1, len(steps) + 1))  # every step once
    return np.array([r["loss"] for r in records if r["split"] == "train"])


def _run_exported(recipe, workdir):
    """Loads model.pystate with perceiver.checkpoint.load and runs it with its factory."""
    with open(os.path.join(workdir, "summary.json")) as f:
        info = dict(json.load(f)["model"])
    params, state = checkpoint.load(os.path.join(workdir, "model.pystate"))
    factory = info.pop("factory")
    info.pop("classes", None)
    if factory == "imagenet_classifier":
        model = models.imagenet_classifier(info.pop("variant"), **info)
        size = info["image_size"]
        out, _ = jax.jit(model.apply)(params, state, None, jnp.zeros((2, size, size, 3)))
        assert out.shape == (2, info["num_classes"])
    elif factory == "text_classifier":
        model = finetune.text_classifier(info.pop("num_classes"), **info)
        tokens = jnp.full((2, 12), 7, jnp.int32)
        out, _ = jax.jit(model.apply)(params, state, None, tokens, jnp.ones_like(tokens))
        assert out.shape[0] == 2
    elif factory == "masked_language_model":
        model, params, state = models.load_for(factory, os.path.join(workdir, "model.pystate"), **info)
        tokens = jnp.full((2, 12), 7, jnp.int32)
        out, _ = jax.jit(model.apply)(params, state, None, tokens, jnp.ones_like(tokens))
        assert out.shape == (2, 12, 262)
    elif factory == "byte_language_model":
        model, params, state = models.load_for(factory, os.path.join(workdir, "model.pystate"), **info)
        tokens = jnp.full((2, info["num_latents"] + 3), 7, jnp.int32)
        out, _ = jax.jit(model.apply)(params, state, None, tokens)
        out = out.input_events_logits
        assert out.shape == (2, info["num_latents"], 259)
    else:
        info["image_shape"] = tuple(info["image_shape"])
        model, params, state = models.load_for(factory, os.path.join(workdir, "model.pystate"), **info)
        out, _ = jax.jit(model.apply)(params, state, None, jnp.zeros((1, 2) + info["image_shape"] + (3,)))
        assert out.shape == (1,) + info["image_shape"] + (2,)
    assert np.all(np.isfinite(np.asarray(out)))


def _check_recipe(recipe, workdir, overrides):
    assert main.main(["--config", recipe, "--workdir", str(workdir), "--tiny"] + overrides) == 0
    loss = _train_losses(workdir)
    k = max(len(loss) // 5, 3)
    assert loss[-k:].mean() < 0.9 * loss[:k].mean(), loss  # it learns
    _run_exported(recipe, workdir)


# The fine-tuning recipes also train end to end in test_own_models (by default),
# and so does imagenet's (a few steps, exported and used), which keeps the suite
# within its time.
@pytest.mark.parametrize(
    "recipe",
    [pytest.param(r, marks=pytest.mark.slow) if r.startswith("finetune") or r == "imagenet" else r
     for r in sorted(MICRO)],
)
def test_recipe_micro_runs_and_learns(recipe, tmp_path):
    _check_recipe(recipe, tmp_path / recipe, COMMON + MICRO[recipe])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(MICRO) + ["flow", "perceiver_ar"])
def test_recipe_tiny_variant_runs_and_learns(recipe, tmp_path):
    _check_recipe(recipe, tmp_path / recipe, ["train.progress=false"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main.main(["--config", "flow", "--workdir", str(tmp_path), "--tiny", "train.bogus=1"]) == 2
    assert "unknown config key 'train.bogus'" in capsys.readouterr().err
    assert main.main(["--config", "imagenet", "--workdir", str(tmp_path)]) == 2
    assert "data.train_dir" in capsys.readouterr().err
    assert main.main(["--config", "flow", "--workdir", str(tmp_path), "--print-config", "model.num_latents=7"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["num_latents"] == 7


# ---------------------------------------------------------------------------
# 8 devices = 1 device
# ---------------------------------------------------------------------------

EQUIVALENCE = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 " + FAST_COMPILE
    import jax, numpy as np
    from perceiver.train import parallel, recipes, optim, trainer
    assert jax.device_count() == 8
    cfg = recipes.get_config("imagenet", tiny=True)
    # The conv stem has BatchNorm: its statistics must be those of the global batch too.
    cfg.model.update(variant="conv_preprocessing", image_size=16, num_classes=5, num_blocks=1)
    objective = recipes.build_task(cfg, sys.argv[1])
    opt, schedule = optim.make_optimizer(cfg.optimizer, 10, 16)  # LAMB, clipping, weight decay
    rng = np.random.default_rng(0)
    batches = [dict(images=rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
                    labels=rng.integers(0, 5, 16).astype(np.int32),
                    mix_labels=rng.integers(0, 5, 16).astype(np.int32),
                    ratio=rng.uniform(size=16).astype(np.float32)) for _ in range(2)]
    build = trainer.initial_state(objective, opt, seed=0)
    initial = jax.device_get(jax.jit(build)())
    step_fn = trainer.make_train_step(objective.loss, opt, schedule)

    def run(n, shard):
        mesh = parallel.make_mesh(n)
        shardings = parallel.tree_shardings(initial, mesh, shard, min_size=64)
        ts = jax.device_put(initial, shardings)
        step = trainer.compile_train_step(step_fn, shardings, mesh)
        for b in batches:
            ts, m = step(ts, jax.device_put(b, parallel.batch_sharding(mesh)))
        sharded = sum(not x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(ts.params))
        return jax.device_get(ts), jax.device_get(m), sharded

    one, m1, _ = run(1, False)
    worst = 0.0
    for shard in (False, True):
        other, m, n_sharded = run(8, shard)
        assert n_sharded > 0 or not shard, "shard_params sharded nothing"
        for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(other)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
            worst = max(worst, float(np.max(np.abs(np.asarray(a, np.float64) - b), initial=0)))
        np.testing.assert_allclose(m1["loss"], m["loss"], rtol=1e-5)
    print("max abs difference", worst)
    """
)


@pytest.mark.slow  # 43 s; the 2-device sharding test in test_train_workflow runs by default
def test_eight_device_data_parallel_step_equals_one_device(tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, "-c", EQUIVALENCE.replace("FAST_COMPILE", repr(FAST_COMPILE)), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "max abs difference" in result.stdout


# ---------------------------------------------------------------------------
# Killed at any moment, resumed, same result
# ---------------------------------------------------------------------------


def _command(workdir, final_eval=False):
    # Eight fixed scenes: long enough to see the loss fall, short enough to kill mid-run.
    # (Evaluation changes no parameter; only the reference run spends time on it.)
    return [
        sys.executable, "-m", "perceiver.train.main", "--config", "flow", "--tiny",
        "--workdir", str(workdir), "train.num_steps=40", "checkpoint.every_steps=3",
        "checkpoint.keep=2", "data.train_examples=8", "data.eval_examples=8",
        "optimizer.warmup_steps=5", "train.progress=false", "train.log_every=1000",
        f"train.final_eval={str(final_eval).lower()}",
    ]


def _committed_steps(workdir):
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return [int(d) for d in os.listdir(folder) if d.isdigit()]


@pytest.fixture(scope="module")
def flow_runs(tmp_path_factory):
    """An uninterrupted flow run, and the same run SIGKILLed mid-way then rerun."""
    root = tmp_path_factory.mktemp("flow_runs")
    reference, victim = root / "reference", root / "victim"
    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS=FAST_LLVM)
    uninterrupted = subprocess.Popen(_command(reference, final_eval=True), cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process = subprocess.Popen(_command(victim), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while max(_committed_steps(victim), default=0) < 9 and time.time() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.02)
    # Killed as soon as step 9 is on disk: somewhere in the steps and (asynchronous)
    # saves that follow, long before step 40.
    finished_early = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = dict(finished_early=finished_early, exported=os.path.exists(victim / "model.pystate"),
                  at=max(_committed_steps(victim), default=None))
    resumed = subprocess.run(_command(victim), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out, _ = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, out
    return dict(root=root, reference=reference, victim=victim, killed=killed, resumed=resumed)


@pytest.mark.slow  # two trainings side by side: both cores for about a minute
def test_flow_micro_runs_and_learns(flow_runs):
    loss = _train_losses(flow_runs["reference"])
    assert loss[-8:].mean() < 0.9 * loss[:8].mean(), loss
    _run_exported("flow", flow_runs["reference"])
    evaluation = json.load(open(flow_runs["reference"] / "summary.json"))["eval"]
    assert set(evaluation) >= {"epe", "epe_zero_flow", "epe_visible"}


@pytest.mark.slow  # shares the two trainings of flow_runs
def test_killed_run_resumes_to_the_same_parameters(flow_runs, tmp_path):
    killed, resumed, victim = flow_runs["killed"], flow_runs["resumed"], flow_runs["victim"]
    assert not killed["finished_early"], "the run ended before it could be killed"
    assert not killed["exported"]
    assert 9 <= killed["at"] < 40
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {victim / 'checkpoints'}/" in resumed.stdout
    want_params, _ = checkpoint.load(flow_runs["reference"] / "model.pystate")
    got_params, _ = checkpoint.load(victim / "model.pystate")
    for module in want_params:
        for name in want_params[module]:
            np.testing.assert_array_equal(got_params[module][name], want_params[module][name])
    # Metrics were truncated to the checkpoint and redone: one line per step.
    _train_losses(victim)
    assert len(_committed_steps(victim)) == 2  # checkpoint.keep=2
    # Any kept checkpoint exports to the inference format.
    step = min(_committed_steps(victim))
    path = tmp_path / "exported.pystate"
    assert main.main(["--config", "flow", "--tiny", "--workdir", str(victim), "--export", str(path),
                      "--step", str(step)]) == 0
    params, state = checkpoint.load(path)
    assert checkpoint.tree_differences(want_params, params) == [] and state == {}


# ---------------------------------------------------------------------------
# The small flow model that ships with the package
# ---------------------------------------------------------------------------

FLOW_SMALL = os.path.join(REPO, "perceiver", "data", "flow_small.pystate")


@pytest.mark.skipif(not os.path.exists(FLOW_SMALL), reason="perceiver/data/flow_small.pystate not built")
def test_shipped_flow_small_beats_zero_flow_on_held_out_pairs():
    from perceiver.train import recipes, synthetic_flow
    from perceiver.train.objectives.flow import flow_scene_spec

    config = recipes.get_config("flow_small")
    model, params, state = models.load_for("optical_flow", FLOW_SMALL, **config.model)
    spec = flow_scene_spec(config)
    # A seed used neither for training (0) nor for the recipe's evaluation set.
    pairs = [synthetic_flow.make_pair(spec, 12345, i) for i in range(16)]
    frames = np.stack([p["frames"] for p in pairs])
    truth = np.stack([p["flow"] for p in pairs])
    flow, _ = jax.jit(model.apply)(params, state, None, frames)
    epe = np.sqrt(((np.asarray(flow) - truth) ** 2).sum(-1)).mean()
    zero = np.sqrt((truth**2).sum(-1)).mean()
    assert epe < 0.75 * zero, (epe, zero)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-golden"]:
        sys.exit("usage: python tests/train/test_train_recipes.py --write-golden")
    with open(GOLDEN, "w") as f:
        json.dump(recipes_snapshot(), f, indent=1)
        f.write("\n")
    print("wrote", GOLDEN)
