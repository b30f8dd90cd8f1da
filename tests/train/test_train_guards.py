"""`perceiver train` refuses bad settings up front, guards its workdir and stops on divergence."""

import dataclasses
import math
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("orbax.checkpoint")

from perceiver import checkpoint, models  # noqa: E402
from perceiver.train import checkpointing, config, data, finetune, main, recipes, trainer  # noqa: E402
from perceiver.train import workdir as workdir_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(capsys, *argv):
    """`main.main(argv)`: (exit status, stderr), checking stderr is at most one line."""
    status = main.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 1, err
    return status, err


# ---------------------------------------------------------------------------
# Every field against its range, before anything is built
# ---------------------------------------------------------------------------


def _sections(cfg):
    return {"model": recipes.MODEL_RULES[recipes.FACTORIES[cfg.recipe]]}


def _outside(rule: Any, integer: bool) -> Any:
    """A value the rule refuses."""
    if isinstance(rule, config.Choice):
        return "no_such_choice"
    want_int, values, intervals = rule.parts
    left, low, high, right = intervals[0]
    if math.isfinite(low):
        value = low if left == "(" else low - 1
        if value in values:  # a single value allowed just below the interval
            value = low - 2
    elif math.isfinite(high):
        value = high if right == ")" else high + 1
    else:
        return math.inf  # only finite numbers allowed
    return int(value) if (integer or want_int) and float(value).is_integer() else value


def _text(value: Any) -> str:
    """The KEY=VALUE text of a value (inf as a literal that parses to it)."""
    if isinstance(value, tuple):
        return "(" + ",".join(_text(v) for v in value) + ",)"
    if isinstance(value, float) and math.isinf(value):
        return "1e999"
    return repr(value) if not isinstance(value, str) else value


