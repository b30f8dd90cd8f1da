"""Reading and writing Perceiver checkpoints safely.

The published checkpoints (`*.pystate`, `*.pickle`) are Python pickles of
nested dicts of numpy arrays, sometimes inside Haiku's old `FlatMapping`
container, and either params alone or `{'params': ..., 'state': ...}`.
Unpickling runs whatever the file names, so `load` uses an unpickler that
resolves only the few globals such files need (`ALLOWED_GLOBALS`) and refuses
every other one before anything from the file runs.
"""

import io
import os
import pickle
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

Tree = Dict[str, Dict[str, np.ndarray]]


class CheckpointError(ValueError):
    """A checkpoint file could not be read, or does not fit a model."""


def _flat_mapping(*args, **kwargs) -> dict:
    """Stands in for Haiku's removed `FlatMapping`: a plain dict."""
    return dict(*args, **kwargs)


def _safe_dtype(*args, **kwargs) -> np.dtype:
    dtype = np.dtype(*args, **kwargs)
    if dtype.hasobject:
        raise CheckpointError(
            f"checkpoint holds an array of dtype {dtype}: object arrays are refused "
            "because they can carry arbitrary Python objects."
        )
    return dtype


def _reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise CheckpointError(f"checkpoint asks to build a {cls!r}; only numpy.ndarray is allowed.")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _frombuffer(buffer, dtype, shape, order):
    return np.frombuffer(buffer, dtype=_safe_dtype(dtype)).reshape(shape, order=order).copy()


def _scalar(dtype, data=None):
    dtype = _safe_dtype(dtype)
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


# (module, name) -> (object, why the published files need it).
ALLOWED_GLOBALS: Dict[Tuple[str, str], Tuple[Any, str]] = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED_GLOBALS[(_module, "_reconstruct")] = (
        _reconstruct,
        "numpy pickles every array as _reconstruct(ndarray, shape, dtype) + state",
    )
    ALLOWED_GLOBALS[(_module, "scalar")] = (
        _scalar,
        "numpy pickles scalars (e.g. a BatchNorm counter) as scalar(dtype, bytes)",
    )
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    ALLOWED_GLOBALS[(_module, "_frombuffer")] = (
        _frombuffer,
        "numpy pickles arrays this way under pickle protocol 5",
    )
ALLOWED_GLOBALS[("numpy", "ndarray")] = (
    np.ndarray,
    "the class argument of _reconstruct (only ever this class is built)",
)
ALLOWED_GLOBALS[("numpy", "dtype")] = (
    _safe_dtype,
    "each array's dtype is pickled as dtype(code); object dtypes are refused",
)
ALLOWED_GLOBALS[("haiku._src.data_structures", "FlatMapping")] = (
    _flat_mapping,
    "Haiku's 2021 parameter container, rebuilt as a plain dict",
)
ALLOWED_GLOBALS[("collections", "OrderedDict")] = (
    dict,
    "some Haiku versions pickled parameter trees as OrderedDicts; rebuilt as dict",
)
del _module


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise CheckpointError(
                f"checkpoint refers to {module}.{name}, which is not allowed in a checkpoint; "
                "nothing from the file was run."
            )
        return allowed[0]


def _to_tree(obj: Any, what: str) -> Tree:
    """Checks `{module: {name: array}}` and returns plain dicts of numpy arrays."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} must be a dict of modules; got {type(obj).__name__}.")
    tree = {}
    for module, params in obj.items():
        if not isinstance(params, Mapping):
            raise CheckpointError(
                f"{what}[{module!r}] must be a dict of arrays; got {type(params).__name__}."
            )
        tree[str(module)] = {str(name): np.asarray(value) for name, value in params.items()}
    return tree


def loads(data: bytes, source: str = "<bytes>") -> Tuple[Tree, Tree]:
    """Like `load`, from bytes; `source` names them in errors."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    except Exception as e:  # Truncated or foreign bytes fail in many ways.
        raise CheckpointError(
            f"{source} is not a readable checkpoint (a pickle of parameter arrays): "
            f"{type(e).__name__}: {e}"
        ) from None
    if isinstance(obj, Mapping) and set(obj) <= {"params", "state"} and "params" in obj:
        params, state = obj["params"], obj.get("state") or {}
    else:
        params, state = obj, {}
    try:
        return _to_tree(params, "params"), _to_tree(state, "state")
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None


def load(path: "os.PathLike[str] | str") -> Tuple[Tree, Tree]:
    """Reads a checkpoint without running code from it.

    Accepts params alone or `{'params': ..., 'state': ...}`, plain dicts or
    Haiku's old `FlatMapping`, arrays pickled by numpy 1.x or 2.x.

    Args:
      path: the checkpoint file.

    Returns:
      `(params, state)` as `{module: {name: np.ndarray}}`; state is `{}` when
      the file has none.

    Raises:
      FileNotFoundError: if `path` does not exist.
      CheckpointError: (a ValueError) for a truncated or foreign file, or one
        that names a global outside `ALLOWED_GLOBALS`.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return loads(data, source=path)


def dumps(params: Mapping, state: Optional[Mapping] = None) -> bytes:
    """The bytes `save` writes."""
    params = _to_tree(params, "params")
    payload: Any = params
    if state:
        payload = {"params": params, "state": _to_tree(state, "state")}
    return pickle.dumps(payload, protocol=4)


def save(path: "os.PathLike[str] | str", params: Mapping, state: Optional[Mapping] = None) -> None:
    """Writes a checkpoint in the published format, atomically.

    Params alone when `state` is empty, else `{'params': ..., 'state': ...}`;
    arrays become numpy arrays so that a plain `pickle.load` reads the file.
    The bytes go to a temporary file in the same directory that is renamed
    over `path` only once complete, so a crash never leaves a partial file.
    """
    path = os.fspath(path)
    data = dumps(params, state)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def tree_differences(expected: Mapping, found: Mapping) -> list:
    """Every difference between two `{module: {name: array-like}}` trees.

    Shapes are compared, and dtypes where `expected` has them.

    Returns:
      sorted lines: "missing PATH (expected SHAPE)", "unexpected PATH (found
      SHAPE)", "mismatched PATH: expected SHAPE DTYPE, found SHAPE DTYPE".
    """

    def flat(tree):
        return {f"{m}/{n}": v for m, ps in tree.items() for n, v in ps.items()}

    want, got = flat(expected), flat(found)
    lines = []
    for key in sorted(set(want) | set(got)):
        if key not in got:
            lines.append(f"missing {key} (expected {_describe(want[key])})")
        elif key not in want:
            lines.append(f"unexpected {key} (found {_describe(got[key])})")
        else:
            w, g = want[key], got[key]
            same_dtype = not hasattr(w, "dtype") or np.dtype(w.dtype) == np.dtype(g.dtype)
            if tuple(np.shape(w)) != tuple(np.shape(g)) or not same_dtype:
                lines.append(f"mismatched {key}: expected {_describe(w)}, found {_describe(g)}")
    return lines


def _describe(x) -> str:
    dtype = f" {np.dtype(x.dtype).name}" if hasattr(x, "dtype") else ""
    return f"{list(np.shape(x))}{dtype}"


def check_tree(expected: Mapping, found: Mapping, what: str = "params") -> None:
    """Raises `CheckpointError` listing every difference between two trees."""
    lines = tree_differences(expected, found)
    if lines:
        raise CheckpointError(
            f"{what} do not match the model ({len(lines)} differences):\n  " + "\n  ".join(lines)
        )
