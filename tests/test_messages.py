"""Messages in the reader's words: a wrong path is named as what it is, everywhere one is given.

Each kind of wrong path (nothing there, a folder, an empty file, a text, a
checkpoint's description, an image where a checkpoint belongs, a checkpoint
where an image belongs) through every command that takes one (exit 2, one
line, no traceback) and every Python loader (the exception's type and
message); the names `perceiver list` shows, accepted everywhere; one spelling
of install hints; and one default flow model for Python and the CLI.
All of it fails before any model is built, except the one test that loads
the shipped model.
"""

import ast
import functools
import json
import pathlib
import pickle
import re
import struct
import warnings
import zlib

import numpy as np
import pytest

from perceiver import _factories, checkpoint, hub, loading, media
from perceiver.tasks import flow as flow_lib
from perceiver.tasks import generation, imagenet, text, text_classification, video

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHIPPED_FLOW = ROOT / "perceiver" / "data" / "flow_small.pystate"


def _png(path: pathlib.Path, height: int = 4, width: int = 6) -> str:
    """A small RGB PNG, written chunk by chunk (no image library involved)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(range(3 * width)) for _ in range(height))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return str(path)


def _write(path: pathlib.Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def _folder(path: pathlib.Path) -> str:
    path.mkdir()
    return str(path)


DESCRIPTION = json.dumps({"factory": "optical_flow", "sizes": {"image_shape": [32, 32]}}).encode()

# kind -> (make the path in a folder, what the message must say it is).
WRONG = {
    "missing": (lambda d: str(d / "absent.pystate"), "no such"),
    "folder": (lambda d: _folder(d / "weights"), "is a folder"),
    "empty": (lambda d: _write(d / "empty.pystate", b""), "is an empty file"),
    "text": (lambda d: _write(d / "notes.txt", b"My notes.\nThe model is elsewhere\n"), "is a text file"),
    "description": (lambda d: _write(d / "mine.json", DESCRIPTION), "is a checkpoint description"),
    "image": (lambda d: _png(d / "photo.png"), "is a PNG image"),
}


@pytest.fixture
def no_models(monkeypatch):
    """Every model factory fails the test: these errors must come before any model is built."""

    def stub(builder):
        @functools.wraps(builder)  # Its signature: the factories' sizes and arguments still read.
        def built(*args, **kwargs):
            raise AssertionError("a model was built before the path was checked")

        return built

    for name, builder in list(_factories._BUILDERS.items()):
        monkeypatch.setitem(_factories._BUILDERS, name, stub(builder))


# ---------------------------------------------------------------------------
# A wrong checkpoint path, from Python
# ---------------------------------------------------------------------------

LOADERS = {
    "checkpoint.load": checkpoint.load,
    "loading.fetch": lambda p: loading.fetch(p, progress=False),
    "models.load_for": lambda p: loading.load_for("optical_flow", p),
    "OpticalFlow": lambda p: flow_lib.OpticalFlow.from_pretrained(p, progress=False),
    "ImageClassifier": lambda p: imagenet.ImageClassifier.from_pretrained(p, progress=False),
    "MaskedLanguageModel": lambda p: text.MaskedLanguageModel.from_pretrained(p, progress=False),
    "VideoAutoencoder": lambda p: video.VideoAutoencoder.from_pretrained(p, progress=False),
    "TextClassifier": lambda p: text_classification.TextClassifier.from_pretrained(p, progress=False),
    "TextGenerator": lambda p: generation.TextGenerator.from_pretrained(p, progress=False),
}


@pytest.mark.parametrize("kind", sorted(WRONG))
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_python_loaders_say_what_a_wrong_checkpoint_path_is(tmp_path, offline, no_models, loader, kind):
    make, says = WRONG[kind]
    path = make(tmp_path)
    expected = FileNotFoundError if kind == "missing" else ValueError
    with pytest.raises(expected) as info:
        LOADERS[loader](path)
    message = str(info.value)
    assert path in message and says in message, message
    if kind != "missing":
        assert "expected a checkpoint file" in message, message
        assert isinstance(info.value, checkpoint.CheckpointError)
    assert "\n" not in message and "opcode" not in message and "pickle:" not in message


def test_a_description_names_the_checkpoint_it_describes(no_models):
    description = SHIPPED_FLOW.with_suffix(".json")
    with pytest.raises(checkpoint.CheckpointError) as info:
        flow_lib.OpticalFlow.from_pretrained(str(description))
    assert str(info.value).endswith(f"give the checkpoint it describes, {SHIPPED_FLOW}")


def test_an_unknown_word_lists_every_name(no_models):
    with pytest.raises(ValueError) as info:
        flow_lib.OpticalFlow.from_pretrained("flow_large")
    message = str(info.value)
    assert "unknown checkpoint 'flow_large'" in message
    assert all(name in message for name in [*hub.CHECKPOINTS, *hub.SHIPPED])


def test_damaged_checkpoint_says_so_before_the_pickle_detail(tmp_path):
    data = SHIPPED_FLOW.read_bytes()
    path = tmp_path / "cut.pystate"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(checkpoint.CheckpointError, match=r"^\S+cut\.pystate is a damaged checkpoint: "):
        checkpoint.load(path)


def test_text_that_ends_like_a_pickle_is_still_called_text(tmp_path):
    # Protocol-0 pickles are text ending with '.': such a file is parsed, and named when it fails.
    path = tmp_path / "readme.pystate"
    path.write_text("This is not a checkpoint.")
    with pytest.raises(checkpoint.CheckpointError, match="is a text file, expected a checkpoint"):
        checkpoint.load(path)
    path.write_bytes(pickle.dumps({"m": 1.5}, protocol=0))  # A real protocol-0 pickle...
    with pytest.raises(checkpoint.CheckpointError, match=r"params\['m'\] must be a dict of arrays"):
        checkpoint.load(path)  # ...is read as one, and refused for its content.


@pytest.mark.parametrize(
    "content, says",
    [
        (b"PK\x05\x06" + bytes(18), "is a zip archive"),
        (b"\x93NUMPY\x01\x00" + bytes(8), "is a numpy .npy array"),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "is an HTML page"),
        (b"\x00\x01\x02\x03" * 4, "is not a checkpoint: neither a pickle nor a safetensors file"),
    ],
)
def test_other_kinds_of_file_are_named(tmp_path, content, says):
    path = tmp_path / "model.pystate"
    path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(says)):
        checkpoint.load(path)


# ---------------------------------------------------------------------------
# A wrong path, from the command line
# ---------------------------------------------------------------------------

# command -> argv with {ckpt}, {image}, {video}, {d}; what it needs installed.
COMMANDS = {
    "flow": (["flow", "{image}", "{image}", "-o", "{d}/f.png", "--checkpoint", "{ckpt}"], "PIL"),
    "flow-video": (["flow", "{video}", "-o", "{d}/f.gif", "--checkpoint", "{ckpt}"], "PIL"),
    "demo": (["demo", "-o", "{d}/demo", "--checkpoint", "{ckpt}"], None),
    "autoencode": (["autoencode", "{video}", "-o", "{d}/o.gif", "--checkpoint", "{ckpt}"], "PIL"),
    "fill-mask": (["fill-mask", "Paris is the capital of _____.", "--checkpoint", "{ckpt}"], None),
    "classify": (["classify", "{image}", "--checkpoint", "{ckpt}"], "PIL"),
    "classify-text": (["classify-text", "some text", "--checkpoint", "{ckpt}"], None),
    "generate": (["generate", "Once upon", "--checkpoint", "{ckpt}"], None),
    "attention": (["attention", "{image}", "-o", "{d}/maps.png", "--checkpoint", "{ckpt}"], "matplotlib"),
    "check": (["check", "{ckpt}"], None),
    "fetch": (["fetch", "{ckpt}"], None),
}


def _inputs(tmp_path):
    image = _png(tmp_path / "frame.png")
    clip = tmp_path / "clip.gif"
    try:  # GIFs are written with Pillow; the commands that read one skip without it.
        media.write_video(clip, np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3), 10)
    except ImportError:
        pass
    return image, str(clip)


def _one_error_line(code, err):
    assert code == 2, err
    assert err.startswith("perceiver: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("kind", sorted(WRONG))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_says_what_a_wrong_checkpoint_is(
    tmp_path, offline, no_models, run_cli, command, kind
):
    argv, needs = COMMANDS[command]
    if needs:
        pytest.importorskip(needs)
    image, clip = _inputs(tmp_path)
    make, says = WRONG[kind]
    ckpt = make(tmp_path)
    argv = [a.format(ckpt=ckpt, image=image, video=clip, d=tmp_path) for a in argv]
    err = _one_error_line(*run_cli(*argv)[::2])
    assert ckpt in err and says in err, err
    if kind != "missing":
        assert "expected a checkpoint file" in err, err


# command -> argv with {input} in the place of an image or a video.
MEDIA_COMMANDS = {
    "flow-first": (["flow", "{input}", "{image}", "-o", "{d}/f.png"], "an image"),
    "flow-second": (["flow", "{image}", "{input}", "-o", "{d}/f.png"], "an image"),
    "classify": (["classify", "{image}", "{input}"], "an image"),
    "attention": (["attention", "{input}", "-o", "{d}/maps.png", "--checkpoint", "{ckpt}"], "an image"),
    "autoencode": (["autoencode", "{input}", "-o", "{d}/o.gif"], "a video"),
}
MEDIA_WRONG = {
    "missing": (lambda d: str(d / "absent.png"), "no such"),
    "folder": (lambda d: _folder(d / "photos"), "is a folder"),
    "empty": (lambda d: _write(d / "empty.png", b""), "is an empty file"),
    "text": (lambda d: _write(d / "notes.txt", b"a list of photos\n"), "is a text file"),
    "checkpoint": (lambda d: str(SHIPPED_FLOW), "is a Python pickle"),
    "description": (lambda d: str(SHIPPED_FLOW.with_suffix(".json")), "is a checkpoint description"),
}


@pytest.mark.parametrize("kind", sorted(MEDIA_WRONG))
@pytest.mark.parametrize("command", sorted(MEDIA_COMMANDS))
def test_every_command_says_what_a_wrong_image_or_video_is(
    tmp_path, offline, no_models, run_cli, command, kind
):
    argv, expected = MEDIA_COMMANDS[command]
    pytest.importorskip("matplotlib" if command == "attention" else "PIL")
    image = _png(tmp_path / "frame.png")
    make, says = MEDIA_WRONG[kind]
    given = make(tmp_path)
    argv = [a.format(input=given, image=image, ckpt=SHIPPED_FLOW, d=tmp_path) for a in argv]
    err = _one_error_line(*run_cli(*argv)[::2])
    assert given in err and says in err, err
    if kind != "missing":
        assert f"expected {expected}" in err, err


@pytest.mark.parametrize("kind", ["folder", "text", "checkpoint"])
def test_media_readers_say_what_a_wrong_file_is(tmp_path, kind):
    make, says = MEDIA_WRONG[kind]
    path = make(tmp_path)
    for read, expected in (
        (media.read_image, "expected an image"),
        (media.read_video, "expected a video"),
        (media.read_wav, "expected a WAV audio file"),
    ):
        with pytest.raises(ValueError) as info:
            read(path)
        assert str(info.value).startswith(f"{path} {says}") and expected in str(info.value)


def test_a_forgotten_second_frame_is_named_before_the_output(tmp_path, no_models, run_cli):
    pytest.importorskip("PIL")
    image = _png(tmp_path / "frame.png")
    # -o names a PNG, which a video's flow could not be written to: the frame comes first.
    err = _one_error_line(*run_cli("flow", image, "-o", tmp_path / "f.png")[::2])
    assert f"{image} is a PNG image and no second frame is given" in err
    assert "extension" not in err


# ---------------------------------------------------------------------------
# Every name `perceiver list` shows is a checkpoint name everywhere
# ---------------------------------------------------------------------------


def _listed_names(run_cli):
    code, out, _ = run_cli("list")
    assert code == 0
    # The checkpoints' sections come first; the models without weights (recipes) after this header.
    checkpoints = out.split("\nno published weights:")[0]
    assert checkpoints != out
    # Rows are indented: "  NAME  where  what"; continuation rows start with more spaces.
    return [line.split()[0] for line in checkpoints.splitlines() if re.match(r"  \S", line)]


def test_every_listed_name_is_accepted_and_every_name_is_listed(offline, no_models, run_cli):
    listed = _listed_names(run_cli)
    assert "flow_small" in listed and "flow" in listed
    assert sorted(listed) == sorted(hub.names())
    for name in listed:
        source = loading.resolve(name)  # No ValueError for any of them.
        assert source == name or pathlib.Path(source).is_file()
    # A shipped model is fetched as its file, never downloaded.
    code, out, err = run_cli("fetch", "flow_small")
    assert code == 0, err
    assert out.strip() == str(SHIPPED_FLOW) and pathlib.Path(out.strip()).samefile(SHIPPED_FLOW)


@pytest.mark.parametrize(
    "load",
    [
        lambda: imagenet.ImageClassifier.from_pretrained("flow_small"),
        lambda: text.MaskedLanguageModel.from_pretrained("flow_small"),
        lambda: video.VideoAutoencoder.from_pretrained("flow_small"),
        lambda: imagenet.ImageClassifier.from_pretrained("flow"),
    ],
)
def test_a_name_of_another_task_is_refused_before_any_download(offline, no_models, load):
    with pytest.raises(ValueError, match=r"is a checkpoint of optical_flow, not of \w+; run it with "
                                         r"perceiver.tasks.flow.OpticalFlow"):
        load()


@pytest.mark.slow
def test_check_runs_the_shipped_model_by_name(offline, run_cli):
    code, out, err = run_cli("check", "flow_small")
    assert code == 0, err
    assert f"flow_small: {SHIPPED_FLOW} matches the model" in out


# ---------------------------------------------------------------------------
# Python and the command line agree: the shipped flow model offline
# ---------------------------------------------------------------------------


def test_default_flow_model_offline_is_the_shipped_one_in_python_and_the_cli(offline, capsys):
    from perceiver import cli

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator = flow_lib.OpticalFlow.from_pretrained(progress=False)
    notes = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(notes) == 1 and notes[0].filename == __file__  # Points at the caller.
    note = str(notes[0].message)
    assert "\n" not in note and "flow_small" in note and "perceiver fetch flow" in note
    # The shipped model's sizes, read here from its own description.
    described = json.loads(SHIPPED_FLOW.with_suffix(".json").read_text())
    assert estimator.tile_shape == tuple(described["sizes"]["image_shape"])
    # The command line says the very same line, and picks the same file.
    assert pathlib.Path(cli.flow._default_flow_source(None)).samefile(SHIPPED_FLOW)
    assert capsys.readouterr().err == f"perceiver: {note}.\n"


def test_default_flow_model_is_the_published_one_when_cached(offline, no_models):
    # A damaged file in the published model's place: it is the one used (and refused), unwarned.
    (offline / hub.get("flow").filename).write_text("not the model\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(checkpoint.CheckpointError, match="the cached checkpoint 'flow'"):
            flow_lib.OpticalFlow.from_pretrained(progress=False)


# ---------------------------------------------------------------------------
# One spelling of install hints, with the extras setup.py defines
# ---------------------------------------------------------------------------


def _setup_extras():
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "EXTRAS" for t in node.targets):
            extras = {key.value for key in node.value.keys}
    for node in ast.walk(tree):  # EXTRAS["all"] = ..., EXTRAS["test"] = ...
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            extras.add(node.targets[0].slice.value)
    return extras


def test_every_install_hint_has_one_spelling_and_a_real_extra():
    extras = _setup_extras()
    from perceiver import _messages

    hints = [("_messages.install_hint", _messages.install_hint(extra)) for extra in _messages.EXTRAS]
    for path in sorted((ROOT / "perceiver").rglob("*.py")):
        if path.name == "_messages.py":  # The helper itself; its output is checked above.
            continue
        found = re.findall(r"pip install [^`\"\n]*?\[[^\]\n]*\][^\s`\"]*", path.read_text())
        hints += [(path.name, hint) for hint in found]
    assert hints
    for where, hint in hints:
        match = re.fullmatch(r"pip install 'perceiver-io-jax\[([a-z,]+)\]'", hint)
        assert match, (where, hint)
        assert set(match.group(1).split(",")) <= extras, (where, hint)


def test_a_missing_optional_package_names_its_extra(tmp_path, monkeypatch):
    import sys

    image = _png(tmp_path / "frame.png")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'perceiver-io-jax[media]'")):
        media.read_image(image)
