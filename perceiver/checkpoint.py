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
import secrets
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

try:  # Ships with jax; lets bfloat16 checkpoints written by `save` load again.
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

Tree = Dict[str, Dict[str, np.ndarray]]


class CheckpointError(ValueError):
    """A checkpoint file could not be read, or does not fit a model."""


class _Global:
    """An allowed global as one unpickling sees it.

    The unpickler's BUILD opcode sets attributes on whatever object it is
    given; handing out this per-load wrapper instead of the shared object
    keeps a file from altering our functions for later loads.
    """

    __slots__ = ("name", "target")

    def __init__(self, name: str, target: Any):
        self.name = name
        self.target = target

    def __call__(self, *args, **kwargs):
        if any(self.target is cls for cls in _ARGUMENT_ONLY):
            raise CheckpointError(f"checkpoint calls {self.name}, which may only be an argument.")
        return self.target(*args, **kwargs)

    def __setstate__(self, state):
        raise CheckpointError(f"checkpoint tries to modify {self.name}.")


def _unwrap(x: Any) -> Any:
    return x.target if isinstance(x, _Global) else x


def _flat_mapping(*args, **kwargs) -> dict:
    """Stands in for Haiku's removed `FlatMapping`: a plain dict."""
    return dict(*args, **kwargs)


def _safe_dtype(obj, *args, **kwargs) -> np.dtype:
    dtype = np.dtype(_unwrap(obj), *args, **kwargs)
    if dtype.hasobject:
        raise CheckpointError(
            f"checkpoint holds an array of dtype {dtype}: object arrays are refused "
            "because they can carry arbitrary Python objects."
        )
    return dtype


def _reconstruct(cls, shape, dtype):
    if _unwrap(cls) is not np.ndarray:
        raise CheckpointError(f"checkpoint asks to build a {cls!r}; only numpy.ndarray is allowed.")
    # numpy always follows this with __setstate__, which sets the real shape
    # and data; starting empty never hands out uninitialised memory and
    # ignores a huge `shape` meant to exhaust memory.
    del shape
    return np.empty((0,), _safe_dtype(dtype))


def _frombuffer(buffer, dtype, shape, order):
    return np.frombuffer(buffer, dtype=_safe_dtype(dtype)).reshape(shape, order=order).copy()


def _scalar(dtype, data=None):
    dtype = _safe_dtype(dtype)
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


def _latin1_encode(text, encoding="utf-8"):
    # Pickle protocols 0-2 write bytes as codecs.encode(text, 'latin1'); any
    # other codec (zlib, base64 ...) has no business in a checkpoint.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(
            "checkpoint calls _codecs.encode with something other than (str, 'latin1')."
        )
    return text.encode("latin1")


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
ALLOWED_GLOBALS[("_codecs", "encode")] = (
    _latin1_encode,
    "pickle protocols 0-2 store bytes (array data) as encode(text, 'latin1'); only that",
)
if ml_dtypes is not None:
    ALLOWED_GLOBALS[("ml_dtypes", "bfloat16")] = (
        ml_dtypes.bfloat16,
        "the argument of dtype() for bfloat16 arrays, as `save` writes them from jax",
    )
del _module

# Classes a file may name only as an argument (to _reconstruct or dtype), never call.
_ARGUMENT_ONLY = (np.ndarray,) + ((ml_dtypes.bfloat16,) if ml_dtypes is not None else ())


def _is_parameter_dtype(dtype: np.dtype) -> bool:
    """Numbers and booleans, the only element types a parameter tree holds."""
    return dtype.kind in "biufc" or (ml_dtypes is not None and dtype == ml_dtypes.bfloat16)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise CheckpointError(
                f"checkpoint refers to {module}.{name}, which is not allowed in a checkpoint; "
                "nothing from the file was run."
            )
        return _Global(f"{module}.{name}", allowed[0])


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
        tree[str(module)] = {}
        for name, value in params.items():
            try:
                array = np.asarray(value)
            except Exception as e:  # e.g. ragged nested lists
                raise CheckpointError(
                    f"{what}[{module!r}][{name!r}] is not an array: {type(e).__name__}: {e}"
                ) from None
            # Also catches dtypes whose pickled state claims to hold objects.
            if array.dtype.hasobject or not _is_parameter_dtype(array.dtype):
                raise CheckpointError(
                    f"{what}[{module!r}][{name!r}] has dtype {array.dtype}; "
                    "only numeric and boolean arrays are allowed."
                )
            tree[str(module)][str(name)] = array
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


def _payload(params: Mapping, state: Optional[Mapping]) -> Any:
    params = _to_tree(params, "params")
    if state:
        return {"params": params, "state": _to_tree(state, "state")}
    return params


def dumps(params: Mapping, state: Optional[Mapping] = None) -> bytes:
    """The bytes `save` writes."""
    return pickle.dumps(_payload(params, state), protocol=4)


def save(path: "os.PathLike[str] | str", params: Mapping, state: Optional[Mapping] = None) -> None:
    """Writes a checkpoint in the published format, atomically.

    Params alone when `state` is empty, else `{'params': ..., 'state': ...}`;
    arrays become numpy arrays so that a plain `pickle.load` reads the file.
    The bytes go to a temporary file in the same directory that is renamed
    over `path` only once complete, so a crash never leaves a partial file.

    Raises:
      CheckpointError: if a value is not a numeric or boolean array.
      OSError: if the file cannot be written; `path` is then left as it was.
    """
    path = os.fspath(path)
    payload = _payload(params, state)  # Fails before any file is touched.
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # open(..., "xb") rather than mkstemp: the file gets the usual permissions
    # (umask), not mkstemp's owner-only 0600, and a name clash fails loudly.
    tmp = os.path.join(directory, f"{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            # Streamed, so a large checkpoint is not held twice in memory.
            pickle.dump(payload, f, protocol=4)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def tree_differences(expected: Mapping, found: Mapping) -> list:
    """Every difference between two `{module: {name: array-like}}` trees.

    Shapes are compared, and dtypes where both sides have them.

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
            same_dtype = (
                not hasattr(w, "dtype")
                or not hasattr(g, "dtype")
                or np.dtype(w.dtype) == np.dtype(g.dtype)
            )
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
