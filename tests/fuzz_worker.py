"""Fuzzing every checkpoint reader: mutants made from (reader, seed), read in a worker process.

Each reader is one public entry point fed one kind of file (`READERS`). A
mutant is a valid base file of that kind changed by a few seeded mutations
(byte flips, truncation, inserted random bytes, duplicated or deleted chunks,
extreme integers written over length fields, splices of two base files, and
for zip archives and safetensors headers edits that keep the container
consistent so that the reader behind it sees them). The contract: each
mutant reads, or raises `CheckpointError` with a message under
`MAX_MESSAGE` characters, within `MAX_SECONDS`; any other exception, a
timeout or a crash of the process is a failure.

    python tests/fuzz_worker.py campaign --count 20000      # run, print failures
    python tests/fuzz_worker.py reproduce READER SEED [--out DIR]
                                  # writes that mutant, reads it here, prints a one-line command
    python tests/fuzz_worker.py work < JOBS                  # the worker (`run_jobs` starts it)

The worker reads jobs ("READER SEED" lines) from stdin under a 2 GiB address
space limit and writes one JSON line per job: {reader, seed, outcome,
seconds, message_len, ...}; `run_jobs`, the parent, restarts it after a
crash or hang and records the seed it died on.
"""

import argparse
import importlib
import io
import json
import os
import pickle
import pickletools
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
import zlib
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data")
# The per-mutant limit; PERCEIVER_FUZZ_SECONDS shortens it for the harness's own test.
MAX_SECONDS = float(os.environ.get("PERCEIVER_FUZZ_SECONDS", "10"))
MAX_MESSAGE = 2000
ADDRESS_SPACE = 2 << 30
OK_OUTCOMES = ("read", "refused")
EXTREMES = (0, 2**31 - 1, 2**32 - 1, 2**63 - 1, -1)
TEXT_EXTREMES = (b"0", b"-1", b"2147483647", b"4294967295", b"9223372036854775807",
                 b"18446744073709551616", b"1e999", b"-1e999", b"9" * 400)


# ---------------------------------------------------------------------------
# Base files
# ---------------------------------------------------------------------------


