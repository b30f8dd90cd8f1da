"""The `perceiver` command line, offline: the cache is filled by the tests."""

import io
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint, cli, hub, models


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path))
    # Any download attempt fails fast instead of reaching the internet.
    monkeypatch.setenv("PERCEIVER_BASE_URL", "http://127.0.0.1:9")
    return tmp_path


def test_list_shows_what_is_cached_and_the_shipped_model(cache, capsys):
    shutil.copy(ref.checkpoint_path("flow"), cache / hub.get("flow").filename)
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith("  ") and line.split()}
    assert set(hub.CHECKPOINTS) <= set(rows)
    size = (cache / hub.get("flow").filename).stat().st_size / 1e6
    assert f"cached, {size:.1f} MB" in rows["flow"]
    assert all("not cached" in rows[name] for name in hub.CHECKPOINTS if name != "flow")
    assert cli.flow._bundled_flow_model() in rows["flow_small"] and " MB " in rows["flow_small"]
    assert str(cache) in lines[0]
    # The models without published weights, each with the recipe that trains it and its command.
    assert all(rows[recipe].split()[1] == factory for factory, recipe in cli.checkpoints.TRAINED_HERE.items())
    assert "perceiver answer --checkpoint FILE" in rows["finetune_qa"]


def test_the_models_trained_here_are_those_without_published_weights():
    from perceiver.train.recipes import FACTORIES

    published = {entry.factory for entry in hub.CHECKPOINTS.values()}
    unpublished = {}
    for recipe, factory in FACTORIES.items():
        if factory not in published:
            unpublished.setdefault(factory, recipe)
    assert cli.checkpoints.TRAINED_HERE == unpublished


def test_fetch_cached(cache, capsys):
    target = cache / hub.get("flow").filename
    shutil.copy(ref.checkpoint_path("flow"), target)
    assert cli.main(["fetch", "flow"]) == 0
    assert capsys.readouterr().out.strip() == str(target)


