"""Outputs never replace inputs and appear whole or not at all; a failed start leaves
nothing behind; every output's extension names what is written; Ctrl-C ends cleanly."""

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import _interrupt, checkpoint, cli, media

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PERCEIVER_BASE_URL", "http://127.0.0.1:9")  # offline: fails fast
    return tmp_path / "cache"


@pytest.fixture
def no_models(monkeypatch):
    """Loading any model fails the test: the checks must come first."""
    from perceiver.tasks import imagenet, text, text_classification, video

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the outputs were checked")

    monkeypatch.setattr(cli.flow, "_flow_estimator", refuse)
    for task in (video.VideoAutoencoder, text.MaskedLanguageModel, imagenet.ImageClassifier,
                 text_classification.TextClassifier):
        monkeypatch.setattr(task, "from_pretrained", refuse)


def _one_error_line(capsys, *expected):
    err = capsys.readouterr().err
    assert err.startswith("perceiver: error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


def _files(folder):
    """{relative path: bytes} of every file under `folder`."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def _small_checkpoint(folder, model, name=None):
    """The small reference checkpoint of `model` with its description beside it; returns its path."""
    path = os.path.join(str(folder), f"{name or model}.pystate")
    shutil.copy(ref.checkpoint_path(model), path)
    factory, sizes = ref.SMALL_FACTORIES[model]
    sizes = {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}
    task = {"min_overlap": 4} if model == "flow" else {}
    checkpoint.save_description(path, {"factory": factory, "sizes": sizes, "task": task})
    return path


def _inputs(tmp_path):
    """Two 20x30 frames and a 6-frame MP4 clip with a tone; returns their paths."""
    rng = np.random.default_rng(0)
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    media.write_image(a, rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    media.write_image(b, rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2000) / 8000.0))[:, None].astype(np.float32)
    clip = str(tmp_path / "in.mp4")
    media.write_video(clip, rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), 25, tone, 8000)
    return a, b, clip


# ---------------------------------------------------------------------------
# An output that names an input is refused before any work
# ---------------------------------------------------------------------------


def _links(d, a, b):
    os.symlink(a, os.path.join(d, "link.png"))
    os.link(b, os.path.join(d, "hard.flo"))
    return os.path.join(d, "link.png"), os.path.join(d, "hard.flo")


REPLACED_INPUTS = {
    # (argv from (folder, a.png, b.png, clip, checkpoint), the input named)
    "flow -o FRAME1": (lambda d, a, b, v, c: ["flow", a, b, "-o", a], "FRAME1"),
    "flow -o FRAME2 spelled differently": (
        lambda d, a, b, v, c: ["flow", a, b, "-o", f"{d}/./b.png"], "FRAME2"),
    "flow -o symlink to FRAME1": (
        lambda d, a, b, v, c: ["flow", a, b, "-o", _links(d, a, b)[0]], "FRAME1"),
    "flow --flo hard link to FRAME2": (
        lambda d, a, b, v, c: ["flow", a, b, "-o", f"{d}/o.png", "--flo", _links(d, a, b)[1]],
        "FRAME2"),
    "flow -o checkpoint description": (
        lambda d, a, b, v, c: ["flow", a, b, "-o", f"{d}/c.json", "--checkpoint", c],
        "--checkpoint's description"),
    "autoencode --labels-out description": (
        lambda d, a, b, v, c: ["autoencode", v, "-o", f"{d}/o.gif", "--labels-out",
                               c.replace(".pystate", ".json"), "--checkpoint", c],
        "--checkpoint's description"),
    "classify --json description": (
        lambda d, a, b, v, c: ["classify", a, "--json", c.replace(".pystate", ".json"),
                               "--checkpoint", c],
        "--checkpoint's description"),
    "fill-mask --json description": (
        lambda d, a, b, v, c: ["fill-mask", "a__", "--json", c.replace(".pystate", ".json"),
                               "--checkpoint", c],
        "--checkpoint's description"),
    "attention -o IMAGE": (lambda d, a, b, v, c: ["attention", a, "-o", a], "IMAGE"),
    "demo -o folder holding the checkpoint": (
        lambda d, a, b, v, c: ["demo", "-o", d, "--checkpoint", f"{d}/flow.png"], "--checkpoint"),
}


@pytest.mark.parametrize("case", sorted(REPLACED_INPUTS))
def test_an_output_naming_an_input_is_refused_before_any_model(tmp_path, cache, no_models, capsys,
                                                               case):
    a, b, clip = _inputs(tmp_path)
    c = _small_checkpoint(tmp_path, "video_autoencoding", "c")
    shutil.copy(a, tmp_path / "flow.png")  # for the demo: a file it writes, given as its input
    argv, what = REPLACED_INPUTS[case]
    argv = argv(str(tmp_path), a, b, clip, c)
    before = _files(tmp_path)
    assert cli.main(argv) == 2
    _one_error_line(capsys, "would replace the input", what)
    assert _files(tmp_path) == before


def test_every_path_option_is_classified_as_input_or_output():
    # A new option that writes or reads a path must be added to the tables the
    # check reads (convert checks its own, train and plot have their parsers).
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    pathlike = {"out", "output", "outdir", "json", "flo", "file", "path", "export", "image",
                "images", "video", "frame1", "frame2"}
    for name, sub in commands.items():
        if name in ("convert", "train", "plot"):
            continue
        classified = set(sub.get_default("input_options") or {}) | set(sub.get_default("output_options") or {})
        for action in sub._actions:
            if set(action.dest.split("_")) & pathlike:
                assert action.dest in classified, (name, action.dest)


def test_outputs_that_are_one_file_by_a_hard_link_are_refused(tmp_path, cache, no_models, capsys):
    a, b, _ = _inputs(tmp_path)
    (tmp_path / "o.png").write_bytes(b"old")
    os.link(tmp_path / "o.png", tmp_path / "o.flo")
    assert cli.main(["flow", a, b, "-o", str(tmp_path / "o.png"), "--flo", str(tmp_path / "o.flo")]) == 2
    _one_error_line(capsys, "-o and --flo both name")


def _stored_run(workdir, recipe="flow", **changes):
    """WORKDIR/config.json of the tiny `recipe` with `changes` ({dotted key: value})."""
    from perceiver.train import config as config_lib
    from perceiver.train import recipes

    config = recipes.get_config(recipe, tiny=True)
    for key, value in changes.items():
        config_lib.assign(config, key, value)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_lib.to_json(config) + "\n")


@pytest.mark.parametrize(
    "export, expected",
    [
        ("{w}/config.pystate", "would replace the input the run's config.json"),
        ("{w}/metrics.pystate", None),  # metrics.jsonl is another name: allowed
        ("{d}/pre.pystate", "would replace the input task.pretrained"),
        ("{d}/m.json", "must end in .pystate or .safetensors; got '.json'"),
        ("{d}/none/m.pystate", "there is no folder"),
    ],
)
def test_export_never_replaces_what_the_run_reads(tmp_path, capsys, export, expected):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import main as train_main

    workdir = tmp_path / "run"
    pretrained = _small_checkpoint(tmp_path, "flow", "pre")
    _stored_run(workdir, **{"task.pretrained": pretrained})
    (workdir / "metrics.jsonl").write_text("")
    before = _files(tmp_path)
    status = train_main.main(["--workdir", str(workdir), "--export",
                              export.format(w=workdir, d=tmp_path)])
    err = capsys.readouterr().err
    if expected is None:  # got past the checks: there is no checkpoint to export
        assert status == 2 and "no checkpoint" in err, err
    else:
        assert status == 2 and err.count("\n") == 1 and expected in err, err
    assert _files(tmp_path) == before


def test_training_refuses_to_export_over_its_pretrained_model_or_to_live_in_its_data(tmp_path, capsys):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import main as train_main

    workdir = tmp_path / "run"
    workdir.mkdir()
    pretrained = _small_checkpoint(workdir, "flow", "model")  # WORKDIR/model.pystate
    before = _files(tmp_path)
    status = train_main.main(["--config", "flow", "--tiny", "--workdir", str(workdir),
                              f"task.pretrained={pretrained}"])
    err = capsys.readouterr().err
    assert status == 2 and "checkpoint.export=false" in err and pretrained in err, err
    assert _files(tmp_path) == before

    photos = tmp_path / "photos"
    (photos / "cats").mkdir(parents=True)
    status = train_main.main(["--config", "imagenet", "--tiny", "--workdir", str(photos / "run"),
                              f"data.train_dir={photos}"])
    err = capsys.readouterr().err
    assert status == 2 and "is inside data.train_dir" in err, err
    assert sorted(os.listdir(photos)) == ["cats"]


# ---------------------------------------------------------------------------
# Every output's extension names what is written
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["autoencode", "{v}", "-o", "{d}/o.gif", "--audio-out", "{d}/x.mp3"],
         "must be one of .wav, .wave; got '.mp3'"),
        (["autoencode", "{v}", "-o", "{d}/o.gif", "--labels-out", "{d}/l.txt"],
         "--labels-out {d}/l.txt: it is written as JSON, so its name must end in .json"),
        (["classify", "{a}", "--json", "{d}/c.csv"], "must end in .json; got '.csv'"),
        (["fill-mask", "a__", "--json", "{d}/f"], "must end in .json; got 'no extension'"),
        (["flow", "{a}", "{b}", "-o", "{d}/f.png", "--flo", "{d}/f.png.txt"], "must end in .flo"),
        (["attention", "{a}", "-o", "{d}/m.bmp"],
         "cannot write a figure to {d}/m.bmp: the extension must be one of"),
    ],
)
def test_an_extension_that_names_another_format_is_refused(tmp_path, cache, no_models, capsys,
                                                           argv, expected):
    a, b, clip = _inputs(tmp_path)
    fill = dict(d=str(tmp_path), a=a, b=b, v=clip)
    before = _files(tmp_path)
    assert cli.main([item.format(**fill) for item in argv]) == 2
    _one_error_line(capsys, expected.format(**fill))
    assert _files(tmp_path) == before


def test_write_wav_refuses_a_name_of_another_format(tmp_path):
    with pytest.raises(ValueError, match=r"x\.mp3.*\.wav, \.wave; got '\.mp3'"):
        media.write_wav(tmp_path / "x.mp3", np.zeros(8, np.float32), 8000)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# Outputs appear whole or not at all
# ---------------------------------------------------------------------------


def _break_after_half(monkeypatch, owner, name, error):
    """`owner.name(path, ...)` writes half a file at `path`, then raises `error`."""

    def broken(*args, **kwargs):
        target = next(a for a in args if isinstance(a, (str, os.PathLike)))
        with open(target, "wb") as f:
            f.write(b"half")
        raise error

    monkeypatch.setattr(owner, name, broken)


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError("encoder failed")])
@pytest.mark.parametrize("writer", ["image", "gif", "mp4", "wav"])
def test_media_writers_replace_a_file_whole_or_leave_it(tmp_path, monkeypatch, writer, error):
    import wave

    from PIL import Image

    path = tmp_path / {"image": "o.png", "gif": "o.gif", "mp4": "o.mp4", "wav": "o.wav"}[writer]
    path.write_bytes(b"the previous file")
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    write = {
        "image": lambda: media.write_image(path, frames[0]),
        "gif": lambda: media.write_video(path, frames, 10),
        "mp4": lambda: media.write_video(path, frames, 10),
        "wav": lambda: media.write_wav(path, np.zeros(8, np.float32), 8000),
    }[writer]
    write()  # a whole file replaces the old one
    assert path.read_bytes() != b"the previous file"
    path.write_bytes(b"the previous file")
    if writer in ("image", "gif"):
        _break_after_half(monkeypatch, Image.Image, "save", error)
    elif writer == "mp4":
        _break_after_half(monkeypatch, media, "_encode_mp4", error)
    else:
        monkeypatch.setattr(wave.Wave_write, "writeframes", lambda self, data: (_ for _ in ()).throw(error))
    with pytest.raises((KeyboardInterrupt, ValueError)):
        write()
    assert path.read_bytes() == b"the previous file"
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_a_symlinked_output_is_written_through(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    (tmp_path / "link.png").symlink_to(target)
    media.write_image(tmp_path / "link.png", np.zeros((2, 2, 3), np.uint8))
    assert (tmp_path / "link.png").is_symlink()
    assert media.read_image(target).shape == (2, 2, 3)


def test_the_trainers_json_files_are_replaced_whole(tmp_path, monkeypatch):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import trainer

    path = tmp_path / "summary.json"
    path.write_text('{"steps": 4}')
    real_replace = os.replace

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer._write_json(str(path), '{"steps": 8}')
    monkeypatch.setattr(trainer.os, "replace", real_replace)
    assert path.read_text() == '{"steps": 4}' and os.listdir(tmp_path) == ["summary.json"]


# ---------------------------------------------------------------------------
# Nothing is left behind by a failed start
# ---------------------------------------------------------------------------


def test_a_failed_training_start_removes_the_workdir_it_made(tmp_path, capsys):
    pytest.importorskip("orbax.checkpoint")
    workdir = tmp_path / "new" / "run"
    (tmp_path / "new").mkdir()
    # No data: fails after the workdir, its lock and the stored config would be there.
    assert cli.main(["train", "--config", "imagenet", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs data.train_dir" in err, err
    assert f"removed {workdir}, which this start had made" in err
    assert os.listdir(tmp_path / "new") == []


def test_a_failed_start_in_an_existing_folder_takes_away_only_what_it_added(tmp_path, capsys):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import main as train_main

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")
    # --tiny makes generated data under WORKDIR/generated before the bad size fails.
    status = train_main.main(["--config", "imagenet", "--tiny", "--workdir", str(workdir),
                              "model.num_classes=2"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert os.listdir(workdir) == ["notes.txt"]


def test_an_interrupted_first_start_leaves_nothing_and_says_so(tmp_path, capsys, monkeypatch):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import main as train_main
    from perceiver.train import trainer

    def interrupted(config, task, workdir, stored_config=None):
        os.makedirs(os.path.join(workdir, "checkpoints"))  # what a start makes first
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    workdir = tmp_path / "run"
    status = train_main.main(["--config", "flow", "--tiny", "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert status == 130 and err == (
        f"perceiver train: interrupted (before the first checkpoint: nothing saved; removed "
        f"{workdir}, which this start had made)\n"
    )
    assert os.listdir(tmp_path) == []


def test_the_lock_follows_a_lock_file_removed_while_it_was_taken(tmp_path, monkeypatch):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import workdir as workdir_lib

    real_flock = workdir_lib.fcntl.flock
    calls = []

    def flock_after_removal(fd, op):
        if not calls:  # a failed start removes the file between our open and flock
            os.unlink(tmp_path / ".lock")
        calls.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr(workdir_lib.fcntl, "flock", flock_after_removal)
    lock = workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    try:
        assert len(calls) == 2
        assert os.path.samestat(os.fstat(lock._fd), os.stat(tmp_path / ".lock"))
    finally:
        lock.release()


def test_a_failed_demo_leaves_no_folder(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setattr(cli.flow, "_flow_estimator",
                        lambda *a: lambda x, y, **k: np.zeros(x.shape[:2] + (2,), np.float32))

    def full_disk(path, image):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(media, "write_image", full_disk)
    assert cli.main(["demo", "-o", str(tmp_path / "a" / "demo")]) == 2
    _one_error_line(capsys, "No space left on device")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------
# --tiny and data the user names
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe, given, expected",
    [
        ("imagenet", {"data.train_dir": "my_photos"},
         {"generate": False, "train_dir": "my_photos", "eval_dir": ""}),
        ("finetune_image", {"data.train_dir": "t", "data.eval_dir": "val"},
         {"generate": False, "train_dir": "t", "eval_dir": "val"}),
        ("mlm", {"data.train_paths": "('a.txt',)"},
         {"generate": False, "train_paths": ("a.txt",), "eval_paths": ()}),
        ("finetune_text", {"data.train_paths": "('t.jsonl',)"},
         {"generate": False, "train_paths": ("t.jsonl",)}),
        # Not the tiny variant's evaluation texts beside your training texts.
        ("perceiver_ar", {"data.train_paths": "('a.txt',)"},
         {"train_paths": ("a.txt",), "eval_paths": ()}),
        # Your evaluation texts beside the tiny variant's training texts.
        ("perceiver_ar", {"data.eval_paths": "('e.txt',)"}, {"eval_paths": ("e.txt",)}),
        ("imagenet", {}, {"generate": True}),  # without data of yours: generated, as before
    ],
)
def test_data_you_name_replace_the_tiny_variants(tmp_path, recipe, given, expected):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import runconfig

    overrides = [f"{k}={v}" for k, v in given.items()]
    config, _, _ = runconfig.resolve(str(tmp_path / "run"), recipe, True, overrides)
    for name, value in expected.items():
        assert getattr(config.data, name) == value, name


def test_data_beside_generate_is_refused_in_one_line(tmp_path, capsys):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import main as train_main

    status = train_main.main(["--config", "imagenet", "--tiny", "--workdir", str(tmp_path / "r"),
                              "data.generate=true", "data.train_dir=my_photos"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "data.train_dir=my_photos would be ignored: data.generate=true" in err
    # Generated training data bring their own evaluation set: yours alone would be replaced.
    status = train_main.main(["--config", "mlm", "--tiny", "--workdir", str(tmp_path / "r"),
                              "data.eval_paths=('mine.txt',)"])
    err = capsys.readouterr().err
    assert status == 2 and "data.eval_paths=('mine.txt',) would be ignored: --tiny" in err, err
    # A stored run on generated data: an evaluation folder given later is refused too.
    _stored_run(tmp_path / "g", "imagenet")
    status = train_main.main(["--workdir", str(tmp_path / "g"), "--eval-only", "data.eval_dir=val"])
    err = capsys.readouterr().err
    assert status == 2 and "data.eval_dir=val would be ignored" in err and "config.json" in err, err
    assert not os.path.exists(tmp_path / "r")


# ---------------------------------------------------------------------------
# Ctrl-C: the mechanism, in-process
# ---------------------------------------------------------------------------


@pytest.fixture
def installed():
    """`_interrupt`'s SIGINT handler, for one test."""
    previous, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    _interrupt.install()
    yield
    signal.signal(signal.SIGINT, previous)
    sys.unraisablehook = hook
    _interrupt._stopping = False
    _interrupt._pending = False


def _wait_for_signal(seconds=2.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


@pytest.fixture
def pythons():
    """Python's own SIGINT handler, for one test, whatever an earlier test in this worker left."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("handler", ["pythons", "installed"])
def test_held_blocks_delay_ctrl_c_to_their_end(request, handler):
    request.getfixturevalue(handler)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with _interrupt.held():
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for_signal(0.2)
            done.append("the block ran to its end")
    assert done


def test_ctrl_c_inside_a_gc_callback_is_delivered_after_it_not_lost(installed, capfd):
    fired = []

    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10000):  # Python code, where the handler runs
                pass

    gc.callbacks.append(callback)
    try:
        with pytest.raises(KeyboardInterrupt):
            gc.collect()
            _wait_for_signal()
    finally:
        gc.callbacks.remove(callback)
    assert fired
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "Traceback" not in err, err


def test_ctrl_c_inside_a_weakref_callback_is_delivered_after_it_without_a_traceback(installed, capfd):
    import weakref

    class Thing:
        pass

    def callback(reference):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10000):
            pass

    thing = Thing()
    reference = weakref.ref(thing, callback)
    with pytest.raises(KeyboardInterrupt):
        del thing  # the callback runs here, where an exception is printed and dropped
        _wait_for_signal()
    assert reference() is None
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "Traceback" not in err, err


def test_ctrl_c_during_an_import_waits_for_its_end(installed, tmp_path, monkeypatch):
    # KeyboardInterrupt unwinding through a C extension's initialisation crashes
    # the process (jaxlib's did): no import is cut short.
    (tmp_path / "interrupted_import.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "end = time.monotonic() + 0.3\n"
        "while time.monotonic() < end:\n"
        "    pass\n"
        "COMPLETE = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        __import__("interrupted_import")
        _wait_for_signal()
    assert sys.modules["interrupted_import"].COMPLETE
    del sys.modules["interrupted_import"]


class _Numbers:
    """Records i: x = i + 1, y = 3x (so that the data order shows in the parameters)."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        x = np.full((1,), (int(i) % 64 + 1) / 64, np.float32)
        return {"x": x, "y": 3 * x}

    def __repr__(self):
        return "_Numbers()"


def _toy(every_steps=100):
    import jax.numpy as jnp

    from perceiver.train import config, data, trainer

    def loss(params, state, key, batch):
        return jnp.mean((batch["x"] * params["lin"]["w"] - batch["y"]) ** 2), ({}, state)

    task = trainer.Objective(
        init=lambda key: ({"lin": {"w": jnp.ones((1,))}}, {}),
        loss=loss,
        train_loader=lambda size, seed: data.make_loader(_Numbers(), [], batch_size=size, seed=seed),
    )
    cfg = config.Config(
        recipe="toy", model={}, data=None, task=None,
        optimizer=config.OptimizerSettings(optimizer="adamw", base_lr=0.1, scale_by_batch=False,
                                         schedule="constant", weight_decay=0.0, max_norm=0.0),
        train=config.TrainSettings(batch_size=4, num_steps=6, final_eval=False, progress=False,
                                 log_every=100),
        checkpoint=config.CheckpointSettings(every_steps=every_steps, async_save=False, export=False),
    )
    return cfg, task


def _interrupt_step(monkeypatch, call, after_the_step):
    """The train step's `call`-th call raises KeyboardInterrupt, before it runs or after."""
    from perceiver.train import trainer

    compile_step = trainer.compile_train_step
    calls = []

    def compiled(*args, **kwargs):
        step = compile_step(*args, **kwargs)

        def run(ts, batch):
            calls.append(1)
            if len(calls) == call and not after_the_step:
                raise KeyboardInterrupt
            out = step(ts, batch)
            if len(calls) == call:
                raise KeyboardInterrupt  # the result is lost, `ts` was donated
            return out

        return run

    monkeypatch.setattr(trainer, "compile_train_step", compiled)


def _saved(workdir):
    from perceiver.train import checkpointing

    return checkpointing.saved_steps(os.path.join(workdir, "checkpoints"))


def test_ctrl_c_before_a_step_saves_the_state_with_its_own_data_position(tmp_path, monkeypatch):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import checkpointing, trainer

    cfg, task = _toy()
    trainer.train(cfg, task, str(tmp_path / "straight"))
    _interrupt_step(monkeypatch, call=4, after_the_step=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, task, str(tmp_path / "stopped"))
    assert _saved(tmp_path / "stopped") == [3]
    monkeypatch.undo()
    trainer.train(cfg, task, str(tmp_path / "stopped"))  # resumes at step 3
    reads = [checkpointing.Checkpointer(str(tmp_path / run / "checkpoints"), read_only=True)
             for run in ("straight", "stopped")]
    try:
        (a, _, sa), (b, _, sb) = (r.restore_params() for r in reads)
    finally:
        for r in reads:
            r.close()
    # The batch read before Ctrl-C is trained on after the resume, not skipped.
    assert sa == sb == 6
    np.testing.assert_array_equal(a["lin"]["w"], b["lin"]["w"])


def test_ctrl_c_after_a_step_took_the_state_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import trainer

    cfg, task = _toy(every_steps=2)
    _interrupt_step(monkeypatch, call=4, after_the_step=True)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, task, str(tmp_path))
    assert _saved(tmp_path) == [2]
    assert "interrupted during step 4; the latest checkpoint stays" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Ctrl-C: the program, interrupted at many moments
# ---------------------------------------------------------------------------


def _env(tmp_path):
    env = dict(os.environ, PERCEIVER_CACHE=str(tmp_path / "cache"),
               PERCEIVER_BASE_URL="http://127.0.0.1:9", PYTHONPATH=REPO)
    env.pop("PYTHONFAULTHANDLER", None)
    return env


def _run_interrupted(jobs, env):
    """Starts every `(argv, delay)` job at once, sends each SIGINT after its delay.

    Returns:
      `(returncode, stdout, stderr)` per job.
    """
    procs = []
    start = time.monotonic()
    for argv, delay in jobs:
        procs.append((subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=env, cwd=REPO), delay))
    for proc, delay in sorted(procs, key=lambda p: p[1]):
        while time.monotonic() < start + delay and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    results = []
    for proc, _ in procs:
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += "\n(hung after SIGINT)"
        results.append((proc.returncode, out, err))
    return results