def _trees(dtypes: Sequence[str], seed: int) -> List[dict]:
    """Small `{module: {name: array}}` trees over `dtypes`, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    shapes = [(2, 3), (4,), (), (0, 3), (3, 1, 2)]
    trees = []
    for k in range(3):
        tree = {}
        for j, code in enumerate(dtypes):
            shape = shapes[(j + k) % len(shapes)]
            values = rng.normal(size=shape) * 4
            dtype = np.dtype(code) if code != "bfloat16" else np.dtype(_bfloat16())
            array = np.asarray(values).astype(dtype)
            if k == 1 and array.ndim >= 2:
                array = np.asfortranarray(array)
            tree.setdefault(f"encoder/layer_{j % 3}/linear", {})[f"w{j}"] = array
        trees.append(tree)
    return trees


def _bfloat16():
    import ml_dtypes

    return ml_dtypes.bfloat16


PICKLE_DTYPES = ("f4", "f2", "f8", "i4", "i8", "i1", "u1", "?", "c8", ">f4", "bfloat16")
SAFETENSORS_DTYPES = ("f4", "f2", "f8", "i4", "i8", "i1", "u1", "?", "bfloat16")


def _pickle_bases(protocol: Optional[int]) -> List[bytes]:
    from perceiver import checkpoint

    out = []
    for k, tree in enumerate(_trees(PICKLE_DTYPES, 7)):
        state = {"batchnorm": {"mean": np.arange(3, dtype="f4"), "counter": np.int32(5)}} if k == 2 else None
        if protocol is None:  # What our `save` writes: the DeepMind format.
            out.append(checkpoint.dumps(tree, state))
        else:
            payload = tree if state is None else {"params": tree, "state": state}
            out.append(pickle.dumps(payload, protocol=protocol))
    return out


def _safetensors_bases() -> List[bytes]:
    from perceiver import checkpoint

    out = []
    with tempfile.TemporaryDirectory() as folder:
        for k, tree in enumerate(_trees(SAFETENSORS_DTYPES, 8)):
            path = os.path.join(folder, f"t{k}.safetensors")
            state = {"batchnorm": {"mean": np.arange(3, dtype="f4")}} if k == 2 else None
            checkpoint.save(path, tree, state)
            with open(path, "rb") as f:
                out.append(f.read())
    return out


def _read(*parts: str) -> bytes:
    with open(os.path.join(*parts), "rb") as f:
        return f.read()


def _description_bases() -> List[bytes]:
    from perceiver import checkpoint

    out = [_read(ROOT, "perceiver", "data", "flow_small.json")]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.pystate")
        for description in (
            {"factory": "imagenet_classifier", "sizes": {"num_classes": 3, "image_shape": [16, 16]},
             "labels": ["cat", "dog", "bird"], "description": "tiny"},
            {"factory": "masked_language_model", "sizes": {"max_seq_len": 48}, "tokenizer": {"kind": "bytes"},
             "task": {"top_k": 5, "temperature": 1.5}},
        ):
            with open(checkpoint.save_description(path, description), "rb") as f:
                out.append(f.read())
    return out


class Reader(NamedTuple):
    file: str  # The mutant's file name inside its folder.
    kind: str  # 'pickle', 'zip', 'safetensors' or 'json': which structure-aware mutations apply.
    bases: Callable[[], List[bytes]]
    read: Callable[[str, int], object]  # (folder, seed) -> what the reader returns.


def _load(name: str) -> Callable[[str, int], object]:
    def read(folder, seed):
        from perceiver import checkpoint

        return checkpoint.load(os.path.join(folder, name))

    return read


def _hf_weights(name: str, single: str) -> Callable[[str, int], object]:
    # Even seeds read the file itself, odd ones the folder through read_weights.
    def read(folder, seed):
        from perceiver import convert

        if seed % 2:
            return convert.read_weights(folder)
        return getattr(convert, single)(os.path.join(folder, name))

    return read


def _read_config(folder, seed):
    from perceiver import convert

    return convert.read_config(folder)


def _read_description(folder, seed):
    from perceiver import checkpoint

    return checkpoint.read_description(os.path.join(folder, "model.pystate"))


HF = os.path.join(DATA, "hf")
READERS: Dict[str, Reader] = {
    "dm_pickle": Reader(
        "model.pystate", "pickle",
        lambda: [_read(DATA, "reference", f"{m}.pystate") for m in ("mlm", "imagenet_conv", "flow")]
        + _pickle_bases(None),
        _load("model.pystate"),
    ),
    **{
        f"pickle_p{p}": Reader("model.pickle", "pickle", lambda p=p: _pickle_bases(p), _load("model.pickle"))
        for p in range(6)
    },
    "safetensors": Reader("model.safetensors", "safetensors", _safetensors_bases, _load("model.safetensors")),
    "hf_safetensors": Reader(
        "model.safetensors", "safetensors",
        lambda: [_read(HF, m, "model.safetensors") for m in ("text", "mlm", "fourier")],
        _hf_weights("model.safetensors", "read_safetensors"),
    ),
    "hf_torch_bin": Reader(
        "pytorch_model.bin", "zip",
        lambda: [_read(HF, "torch_state_dict.bin"), _read(HF, "mlm", "pytorch_model.bin"),
                 _read(HF, "conv", "pytorch_model.bin")],
        _hf_weights("pytorch_model.bin", "read_torch_bin"),
    ),
    "hf_config": Reader(
        "config.json", "json",
        lambda: [_read(HF, m, "config.json") for m in ("mlm", "conv", "flow", "video")],
        _read_config,
    ),
    "description": Reader("model.json", "json", _description_bases, _read_description),
}


def _selftest(folder, seed):
    """A reader that misbehaves on purpose, by seed: the harness's own test."""
    if seed == 1:
        import ctypes

        ctypes.string_at(0)  # SIGSEGV.
    elif seed == 2:
        raise KeyError("selftest")
    elif seed == 3:  # Deaf to the alarm, like a reader stuck in C: only the parent ends it.
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        time.sleep(3600)
    elif seed == 4:
        time.sleep(3600)  # The worker's alarm ends it.
    return {}


