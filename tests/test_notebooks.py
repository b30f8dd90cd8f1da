"""Every notebook in colabs/ runs top to bottom, offline.

Each test writes random weights of a small model, in the published format and
under the published file name, into a temporary checkpoint cache, points the
notebook's parameter cell at that small model and at local input files, and
checks what the notebook shows.
"""

import os
import pathlib

import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint, hub, media, models

pytest.importorskip("nbclient")
from notebook_runner import outputs_of, run_notebook  # noqa: E402

COLABS = pathlib.Path(__file__).parent.parent / "colabs"


def _random_checkpoint(cache: pathlib.Path, name: str, factory: str, sizes: dict) -> None:
    """Random weights of `factory(**sizes)` saved as the published file `name`."""
    params, state = models.parameter_shapes(factory, **sizes)
    rng = np.random.default_rng(0)

    def fill(s):
        if np.issubdtype(s.dtype, np.integer):
            return np.zeros(s.shape, s.dtype)
        return (0.1 * rng.standard_normal(s.shape)).astype(s.dtype)

    params = jax.tree_util.tree_map(fill, params)
    state = jax.tree_util.tree_map(fill, state)
    checkpoint.save(cache / hub.get(name).filename, params, state)


def _offline(tmp_path, cache):
    """The notebook's work folder, conftest's `offline` cache and the environment naming it."""
    env = {"PERCEIVER_CACHE": str(cache), "PERCEIVER_BASE_URL": os.environ["PERCEIVER_BASE_URL"]}
    return tmp_path, cache, env


def _texts(nb):
    return "".join(o.get("text", "") for o in outputs_of(nb, "stream"))


def _images(nb):
    return [o for o in outputs_of(nb, "display_data") if "image/png" in o.get("data", {})]


def test_optical_flow_notebook(offline, tmp_path):
    workdir, cache, env = _offline(tmp_path, offline)
    sizes = dict(ref.SMALL_FACTORIES["flow"][1])
    _random_checkpoint(cache, "flow", "optical_flow", sizes)
    rng = np.random.default_rng(1)
    for name in ("f1.png", "f2.png"):
        media.write_image(workdir / name, rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    nb = run_notebook(
        COLABS / "optical_flow.ipynb",
        workdir,
        dict(
            MODEL_SIZES={k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
            MIN_OVERLAP=4,
            FRAME1=str(workdir / "f1.png"),
            FRAME2=str(workdir / "f2.png"),
        ),
        env,
    )
    text = _texts(nb)
    assert "frames: (20, 30, 3) (20, 30, 3)" in text
    assert "flow (20, 30, 2)" in text
    assert len(_images(nb)) == 2
    from perceiver.tasks import flow as flow_lib

    assert flow_lib.read_flo(workdir / "flow.flo").shape == (20, 30, 2)


def _small_sizes(model):
    sizes = dict(ref.SMALL_FACTORIES[model][1])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}


def test_video_autoencoding_notebook(offline, tmp_path):
    workdir, cache, env = _offline(tmp_path, offline)
    sizes = _small_sizes("video_autoencoding")
    _random_checkpoint(cache, "video_autoencoding", "video_autoencoder", sizes)
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (6, 20, 24, 3), dtype=np.uint8)
    t = np.arange(8000) / 8000.0
    audio = (0.5 * np.sin(2 * np.pi * 440 * t))[:, None].astype(np.float32)
    media.write_video(workdir / "clip.mp4", frames, 25, audio=audio, sample_rate=8000)
    nb = run_notebook(
        COLABS / "video_autoencoding.ipynb",
        workdir,
        dict(MODEL_SIZES=sizes, CHUNK_SIZE=100, VIDEO=str(workdir / "clip.mp4"), MAX_FRAMES=6),
        env,
    )
    text = _texts(nb)
    assert "input: (6, 16, 16, 3) frames, (384,) audio samples" in text
    assert "image PSNR" in text and "audio PSNR" in text
    assert "clip at frame 4:" in text
    assert len(_images(nb)) == 2
    assert (workdir / "reconstruction.gif").exists() and (workdir / "reconstruction.wav").exists()


@pytest.mark.slow  # the same notebook as above, with a synthetic clip
def test_video_autoencoding_notebook_without_a_file(offline, tmp_path):
    workdir, cache, env = _offline(tmp_path, offline)
    sizes = _small_sizes("video_autoencoding")
    _random_checkpoint(cache, "video_autoencoding", "video_autoencoder", sizes)
    nb = run_notebook(
        COLABS / "video_autoencoding.ipynb",
        workdir,
        dict(MODEL_SIZES=sizes, VIDEO=str(workdir / "absent.mp4"), MAX_FRAMES=4),
        env,
    )
    assert "input: (4, 16, 16, 3) frames, (256,) audio samples" in _texts(nb)


def test_masked_language_modelling_notebook(offline, tmp_path):
    workdir, cache, env = _offline(tmp_path, offline)
    _random_checkpoint(cache, "mlm", "masked_language_model", _small_sizes("mlm"))
    nb = run_notebook(
        COLABS / "masked_language_modelling.ipynb",
        workdir,
        dict(MODEL_SIZES=_small_sizes("mlm"), TEXTS=["ab___cd", "____ at the start"]),
        env,
    )
    text = _texts(nb)
    assert text.count("completed:") == 2
    assert "input:     ab___cd" in text
    assert "bytes 2-5:" in text and "bytes 0-4:" in text


