"""The `perceiver` command line, offline: the cache is filled by the tests."""

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


def test_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in hub.CHECKPOINTS:
        assert name in out


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
    assert "mismatched perceiver_encoder/~/trainable_position_encoding/pos_embs" in err


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
