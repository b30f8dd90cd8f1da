"""Hostile and damaged checkpoints: refused cleanly, never a crash, a leak or a hang.

The loads of crafted files and of fuzz cases run in a subprocess
(`hostile_checkpoints.py`), so that a segfault fails these tests rather than
ending the test run.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import hostile_checkpoints as hostile
import reference_fixtures as ref
from perceiver import checkpoint, safe_unpickle
from perceiver.checkpoint import CheckpointError

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
MAX_SECONDS = 5.0  # For any one file, on a 2-core machine.
MAX_MESSAGE = 400  # Characters of an error message, whatever the file holds.


def _run(*args, timeout=300) -> dict:
    """Runs hostile_checkpoints.py in a fresh interpreter; its outcomes by case."""
    proc = subprocess.run(
        [sys.executable, os.path.join(TESTS, "hostile_checkpoints.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=TESTS,
    )
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["?"]
        pytest.fail(f"loading crashed the interpreter (exit {proc.returncode}) on case {last[0]}")
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def hostile_outcomes():
    return _run("hostile")


@pytest.mark.parametrize("name", sorted(hostile.hostile_files()))
def test_hostile_file_is_refused(hostile_outcomes, name):
    result = hostile_outcomes[name]
    assert result["result"] == "refused", result
    assert result["detail"].startswith("hostile.pystate"), result  # Names the file.
    assert result["length"] <= MAX_MESSAGE, result
    assert result["seconds"] < MAX_SECONDS, result


def test_hostile_corpus_is_not_stale():
    # Every case must still reach the reader's checks: a corpus file that no
    # longer parses as intended would be refused for the wrong reason.
    wanted = ["frombuffer_dtype_subarray", "scalar_dtype_subarray", "frombuffer_shape_past_buffer",
              "colliding_int_keys", "state_is_an_array", "os_system"]
    files = hostile.hostile_files()
    reasons = {name: _reason(files[name]()) for name in wanted}
    assert "non-standard state" in reasons["frombuffer_dtype_subarray"]
    assert "non-standard state" in reasons["scalar_dtype_subarray"]
    assert "needs 4194304 bytes; the file gives 4" in reasons["frombuffer_shape_past_buffer"]
    assert "only str keys" in reasons["colliding_int_keys"]
    assert "state must be a dict" in reasons["state_is_an_array"]
    assert "os.system" in reasons["os_system"]


def _reason(data: bytes) -> str:
    with pytest.raises(CheckpointError) as info:
        checkpoint.loads(data, source="x")
    return str(info.value)


@pytest.mark.slow  # tests/checkpoint/test_checkpoint_fuzz.py mutates DeepMind pickles by default
@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_checkpoints_load_or_are_refused(seed):
    # Mutants of the six reference checkpoints and random opcode streams.
    outcomes = _run("fuzz", "1500", str(seed))
    assert len(outcomes) == 1500
    bad = {k: v for k, v in outcomes.items() if v["result"] not in ("tree", "refused")}
    assert not bad, list(bad.items())[:3]
    assert max(v["seconds"] for v in outcomes.values()) < MAX_SECONDS
    assert max(v["length"] for v in outcomes.values()) <= MAX_MESSAGE
    results = [v["result"] for v in outcomes.values()]
    assert results.count("refused") > 100 and results.count("tree") > 10  # Both paths exercised.


@pytest.mark.slow
def test_many_more_fuzzed_checkpoints():
    outcomes = _run("fuzz", "30000", "7", timeout=3000)
    bad = {k: v for k, v in outcomes.items() if v["result"] not in ("tree", "refused")}
    assert not bad, list(bad.items())[:3]


# ---------------------------------------------------------------------------
# What a load returns
# ---------------------------------------------------------------------------


def test_loaded_arrays_are_writable_and_independent():
    shared = np.arange(4, dtype=np.float32)
    tree = {"a": {"w": shared, "v": shared}, "b": {"w": shared}}
    for protocol in (2, 4, 5):
        params, _ = checkpoint.loads(pickle.dumps(tree, protocol=protocol))
        params["a"]["w"] += 10  # An ordinary in-place update.
        np.testing.assert_array_equal(params["a"]["v"], np.arange(4))
        np.testing.assert_array_equal(params["b"]["w"], np.arange(4))
        np.testing.assert_array_equal(params["a"]["w"], np.arange(4) + 10)


def test_loaded_arrays_own_exactly_their_bytes():
    params, state = checkpoint.load(ref.checkpoint_path("imagenet_conv"))
    for tree in (params, state):
        for module, leaves in tree.items():
            for name, array in leaves.items():
                assert hostile._check_tree({module: {name: array}}) == ""
                assert array.flags.writeable, (module, name)


def test_buffer_given_twice_is_copied():
    buf = hostile.ba(hostile.f4([1, 2])) + pickle.MEMOIZE
    dt = hostile.dtype("f4", hostile.std_dtype_state())
    first = hostile.frombuffer(buf, dt, hostile.tup(hostile.i(2)))
    again = hostile.frombuffer(pickle.BINGET + b"\x00", hostile.dtype("f4"), hostile.tup(hostile.i(2)))
    data = (
        pickle.PROTO + b"\x05" + pickle.EMPTY_DICT + hostile.s("m") + pickle.EMPTY_DICT
        + pickle.MARK + hostile.s("a") + first + hostile.s("b") + again + pickle.SETITEMS
        + pickle.SETITEM + pickle.STOP
    )
    params, _ = checkpoint.loads(data)
    params["m"]["a"][0] = 7
    assert params["m"]["b"][0] == 1


def test_null_state_is_empty():
    params, state = checkpoint.loads(pickle.dumps({"params": {"m": {"w": np.ones(2)}}, "state": None}))
    assert state == {} and list(params) == ["m"]


# ---------------------------------------------------------------------------
# Non-finite parameters
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_parameters_are_named(tmp_path, bad):
    params = {"enc": {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)},
              "dec": {"w": np.ones(4, np.float64)}}
    params["dec"]["w"][2] = bad
    path = tmp_path / "diverged.pystate"
    checkpoint.save(path, params)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert str(path) in message and "params['dec']['w'] (1 of 4)" in message
    assert "enc" not in message and "allow_nonfinite=True" in message
    loaded, _ = checkpoint.load(path, allow_nonfinite=True)
    assert loaded["dec"]["w"][2] == bad or np.isnan(loaded["dec"]["w"][2])


def test_nonfinite_state_and_bfloat16_are_found():
    import ml_dtypes

    params = {"m": {"w": np.array([1, np.nan], ml_dtypes.bfloat16)}}
    state = {"bn": {"mean": np.array([np.inf], np.float32), "count": np.array(3, np.int32)}}
    with pytest.raises(CheckpointError, match=r"2 arrays: params\['m'\]\['w'\].*state\['bn'\]\['mean'\]"):
        checkpoint.loads(checkpoint.dumps(params, state))


def test_many_nonfinite_arrays_keep_the_message_short():
    params = {f"layer_{k}": {"w": np.full(3, np.nan, np.float32)} for k in range(500)}
    with pytest.raises(CheckpointError) as info:
        checkpoint.loads(checkpoint.dumps(params))
    assert "500 arrays" in str(info.value) and "and 495 more" in str(info.value)
    assert len(str(info.value)) < 600


# ---------------------------------------------------------------------------
# Differences and the reader's own limits
# ---------------------------------------------------------------------------


def test_differences_are_counted_and_listed_in_full():
    expected = {f"layer_{k}": {"w": np.zeros((k + 1,))} for k in range(400)}
    found = {f"layer_{k}": {"w": np.zeros((k + 2,))} for k in range(300)}
    found["extra"] = {"w": np.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        checkpoint.check_tree(expected, found)
    message, differences = str(info.value), info.value.differences
    assert len(differences) == 401
    assert "401 differences: 300 mismatched, 100 missing, 1 unexpected" in message
    assert "and 392 more" in message and len(message) < 2000  # 4 of each kind shown.
    assert differences == checkpoint.tree_differences(expected, found)


def test_short_clips_what_the_file_says():
    assert safe_unpickle.short("x" * 10_000).endswith("(str clipped)")
    assert len(safe_unpickle.short("x" * 10_000)) < 150
    assert safe_unpickle.short(bytearray(b"ab")) == "b'ab'"
    assert safe_unpickle.short(10 ** 1000) == "an int of 3322 bits"
    assert safe_unpickle.short(((),)) == "a tuple"


def test_cli_refuses_a_hostile_checkpoint_in_one_line(tmp_path):
    # The whole path a user takes: `perceiver flow --checkpoint FILE`; this
    # file crashed the process before the reader was rewritten.
    from PIL import Image

    evil = tmp_path / "flow_evil.pystate"
    evil.write_bytes(hostile.hostile_files()["frombuffer_bytearray_subarray"]())
    frame = np.zeros((8, 8, 3), np.uint8)
    for name in ("a.png", "b.png"):
        Image.fromarray(frame).save(tmp_path / name)
    proc = subprocess.run(
        [sys.executable, "-m", "perceiver.cli", "flow", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
         "-o", str(tmp_path / "flow.png"), "--checkpoint", str(evil)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-standard state" in lines[0] and str(evil) in lines[0], lines
    assert not (tmp_path / "flow.png").exists()
