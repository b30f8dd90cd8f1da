"""The training workflow: a workdir remembers its run, longer runs, crops, data order, outputs."""

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("orbax.checkpoint")

from PIL import Image  # noqa: E402

from perceiver import checkpoint, models  # noqa: E402
from perceiver.train import augment, checkpointing, config, images, main, metrics  # noqa: E402
from perceiver.train import optim, parallel, recipes, runconfig, trainer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A flow run of 4 steps (checkpoints at 2 and 4) with an evaluation at the end.
RUN = [
    "--config", "flow", "--tiny", "train.num_steps=4", "optimizer.warmup_steps=1",
    "checkpoint.every_steps=2", "data.train_examples=8", "data.eval_examples=8",
    "train.eval_batch_size=8", "train.progress=false", "train.log_every=1",
]


def _main(capsys, *argv):
    """`main.main(argv)`: (exit status, stdout, stderr), stderr at most one line."""
    status = main.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert len([line for line in err.splitlines() if line.strip()]) <= 1, err
    return status, out, err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny flow run (its workdir), shared read-only: tests copy it."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    assert main.main(RUN + ["--workdir", str(workdir)]) == 0
    return workdir


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run to change."""
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    return workdir


def _records(workdir, split="train"):
    return [r for r in metrics.read(os.path.join(workdir, "metrics.jsonl")) if r["split"] == split]


def _saved(workdir):
    return checkpointing.saved_steps(os.path.join(workdir, "checkpoints"))


# ---------------------------------------------------------------------------
# The workdir remembers its config
# ---------------------------------------------------------------------------


def test_rerun_of_a_finished_run_says_so_and_does_nothing(run, capsys):
    files = ("metrics.jsonl", "model.pystate", "model.json", "summary.json", "config.json")
    before = {f: (run / f).read_bytes() for f in files}
    stamps = {f: os.stat(run / f).st_mtime_ns for f in files}
    line = f"{run} already finished step 4 of 4; raise train.num_steps to train longer\n"
    for argv in (["--workdir", run], RUN + ["--workdir", run]):  # the workdir alone, or all again
        status, out, err = _main(capsys, *argv)
        assert (status, out, err) == (0, line, "")
    assert {f: (run / f).read_bytes() for f in files} == before
    assert {f: os.stat(run / f).st_mtime_ns for f in files} == stamps
    assert len(_records(run, "eval")) == 1 and _saved(run) == [2, 4]


def test_resume_with_a_changed_override_is_refused_then_allowed_with_the_flag(run, capsys):
    stored = json.loads((run / "config.json").read_text())
    status, out, err = _main(capsys, "--workdir", run, "train.num_steps=6", "optimizer.base_lr=1e-3")
    assert status == 2 and out == ""
    prefix = f"perceiver train: error: these overrides change the run stored in {run}/config.json: "
    assert err.startswith(prefix)
    assert "optimizer.base_lr 0.002 -> 0.001" in err and runconfig.ALLOW_FLAG in err
    assert "train.num_steps" not in err  # a safe change is not listed
    assert json.loads((run / "config.json").read_text()) == stored and _saved(run) == [2, 4]
    # A recipe other than the stored one is refused too.
    status, _, err = _main(capsys, "--workdir", run, "--config", "mlm")
    assert status == 2 and "--config must be 'flow', the recipe of the run in" in err

    status, out, _ = _main(capsys, "--workdir", run, "train.num_steps=6", "optimizer.base_lr=1e-3",
                           runconfig.ALLOW_FLAG, "train.final_eval=false")
    assert status == 0, out
    assert "config changed from config.json: optimizer.base_lr 0.002 -> 0.001" in out
    assert f"resumed from {run / 'checkpoints'}/4" in out and _saved(run) == [4, 6]
    now = json.loads((run / "config.json").read_text())
    assert (now["optimizer"]["base_lr"], now["train"]["num_steps"]) == (1e-3, 6)
    assert now["model"] == stored["model"]  # the rest as stored, --config and --tiny not repeated


def test_eval_only_and_export_use_the_stored_config_with_evaluation_overrides(run, capsys, tmp_path):
    status, out, _ = _main(capsys, "--workdir", run, "--eval-only", "data.eval_seed=7")
    assert status == 0
    result = json.loads(out)
    assert result["step"] == 4 and result["examples"] == 8
    evaluation = _records(run, "eval")[0]
    assert result["epe"] != pytest.approx(evaluation["epe"])  # another evaluation set
    status, _, err = _main(capsys, "--workdir", run, "--eval-only", "model.num_latents=8")
    assert status == 2 and "model.num_latents 16 -> 8" in err
    status, out, _ = _main(capsys, "--workdir", run, "--export", tmp_path / "m.pystate", "--step", "2")
    assert status == 0 and f"described in {tmp_path / 'm.json'}" in out
    assert checkpoint.read_description(tmp_path / "m.pystate")["trained"]["step"] == 2


def test_a_longer_run_keeps_the_learning_rate_continuous(run, capsys):
    cfg = recipes.get_config("flow", tiny=True)
    config.apply_overrides(cfg, [a for a in RUN if "=" in a])
    status, out, _ = _main(capsys, "--workdir", run, "train.num_steps=8")
    assert status == 0, out
    rates = {r["step"]: r["learning_rate"] for r in _records(run)}
    assert sorted(rates) == list(range(1, 9))
    # Record s holds the rate of the update from step s - 1. At the resume
    # step 4 the rate is the 4-step schedule's, not the 8-step schedule's
    # (which would jump back up the cosine).
    old = optim.learning_rate_schedule(cfg.optimizer, 4, 8)
    replanned = optim.learning_rate_schedule(cfg.optimizer, 8, 8)
    np.testing.assert_allclose(rates[5], float(old(4)), rtol=1e-6)
    assert abs(float(replanned(4)) - float(old(4))) > 1e-4
    for s in range(1, 5):
        np.testing.assert_allclose(rates[s], float(old(s - 1)), rtol=1e-6, atol=1e-12)
    continued = optim.continued_schedule(cfg.optimizer, [(0, 4), (4, 8)], 8)
    for s in range(5, 9):
        np.testing.assert_allclose(rates[s], float(continued(s - 1)), rtol=1e-6)
    assert json.loads((run / "schedule.json").read_text()) == {"segments": [[0, 4], [4, 8]]}
    assert "train.num_steps 4 -> 8 at step 4: the learning rate continues from" in out
    # Killed and resumed later at the same length: the same schedule.
    assert trainer.schedule_segments(str(run), 6, 8) == [(0, 4), (4, 8)]
    assert trainer.schedule_segments(str(run), 4, 12) == [(0, 4), (4, 12)]


def test_continued_schedule_is_continuous_and_ends_at_the_new_total():
    cfg = config.OptimizerSettings(base_lr=1.0, scale_by_batch=False, schedule="cosine", warmup_steps=10,
                                 end_lr=0.1)
    old = optim.learning_rate_schedule(cfg, 100, 256)
    f = optim.continued_schedule(cfg, [(0, 100), (60, 200)], 256)
    for s in (0, 10, 59, 60):
        np.testing.assert_allclose(f(s), old(s), rtol=1e-6)
    # No jump: one step moves the rate less than a step of the old (shorter) decay,
    # while the schedule planned afresh for 200 steps would be far above.
    assert abs(float(f(61)) - float(f(60))) <= abs(float(old(61)) - float(old(60)))
    assert float(optim.learning_rate_schedule(cfg, 200, 256)(60)) - float(old(60)) > 0.2
    np.testing.assert_allclose(f(200), 0.1, rtol=1e-6)
    values = np.array([float(f(s)) for s in range(60, 201)])
    assert np.all(np.diff(values) <= 1e-7) and values[0] > values[70] > values[-1]
    steps = config.OptimizerSettings(base_lr=1.0, scale_by_batch=False, schedule="steps",
                                   decay_boundaries=(0.5,), decay_rate=0.1)
    g = optim.continued_schedule(steps, [(0, 100), (60, 200)], 256)
    # Decayed at 50 (half of 100); from 60 on the next decay is at 100 (half of 200), from 0.1.
    np.testing.assert_allclose([g(s) for s in (49, 50, 60, 99, 100, 199)], [1, 0.1, 0.1, 0.1, 0.01, 0.01],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="segments must start at step 0"):
        optim.continued_schedule(cfg, [(5, 100)], 256)


def test_overrides_anywhere_on_the_command_line(tmp_path, capsys):
    status, out, _ = _main(capsys, "--tiny", "model.num_latents=7", "--config", "flow", "--workdir",
                           tmp_path, "train.batch_size=4", "--print-config", "data.max_objects=2")
    assert status == 0
    cfg = json.loads(out)
    assert (cfg["model"]["num_latents"], cfg["train"]["batch_size"], cfg["data"]["max_objects"]) == (7, 4, 2)
    assert cfg["model"]["image_shape"] == list(recipes.flow.TINY_FLOW_MODEL["image_shape"])  # --tiny applied


# ---------------------------------------------------------------------------
# Image crops: small images are seen whole
# ---------------------------------------------------------------------------


def _small_image_folder(root, size=8):
    rng = np.random.default_rng(0)
    originals = {}
    for k in range(2):
        (root / f"digit_{k}").mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            path = root / f"digit_{k}" / f"{i}.png"
            Image.fromarray(pixels).save(path)
            originals[str(path)] = pixels
    return originals


def test_eval_on_small_images_sees_the_whole_image(tmp_path):
    originals = _small_image_folder(tmp_path / "digits")
    cfg = recipes.get_config("imagenet", tiny=True)
    config.apply_overrides(cfg, ["data.generate=false", f"data.train_dir={tmp_path / 'digits'}",
                                 f"data.eval_dir={tmp_path / 'digits'}"])
    objective = recipes.build_task(cfg, str(tmp_path / "run"), pretrained=False)
    batch = next(iter(objective.eval_loader(6)))
    size = cfg.model["image_size"]
    source = images.ImageFolder(tmp_path / "digits")
    for i in range(6):
        whole = originals[source[i]["path"]]
        resized = Image.fromarray(whole).resize((size, size), Image.BICUBIC)
        want = augment.normalize(np.asarray(resized, np.float32))
        np.testing.assert_allclose(batch["images"][i], want, atol=1e-5)
    # Training without a random crop of them either (here without flips or RandAugment).
    element = {"path": source[0]["path"], "label": 0}
    train = images.TrainImageTransform(size, randaugment_layers=0, flip=False)
    np.testing.assert_allclose(train.random_map(element, np.random.default_rng(0))["images"],
                               batch["images"][0], atol=1e-5)
    # An explicit fraction applies to every image; large images keep the reference's crop.
    halved = images.EvalImageTransform(size, crop_fraction=0.5).map(element)["images"]
    assert not np.allclose(halved, batch["images"][0], atol=1e-2)
    assert augment.eval_crop_box(256, 320, 224) == augment.center_crop_box(256, 320, 224) == (16, 48, 224, 224)
    assert augment.eval_crop_box(100, 120, 32) == (25, 35, 50, 50)  # 32/64 of the short side
    assert augment.eval_crop_box(40, 40, 32) == (4, 4, 32, 32)  # never under image_size pixels


def test_crop_settings_are_config_fields_with_ranges():
    cfg = recipes.get_config("finetune_image")
    d = cfg.data
    assert (d.eval_crop_fraction, d.crop_area, d.keep_small_images) == (0.0, (0.08, 1.0), True)
    for item, message in [
        ("data.eval_crop_fraction=1.5", "data.eval_crop_fraction must be a number in [0, 1]; got 1.5."),
        ("data.crop_area=(0,1)", "data.crop_area must be 2 numbers in (0, 1]; got (0.0, 1.0)."),
        ("data.crop_area=(0.9,0.5)", "data.crop_area must be (min, max) with min <= max; got (0.9, 0.5)."),
    ]:
        bad = recipes.get_config("finetune_image")
        config.apply_overrides(bad, [item])
        with pytest.raises(ValueError) as info:
            recipes.validate(bad)
        assert str(info.value) == message


# ---------------------------------------------------------------------------
# Data order, sharding threshold, metric names, flow_small --tiny
# ---------------------------------------------------------------------------


def test_data_order_does_not_depend_on_the_number_of_workers(tmp_path):
    batches = {}
    for workers in (0, 2):
        cfg = recipes.get_config("imagenet", tiny=True)  # RandAugment, MixUp and CutMix
        cfg.data.workers = workers
        objective = recipes.build_task(cfg, str(tmp_path / "run"), pretrained=False)
        iterator = iter(objective.train_loader(4, 0))
        batches[workers] = [next(iterator) for _ in range(3)]
        state = iterator.get_state()
        iterator.close()
        if workers == 2:  # continued in a loader with no workers
            cfg.data.workers = 0
            other = iter(recipes.build_task(cfg, str(tmp_path / "run"), pretrained=False).train_loader(4, 0))
            other.set_state(state)
            batches["resumed"] = [next(other)]
    assert set(batches[0][0]) == {"images", "labels", "mix_labels", "ratio"}
    for a, b in zip(batches[0], batches[2]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(batches[0][0]["images"], batches[0][1]["images"])
    fourth = iter(objective.train_loader(4, 0))
    expected = [next(fourth) for _ in range(4)][3]
    for key in expected:
        np.testing.assert_array_equal(batches["resumed"][0][key], expected[key])


SHARDING = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, jax.numpy as jnp, numpy as np
    from perceiver.train import config, data, trainer

    class Source:
        def __len__(self): return 16
        def __getitem__(self, i): return {"x": np.ones((8,), np.float32)}
        def __repr__(self): return "Source()"

    def loss(params, state, key, batch):
        return jnp.mean((batch["x"] @ params["big"]["w"]).sum() + params["small"]["w"].sum()), ({}, state)

    objective = trainer.Objective(
        init=lambda key: ({"big": {"w": jnp.zeros((8, 64))}, "small": {"w": jnp.zeros((8,))}}, {}),
        loss=loss,
        train_loader=lambda size, seed: data.make_loader(Source(), [], batch_size=size, seed=seed))
    for i, min_size in enumerate((100, 10**6)):
        cfg = config.Config(recipe="toy", model={}, data=None, task=None,
            optimizer=config.OptimizerSettings(optimizer="adamw", schedule="constant"),
            train=config.TrainSettings(batch_size=2, num_steps=1, final_eval=False, progress=False),
            checkpoint=config.CheckpointSettings(async_save=False, export=False),
            mesh=config.MeshSettings(shard_params=True, shard_min_size=min_size))
        trainer.train(cfg, objective, os.path.join(sys.argv[1], str(i)))
    """
)