def _whole(path):
    """Reads an output with its reader: raises if it is not a whole file of its kind."""
    from perceiver.tasks import flow as flow_lib

    suffix = os.path.splitext(path)[1]
    if suffix == ".png":
        media.read_image(path)
    elif suffix == ".flo":
        flow_lib.read_flo(path)
    elif suffix == ".json":
        with open(path) as f:
            json.load(f)
    elif suffix == ".wav":
        media.read_wav(path)
    elif suffix in (".gif", ".mp4"):
        media.read_video(path)
    elif suffix == ".pystate":
        checkpoint.load(path)


def _check_clean(result, folder, outputs, inputs=()):
    """Exit 0 or 130 in one true line, no traceback, and every output whole or absent."""
    status, out, err = result
    assert status in (0, 130), (status, err[-2000:])
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("perceiver")]
    if status == 130:
        assert lines and "interrupted" in lines[-1], err[-2000:]
        assert "checkpoint saved" not in lines[-1]  # no command here saves one
    names = sorted(os.listdir(folder))
    assert not [n for n in names if ".part" in n or n.endswith(".tmp")], names
    for name in outputs:
        path = os.path.join(folder, name)
        if status == 0:
            assert os.path.exists(path), (name, err)
        if os.path.exists(path):
            _whole(path)
            if status == 130:  # said, when it was written before Ctrl-C stopped the rest
                assert "after exporting" in lines[-1] or "wrote" in lines[-1], lines[-1]
    assert set(names) <= set(outputs) | set(inputs), names


