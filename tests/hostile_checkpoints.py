"""Hostile checkpoint files, written opcode by opcode, and a mutating fuzzer.

Each file in `hostile_files()` is what an attacker could hand a user as a
`.pystate`; `mutations` and `random_streams` make fuzz cases from the
reference checkpoints. `outcome` loads one with `checkpoint.loads` and says
what happened, checking that anything returned is a plain tree of numeric
arrays that own their bytes. `python hostile_checkpoints.py hostile` (or
`fuzz COUNT SEED`) runs a corpus and prints the outcomes as JSON, so that a
test runs the loads in a subprocess, where a crash fails the test instead of
the test run.
"""

import importlib.util
import json
import os
import pathlib
import pickle
import struct
import sys
import time
from typing import Callable, Dict, List

import numpy as np

P = pickle  # Opcode constants: P.MARK, P.TUPLE, ...


# ---------------------------------------------------------------------------
# Writing opcodes
# ---------------------------------------------------------------------------


def s(text: str) -> bytes:
    """SHORT_BINUNICODE / BINUNICODE of `text`."""
    raw = text.encode("utf-8")
    if len(raw) < 256:
        return P.SHORT_BINUNICODE + bytes([len(raw)]) + raw
    return P.BINUNICODE + struct.pack("<I", len(raw)) + raw


def b(raw: bytes) -> bytes:
    """BINBYTES of `raw`."""
    return P.BINBYTES + struct.pack("<I", len(raw)) + raw


def ba(raw: bytes) -> bytes:
    """BYTEARRAY8 of `raw` (protocol 5: a writable buffer)."""
    return P.BYTEARRAY8 + struct.pack("<Q", len(raw)) + raw


def i(n: int) -> bytes:
    return P.BININT + struct.pack("<i", n)


def glob(module: str, name: str) -> bytes:
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def tup(*parts: bytes) -> bytes:
    return P.MARK + b"".join(parts) + P.TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + P.REDUCE


def dtype(code: str, state: bytes = None) -> bytes:
    out = call(glob("numpy", "dtype"), s(code), P.NEWFALSE, P.NEWTRUE)
    return out + (state + P.BUILD if state is not None else b"")


def std_dtype_state(order: str = "<") -> bytes:
    return tup(i(3), s(order), P.NONE, P.NONE, P.NONE, i(-1), i(-1), i(0))


def frombuffer(buf: bytes, dt: bytes, shape: bytes, order: str = "C") -> bytes:
    return call(glob("numpy._core.numeric", "_frombuffer"), buf, dt, shape, s(order))


def reconstruct(shape: bytes, dt: bytes, fortran: bytes, data: bytes) -> bytes:
    head = call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), tup(i(0)), b(b"b"))
    return head + tup(i(1), shape, dt, fortran, data) + P.BUILD


def tree(leaf: bytes, module: str = "linear", name: str = "w") -> bytes:
    """`{module: {name: leaf}}` as a whole pickle."""
    inner = P.EMPTY_DICT + s(name) + leaf + P.SETITEM
    return P.PROTO + b"\x04" + P.EMPTY_DICT + s(module) + inner + P.SETITEM + P.STOP


