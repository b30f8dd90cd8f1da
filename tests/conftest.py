"""Shared pytest set-up: slow tests run only with --runslow; the `folds` spy."""

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