def _flow_jobs(tmp_path, delays):
    a, b, _ = _inputs(tmp_path)
    c = _small_checkpoint(tmp_path, "flow", "small_flow")
    jobs, folders = [], []
    for i, delay in enumerate(delays):
        folder = tmp_path / f"flow{i}"
        folder.mkdir()
        argv = [sys.executable, "-m", "perceiver.cli", "flow", a, b, "-o", str(folder / "f.png"),
                "--flo", str(folder / "f.flo"), "--checkpoint", c]
        jobs.append((argv, delay))
        folders.append((folder, ("f.png", "f.flo")))
    return jobs, folders


def _autoencode_jobs(tmp_path, delays):
    _, _, clip = _inputs(tmp_path)
    c = _small_checkpoint(tmp_path, "video_autoencoding", "small_video")
    jobs, folders = [], []
    for i, delay in enumerate(delays):
        folder = tmp_path / f"ae{i}"
        folder.mkdir()
        argv = [sys.executable, "-m", "perceiver.cli", "autoencode", clip, "-o", str(folder / "o.mp4"),
                "--audio-out", str(folder / "o.wav"), "--labels-out", str(folder / "l.json"),
                "--checkpoint", c]
        jobs.append((argv, delay))
        folders.append((folder, ("o.mp4", "o.wav", "l.json")))
    return jobs, folders


