"""benchmarks/train_memory.py: the largest batch under a budget, searched over compiled plans."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
train_memory = pytest.importorskip("train_memory")


def _fake_plans(monkeypatch, total):
    compiled = []

    def step_bytes(name, factory, sizes, batch, mode):
        compiled.append(batch)
        return {"batch": batch, "total": total(batch), "temp": 0, "arguments": 0, "params": 0, "compile_s": 0.0}

    monkeypatch.setattr(train_memory, "step_bytes", step_bytes)
    return compiled


@pytest.mark.parametrize("total", [
    lambda b: 100 + 10 * b,  # affine: the probes' line is exact
    lambda b: 100 + 10 * b + b * b // 50,  # convex: the probes' line overshoots
    lambda b: 100 + 30 * b - min(b, 20) * 15,  # cheaper first examples: it undershoots
    lambda b: max(400, 100 + 12 * b),  # flat at small batches (buffers reused): probes grow
])
def test_the_largest_fitting_batch_is_found_and_its_neighbour_fails(monkeypatch, total):
    budget = 1000
    compiled = _fake_plans(monkeypatch, total)
    out = train_memory.largest_batch("m", "f", {}, {}, budget, (2, 4), lambda line: None, max_compiles=12)
    want = max(b for b in range(1, 10_000) if total(b) <= budget)  # by brute force
    assert out["status"] == "ok" and out["largest"] == want and out["plan"]["total"] <= budget
    assert want + 1 in compiled and total(want + 1) > budget
    assert len(compiled) <= 12


def test_a_budget_below_batch_one_and_a_flat_plan_say_so(monkeypatch):
    _fake_plans(monkeypatch, lambda b: 500 + 100 * b)
    out = train_memory.largest_batch("m", "f", {}, {}, 550, (1, 2), lambda line: None)
    assert out["largest"] == 0 and out["status"] == "batch 1 does not fit"
    _fake_plans(monkeypatch, lambda b: 500)
    out = train_memory.largest_batch("m", "f", {}, {}, 550, (1, 2), lambda line: None)
    assert out["status"] == "the plan does not grow with the batch"