def test_the_sharding_threshold_is_a_field_and_what_is_sharded_is_logged(tmp_path):
    bad = recipes.get_config("flow", tiny=True)
    config.apply_overrides(bad, ["mesh.shard_min_size=-1"])
    with pytest.raises(ValueError, match=r"mesh.shard_min_size must be an int in \[0, inf\); got -1."):
        recipes.validate(bad)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", SHARDING, str(tmp_path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("mesh.shard_params")]
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith("mesh.shard_params: 1 of 2 parameter arrays sharded over 2 device(s)")
    assert lines[0].endswith(": big/w") and "512 of 520 values" in lines[0]
    assert "mesh.shard_min_size=100 " in lines[0]
    assert lines[1].startswith("mesh.shard_params: 0 of 2 parameter arrays sharded")


def test_mlm_evaluation_counts_examples_and_masked_tokens(tmp_path):
    cfg = recipes.get_config("mlm", tiny=True)
    config.apply_overrides(cfg, ["model.num_self_attends=1", "train.eval_batch_size=8"])
    objective = recipes.build_task(cfg, str(tmp_path / "run"))
    params, state = jax.jit(objective.init)(jax.random.PRNGKey(0))
    mesh = parallel.make_mesh(1)
    rep = parallel.replicated(mesh)
    step = trainer.compile_eval_step(objective.evaluate, rep, rep, mesh)
    ts = trainer.TrainState(jnp.zeros((), jnp.int32), params, state, None, None)
    result = trainer.evaluate(objective, step, ts, 8, mesh, max_batches=2)
    masked = sum(float(b["weights"].sum()) for b, _ in zip(objective.eval_loader(8), range(2)))
    assert result["examples"] == 16
    assert result["masked_tokens"] == masked and masked > 16
    assert set(result) == {"loss", "masked_acc", "examples", "masked_tokens"}