def _checkpointed_run(workdir):
    """A tiny flow workdir with one checkpoint (step 2) of the model's shapes (zeros)."""
    import jax

    from perceiver import models
    from perceiver.train import checkpointing, recipes

    _stored_run(workdir)
    config = recipes.get_config("flow", tiny=True)
    model = models.optical_flow(**config.model)
    frames = np.zeros((1, 2) + tuple(config.model["image_shape"]) + (3,), np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), frames, is_training=True))
    params, state = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(2, {"step": np.int32(2), "params": params, "state": state, "opt_state": {},
                  "rng": np.zeros(2, np.uint32)}, None)
    ckpt.close()


def _export_jobs(tmp_path, delays):
    workdir = tmp_path / "run"
    _checkpointed_run(workdir)
    jobs, folders = [], []
    for i, delay in enumerate(delays):
        folder = tmp_path / f"export{i}"
        folder.mkdir()
        argv = [sys.executable, "-m", "perceiver.cli", "train", "--workdir", str(workdir),
                "--export", str(folder / "m.pystate")]
        jobs.append((argv, delay))
        folders.append((folder, ("m.pystate", "m.json")))
    return jobs, folders


def test_ctrl_c_at_several_moments_of_flow_autoencode_and_export_ends_cleanly(tmp_path):
    # All at once (two cores): each delay falls somewhere in start-up,
    # loading, computing or writing. The slow test below sweeps each command.
    pytest.importorskip("orbax.checkpoint")
    pytest.importorskip("av")
    jobs, folders = [], []
    for make, delays in ((_flow_jobs, (2.5,)), (_autoencode_jobs, (6.0,)), (_export_jobs, (4.5,))):
        more_jobs, more_folders = make(tmp_path, delays)
        jobs += more_jobs
        folders += more_folders
    for result, (folder, outputs) in zip(_run_interrupted(jobs, _env(tmp_path)), folders):
        print(folder.name, result[0], result[2].strip().splitlines()[-1:])
        _check_clean(result, folder, outputs)
    # The export's workdir keeps its checkpoint and holds nothing new.
    assert set(os.listdir(tmp_path / "run")) <= {".lock", "checkpoints", "config.json"}