@pytest.mark.parametrize(
    "model", ["imagenet_conv", pytest.param("imagenet_learned", marks=pytest.mark.slow)]
)
def test_imagenet_classification_notebook(offline, model, tmp_path):
    workdir, cache, env = _offline(tmp_path, offline)
    sizes = _small_sizes(model)
    variant = sizes.pop("variant")
    _random_checkpoint(cache, model, "imagenet_classifier", dict(sizes, variant=variant))
    rng = np.random.default_rng(3)
    media.write_image(workdir / "photo.jpg", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    nb = run_notebook(
        COLABS / "imagenet_classification.ipynb",
        workdir,
        dict(CHECKPOINT=model, MODEL_SIZES=sizes, IMAGE=str(workdir / "photo.jpg"), TOP_K=3),
        env,
    )
    text = _texts(nb)
    assert "Top 3 labels:" in text
    assert len(text.split("Top 3 labels:")[1].strip().splitlines()) == 3
    assert len(_images(nb)) == 1


def test_notebooks_have_no_model_code():
    """Notebooks call the library; they build no Haiku modules themselves."""
    import nbformat

    for path in sorted(COLABS.glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        for forbidden in ("hk.", "haiku", "perceiver.perceiver", "io_processors", "pickle"):
            assert forbidden not in code, (path.name, forbidden)


def _install_cell(path):
    """The source of a notebook's install cell: the code cell before the parameters."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[1].get("metadata", {}).get("tags", []), path.name
    return code[0].source


def _run_install_cell(source, monkeypatch, installed=False, **overrides):
    """Runs an install cell as in Colab (no package installed); returns the pip commands."""
    import importlib.metadata
    import subprocess
    import sys

    calls = []
    monkeypatch.setitem(sys.modules, "google.colab", object())
    monkeypatch.setattr(subprocess, "check_call", lambda argv: calls.append(argv))

    def distribution(name):
        if installed and name == "perceiver-io-jax":
            return object()
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    for name, value in overrides.items():  # as a user edits the cell
        source = source.replace(f'{name} = ""', f"{name} = {value!r}")
    exec(compile(source, "install cell", "exec"), {})
    return calls


@pytest.mark.parametrize("path", sorted(COLABS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_install_cell_installs_this_project_never_pypis_perceiver(path, tmp_path, monkeypatch):
    source = _install_cell(path)
    # A copy of the repository beside the notebook (e.g. after `git clone`).
    copy = tmp_path / "perceiver"
    (copy / "perceiver").mkdir(parents=True)
    (copy / "setup.py").write_text("")
    (copy / "perceiver" / "models.py").write_text("")
    monkeypatch.chdir(tmp_path)
    (local,) = _run_install_cell(source, monkeypatch)
    assert local[-1] == f"perceiver-io-jax[media,notebook] @ {copy.resolve().as_uri()}"
    url = "git+https://example.org/owner/repo.git"
    (remote,) = _run_install_cell(source, monkeypatch, PERCEIVER_SOURCE=url)
    assert remote[-1] == f"perceiver-io-jax[media,notebook] @ {url}"
    assert local[:-1] == remote[:-1] and "install" in local
    assert _run_install_cell(source, monkeypatch, installed=True) == []  # already there
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere" / "deeper")  # no copy here nor above
    with pytest.raises(RuntimeError, match="Set PERCEIVER_SOURCE"):
        _run_install_cell(source, monkeypatch)


def test_attention_maps_notebook(offline, tmp_path):
    workdir, cache, env = _offline(tmp_path, offline)
    imagenet_sizes = _small_sizes("imagenet_conv")
    variant = imagenet_sizes.pop("variant")
    _random_checkpoint(cache, "imagenet_conv", "imagenet_classifier", dict(imagenet_sizes, variant=variant))
    flow_sizes = _small_sizes("flow")
    _random_checkpoint(cache, "flow", "optical_flow", flow_sizes)
    rng = np.random.default_rng(4)
    for name in ("photo.png", "f1.png", "f2.png"):
        media.write_image(workdir / name, rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    nb = run_notebook(
        COLABS / "attention_maps.ipynb",
        workdir,
        dict(
            IMAGENET_SIZES=imagenet_sizes, IMAGE=str(workdir / "photo.png"), LATENTS=6,
            FLOW_SIZES=flow_sizes, FRAME1=str(workdir / "f1.png"), FRAME2=str(workdir / "f2.png"),
        ),
        env,
    )
    text = _texts(nb)
    # conv stem: 16x16 pixels -> a 4x4 grid of keys for the 16 latents.
    assert "cross-attention (1, 1, 16, 16) over a 4x4 grid" in text
    assert "tile 12x16; decoder weights (1, 1, 3, 32) for pixels [(3, 4), (6, 8), (9, 12)]" in text
    assert text.count("  flow at (") == 3
    assert len(_images(nb)) == 2
