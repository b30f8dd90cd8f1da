"""Every notebook in colabs/ runs top to bottom, offline.

Each test writes random weights of a small model, in the published format and
under the published file name, into a temporary checkpoint cache, points the
notebook's parameter cell at that small model and at local input files, and
checks what the notebook shows.
"""

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


@pytest.fixture
def offline(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"PERCEIVER_CACHE": str(cache), "PERCEIVER_BASE_URL": "http://127.0.0.1:9"}
    return tmp_path, cache, env


def _texts(nb):
    return "".join(o.get("text", "") for o in outputs_of(nb, "stream"))


def _images(nb):
    return [o for o in outputs_of(nb, "display_data") if "image/png" in o.get("data", {})]


def test_optical_flow_notebook(offline):
    workdir, cache, env = offline
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