def f4(values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


# ---------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------


def _subarray_state(count: int) -> bytes:
    # numpy's state tuple with a subarray (f4, (count,)): item size then
    # disagrees with the 4 bytes the buffer holds per element.
    sub = tup(dtype("f4", std_dtype_state()), tup(i(count)))
    return tup(i(3), s("|"), sub, P.NONE, P.NONE, i(4), i(1), i(0))


def _fields_state() -> bytes:
    fields = P.EMPTY_DICT + s("a") + tup(dtype("f8", std_dtype_state()), i(1 << 20)) + P.SETITEM
    return tup(i(3), s("|"), P.NONE, tup(s("a")), fields, i(8), i(1), i(0))


def _nested_tuple(depth: int) -> bytes:
    return P.EMPTY_TUPLE + P.TUPLE1 * depth


def _nested_list(depth: int) -> bytes:
    # Each list appended into the one below it on the stack: nests `depth` deep.
    return P.EMPTY_LIST * depth + P.APPEND * (depth - 1)


def _colliding_int_keys(count: int) -> bytes:
    # Ints equal modulo 2**61 - 1 hash alike in CPython.
    modulus = (1 << 61) - 1
    body = b"".join(P.LONG1 + bytes([12]) + (k * modulus).to_bytes(12, "little", signed=True) + i(0) for k in range(1, count))
    return P.PROTO + b"\x04" + P.EMPTY_DICT + P.MARK + body + P.SETITEMS + P.STOP


def _self_referential() -> bytes:
    # d = {}; d['m'] = d
    return P.PROTO + b"\x04" + P.EMPTY_DICT + P.MEMOIZE + s("m") + P.BINGET + b"\x00" + P.SETITEM + P.STOP


def _state_is(leaf: bytes) -> bytes:
    params = P.EMPTY_DICT + s("linear") + P.EMPTY_DICT + s("w") + frombuffer(b(f4([1])), dtype("f4", std_dtype_state()), tup(i(1))) + P.SETITEM + P.SETITEM
    return P.PROTO + b"\x04" + P.EMPTY_DICT + P.MARK + s("params") + params + s("state") + leaf + P.SETITEMS + P.STOP


def _opcode_flood(count: int) -> bytes:
    return P.PROTO + b"\x04" + (P.NONE + P.POP) * count + P.EMPTY_DICT + P.STOP


def hostile_files() -> Dict[str, Callable[[], bytes]]:
    """Name -> a function making each crafted file; every one must be refused."""
    ok_dtype = dtype("f4", std_dtype_state())
    big = lambda: "x" * (50 << 20)  # noqa: E731 - 50 MB, made only when used.
    files = {
        # Memory safety: dtype layouts that disagree with the buffer.
        "frombuffer_dtype_subarray": tree(frombuffer(b(f4([1, 2])), dtype("f4", _subarray_state(1 << 24)), tup(i(2)))),
        "frombuffer_bytearray_subarray": tree(frombuffer(ba(f4([1, 2])), dtype("f4", _subarray_state(1 << 24)), tup(i(2)))),
        "frombuffer_dtype_fields": tree(frombuffer(b(f4([1, 2])), dtype("f4", _fields_state()), tup(i(1)))),
        "frombuffer_shape_past_buffer": tree(frombuffer(ba(f4([1])), ok_dtype, tup(i(1 << 20)))),
        "frombuffer_negative_shape": tree(frombuffer(b(f4([1])), ok_dtype, tup(i(-1)))),
        "scalar_dtype_subarray": tree(call(glob("numpy.core.multiarray", "scalar"), dtype("f4", _subarray_state(1 << 20)), b(f4([1])))),
        "scalar_short_data": tree(call(glob("numpy.core.multiarray", "scalar"), dtype("f8", std_dtype_state()), b(b"\x00"))),
        "reconstruct_short_data": tree(reconstruct(tup(i(1000)), ok_dtype, P.NEWFALSE, b(f4([1])))),
        "reconstruct_dtype_state_elsize": tree(reconstruct(tup(i(2)), dtype("f4", tup(i(3), s("<"), P.NONE, P.NONE, P.NONE, i(4096), i(4), i(0))), P.NEWFALSE, b(f4([1, 2])))),
        "reconstruct_void_dtype": tree(reconstruct(tup(i(2)), dtype("V8", tup(i(3), s("|"), P.NONE, P.NONE, P.NONE, i(1 << 30), i(1), i(0))), P.NEWFALSE, b(b"\x00" * 16))),
        "reconstruct_huge_shape_no_state": tree(call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), tup(i(1 << 30)), b(b"f"))),
        "reconstruct_twice": tree(reconstruct(tup(i(1)), ok_dtype, P.NEWFALSE, b(f4([1]))) + tup(i(1), tup(i(1 << 20)), ok_dtype, P.NEWFALSE, b(f4([1]))) + P.BUILD),
        "dtype_state_after_use": tree(frombuffer(b(f4([1])), dtype("f4") + P.MEMOIZE, tup(i(1))) + P.POP + P.BINGET + b"\x00" + _subarray_state(8) + P.BUILD),
        "object_dtype": tree(reconstruct(tup(i(1)), dtype("O8", std_dtype_state("|")), P.NEWFALSE, P.EMPTY_LIST)),
        "build_on_global": tree(glob("numpy", "dtype") + P.EMPTY_DICT + P.BUILD),
        "build_on_dict": tree(P.EMPTY_DICT + P.EMPTY_DICT + P.BUILD),
        # Structure: hashing, recursion, sizes.
        "deep_tuple_key": P.PROTO + b"\x04" + P.EMPTY_DICT + _nested_tuple(10**6) + i(0) + P.SETITEM + P.STOP,
        "deep_tuple_value": tree(_nested_tuple(10**6)),
        "deep_tuple_value_under_limits": tree(_nested_tuple(900_000)),
        "deep_list_value": tree(_nested_list(200_000)),
        "colliding_int_keys": _colliding_int_keys(60_000),
        "self_referential_dict": _self_referential(),
        "state_is_an_array": _state_is(frombuffer(b(f4([1])), ok_dtype, tup(i(1)))),
        "state_is_a_string": _state_is(s("state")),
        "params_is_a_list": P.PROTO + b"\x04" + P.EMPTY_LIST + P.STOP,
        "huge_key": lambda: P.PROTO + b"\x04" + P.EMPTY_DICT + s(big()) + P.EMPTY_DICT + P.SETITEM + P.STOP,
        "huge_global_name": lambda: P.PROTO + b"\x04" + s("os") + s(big()) + P.STACK_GLOBAL + P.STOP,
        "huge_string_leaf": lambda: tree(s(big())),
        "huge_long4": tree(P.LONG4 + struct.pack("<i", 1 << 20) + b"\x01" * (1 << 20)),
        "huge_text_int": P.PROTO + b"\x02" + P.INT + b"9" * 100_000 + b"\n" + P.STOP,
        "opcode_flood": _opcode_flood(2_100_000),
        "binbytes8_past_end": tree(P.BINBYTES8 + struct.pack("<Q", 1 << 62) + b"abc"),
        # Calls and objects outside the allow-list.
        "os_system": tree(call(glob("os", "system"), s("true"))),
        "builtins_eval": tree(call(glob("builtins", "eval"), s("1"))),
        "ndarray_called": tree(call(glob("numpy", "ndarray"), tup(i(4)), s("f4"))),
        "codecs_zlib": tree(call(glob("_codecs", "encode"), s("eJzLSM3JyVcozy/KSQEAGgQEXQ=="), s("zlib_codec"))),
        "bytes_with_args": tree(call(glob("builtins", "bytes"), i(1 << 30))),
        "flatmapping_of_int": tree(call(glob("haiku._src.data_structures", "FlatMapping"), i(3))),
        "newobj": P.PROTO + b"\x04" + glob("collections", "OrderedDict") + P.EMPTY_TUPLE + P.NEWOBJ + P.STOP,
        "inst": P.MARK + P.INST + b"os\nsystem\n" + P.STOP,
        "persistent_id": P.PROTO + b"\x04" + s("x") + P.BINPERSID + P.STOP,
        "ext_code": P.PROTO + b"\x04" + P.EXT1 + b"\x01" + P.STOP,
        "next_buffer": P.PROTO + b"\x05" + P.NEXT_BUFFER + P.STOP,
        "set": P.PROTO + b"\x04" + P.EMPTY_SET + P.STOP,
        "unknown_opcode": P.PROTO + b"\x04" + b"\xff" + P.STOP,
        # Malformed streams.
        "empty": b"",
        "stack_underflow": P.PROTO + b"\x04" + P.SETITEM + P.STOP,
        "memo_miss": P.PROTO + b"\x04" + P.BINGET + b"\x07" + P.STOP,
        "no_stop": P.PROTO + b"\x04" + P.EMPTY_DICT,
        "open_mark_at_stop": P.PROTO + b"\x04" + P.MARK + P.EMPTY_DICT + P.STOP,
        "html_page": b"<!doctype html><html><body>Sign in to the network</body></html>",
        "gzip_bytes": b"\x1f\x8b\x08\x00" + b"\x00" * 64,
        "zip_bytes": b"PK\x03\x04" + b"\x00" * 64,
    }
    # Build each file only when asked for: some are 50 MB.
    return {name: (lambda data=data: data) if isinstance(data, bytes) else data for name, data in files.items()}


