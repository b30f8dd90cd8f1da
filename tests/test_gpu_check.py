"""benchmarks/gpu_check.sh runs its whole path on a CPU with --dry-run (tiny sizes)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _dry_run(out: pathlib.Path, *options: str) -> dict:
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", *options],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.md").read_text().startswith("# GPU check: cpu")
    return report


def test_dry_run_checks_outputs_and_times_a_forward_pass_and_a_training_step(tmp_path):
    report = _dry_run(tmp_path, "--only", "flow", "--dtypes", "float32", "--attention", "auto", "--repeats", "1")
    assert report["dry_run"] and report["device"].startswith("cpu")
    (row,) = report["outputs"]
    assert row["model"] == "flow" and row["ok"] and row["highest"] < 1e-4
    assert [(c["kind"], c["dtype"]) for c in report["cases"]] == [("forward", "float32"), ("train", "float32")]
    for case in report["cases"]:
        assert "error" not in case, case
        assert case["step_s"] > 0 and case["flops"] > 0 and case["batch"] == 2


@pytest.mark.slow
def test_the_whole_dry_run_passes(tmp_path):
    report = _dry_run(tmp_path, "--repeats", "1")
    assert len(report["outputs"]) == 6 and all(row["ok"] for row in report["outputs"])
    assert not [c for c in report["cases"] if "error" in c]
    assert len(report["cases"]) == 4 * (6 + 4)  # dtypes x kernels x (forwards + trained models)


def test_an_unknown_model_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path), "--only", "gpt"],
        capture_output=True, text=True,
    )
    assert done.returncode == 2 and "unknown models ['gpt']" in done.stderr
