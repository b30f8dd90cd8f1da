"""Our trees in `.safetensors` files, read and written with the safetensors package.

One tensor per leaf: params keyed `MODULE/NAME`, state `state/MODULE/NAME`,
in one file (see the package's `SAFETENSORS_FORMAT`). The header's length
is bounded and its dtypes checked before safetensors reads the file.
Needs `pip install 'perceiver-io-jax[hf]'`.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from perceiver import _messages
from perceiver import safe_unpickle
from perceiver.checkpoint.errors import CheckpointError
from perceiver.checkpoint.trees import Tree, check_finite, is_parameter_dtype, memory_tree

try:  # Ships with jax; lets bfloat16 checkpoints written by `save` load again.
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

# Documented where the package exports it (perceiver/checkpoint/__init__.py).
SAFETENSORS_FORMAT = "perceiver-tree/1"
STATE_PREFIX = "state/"
SAFETENSORS_SUFFIX = ".safetensors"
# A header lists each tensor in ~100 bytes: 16 MB is far past any Perceiver's
# (the MLM has ~500 leaves), and bounds what a hostile header makes us parse.
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20
# safetensors dtype codes of numbers and booleans, the only ones we read or write.
_SAFETENSORS_DTYPES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
}


def is_safetensors(path: "os.PathLike[str] | str") -> bool:
    """Whether `load` and `save` treat `path` as safetensors (its name ends in `.safetensors`)."""
    return os.fspath(path).lower().endswith(SAFETENSORS_SUFFIX)


def safetensors_numpy(path: str):
    """The safetensors package's numpy API; without the package, ImportError naming `path`."""
    try:
        from safetensors import numpy as st_numpy
    except ImportError:
        raise ImportError(
            f"{path}: safetensors files need the safetensors package: "
            f"{_messages.install_hint('hf')}"
        ) from None
    return st_numpy


def _safetensors_header(path: str) -> Dict[str, Any]:
    """The JSON header of a safetensors file, read with its length bounded and its dtypes checked."""
    size = os.path.getsize(path)  # FileNotFoundError for a missing file.
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{path}: {size} bytes, too short for a safetensors header; not a safetensors file."
            )
        length = int.from_bytes(head, "little")
        if length > MAX_SAFETENSORS_HEADER_BYTES:
            raise CheckpointError(
                f"{path}: declares a safetensors header of {length} bytes; at most "
                f"{MAX_SAFETENSORS_HEADER_BYTES} allowed."
            )
        if 8 + length > size:
            raise CheckpointError(
                f"{path}: declares a safetensors header of {length} bytes, past the end of the "
                f"{size}-byte file (truncated or not a safetensors file)."
            )
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(
            f"{path}: the safetensors header is not JSON ({safe_unpickle.short(str(e), 120)})."
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object.")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if not isinstance(dtype, str) or dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{path}: tensor {safe_unpickle.short(name)} has dtype {safe_unpickle.short(dtype)}; "
                f"only numbers and booleans are read ({', '.join(_SAFETENSORS_DTYPES)})."
            )
        if dtype == "BF16" and ml_dtypes is None:  # pragma: no cover - ml_dtypes ships with jax.
            raise CheckpointError(f"{path}: tensor {name} is bfloat16, which needs ml_dtypes.")
    return header


def read_safetensors(path: "os.PathLike[str] | str") -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """`({name: array}, metadata)` of a `.safetensors` file, through safetensors' numpy loader.

    The header's length is bounded and its dtypes checked before safetensors
    reads the file (which checks shapes and offsets); every array is copied
    into memory of its own.

    Raises:
      FileNotFoundError: for a missing file.
      ImportError: without the safetensors package (`pip install 'perceiver-io-jax[hf]'`).
      CheckpointError: naming the file, for a damaged or hostile one.
    """
    path = os.fspath(path)
    st_numpy = safetensors_numpy(path)
    header = _safetensors_header(path)
    try:
        tensors = st_numpy.load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError, and others.
        raise CheckpointError(
            f"{path}: not a readable safetensors file "
            f"({type(e).__name__}: {safe_unpickle.short(str(e), 150)})."
        ) from None
    if set(tensors) != set(header) - {"__metadata__"}:  # The file changed while we read it.
        raise CheckpointError(f"{path}: the file changed while it was read.")
    arrays = {}
    for name, value in tensors.items():
        array = np.array(value)  # Own memory, not a view of the mapped file.
        if not is_parameter_dtype(array.dtype):
            raise CheckpointError(f"{path}: tensor {safe_unpickle.short(name)} has dtype {array.dtype}.")
        arrays[name] = array
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        metadata = {}
    return arrays, metadata


def load_safetensors(path: str, allow_nonfinite: bool) -> Tuple[Tree, Tree]:
    """`(params, state)` of a `SAFETENSORS_FORMAT` file, as `load` returns them."""
    tensors, _ = read_safetensors(path)
    params: Tree = {}
    state: Tree = {}
    for key in sorted(tensors):
        tree, rest = (state, key[len(STATE_PREFIX):]) if key.startswith(STATE_PREFIX) else (params, key)
        module, _, name = rest.rpartition("/")
        if not module or not name:
            raise CheckpointError(
                f"{path}: tensor {safe_unpickle.short(key)} is not named MODULE/NAME as our trees "
                "are (for a transformers checkpoint directory, use `perceiver convert`)."
            )
        tree.setdefault(module, {})[name] = tensors[key]
    if not allow_nonfinite:
        check_finite(params, state, path)
    return params, state


def safetensors_bytes(params: Mapping, state: Optional[Mapping], path: str) -> bytes:
    """The bytes of `SAFETENSORS_FORMAT` for our trees."""
    st_numpy = safetensors_numpy(path)
    flat: Dict[str, np.ndarray] = {}
    supported = set(_SAFETENSORS_DTYPES.values())
    for prefix, tree in (("", memory_tree(params, "params")), (STATE_PREFIX, memory_tree(state or {}, "state"))):
        what = "state" if prefix else "params"
        for module, leaves in tree.items():
            if not module or (not prefix and (module == "state" or module.startswith(STATE_PREFIX))):
                raise CheckpointError(
                    f"{what} module {module!r} cannot be saved as safetensors: its keys would "
                    f"read back as {'a bad name' if not module else 'state'}."
                )
            for name, array in leaves.items():
                if not name or "/" in name:
                    raise CheckpointError(
                        f"{what}[{module!r}][{name!r}]: a leaf name must be non-empty and hold no '/'."
                    )
                if np.dtype(array.dtype).name not in supported:
                    raise CheckpointError(
                        f"{what}[{module!r}][{name!r}] has dtype {array.dtype}, which safetensors "
                        "cannot hold; use a .pystate file."
                    )
                # C order (as safetensors needs); not ascontiguousarray, which makes 0-d arrays 1-d.
                flat[f"{prefix}{module}/{name}"] = np.asarray(array, order="C")
    try:
        return st_numpy.save(flat, metadata={"format": SAFETENSORS_FORMAT})
    except Exception as e:  # pragma: no cover - every dtype and name was checked above.
        raise CheckpointError(f"{path}: safetensors cannot write the trees: {e}") from None
