"""Fuzzing every checkpoint reader: each mutant reads or is refused with a CheckpointError.

The mutants (seeded damage to small real files of each format: DeepMind and
plain pickles of every protocol, our safetensors, transformers'
safetensors, `pytorch_model.bin`, `config.json`, descriptions) are made and
read in a worker process under a 2 GiB address-space limit
(`fuzz_worker.py`), so that a segfault, an abort or a hang fails the test
instead of ending the test run. `PERCEIVER_FUZZ_COUNT` changes the default
count; `python tests/fuzz_worker.py campaign --count N` runs without pytest.
"""

import os

import pytest

import fuzz_worker

DEFAULT_COUNT = int(os.environ.get("PERCEIVER_FUZZ_COUNT", "2000"))
SLOW_COUNT = 100_000


def _check(count: int, first_seed: int = 0) -> None:
    results, bases = fuzz_worker.run_jobs(fuzz_worker.jobs_for(count, first_seed=first_seed))
    # Unmutated, every base file must read: else the mutants test only a refusal.
    assert bases and all(outcome == "read" for outcome in bases.values()), bases
    assert len(results) == count
    failures = fuzz_worker.failures(results)
    if failures:
        pytest.fail(fuzz_worker.summary(results), pytrace=False)


def test_every_reader_survives_its_mutants():
    _check(DEFAULT_COUNT)


@pytest.mark.slow
def test_every_reader_survives_many_mutants():
    # Seeds after the default suite's, so that the two runs test different mutants.
    _check(SLOW_COUNT, first_seed=DEFAULT_COUNT)


@pytest.mark.slow  # ~15 s of worker restarts; the default fuzz test above needs the harness working
def test_harness_records_crashes_hangs_and_errors(monkeypatch):
    # A reader that segfaults, raises, ignores the alarm or sleeps past it (by seed):
    # each is recorded against its seed and the jobs after it still run.
    monkeypatch.setenv("PERCEIVER_FUZZ_SELFTEST", "1")
    monkeypatch.setenv("PERCEIVER_FUZZ_SECONDS", "1")
    monkeypatch.setattr(fuzz_worker, "MAX_SECONDS", 1.0)
    jobs = [("selftest", seed) for seed in (0, 1, 2, 3, 4, 0)]
    results, _ = fuzz_worker.run_jobs(jobs, grace=1.0)
    outcomes = [(r["seed"], r["outcome"]) for r in results]
    assert outcomes == [(0, "read"), (1, "crash:SIGSEGV"), (2, "error:KeyError"), (3, "hang"),
                        (4, "timeout"), (0, "read")], outcomes
    assert "reproduce selftest 1" in fuzz_worker.summary(results)