def test_top_5_accuracy_only_with_more_than_5_classes():
    def apply_logits(params, state, key, batch, is_training):
        return batch["logits"], state

    from perceiver.train.objectives import classification

    _, evaluate = classification.classification_fns(apply_logits, 0.0)
    for classes, names in ((4, {"loss", "top_1_acc"}), (5, {"loss", "top_1_acc"}),
                           (10, {"loss", "top_1_acc", "top_5_acc"})):
        batch = {"logits": jnp.eye(2, classes), "labels": jnp.array([0, 1]), "example_weights": jnp.ones(2)}
        assert set(evaluate(None, None, batch)) == names


def test_flow_small_tiny_is_its_own_smaller_variant():
    small, tiny, flow_tiny = (recipes.get_config(n, t) for n, t in
                              (("flow_small", False), ("flow_small", True), ("flow", True)))
    assert tiny.recipe == "flow_small" and recipes.validate(tiny)
    assert tiny.model != flow_tiny.model and tiny.data != flow_tiny.data
    count = lambda cfg: optim.count_params(models.parameter_shapes("optical_flow", **cfg.model)[0])
    assert count(tiny) < count(small) and count(tiny) != count(flow_tiny)
    scenes = ("max_translation", "max_background_translation", "num_waves", "min_frequency", "max_frequency")
    for field in scenes:
        assert getattr(tiny.data, field) == getattr(small.data, field), field
    for field in ("optimizer", "base_lr", "schedule", "end_lr", "weight_decay"):
        assert getattr(tiny.optimizer, field) == getattr(small.optimizer, field), field
    assert tiny.train.num_steps <= 150