def _spread(duration, count):
    return [duration * (i + 0.5) / count for i in range(count)]


def _timed(argv, env):
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize("command", ["flow", "autoencode", "export"])
def test_ctrl_c_anywhere_in_a_command_ends_cleanly(tmp_path, command):
    pytest.importorskip("orbax.checkpoint")
    make = {"flow": _flow_jobs, "autoencode": _autoencode_jobs, "export": _export_jobs}[command]
    env = _env(tmp_path)
    (tmp_path / "probe").mkdir()
    probe, _ = make(tmp_path / "probe", [0])
    duration = _timed(probe[0][0], env)
    jobs, folders = make(tmp_path, _spread(duration * 1.1, 8))
    for job, (folder, outputs) in zip(jobs, folders):  # one at a time: the delays mean what they say
        result = _run_interrupted([job], env)[0]
        print(f"{job[1]:.1f} s: {result[0]} {result[2].strip().splitlines()[-1:]}")
        _check_clean(result, folder, outputs)


@pytest.mark.slow
def test_ctrl_c_anywhere_in_a_tiny_training_run_ends_cleanly(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    from perceiver.train import checkpointing

    env = _env(tmp_path)
    argv = [sys.executable, "-m", "perceiver.cli", "train", "--config", "flow", "--tiny",
            "train.num_steps=4", "optimizer.warmup_steps=1", "checkpoint.every_steps=2",
            "data.train_examples=8", "data.eval_examples=8", "train.eval_batch_size=8",
            "train.progress=false", "--workdir"]
    duration = _timed(argv + [str(tmp_path / "timed")], env)
    for i, delay in enumerate(_spread(duration * 1.1, 8)):
        workdir = tmp_path / f"run{i}"
        status, out, err = _run_interrupted([(argv + [str(workdir)], delay)], env)[0]
        print(f"{delay:.1f} s: {status} {err.strip().splitlines()[-1:]}")
        assert status in (0, 130) and "Traceback" not in err, err[-2000:]
        steps = checkpointing.saved_steps(os.path.join(workdir, "checkpoints"))
        if status == 130:
            line = err.strip().splitlines()[-1]
            if steps:
                assert f"the latest checkpoint is step {steps[-1]}" in line, line
                status, _, err = _run_interrupted([(argv + [str(workdir)], 600)], env)[0]
                assert status == 0, err[-2000:]  # resumes and finishes
            else:
                assert "nothing saved" in line or "perceiver: interrupted" in line, line
                assert not workdir.exists(), sorted(os.listdir(workdir))
        if workdir.exists():
            assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]
