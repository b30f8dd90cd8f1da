"""Shared pytest set-up: slow tests run only with --runslow; the `folds` spy; `offline`, `run_cli`."""

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def folds(monkeypatch):
    """One bool per chunked decode traced: whether it folded its output layers into the MLP."""
    from perceiver.compute import folding

    seen = []
    original = folding.folds_tail

    def spy(*args):
        result = original(*args)
        seen.append(bool(result))
        return result

    monkeypatch.setattr(folding, "folds_tail", spy)
    return seen


@pytest.fixture
def offline(monkeypatch, tmp_path_factory):
    """An empty checkpoint cache, and any download fails at once (nothing listens on port 9)."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("PERCEIVER_CACHE", str(cache))
    monkeypatch.setenv("PERCEIVER_BASE_URL", "http://127.0.0.1:9")
    return cache


@pytest.fixture
def run_cli(capsys):
    """Runs `perceiver ARGS...` in this process: `run_cli(*args)` -> (exit status, stdout, stderr)."""
    from perceiver import cli

    def run(*args):
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