# ---------------------------------------------------------------------------
# Outputs: TensorBoard, the curves, exported descriptions
# ---------------------------------------------------------------------------


def _event_tags(folder):
    """Scalar tags of the TensorBoard event files in `folder` (TFRecord-framed Event protos)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for name in os.listdir(folder):
        data = open(os.path.join(folder, name), "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            tags.update(v.tag for v in event.summary.value)
            offset += 12 + length + 4
    return tags


def test_tensorboard_event_files_appear(finished):
    pytest.importorskip("tensorboardX")
    folder = finished / "tensorboard"
    assert any(name.startswith("events.out.tfevents.") for name in os.listdir(folder))
    assert {"train/loss", "train/learning_rate", "eval/epe"} <= _event_tags(folder)


def test_plot_draws_the_curves_into_a_png(finished, tmp_path, capsys):
    out = tmp_path / "curves.png"
    status, printed, _ = _main(capsys, "--plot", finished, "-o", out)
    assert status == 0 and str(out) in printed
    image = Image.open(out).convert("RGB")
    # One panel per metric: epe, epe_visible, epe_zero_flow, examples_per_sec,
    # grad_norm, loss, learning_rate: 3 columns of 420 px, 3 rows of 300 px.
    assert image.size == (1260, 900)
    pixels = np.asarray(image)
    assert pixels.std() > 5 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    status, _, err = _main(capsys, "--plot", tmp_path / "nothing")
    assert status == 2 and "no metrics.jsonl" in err


def _rebuilt_shapes(description):
    return models.parameter_shapes(description["factory"], **description["sizes"])


def test_training_exports_a_description_that_rebuilds_the_model(finished):
    description = checkpoint.read_description(finished / "model.pystate")
    assert description["factory"] == "optical_flow"
    assert description["task"] == {"min_overlap": 2, "batch_size": 128, "max_flow": 2.0}
    params, state = checkpoint.load(finished / "model.pystate")
    want_params, want_state = _rebuilt_shapes(description)
    assert checkpoint.tree_differences(want_params, params) == []
    assert description["trained"]["step"] == 4 and description["trained"]["config"]["recipe"] == "flow"


@pytest.mark.parametrize("recipe", sorted(recipes.CONFIGS))
def test_export_description_rebuilds_every_recipes_tiny_model(recipe, tmp_path, capsys):
    workdir = tmp_path / "run"
    cfg = recipes.get_config(recipe, tiny=True)
    objective = recipes.build_task(cfg, str(workdir), pretrained=False)
    opt, _ = optim.make_optimizer(cfg.optimizer, 10, cfg.train.batch_size)
    abstract = jax.eval_shape(trainer.initial_state(objective, opt, 0))
    zeros = lambda tree: jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), tree)
    saver = checkpointing.Checkpointer(str(workdir / "checkpoints"), async_save=False)
    tree = {"params": zeros(abstract.params), "state": zeros(abstract.state), "step": np.int32(3)}
    saver.save(3, tree, None)
    saver.close()
    path = tmp_path / "exported.pystate"
    status, out, err = _main(capsys, "--config", recipe, "--tiny", "--workdir", workdir, "--export", path)
    assert status == 0, err
    description = checkpoint.read_description(path)
    params, state = checkpoint.load(path)
    want_params, want_state = _rebuilt_shapes(description)
    assert checkpoint.tree_differences(want_params, params) == []
    assert checkpoint.tree_differences(want_state, state) == []
    factories = {"imagenet": "imagenet_classifier", "finetune_image": "imagenet_classifier",
                 "mlm": "masked_language_model", "finetune_text": "text_classifier",
                 "flow": "optical_flow", "flow_small": "optical_flow", "flow_small_photo": "optical_flow",
                 "perceiver_ar": "byte_language_model", "finetune_tokens": "token_classifier",
                 "finetune_qa": "question_answerer", "finetune_audio": "audio_classifier",
                 "finetune_detection": "object_detector"}
    assert description["factory"] == factories[recipe]
    assert description["trained"]["recipe"] == recipe and description["trained"]["step"] == 3
    assert description["description"].startswith(f"perceiver train --config {recipe}: step 3 of ")
    assert f"(described in {tmp_path / 'exported.json'})" in out
    if description["factory"] == "imagenet_classifier":
        assert description["labels"] == ["class_00", "class_01", "class_02"]
        assert description["sizes"]["variant"] == "fourier_position_encoding"
        assert description["task"]["image_size"] == description["sizes"]["image_size"]
    elif recipe == "finetune_text":
        assert description["labels"] == ["food", "space", "sport"]
        assert description["tokenizer"] == {"kind": "bytes", "max_seq_len": cfg.model["max_seq_len"]}
    elif description["factory"] == "optical_flow":
        assert description["task"]["min_overlap"] <= min(description["sizes"]["image_shape"]) // 4


def test_a_flow_recipe_starts_from_a_flow_checkpoint_given_as_task_pretrained(tmp_path):
    from perceiver.checkpoint import CheckpointError
    from perceiver.train.recipes.flow_small import TINY_FLOW_SMALL_MODEL

    cfg = recipes.get_config("flow_small", tiny=True)
    model = models.optical_flow(**TINY_FLOW_SMALL_MODEL)
    frames = jnp.zeros((1, 2) + tuple(TINY_FLOW_SMALL_MODEL["image_shape"]) + (3,))
    params, state = model.init(jax.random.PRNGKey(7), frames, is_training=True)
    path = tmp_path / "start.pystate"
    checkpoint.save(path, params, state)
    config.apply_overrides(cfg, [f"task.pretrained={path}"])
    objective = recipes.build_task(cfg, str(tmp_path / "run"), pretrained=True)
    fresh, fresh_state = objective.init(jax.random.PRNGKey(0))
    loaded, _ = objective.load_pretrained(fresh, fresh_state)
    assert sorted(loaded) == sorted(params)
    for module in params:
        for name in params[module]:
            np.testing.assert_array_equal(np.asarray(loaded[module][name]), np.asarray(params[module][name]))
    # Without it the start is random; with a checkpoint of other sizes, the differences are listed.
    assert recipes.build_task(recipes.get_config("flow_small", tiny=True), str(tmp_path / "r2")).load_pretrained is None
    shipped = os.path.join(os.path.dirname(models.__file__), "data", "flow_small.pystate")
    cfg = recipes.get_config("flow_small", tiny=True)
    config.apply_overrides(cfg, [f"task.pretrained={shipped}"])
    objective = recipes.build_task(cfg, str(tmp_path / "run3"), pretrained=True)
    with pytest.raises(CheckpointError, match="mismatched"):
        objective.load_pretrained(*objective.init(jax.random.PRNGKey(0)))