def test_fetch_offline_is_one_clear_line(cache, capsys):
    assert cli.main(["fetch", "flow"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perceiver: error: ")
    assert "optical_flow_checkpoint.pystate" in err
    assert str(cache) in err
    assert "Traceback" not in err


def test_unknown_name(cache, capsys):
    assert cli.main(["check", "resnet"]) == 2
    err = capsys.readouterr().err
    assert "resnet" in err and "flow" in err


def test_check_reports_every_difference(cache, capsys):
    # A small flow checkpoint under the published name: the full model rejects it.
    shutil.copy(ref.checkpoint_path("flow"), cache / hub.get("flow").filename)
    assert cli.main(["check", "flow"]) == 2
    err = capsys.readouterr().err
    assert "does not fit optical_flow" in err
    # Counted by kind, a few of each shown, in one bounded line.
    assert "422 differences: 70 mismatched, 352 missing" in err
    assert "mismatched flow_decoder/" in err and "missing " in err
    assert len(err.strip().splitlines()) == 1 and len(err) < 2500


def test_console_script_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "perceiver.cli", "list"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "video_autoencoding" in result.stdout


@pytest.mark.slow
def test_check_flow_full_size_random_weights(cache, capsys):
    """The README's first command, on random weights of the published shapes."""
    params, _ = models.parameter_shapes("optical_flow")
    rng = np.random.default_rng(0)
    weights = jax.tree_util.tree_map(
        lambda s: (0.02 * rng.standard_normal(s.shape)).astype(s.dtype), params
    )
    checkpoint.save(cache / hub.get("flow").filename, weights)
    assert cli.main(["check", "flow"]) == 0
    out = capsys.readouterr().out
    assert "41,057,134 parameters" in out
    assert "median predicted flow" in out


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------

FLOW_SIZES = ref.SMALL_FACTORIES["flow"][1]


@pytest.fixture
def small_flow(tmp_path):
    """The small reference flow checkpoint with its sizes in a sidecar file."""
    import json

    path = tmp_path / "small_flow.pystate"
    shutil.copy(ref.checkpoint_path("flow"), path)
    sizes = {k: list(v) if isinstance(v, tuple) else v for k, v in FLOW_SIZES.items()}
    (tmp_path / "small_flow.json").write_text(
        json.dumps({"sizes": sizes, "task": {"min_overlap": 4}})
    )
    return path


def _frames(tmp_path, shape=(20, 30, 3), second_shape=None):
    from perceiver import media

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = rng.integers(0, 256, second_shape or shape, dtype=np.uint8)
    media.write_image(tmp_path / "a.png", a)
    media.write_image(tmp_path / "b.png", b)
    return str(tmp_path / "a.png"), str(tmp_path / "b.png")


def test_flow_writes_png_and_flo(small_flow, tmp_path, cache, capsys):
    from perceiver import media
    from perceiver.tasks import flow as flow_lib

    a, b = _frames(tmp_path)
    out, flo = tmp_path / "flow.png", tmp_path / "flow.flo"
    code = cli.main(["flow", a, b, "-o", str(out), "--flo", str(flo), "--checkpoint", str(small_flow)])
    assert code == 0, capsys.readouterr().err
    image = media.read_image(out)
    field = flow_lib.read_flo(flo)
    assert image.shape == (20, 30, 3) and field.shape == (20, 30, 2)
    estimator = flow_lib.OpticalFlow.from_pretrained(str(small_flow), min_overlap=4, **FLOW_SIZES)
    np.testing.assert_allclose(
        field, estimator(media.read_image(a), media.read_image(b)), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(image, flow_lib.flow_to_color(field))


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing", "no such image"),
        ("sizes", "the frames differ in size"),
        ("unreadable", "a.png"),
        ("checkpoint", "unknown checkpoint 'nope'"),
    ],
)
def test_flow_bad_input_is_one_line(small_flow, tmp_path, cache, capsys, problem, expected):
    a, b = _frames(tmp_path, second_shape=(21, 30, 3) if problem == "sizes" else None)
    checkpoint_arg = str(small_flow)
    if problem == "missing":
        a = str(tmp_path / "missing.png")
    elif problem == "unreadable":
        (tmp_path / "a.png").write_bytes(b"not an image")
    elif problem == "checkpoint":
        checkpoint_arg = "nope"
    code = cli.main(["flow", a, b, "-o", str(tmp_path / "o.png"), "--checkpoint", checkpoint_arg])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("perceiver: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def _with_sidecar(tmp_path, model, sizes=None, task=None):
    import json

    path = tmp_path / f"small_{model}.pystate"
    shutil.copy(ref.checkpoint_path(model), path)
    sizes = dict(ref.SMALL_FACTORIES[model][1]) if sizes is None else sizes
    sizes = {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}
    (tmp_path / f"small_{model}.json").write_text(json.dumps({"sizes": sizes, "task": task or {}}))
    return str(path)


def test_autoencode_writes_video_audio_and_labels(tmp_path, cache, capsys):
    import json

    from perceiver import media

    checkpoint_arg = _with_sidecar(tmp_path, "video_autoencoding")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    t = np.arange(8000) / 8000.0
    audio = (0.5 * np.sin(2 * np.pi * 440 * t))[:, None].astype(np.float32)
    media.write_video(tmp_path / "in.mp4", frames, 25, audio=audio, sample_rate=8000)
    out, wav, labels = tmp_path / "out.gif", tmp_path / "out.wav", tmp_path / "labels.json"
    code = cli.main([
        "autoencode", str(tmp_path / "in.mp4"), "-o", str(out), "--audio-out", str(wav),
        "--labels-out", str(labels), "--top-k", "3", "--checkpoint", checkpoint_arg,
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "6 frames in 2 clip(s)" in captured.out
    assert "image PSNR" in captured.out and "audio PSNR" in captured.out
    video, _, _, _ = media.read_video(out)
    assert video.shape == (6, 16, 16, 3)
    sound, rate = media.read_wav(wav)
    assert rate == 25 * 64 and sound.shape[1] == 1
    clips = json.loads(labels.read_text())
    assert [c["start_frame"] for c in clips] == [0, 4]
    assert all(len(c["labels"]) == 3 for c in clips)


def test_autoencode_missing_video(tmp_path, cache, capsys):
    assert cli.main(["autoencode", str(tmp_path / "none.mp4"), "-o", str(tmp_path / "o.gif")]) == 2
    assert "no such video" in capsys.readouterr().err


def test_fill_mask(tmp_path, cache, capsys):
    import json

    checkpoint_arg = _with_sidecar(tmp_path, "mlm")
    out = tmp_path / "fill.json"
    code = cli.main(["fill-mask", "abc___def", "__x", "--json", str(out), "--checkpoint", checkpoint_arg])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("abc") and lines[0].endswith("def")
    results = json.loads(out.read_text())
    assert [len(r["spans"]) for r in results] == [1, 1]
    assert len(results[0]["spans"][0]["probabilities"]) == len(results[0]["spans"][0]["bytes"]) == 3


def test_fill_mask_needs_a_placeholder(tmp_path, cache, capsys):
    assert cli.main(["fill-mask", "nothing to fill"]) == 2
    assert "placeholder" in capsys.readouterr().err


def test_fill_mask_too_long(tmp_path, cache, capsys):
    checkpoint_arg = _with_sidecar(tmp_path, "mlm")
    assert cli.main(["fill-mask", "_" * 49, "--checkpoint", checkpoint_arg]) == 2
    assert "max_seq_len=48" in capsys.readouterr().err


def test_classify(tmp_path, cache, capsys):
    import json

    from perceiver import media

    checkpoint_arg = _with_sidecar(
        tmp_path, "imagenet_fourier", task={"variant": "fourier_position_encoding"}
    )
    sizes = dict(ref.SMALL_FACTORIES["imagenet_fourier"][1])
    del sizes["variant"]
    (tmp_path / "small_imagenet_fourier.json").write_text(json.dumps({
        "sizes": sizes, "task": {"variant": "fourier_position_encoding"}}))
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(20, 30, 3), (40, 24, 3)]):
        paths.append(str(tmp_path / f"im{i}.png"))
        media.write_image(paths[-1], rng.integers(0, 256, shape, dtype=np.uint8))
    out = tmp_path / "classes.json"
    code = cli.main(["classify", *paths, "--top-k", "3", "--json", str(out), "--checkpoint", checkpoint_arg])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(out.read_text())
    assert [r["image"] for r in results] == paths
    for r in results:
        probs = [p for _, p in r["labels"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)


def test_classify_unreadable_image(tmp_path, cache, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 10)
    assert cli.main(["classify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jpg" in err and err.count("\n") == 1


def test_demo_runs_the_shipped_model_offline(tmp_path, cache, capsys):
    """The README's first command: the shipped model beats zero flow on a known motion."""
    import re

    code = cli.main(["demo", "-o", str(tmp_path / "demo")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "small flow model shipped with the package" in captured.err
    found = re.search(r"end-point error ([\d.]+) px, against ([\d.]+) px for zero flow", captured.out)
    assert found, captured.out
    error, baseline = map(float, found.groups())
    assert error < 0.6 * baseline
    for name in ("frame1.png", "frame2.png", "flow.png", "true_flow.png", "flow.flo"):
        assert (tmp_path / "demo" / name).is_file()


def test_progress_bars_only_on_a_terminal(small_flow, tmp_path, cache, monkeypatch, capsys):
    """Into a log (stderr not a terminal) `perceiver flow` draws no bar, as training does."""
    pytest.importorskip("tqdm")
    from perceiver import _progress

    a, b = _frames(tmp_path)
    assert cli.main(["flow", a, b, "-o", str(tmp_path / "f.png"), "--checkpoint", str(small_flow)]) == 0
    err = capsys.readouterr().err
    assert "flow tiles" not in err and "\r" not in err

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert _progress.shown(True) and not _progress.shown(False)
    assert list(_progress.track(range(3), 3, "flow tiles", True)) == [0, 1, 2]
    assert "flow tiles" in sys.stderr.getvalue()


class _Fetched(Exception):
    pass


def test_downloads_draw_no_bar_into_a_log(cache, monkeypatch):
    from perceiver.tasks import flow as flow_lib

    asked = []

    def fetch(name, cache_dir=None, progress=True, **kwargs):
        asked.append(progress)
        raise _Fetched

    monkeypatch.setattr(hub, "fetch", fetch)
    for call in (
        lambda: cli.main(["fetch", "flow"]),
        lambda: models.pretrained("flow"),
        lambda: flow_lib.OpticalFlow.from_pretrained("flow"),
    ):
        with pytest.raises(_Fetched):
            call()
    assert asked == [False, False, False]


def test_flow_defaults_to_published_model_when_cached(tmp_path, cache, monkeypatch):
    assert cli.flow._default_flow_source(None).endswith("flow_small.pystate")
    (cache / hub.get("flow").filename).write_bytes(b"")
    assert cli.flow._default_flow_source(None) == "flow"


def test_train_subcommand_is_wired(capsys):
    try:
        code = cli.main(["train", "--help"])
    except SystemExit as e:  # argparse's --help exits
        code = e.code
    assert code == 0
    assert "--config" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Hostile input, output paths, Ctrl-C
# ---------------------------------------------------------------------------


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the arguments were checked")


@pytest.fixture
def no_models(monkeypatch):
    """Every task's model loader fails the test: checks must come before them."""
    from perceiver.tasks import imagenet, text, video

    from perceiver.tasks import text_classification

    monkeypatch.setattr(cli.flow, "_flow_estimator", _no_model)
    for task in (
        video.VideoAutoencoder,
        text.MaskedLanguageModel,
        imagenet.ImageClassifier,
        text_classification.TextClassifier,
    ):
        monkeypatch.setattr(task, "from_pretrained", _no_model)


def _one_error_line(capsys, expected):
    err = capsys.readouterr().err
    assert err.startswith("perceiver: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    return err


def _inputs(tmp_path):
    """a.png, b.png and a GIF clip in tmp_path; returns their paths."""
    from perceiver import media

    a, b = _frames(tmp_path)
    media.write_video(tmp_path / "in.gif", np.zeros((2, 16, 16, 3), np.uint8), 10)
    return a, b, str(tmp_path / "in.gif")


BAD_OUTPUTS = {
    "flow-extension": (lambda d, a, b, v: ["flow", a, b, "-o", f"{d}/f.txt"], "'.txt'"),
    "flow-directory": (lambda d, a, b, v: ["flow", a, b, "-o", d], "is a directory"),
    "flo-no-folder": (
        lambda d, a, b, v: ["flow", a, b, "-o", f"{d}/f.png", "--flo", f"{d}/no/f.flo"],
        "there is no folder",
    ),
    "flow-same-file": (
        lambda d, a, b, v: ["flow", a, b, "-o", f"{d}/f.png", "--flo", f"{d}/./f.png"],
        "-o and --flo both name",
    ),
    "video-extension": (lambda d, a, b, v: ["autoencode", v, "-o", f"{d}/o.webm"], "got '.webm'"),
    "labels-directory": (
        lambda d, a, b, v: ["autoencode", v, "-o", f"{d}/o.gif", "--labels-out", d],
        "--labels-out",
    ),
    "wav-no-folder": (
        lambda d, a, b, v: ["autoencode", v, "-o", f"{d}/o.gif", "--audio-out", f"{d}/no/o.wav"],
        "there is no folder",
    ),
    "fill-json": (lambda d, a, b, v: ["fill-mask", "a__", "--json", f"{d}/no/o.json"], "--json"),
    "classify-json": (lambda d, a, b, v: ["classify", a, "--json", d], "is a directory"),
    "classify-text-json": (
        lambda d, a, b, v: ["classify-text", "hi", "--json", f"{d}/no/o.json", "--checkpoint", a],
        "--json",
    ),
    "demo-file": (lambda d, a, b, v: ["demo", "-o", a], "is not a folder"),
    "demo-under-file": (lambda d, a, b, v: ["demo", "-o", f"{a}/sub"], "cannot make it"),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_outputs_are_checked_before_computing(tmp_path, cache, no_models, capsys, case):
    argv, expected = BAD_OUTPUTS[case]
    inputs = _inputs(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert cli.main(argv(str(tmp_path), *inputs)) == 2
    _one_error_line(capsys, expected)
    assert sorted(tmp_path.rglob("*")) == before


def test_output_folder_must_be_writable(tmp_path, cache, no_models, monkeypatch, capsys):
    a, b, _ = _inputs(tmp_path)
    # As root every folder is writable; pretend this one is not.
    monkeypatch.setattr("os.access", lambda path, mode: path != str(tmp_path))
    assert cli.main(["flow", a, b, "-o", str(tmp_path / "f.png")]) == 2
    _one_error_line(capsys, "is not writable")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["autoencode", "{v}", "-o", "{d}/o.gif", "--top-k", "0"], "--top-k must be >= 1; got 0"),
        (["autoencode", "{v}", "-o", "{d}/o.gif", "--max-frames", "-1"], "--max-frames must be >= 1"),
        (["autoencode", "{v}", "-o", "{d}/o.gif", "--chunk-size", "0"], "--chunk-size must be >= 2"),
        (["classify", "{a}", "--top-k", "-3"], "--top-k must be >= 1; got -3"),
        (["classify", "{d}/bomb.png"], "claims 10,000,000,000 pixels"),
        (["flow", "{d}/bomb.png", "{a}", "-o", "{d}/f.png"], "bomb.png"),
        (["autoencode", "{d}/silent.mp4", "-o", "{d}/o.gif"], "no video stream"),
        (["fill-mask", ""], "no '_' placeholder"),
        (["flow", "{a}", "{a}", "-o", "{d}/f.png", "--max-flow", "0"], "--max-flow must be a positive"),
        (["flow", "{a}", "{a}", "-o", "{d}/f.png", "--max-flow", "nan"], "--max-flow must be a positive"),
        (["classify-text", "hi"], "classify-text needs --checkpoint FILE"),
        (["classify-text", "hi", "--checkpoint", "{d}/none.pystate"], "no such checkpoint file"),
        (["classify-text", "hi", "--checkpoint", "{a}", "--top-k", "0"], "--top-k must be >= 1"),
    ],
)
def test_hostile_input_is_one_line_before_any_model(
    tmp_path, cache, no_models, capsys, argv, expected
):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    a, _, v = _inputs(tmp_path)
    # A PNG that claims 100000 x 100000 pixels and holds none.
    (tmp_path / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    if "silent.mp4" in argv[1]:
        av = pytest.importorskip("av")
        with av.open(str(tmp_path / "silent.mp4"), "w") as container:
            sound = container.add_stream("aac", rate=8000, layout="mono")
            samples = np.zeros((1, 2048), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, 0
            container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    argv = [x.format(d=tmp_path, a=a, v=v) for x in argv]
    assert cli.main(argv) == 2
    _one_error_line(capsys, expected)


class _LoudAutoencoder:
    """Stands in for the video model: returns the clip, its audio three times too loud."""

    image_size = 16
    audio_samples_per_frame = 320  # 25 fps x 320 = 8000 Hz, a rate AAC codes.

    def __call__(self, frames, audio, top_k, progress):
        from perceiver.tasks import video as video_lib

        return video_lib.VideoReconstruction(
            video=frames.astype(np.float32) / 255.0,
            audio=3.0 * audio,
            labels=[[("loud", 1.0)]],
            label_probabilities=np.ones((1, 1), np.float32),
            clip_starts=np.array([0]),
        )


def test_autoencode_clips_audio_beyond_one_for_the_video_too(tmp_path, cache, monkeypatch, capsys):
    pytest.importorskip("av")
    from perceiver import media
    from perceiver.tasks import video as video_lib

    monkeypatch.setattr(
        video_lib.VideoAutoencoder, "from_pretrained", lambda *args, **kwargs: _LoudAutoencoder()
    )
    (tmp_path / "fake.pystate").write_bytes(b"\x80\x04}.")  # A pickle: the model is stubbed.
    tone = 0.5 * np.sin(2 * np.pi * 200 * np.arange(4000) / 8000)[:, None]
    media.write_video(tmp_path / "in.mp4", np.zeros((12, 16, 16, 3), np.uint8), 25, tone, 8000)
    out, wav = tmp_path / "out.mp4", tmp_path / "out.wav"
    code = cli.main([
        "autoencode", str(tmp_path / "in.mp4"), "-o", str(out), "--audio-out", str(wav),
        "--checkpoint", str(tmp_path / "fake.pystate"),
    ])
    assert code == 0, capsys.readouterr().err
    _, _, sound, rate = media.read_video(out)
    assert rate == 8000 and np.abs(sound).max() > 0.9  # Clipped at full scale, not refused.
    saved, _ = media.read_wav(wav)
    assert saved.min() >= -1.0 and saved.max() > 0.99


def _fake_flow(monkeypatch, flow_fn):
    monkeypatch.setattr(cli.flow, "_flow_estimator", lambda *args: flow_fn)


def test_a_failed_write_leaves_no_partial_output(tmp_path, cache, monkeypatch, capsys):
    from perceiver.tasks import flow as flow_lib

    a, b = _frames(tmp_path)
    _fake_flow(monkeypatch, lambda x, y, **options: np.zeros(x.shape[:2] + (2,), np.float32))

    def full_disk(path, flow):
        with open(path, "wb") as f:
            f.write(b"PIEH")
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(flow_lib, "write_flo", full_disk)
    (tmp_path / "f.png").write_bytes(b"the previous result")
    code = cli.main(["flow", a, b, "-o", str(tmp_path / "f.png"), "--flo", str(tmp_path / "f.flo")])
    assert code == 2
    err = _one_error_line(capsys, "No space left on device")
    assert str(tmp_path / "f.flo") in err and ".part" not in err
    # Neither output is left half-done, and the old file is untouched.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "f.png"]
    assert (tmp_path / "f.png").read_bytes() == b"the previous result"


@pytest.mark.parametrize("when", ["computing", "writing"])
def test_ctrl_c_is_one_line_and_status_130(tmp_path, cache, monkeypatch, capsys, when):
    from perceiver.tasks import flow as flow_lib

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    a, b = _frames(tmp_path)
    if when == "computing":
        _fake_flow(monkeypatch, interrupt)
    else:
        _fake_flow(monkeypatch, lambda x, y, **options: np.zeros(x.shape[:2] + (2,), np.float32))
        monkeypatch.setattr(flow_lib, "write_flo", interrupt)
    code = cli.main(["flow", a, b, "-o", str(tmp_path / "f.png"), "--flo", str(tmp_path / "f.flo")])
    assert code == 130
    assert capsys.readouterr().err == "perceiver: interrupted (no output written)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_ctrl_c_in_train_is_status_130(monkeypatch, capsys):
    from perceiver.train import main as train_main

    def interrupt(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_main, "main", interrupt)
    assert cli.main(["train", "--config", "flow"]) == 130
    assert capsys.readouterr().err == "perceiver: interrupted (no output written)\n"


def test_plot_is_a_top_level_command(tmp_path, capsys):
    # `perceiver plot WORKDIR` reaches the training plotter, which says what it lacks.
    assert cli.main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics" in err[0], err


def test_version_names_the_package_and_its_libraries(capsys):
    import importlib.metadata

    import perceiver

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    said = capsys.readouterr().out.strip()
    assert said.startswith(f"perceiver-io-jax {perceiver.__version__} ")
    assert f"jax {importlib.metadata.version('jax')}" in said