def _numeric(value: Any) -> bool:
    if isinstance(value, tuple):
        return bool(value) and all(_numeric(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_fields():
    """(recipe, tiny, key) of every numeric field of every recipe's config."""
    cases = []
    for name in recipes.CONFIGS:
        for tiny in (False, True):
            cfg = recipes.get_config(name, tiny)
            for key, value, rule, _ in config.field_rules(cfg, _sections(cfg)):
                # A bool field (query_inputs) is a choice its parser already refuses.
                if (rule is not None and not isinstance(value, bool)) or _numeric(value):
                    cases.append((name, tiny, key))
    return cases


def test_every_recipe_config_is_valid_and_every_number_declares_a_range():
    count = 0
    for name in recipes.CONFIGS:
        for tiny in (False, True):
            cfg = recipes.validate(recipes.get_config(name, tiny))
            for key, value, rule, _ in config.field_rules(cfg, _sections(cfg)):
                if _numeric(value):
                    assert rule is not None, f"{name}: {key} has no range"
                    count += 1
    assert count > 100  # every section of every recipe, full and tiny


def test_every_out_of_range_value_is_refused_naming_key_range_and_value():
    checked = set()
    for name, tiny, key in _numeric_fields():
        cfg = recipes.get_config(name, tiny)
        rules = {k: (r, i, v) for k, v, r, i in config.field_rules(cfg, _sections(cfg))}
        rule, integer, current = rules[key]
        bad = _outside(rule, integer)
        if isinstance(current, tuple) and not isinstance(rule, config.Choice):
            bad = (bad,) + tuple(current[1:])
        config.override(cfg, key, _text(bad))
        got = dict((k, v) for k, v, _, _ in config.field_rules(cfg, _sections(cfg)))[key]
        with pytest.raises(ValueError) as info:
            recipes.validate(cfg)
        message = str(info.value)
        assert message.startswith(f"{key} must be "), message
        assert message.endswith(f"got {got!r}."), message
        if isinstance(rule, config.Interval):
            assert rule.describe(integer, plural=isinstance(got, tuple)) in message, message
        checked.add(key.split(".")[0])
    assert checked == {"model", "data", "task", "optimizer", "train", "checkpoint", "mesh", "compute"}


def test_model_rules_cover_every_argument_of_every_factory():
    assert set(recipes.FACTORIES) == set(recipes.CONFIGS)
    for factory in ("imagenet_classifier", "masked_language_model", "optical_flow"):
        extra = {"variant": "fourier_position_encoding"} if factory == "imagenet_classifier" else {}
        assert set(recipes.MODEL_RULES[factory]) == set(models.factory_sizes(factory, **extra))
    # The recipe's model is the factory's (finetune.text_classifier is models.text_classifier).
    assert finetune.text_classifier is models.text_classifier
    text = set(models.factory_arguments("text_classifier"))
    assert set(recipes.MODEL_RULES["text_classifier"]) == text


def test_size_rules_are_read_from_the_factory_and_overrides_only_fill_what_it_cannot_say():
    from perceiver.train.objectives.kind import SIZE, size_rules

    flow = size_rules("optical_flow")
    assert flow["num_latents"] == SIZE
    assert flow["image_shape"] == config.Interval(SIZE, length=2)  # as many sides as the default's
    # A float's range and a string's words are not in a signature: asked for, by name.
    with pytest.raises(TypeError, match="the rule of dropout_prob .* needs an override"):
        size_rules("byte_language_model")
    with pytest.raises(TypeError, match="the rule of variant"):
        size_rules("imagenet_classifier")
    with pytest.raises(ValueError, match="no argument num_latent;"):
        size_rules("optical_flow", num_latent=SIZE)
    assert size_rules("text_classifier", num_classes="int [0, inf)")["num_classes"] == "int [0, inf)"


def test_a_number_without_a_range_is_a_definition_error():
    @dataclasses.dataclass
    class Section:
        size: int = 3
        name: str = "free text needs no range"

    cfg = config.Config(recipe="x", model={}, data=Section(), task=None)
    with pytest.raises(TypeError, match="data.size .* declares no range"):
        config.validate(cfg)
    cfg = config.Config(recipe="x", model={"depth": 2}, data=None, task=None)
    with pytest.raises(ValueError, match="unknown config key 'model.depth'"):
        config.validate(cfg, {"model": {"width": "int [1, inf)"}})


@pytest.mark.parametrize(
    "recipe, item, message",
    [
        ("flow", "model.num_latents=-4", "model.num_latents must be an int in [1, inf); got -4."),
        ("flow", "model.image_shape=(0,0)", "model.image_shape must be 2 ints in [1, inf); got (0, 0)."),
        ("flow", "train.eval_batch_size=-8", "train.eval_batch_size must be an int in [0, inf); got -8."),
        ("mlm", "optimizer.b1=2.5", "optimizer.b1 must be a number in [0, 1); got 2.5."),
        ("mlm", "optimizer.eps=-1", "optimizer.eps must be a number in (0, inf); got -1.0."),
        ("flow", "data.max_objects=0", "data.max_objects must be >= data.min_objects (1); got 0."),
        ("mlm", "data.seq_len=65", "data.seq_len must be in [1, 64] (model.max_seq_len); got 65."),
    ],
)
def test_bad_values_fail_in_one_line_before_anything_is_built(recipe, item, message, tmp_path, capsys):
    workdir = tmp_path / "run"
    status, err = _run(capsys, "--config", recipe, "--tiny", "--workdir", workdir, item)
    assert status == 2
    assert err == f"perceiver train: error: {message}\n"
    assert not workdir.exists()  # refused before the workdir, data or model


# ---------------------------------------------------------------------------
# The workdir: a folder, used by one trainer at a time
# ---------------------------------------------------------------------------


def test_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    status, err = _run(capsys, "--config", "flow", "--tiny", "--workdir", path)
    assert status == 2 and f"--workdir must be a folder; got {path}, which is a file." in err
    status, err = _run(capsys, "--config", "flow", "--tiny", "--workdir", path / "run")
    assert status == 2 and "cannot be created" in err
    assert path.read_text() == "x"


HOLDER = textwrap.dedent(
    """
    import sys
    from perceiver.train import workdir
    workdir.WorkdirLock(sys.argv[1], what="train").acquire()
    print("locked", flush=True)
    sys.stdin.read()  # held until the test closes stdin or kills this process
    """
)


def test_a_second_trainer_on_a_workdir_is_refused_naming_the_first(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        status, err = _run(capsys, "--config", "flow", "--tiny", "--workdir", tmp_path)
        assert status == 2
        assert f"{tmp_path} is in use by another perceiver train (PID {holder.pid}, train)" in err
        assert not (tmp_path / "generated").exists() and not (tmp_path / "checkpoints").exists()
        # A reader is refused too: the trainer deletes old and unfinished checkpoints.
        (tmp_path / "checkpoints" / "1").mkdir(parents=True)
        status, err = _run(capsys, "--config", "flow", "--tiny", "--workdir", tmp_path,
                           "--export", tmp_path / "m.pystate")
        assert status == 2 and f"PID {holder.pid}" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the lock with the process: nothing stale is left to clean.
    with workdir_lib.WorkdirLock(str(tmp_path)):
        pass


def test_readers_share_the_lock_and_exclude_a_trainer(tmp_path):
    first = workdir_lib.WorkdirLock(str(tmp_path), shared=True, what="export").acquire()
    second = workdir_lib.WorkdirLock(str(tmp_path), shared=True, what="eval-only").acquire()
    with pytest.raises(workdir_lib.WorkdirError, match=f"PID {os.getpid()}, eval-only"):
        workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    first.release()
    second.release()
    with workdir_lib.WorkdirLock(str(tmp_path)):
        with pytest.raises(workdir_lib.WorkdirError, match="in use"):
            workdir_lib.WorkdirLock(str(tmp_path), shared=True).acquire()


# ---------------------------------------------------------------------------
# Export, and a pretrained checkpoint that is not there
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("action, what", [("--export", "export"), ("--eval-only", "evaluate")])
def test_export_or_evaluation_without_a_checkpoint_is_one_line(action, what, tmp_path, capsys):
    for workdir in (tmp_path / "missing", tmp_path):
        args = [action, tmp_path / "m.pystate"] if action == "--export" else [action]
        status, err = _run(capsys, "--config", "flow", "--tiny", "--workdir", workdir, *args)
        assert status == 2
        assert err == (
            f"perceiver train: error: no checkpoint in {workdir / 'checkpoints'} to {what}; train first.\n"
        )
    assert not (tmp_path / "missing").exists() and not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "m.pystate").exists()


def test_export_refuses_non_finite_parameters(tmp_path, capsys):
    params = {"lin": {"w": np.array([1.0, np.nan], np.float32), "b": np.zeros(2, np.float32)}}
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(5, {"params": params, "state": {}, "step": np.int32(5)}, None)
    ckpt.close()
    status, err = _run(capsys, "--config", "flow", "--tiny", "--workdir", tmp_path,
                       "--export", tmp_path / "m.pystate")
    assert status == 1
    assert "step 5 in" in err and "non-finite values (params/lin/w)" in err and "--step" in err
    with pytest.raises(checkpointing.NonFiniteError, match="lin/w"):
        checkpointing.export(str(tmp_path / "m.pystate"), params)
    assert not (tmp_path / "m.pystate").exists()


def test_missing_published_pretrained_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PERCEIVER_BASE_URL", "http://127.0.0.1:9/")  # nothing leaves the machine
    workdir = tmp_path / "run"
    status, err = _run(capsys, "--config", "finetune_image", "--tiny", "--workdir", workdir,
                       "task.pretrained=imagenet_conv")
    assert status == 2
    assert err.startswith("perceiver train: error: the pretrained checkpoint 'imagenet_conv'")
    assert "`perceiver fetch imagenet_conv`" in err and "task.pretrained=PATH" in err
    assert not (workdir / "generated").exists()  # checked before any data is made


def test_missing_train_extra_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(main, "REQUIREMENTS", main.REQUIREMENTS + (
        ("perceiver_no_such_module", "grain"), ("perceiver_no_such_package.sub", "orbax-checkpoint")))
    status, err = _run(capsys, "--config", "flow", "--workdir", tmp_path, "--print-config")
    assert status == 2
    assert err == (
        "perceiver train: error: training needs the 'train' extra (missing: grain, orbax-checkpoint): "
        "pip install 'perceiver-io-jax[train]'\n"
    )


# ---------------------------------------------------------------------------
# Divergence: stop at once, keep the last good checkpoint, export nothing
# ---------------------------------------------------------------------------


def test_diverged_run_stops_keeps_its_last_good_checkpoint_and_exports_nothing(tmp_path, capsys):
    status, err = _run(
        capsys, "--config", "flow", "--tiny", "--workdir", tmp_path, "optimizer.base_lr=1e30",
        "optimizer.warmup_steps=0", "train.num_steps=6", "checkpoint.every_steps=1",
        "data.train_examples=8", "train.final_eval=false", "train.progress=false",
    )
    assert status == 1
    prefix = "perceiver train: error: the loss became "
    assert err.startswith(prefix), err
    bad_step = int(err.split(" at step ")[1].split(";")[0])
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps and max(steps) < bad_step
    assert f"the last good checkpoint is step {max(steps)} in {tmp_path / 'checkpoints'}" in err
    assert "lower optimizer.base_lr" in err
    assert not (tmp_path / "model.pystate").exists() and not (tmp_path / "summary.json").exists()
    reader = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
    params, _, _ = reader.restore_params()
    reader.close()
    assert not checkpointing.nonfinite_leaves(params)


class _Source:
    """x in [1, 2], y = 3 x: a regression a linear model fits."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        x = np.float32(1 + i / 64)
        return {"x": np.array([x]), "y": np.array([3 * x])}

    def __repr__(self):
        return "_Source()"


def _toy_objective(kink: bool = False) -> trainer.Objective:
    """Linear regression from w = 1; `kink` adds sqrt(w - 1): 0 there, with an infinite gradient."""

    def loss(params, state, key, batch):
        w = params["lin"]["w"]
        value = jnp.mean((batch["x"] * w - batch["y"]) ** 2)
        if kink:
            value = value + jnp.sum(jnp.sqrt(w - 1.0))
        return value, ({}, state)

    return trainer.Objective(
        init=lambda key: ({"lin": {"w": jnp.ones((1,))}}, {}),
        loss=loss,
        train_loader=lambda size, seed: data.make_loader(_Source(), [], batch_size=size, seed=seed),
    )


def _toy_config(**optimizer) -> config.Config:
    return config.Config(
        recipe="toy", model={}, data=None, task=None,
        optimizer=config.OptimizerSettings(optimizer="adamw", scale_by_batch=False, schedule="constant",
                                         weight_decay=0.0, max_norm=0.0, **optimizer),
        train=config.TrainSettings(
            batch_size=4, num_steps=5, final_eval=False, progress=False, log_every=100
        ),
        checkpoint=config.CheckpointSettings(every_steps=1, async_save=False),
    )


def test_non_finite_parameters_are_never_saved_even_with_a_finite_loss(tmp_path):
    # The loss of step 1 (at the initial w) is finite, its gradient is not, so
    # the update makes w NaN: the save of step 1 must refuse it.
    with pytest.raises(trainer.NonFiniteError) as info:
        trainer.train(_toy_config(base_lr=0.05), _toy_objective(kink=True), str(tmp_path))
    message = str(info.value)
    assert message.startswith("non-finite values in ") and "at step 1 (not saved)" in message
    assert "params/lin/w" in message and "no checkpoint was saved" in message
    assert not [d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
    assert not (tmp_path / "model.pystate").exists()


def test_a_healthy_toy_run_is_untouched_by_the_checks(tmp_path):
    summary = trainer.train(_toy_config(base_lr=0.05), _toy_objective(), str(tmp_path))
    assert summary["steps"] == 5 and math.isfinite(summary["final_train"]["loss"])
    params, _ = checkpoint.load(tmp_path / "model.pystate")
    assert np.all(np.isfinite(params["lin"]["w"]))
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())[-1] == 5


def test_a_run_without_evaluation_data_trains_and_exports(tmp_path, capsys):
    # No data.eval_paths: no eval loader, so no evaluation, where the final
    # evaluation once failed with a TypeError trace.
    from perceiver.train.objectives import evaluation

    assert evaluation.eval_loader_fn(None, [], 0) is None
    corpus = tmp_path / "train.jsonl"
    corpus.write_text('{"text": "The quick brown fox jumps over the lazy dog."}\n' * 4)
    status, err = _run(
        capsys, "--config", "mlm", "--tiny", "--workdir", tmp_path / "run", "data.generate=false",
        f"data.train_paths={corpus}", "train.num_steps=3", "optimizer.warmup_steps=1", "train.progress=false",
    )
    assert status == 0, err
    assert (tmp_path / "run" / "model.pystate").is_file()