if os.environ.get("PERCEIVER_FUZZ_SELFTEST"):
    READERS["selftest"] = Reader("x.json", "json", lambda: [b"{}"], _selftest)


# ---------------------------------------------------------------------------
# Structure: where the length fields and opcodes of a file are
# ---------------------------------------------------------------------------

Field = Tuple[int, int, str]  # (offset, width in bytes, byte order)

# pickletools' argument sizes: n > 0 a fixed-width int, n < 0 a length prefix of that many bytes.
_PREFIX = {-2: 1, -3: 4, -4: 4, -5: 8}


def pickle_structure(data: bytes) -> Tuple[List[int], List[Field]]:
    """Opcode offsets and integer/length fields of as much of a pickle as parses."""
    opcodes, fields = [], []
    try:
        for op, _arg, pos in pickletools.genops(io.BytesIO(data)):
            opcodes.append(pos)
            if op.arg is None:
                continue
            n = op.arg.n
            if n > 0 and op.arg.name in ("uint1", "uint2", "int4", "uint4", "uint8"):
                fields.append((pos + 1, n, "little"))
            elif n in _PREFIX:
                fields.append((pos + 1, _PREFIX[n], "little"))
    except Exception:  # noqa: BLE001 - a damaged stream: keep what was found before it.
        pass
    return opcodes, fields