# ---------------------------------------------------------------------------
# Mutating real checkpoints
# ---------------------------------------------------------------------------


def mutations(seeds: List[bytes], count: int, rng_seed: int = 0) -> List[bytes]:
    """`count` damaged copies of the `seeds`: flipped, cut, spliced, repeated bytes."""
    rng = np.random.default_rng(rng_seed)
    interesting = [b"\x00", b"\xff", b"\x7f", b"\x80", P.BUILD, P.REDUCE, P.MARK, P.TUPLE, P.SETITEMS, P.STOP, P.BINGET, P.MEMOIZE, struct.pack("<I", 0xFFFFFFFF)]
    out = []
    for _ in range(count):
        data = bytearray(seeds[int(rng.integers(len(seeds)))])
        # Most of a checkpoint is array bytes; aim at the structure up front too.
        span = len(data) if rng.random() < 0.5 else min(len(data), 4096)
        for _ in range(int(rng.integers(1, 5))):
            kind = int(rng.integers(6))
            at = int(rng.integers(max(span, 1)))
            if kind == 0:  # flip bits
                data[at] ^= 1 << int(rng.integers(8))
            elif kind == 1:  # overwrite with an interesting value
                piece = interesting[int(rng.integers(len(interesting)))]
                data[at : at + len(piece)] = piece
            elif kind == 2:  # cut
                del data[at:]
            elif kind == 3:  # delete a run
                del data[at : at + int(rng.integers(1, 64))]
            elif kind == 4:  # duplicate a run
                piece = bytes(data[at : at + int(rng.integers(1, 64))])
                data[at:at] = piece
            else:  # random bytes
                data[at : at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
            span = min(span, len(data))
        out.append(bytes(data))
    return out


def random_streams(count: int, rng_seed: int = 0) -> List[bytes]:
    """Random sequences of opcodes with small arguments."""
    rng = np.random.default_rng(rng_seed)
    pieces = [
        P.MARK, P.TUPLE, P.TUPLE1, P.TUPLE2, P.TUPLE3, P.EMPTY_DICT, P.EMPTY_LIST, P.EMPTY_TUPLE,
        P.SETITEM, P.SETITEMS, P.APPEND, P.APPENDS, P.DICT, P.LIST, P.REDUCE, P.BUILD, P.POP,
        P.DUP, P.MEMOIZE, P.BINGET + b"\x00", P.BINGET + b"\x01", P.NONE, P.NEWTRUE, i(2), i(-1),
        s("w"), s("f4"), s("<"), s("C"), b(f4([1])), ba(f4([1, 2])), glob("numpy", "dtype"),
        glob("numpy", "ndarray"), glob("numpy._core.numeric", "_frombuffer"),
        glob("numpy.core.multiarray", "_reconstruct"), glob("numpy.core.multiarray", "scalar"),
        glob("_codecs", "encode"), glob("collections", "OrderedDict"), std_dtype_state(),
        dtype("f4"), P.STACK_GLOBAL,
    ]
    out = []
    for _ in range(count):
        body = b"".join(pieces[int(k)] for k in rng.integers(len(pieces), size=int(rng.integers(1, 40))))
        out.append(P.PROTO + b"\x04" + body + P.STOP)
    return out


# ---------------------------------------------------------------------------
# Running a corpus
# ---------------------------------------------------------------------------


def _check_tree(tree) -> str:
    """'' when `tree` is a plain tree of owned numeric arrays, else what is wrong."""
    if type(tree) is not dict:
        return f"tree is a {type(tree).__name__}"
    for module, params in tree.items():
        if type(module) is not str or type(params) is not dict:
            return f"module {module!r} is a {type(params).__name__}"
        for name, value in params.items():
            if type(name) is not str or type(value) is not np.ndarray:
                return f"{module}/{name} is a {type(value).__name__}"
            if value.dtype.kind not in "biufcV" or value.dtype.hasobject:
                return f"{module}/{name} has dtype {value.dtype}"
            base = value
            while isinstance(base, np.ndarray) and base.base is not None:
                base = base.base
            owned = base.nbytes if isinstance(base, np.ndarray) else len(memoryview(base).cast("B"))
            if owned < value.nbytes:
                return f"{module}/{name} views {value.nbytes} bytes of a {owned}-byte buffer"
    return ""


def _checkpoint_module():
    # HOSTILE_CHECKPOINT_FILE names another checkpoint module file to measure
    # (e.g. an older single-file checkpoint.py, for a before/after); the
    # default is the package's.
    path = os.environ.get("HOSTILE_CHECKPOINT_FILE")
    if not path:
        from perceiver import checkpoint

        return checkpoint
    spec = importlib.util.spec_from_file_location("checkpoint_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outcome(checkpoint, data: bytes) -> Dict[str, object]:
    """What loading `data` does: {'result': 'tree'|'refused'|'other'|'bad-tree', ...}."""
    start = time.perf_counter()
    try:
        params, state = checkpoint.loads(data, source="hostile.pystate")
    except checkpoint.CheckpointError as e:
        result, detail = "refused", str(e)
    except BaseException as e:  # noqa: BLE001 - anything else is a finding.
        result, detail = "other", f"{type(e).__name__}: {str(e)[:300]}"
    else:
        problem = _check_tree(params) or _check_tree(state)
        result, detail = ("bad-tree", problem) if problem else ("tree", "")
    return {
        "result": result,
        "detail": detail[:500],
        "length": len(detail),
        "seconds": round(time.perf_counter() - start, 4),
    }


def reference_checkpoints() -> List[bytes]:
    folder = pathlib.Path(__file__).parent / "data" / "reference"
    return [p.read_bytes() for p in sorted(folder.glob("*.pystate"))]


def corpus(kind: str, count: int = 0, seed: int = 0) -> Dict[str, bytes]:
    """'hostile': the crafted files; 'fuzz': `count` mutants and random streams."""
    if kind == "hostile":
        return {name: make() for name, make in hostile_files().items()}
    mutants = mutations(reference_checkpoints(), count - count // 4, seed)
    streams = random_streams(count // 4, seed)
    return {f"case{k}": data for k, data in enumerate(mutants + streams)}


if __name__ == "__main__":
    # python hostile_checkpoints.py hostile | fuzz COUNT SEED -> JSON outcomes
    # on stdout; a crash of this process is the finding a test looks for.
    kind = sys.argv[1]
    count, seed = (int(sys.argv[2]), int(sys.argv[3])) if kind == "fuzz" else (0, 0)
    module = _checkpoint_module()
    cases = corpus(kind, count, seed)
    results = {}
    for name, data in cases.items():
        print(name, file=sys.stderr, flush=True)  # The last name shows which case crashed.
        results[name] = outcome(module, data)
    json.dump(results, sys.stdout)