# Zip records: signature -> (offset, width) of each integer field in it.
_ZIP_RECORDS = {
    b"PK\x03\x04": [(6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
    b"PK\x01\x02": [(8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (34, 2), (42, 4)],
    b"PK\x05\x06": [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
    b"PK\x06\x06": [(4, 8), (24, 8), (32, 8), (40, 8), (48, 8)],
    b"PK\x06\x07": [(4, 4), (8, 8), (16, 4)],
}


def zip_structure(data: bytes) -> Tuple[List[int], List[Field]]:
    records, fields = [], []
    for signature, layout in _ZIP_RECORDS.items():
        at = data.find(signature)
        while at >= 0:
            records.append(at)
            fields.extend((at + offset, width, "little") for offset, width in layout if at + offset + width <= len(data))
            at = data.find(signature, at + 1)
    return records, fields


def text_numbers(data: bytes, limit: int) -> List[Tuple[int, int]]:
    """(start, end) of the digit runs in `data[:limit]`."""
    runs, start = [], None
    for k, c in enumerate(data[:limit]):
        digit = 48 <= c <= 57
        if digit and start is None:
            start = k
        elif not digit and start is not None:
            runs.append((start, k))
            start = None
    if start is not None:
        runs.append((start, min(len(data), limit)))
    return runs


def _safetensors_header_end(data: bytes) -> int:
    length = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    return min(len(data), 8 + length)


def structure(kind: str, data: bytes) -> Tuple[List[int], List[Field], List[Tuple[int, int]]]:
    """(interesting offsets, integer fields, digit runs) of `data` as a file of `kind`."""
    if kind == "pickle":
        opcodes, fields = pickle_structure(data)
        protocol0 = not data.startswith(b"\x80")
        return opcodes, fields, text_numbers(data, 1 << 16) if protocol0 else []
    if kind == "zip":
        records, fields = zip_structure(data)
        return records, fields, []
    if kind == "safetensors":
        end = _safetensors_header_end(data)
        runs = text_numbers(data[:end], end)
        return [0, end] + [a for a, _ in runs], [(0, 8, "little"), (0, 4, "little"), (4, 4, "little")], runs
    if kind == "json":
        runs = text_numbers(data, len(data))
        return [a for a, _ in runs], [], runs
    return [], [], []  # Raw array bytes: no structure.


# ---------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------


def _offset(rng, data, interesting: List[int]) -> int:
    if interesting and rng.random() < 0.6:
        return min(int(interesting[int(rng.integers(len(interesting)))]), len(data))
    return int(rng.integers(len(data) + 1))


def _chunk(rng, data) -> int:
    return int(min(len(data), 1 + rng.integers(1 << int(rng.integers(1, 13)))))


# How often each kind of file gets each mutation: flip, truncate, insert, duplicate,
# delete, extreme integer, structure-keeping edit (zip, safetensors) or one random byte.
_WEIGHTS = {
    "pickle": [0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 0.1],
    "zip": [0.1, 0.05, 0.05, 0.05, 0.05, 0.3, 0.4],
    "safetensors": [0.1, 0.05, 0.1, 0.05, 0.05, 0.35, 0.3],
    "json": [0.2, 0.05, 0.2, 0.15, 0.15, 0.2, 0.05],
}


def mutate_bytes(rng, data: bytearray, kind: str, ops: List[str]) -> bytearray:
    """One seeded mutation of `data` (in place when it can); appends its name to `ops`."""
    if not data:
        data += rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        ops.append("insert@0")
        return data
    interesting, fields, runs = structure(kind, bytes(data))
    choice = int(rng.choice(7, p=_WEIGHTS.get(kind, _WEIGHTS["pickle"])))
    if choice == 0:  # flip bits (in text, mostly the low seven: it stays ASCII)
        top = 7 if kind == "json" and rng.random() < 0.8 else 8
        for _ in range(int(rng.integers(1, 9))):
            at = min(_offset(rng, data, interesting), len(data) - 1)
            data[at] ^= 1 << int(rng.integers(top))
        ops.append("flip")
    elif choice == 1:  # truncate
        at = _offset(rng, data, interesting)
        del data[at:]
        ops.append(f"truncate@{at}")
    elif choice == 2:  # insert random bytes (JSON: sometimes a run of one token, for nesting)
        at = _offset(rng, data, interesting)
        if kind in ("json", "safetensors") and rng.random() < 0.3:
            token = [b"[", b'{"a":', b"-", b"\\u0000"][int(rng.integers(4))]
            piece = token * int(rng.integers(1, 60000))
        else:
            piece = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
        data[at:at] = piece
        ops.append(f"insert{len(piece)}@{at}")
    elif choice == 3:  # duplicate a chunk somewhere
        size = _chunk(rng, data)
        start = int(rng.integers(len(data) - size + 1))
        at = _offset(rng, data, interesting)
        data[at:at] = data[start : start + size]
        ops.append(f"duplicate{size}@{at}")
    elif choice == 4:  # delete a chunk
        size = _chunk(rng, data)
        at = min(_offset(rng, data, interesting), len(data) - 1)
        del data[at : at + size]
        ops.append(f"delete{size}@{at}")
    elif choice == 5:  # an extreme integer over a length field, or text number
        value = EXTREMES[int(rng.integers(len(EXTREMES)))]
        if runs and (not fields or rng.random() < 0.5):
            start, end = runs[int(rng.integers(len(runs)))]
            text = TEXT_EXTREMES[int(rng.integers(len(TEXT_EXTREMES)))]
            data[start:end] = text
            ops.append(f"number{text[:20]!r}@{start}")
            if kind == "safetensors" and start < 8 + int.from_bytes(data[:8], "little") and rng.random() < 0.5:
                _fix_safetensors_length(data, end - start, len(text))
            return data
        if fields and rng.random() < 0.8:
            at, width, order = fields[int(rng.integers(len(fields)))]
        else:
            width = (1, 2, 4, 8)[int(rng.integers(4))]
            order = ("little", "big")[int(rng.integers(2))]
            at = int(rng.integers(len(data)))
        at = min(at, max(0, len(data) - width))
        data[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, order)
        ops.append(f"int{width}{order[0]}={value}@{at}")
    else:  # a structure-keeping edit, where the format has one
        if kind == "zip":
            return bytearray(mutate_zip(rng, bytes(data), ops))
        if kind == "safetensors":
            return bytearray(mutate_safetensors_header(rng, bytes(data), ops))
        at = min(_offset(rng, data, interesting), len(data) - 1)
        data[at] = int(rng.integers(256))
        ops.append(f"byte@{at}")
    return data


def _fix_safetensors_length(data: bytearray, old: int, new: int) -> None:
    length = int.from_bytes(data[:8], "little") + new - old
    data[:8] = (max(0, length) % (1 << 64)).to_bytes(8, "little")


def mutate_zip(rng, data: bytes, ops: List[str]) -> bytes:
    """Changes one member of a zip archive and writes the archive again (CRCs right)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    except Exception:  # noqa: BLE001 - already damaged: a plain byte edit instead.
        members = []
    if not members:
        return bytes(mutate_bytes(rng, bytearray(data), "binary", ops))
    pickles = [k for k, (name, _) in enumerate(members) if name.endswith("data.pkl")]
    k = pickles[0] if pickles and rng.random() < 0.6 else int(rng.integers(len(members)))
    name, content = members[k]
    what = int(rng.integers(10))
    if what == 0:
        del members[k]
        ops.append(f"zip-drop:{name}")
    elif what == 1:
        members.insert(int(rng.integers(len(members) + 1)), (name, content[: len(content) // 2]))
        ops.append(f"zip-twice:{name}")
    else:
        sub = "pickle" if name.endswith(".pkl") else "binary"
        content = bytes(mutate_bytes(rng, bytearray(content), sub, ops))
        members[k] = (name, content)
        ops.append(f"zip-member:{name}")
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Duplicate names, on purpose.
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for member, body in members:
                zf.writestr(member, body)
    return out.getvalue()


def mutate_safetensors_header(rng, data: bytes, ops: List[str]) -> bytes:
    """Changes one value of a safetensors header and writes the length again."""
    end = _safetensors_header_end(data)
    try:
        header = json.loads(data[8:end])
        names = [n for n in header if n != "__metadata__"]
        name = names[int(rng.integers(len(names)))]
        entry = header[name]
    except Exception:  # noqa: BLE001
        return bytes(mutate_bytes(rng, bytearray(data), "binary", ops))
    try:
        what = _edit_header(rng, header, names, name, entry)
    except (KeyError, TypeError, IndexError, AttributeError, ValueError):  # An earlier edit broke it.
        return bytes(mutate_bytes(rng, bytearray(data), "binary", ops))
    ops.append(f"header{what}:{name}")
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data[end:]


def _edit_header(rng, header: dict, names: List[str], name: str, entry: dict) -> int:
    """Sets one shape, offset or dtype of `entry` (or metadata) to an extreme; which edit it made."""
    extreme = [0, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64, -1, 1.5, None, "8", []]
    what = int(rng.integers(6))
    if what == 0 and entry["shape"]:
        entry["shape"][int(rng.integers(len(entry["shape"])))] = extreme[int(rng.integers(len(extreme)))]
    elif what == 1:
        entry["data_offsets"][int(rng.integers(2))] = extreme[int(rng.integers(len(extreme)))]
    elif what == 2:
        entry["dtype"] = ["F32", "F64", "BOOL", "U8", "F8_E4M3", "I64", "", None, 3][int(rng.integers(9))]
    elif what == 3:
        entry["shape"] = entry["shape"] + [int(rng.integers(0, 3))] * int(rng.integers(1, 40))
    elif what == 4:
        other = header[names[int(rng.integers(len(names)))]]
        entry["data_offsets"] = list(other["data_offsets"])  # Overlapping tensors.
    else:
        header[["__metadata__", name + "x", ""][int(rng.integers(3))]] = [
            {"format": 7}, "str", {"a": [1] * 1000}][int(rng.integers(3))]
    return what


def splice(rng, one: bytes, other: bytes, ops: List[str]) -> bytes:
    a = int(rng.integers(len(one) + 1))
    b = int(rng.integers(len(other) + 1))
    if rng.random() < 0.5:  # The same offset in both: headers that line up.
        b = min(a, len(other))
    ops.append(f"splice@{a}/{b}")
    return one[:a] + other[b:]


def mutant(reader: str, seed: int, bases: Dict[str, List[bytes]]) -> Tuple[bytes, List[str]]:
    """The mutant of `reader`'s base files for `seed`, and the names of the mutations made.

    `bases` holds every reader's base files: one mutant in twenty starts from
    another reader's (a config.json given as a checkpoint...), so that telling
    formats apart is fuzzed too; its mutations are then those of its own format.
    """
    rng = np.random.default_rng([zlib.crc32(reader.encode()), seed])
    owner = reader
    if rng.random() < 0.05:
        others = sorted(name for name in bases if READERS[name].kind != READERS[reader].kind)
        owner = others[int(rng.integers(len(others)))]
    files, kind = bases[owner], READERS[owner].kind
    k = int(rng.integers(len(files)))
    ops = [f"base{k}" if owner == reader else f"base{k}:{owner}"]
    if len(files) > 1 and rng.random() < 0.1:
        other = (k + 1 + int(rng.integers(len(files) - 1))) % len(files)
        data = bytearray(splice(rng, files[k], files[other], ops))
    else:
        data = bytearray(files[k])
    for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3, 4]))):
        data = mutate_bytes(rng, data, kind, ops)
    return bytes(data), ops


# ---------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------


class Timeout(BaseException):
    """Raised by the watchdog alarm; a BaseException so that no `except Exception` hides it."""


def _on_alarm(signum, frame):
    raise Timeout()


def _touch(value, depth=0) -> None:
    """Reads every byte of every array in what a reader returned (a bad view crashes here)."""
    if depth > 4:
        return
    if isinstance(value, (tuple, list)):
        for v in value:
            _touch(v, depth + 1)
    elif isinstance(value, dict):
        for v in value.values():
            _touch(v, depth + 1)
    elif isinstance(value, np.ndarray):
        np.ascontiguousarray(value).tobytes()


def _where(error: BaseException) -> str:
    """file:line function of the innermost frame in perceiver/ (else the innermost)."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if os.sep + "perceiver" + os.sep in f.filename]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return ""
    return f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno} {frame.name}"


def write_mutant(reader: str, data: bytes, folder: str) -> str:
    """Puts the mutant where its reader looks for it; returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, READERS[reader].file)
    with open(path, "wb") as f:
        f.write(data)
    return path


def read_one(reader: str, seed: int, folder: str) -> Dict[str, object]:
    """Reads one mutant already written into `folder`; the outcome line."""
    from perceiver.checkpoint import CheckpointError

    result: Dict[str, object] = {"reader": reader, "seed": seed}
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, MAX_SECONDS)
    try:
        try:
            value = READERS[reader].read(folder, seed)
            _touch(value)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except CheckpointError as e:
        message = str(e)
        result.update(outcome="refused" if len(message) < MAX_MESSAGE else "long-message",
                      message_len=len(message))
        if result["outcome"] != "refused":
            result["message"] = message[:300]
    except Timeout:
        result.update(outcome="timeout", message_len=0)
    except BaseException as e:  # noqa: BLE001 - anything else is a finding.
        message = str(e)
        result.update(outcome=f"error:{type(e).__name__}", message_len=len(message),
                      message=message[:300], where=_where(e))
    else:
        result.update(outcome="read", message_len=0)
    seconds = time.perf_counter() - start
    result["seconds"] = round(seconds, 4)
    if result["outcome"] in OK_OUTCOMES and seconds > MAX_SECONDS:
        result["outcome"] = "slow"
    return result


def _all_bases() -> Dict[str, List[bytes]]:
    return {name: reader.bases() for name, reader in READERS.items()}


def work(jobs: io.TextIOBase, out: io.TextIOBase) -> None:
    """The worker's loop: a 'ready' line (with how each unmutated base reads), then one line per job."""
    for module in ("perceiver.checkpoint", "perceiver.convert"):  # Before the limit and the clock.
        importlib.import_module(module)

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    signal.signal(signal.SIGALRM, _on_alarm)
    bases = _all_bases()
    with tempfile.TemporaryDirectory(prefix="fuzz_worker_") as scratch:
        checks = {}
        for name, files in bases.items():
            for k, data in enumerate(files):
                folder = os.path.join(scratch, f"base_{name}")
                write_mutant(name, data, folder)
                checks[f"{name}/{k}"] = read_one(name, k, folder)["outcome"]
        out.write(json.dumps({"ready": True, "bases": checks}) + "\n")
        out.flush()
        for line in jobs:
            if not line.strip():
                continue
            reader, seed = line.split()
            seed = int(seed)
            try:
                data, ops = mutant(reader, seed, bases)
            except Exception as e:  # noqa: BLE001 - a bug of this file, not of the reader.
                result = {"reader": reader, "seed": seed, "outcome": "harness-error", "seconds": 0,
                          "message_len": 0, "message": f"{type(e).__name__}: {e}", "where": _where(e)}
                out.write(json.dumps(result) + "\n")
                out.flush()
                continue
            folder = os.path.join(scratch, reader)
            write_mutant(reader, data, folder)
            result = read_one(reader, seed, folder)
            if result["outcome"] not in OK_OUTCOMES:
                result["ops"] = ops
            out.write(json.dumps(result) + "\n")
            out.flush()


# ---------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------


def jobs_for(count: int, readers: Sequence[str] = tuple(READERS), first_seed: int = 0) -> List[Tuple[str, int]]:
    """`count` (reader, seed) pairs, the readers taking turns."""
    return [(readers[k % len(readers)], first_seed + k // len(readers)) for k in range(count)]


def run_jobs(jobs: Sequence[Tuple[str, int]], startup_seconds: float = 120.0,
             grace: float = 5.0) -> Tuple[List[dict], dict]:
    """Runs `jobs` in worker processes; (one outcome per job, the base checks of the first worker).

    A worker that dies or stops answering for `MAX_SECONDS + grace` seconds is
    killed; its current job gets outcome 'crash:...' or 'hang' and a fresh
    worker takes the rest.
    """
    results: List[dict] = []
    bases: dict = {}
    pending = list(jobs)
    while pending:
        with tempfile.TemporaryFile() as jobfile, tempfile.TemporaryFile() as errfile:
            jobfile.write("".join(f"{r} {s}\n" for r, s in pending).encode())
            jobfile.seek(0)
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "work"],
                stdin=jobfile, stdout=subprocess.PIPE, stderr=errfile, cwd=ROOT,
            )
            selector = selectors.DefaultSelector()
            selector.register(proc.stdout, selectors.EVENT_READ)
            buffer, ready, done, failure = b"", False, 0, None
            while done < len(pending):
                limit = startup_seconds if not ready else MAX_SECONDS + grace
                if not selector.select(timeout=limit):
                    failure = "hang"
                    break
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    failure = "crash"
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    record = json.loads(line)
                    if record.get("ready"):
                        ready = True
                        bases = bases or record["bases"]
                    else:
                        results.append(record)
                        done += 1
            selector.close()
            if failure is None:
                proc.wait()
                pending = []
                continue
            try:  # A worker that died has an exit status to read; one that hangs is killed.
                proc.wait(timeout=1 if failure == "crash" else 0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            errfile.seek(0)
            tail = errfile.read().decode("utf-8", "replace").strip()[-600:]
            if not ready:
                raise RuntimeError(f"the fuzz worker did not start ({failure}): {tail}")
            reader, seed = pending[done]
            outcome = "hang" if failure == "hang" else f"crash:{_exit_name(proc.returncode)}"
            results.append({"reader": reader, "seed": seed, "outcome": outcome, "seconds": None,
                            "message_len": len(tail), "message": tail})
            pending = pending[done + 1:]
    return results, bases


def _exit_name(code: Optional[int]) -> str:
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            pass
    return f"exit {code}"


def failures(results: Sequence[dict]) -> List[dict]:
    return [r for r in results if r["outcome"] not in OK_OUTCOMES]


def summary(results: Sequence[dict], shown: int = 10) -> str:
    """Counts by reader and outcome, then up to `shown` failures and how to reproduce one."""
    counts: Dict[str, Dict[str, int]] = {}
    for r in results:
        by = counts.setdefault(r["reader"], {})
        by[r["outcome"]] = by.get(r["outcome"], 0) + 1
    lines = [f"{reader}: {dict(sorted(by.items()))}" for reader, by in sorted(counts.items())]
    bad = failures(results)
    if bad:
        lines.append(f"{len(bad)} of {len(results)} mutants broke the contract (first {min(shown, len(bad))}):")
        for r in bad[:shown]:
            detail = f" at {r['where']}" if r.get("where") else ""
            lines.append(f"  {r['reader']} seed {r['seed']}: {r['outcome']}{detail}: {str(r.get('message', ''))[:160]!r}")
        first = bad[0]
        lines.append(f"reproduce: python tests/fuzz_worker.py reproduce {first['reader']} {first['seed']}")
    return "\n".join(lines)


def reproduce(reader: str, seed: int, out: Optional[str]) -> None:
    """Writes mutant (reader, seed) under `out`, reads it in this process, prints the outcome."""
    data, ops = mutant(reader, seed, _all_bases())
    folder = out or tempfile.mkdtemp(prefix=f"fuzz_{reader}_{seed}_")
    path = write_mutant(reader, data, folder)
    print(f"mutant {reader} seed {seed}: {len(data)} bytes at {path}; mutations {ops}")
    call = {
        "hf_config": f"convert.read_config({folder!r})",
        "description": f"checkpoint.read_description({os.path.join(folder, 'model.pystate')!r})",
    }.get(reader)
    if reader in ("hf_safetensors", "hf_torch_bin"):
        call = f"convert.read_weights({folder!r})" if seed % 2 else (
            f"convert.{'read_safetensors' if reader == 'hf_safetensors' else 'read_torch_bin'}({path!r})")
    call = call or f"checkpoint.load({path!r})"
    print(f"python -c \"from perceiver import checkpoint, convert; {call}\"")
    signal.signal(signal.SIGALRM, _on_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    result = read_one(reader, seed, folder)
    print(json.dumps(result))
    if result["outcome"].startswith("error:"):  # Again, uncaught, for the traceback.
        READERS[reader].read(folder, seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("work")
    campaign = sub.add_parser("campaign")
    campaign.add_argument("--count", type=int, default=2000)
    campaign.add_argument("--readers", default=",".join(READERS))
    campaign.add_argument("--first-seed", type=int, default=0)
    campaign.add_argument("--jsonl", help="also write every outcome here")
    again = sub.add_parser("reproduce")
    again.add_argument("reader", choices=sorted(READERS))
    again.add_argument("seed", type=int)
    again.add_argument("--out")
    args = parser.parse_args(argv)
    if args.command == "work":
        out = os.fdopen(os.dup(1), "w")  # Results only; anything a reader prints goes to stderr.
        os.dup2(2, 1)
        work(sys.stdin, out)
        return 0
    if args.command == "reproduce":
        reproduce(args.reader, args.seed, args.out)
        return 0
    start = time.perf_counter()
    results, bases = run_jobs(jobs_for(args.count, args.readers.split(","), args.first_seed))
    if args.jsonl:
        with open(args.jsonl, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    unread = {k: v for k, v in bases.items() if v != "read"}
    if unread:
        print(f"base files that do not read: {unread}")
    print(summary(results, shown=30))
    print(f"{len(results)} mutants in {time.perf_counter() - start:.1f} s")
    return 1 if failures(results) or unread else 0


if __name__ == "__main__":
    sys.exit(main())
