"""Reading and writing Perceiver checkpoints safely.

The published checkpoints (`*.pystate`, `*.pickle`) are Python pickles of
nested dicts of numpy arrays, sometimes inside Haiku's old `FlatMapping`
container, and either params alone or `{'params': ..., 'state': ...}`.
Unpickling runs whatever the file names, so `load` never unpickles: it runs
the file's opcodes on `perceiver.safe_unpickle.Reader`, which builds only
dicts, plain values and the few numpy calls such files need
(`ALLOWED_GLOBALS`), each checked before numpy sees it. Nothing from the file
runs, and no array is ever a view of memory it does not own.

`save` and `load` choose the format by the file's extension: a path ending
in `.safetensors` is read and written with the safetensors package's numpy
API (`pip install 'perceiver-io-jax[hf]'`), keyed as `SAFETENSORS_FORMAT` says, with
its header bounded, its dtypes numeric, and the same non-finite check; any
other path is a pickle. A description (`save_description`) sits beside
either as `NAME.json`.

Before reading, `load` tells from the file's first bytes what it is
(`check_file`): a folder, an empty file, a description, a text, an image...
is refused as what it is ("x.json is a checkpoint description, expected a
checkpoint file; give the checkpoint it describes, x.pystate"), and a
damaged pickle as "a damaged checkpoint" before the parser's detail.
"""

import functools
import json
import os
import pickle
import secrets
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from perceiver import _messages
from perceiver import safe_unpickle

try:  # Ships with jax; lets bfloat16 checkpoints written by `save` load again.
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

Tree = Dict[str, Dict[str, np.ndarray]]


class CheckpointError(ValueError):
    """A checkpoint file could not be read, or does not fit a model.

    Attributes:
      differences: for a checkpoint that does not fit, every difference
        (`tree_differences` lines); the message shows only the first few.
    """

    def __init__(self, message: str, differences: Optional[List[str]] = None):
        super().__init__(message)
        self.differences = list(differences or [])


# (module, name) -> (handler, why the published files need it). A handler gets
# the arguments the file gives, already built as plain values, and checks them
# before anything of numpy sees them.
ALLOWED_GLOBALS: Dict[Tuple[str, str], Tuple[Callable, str]] = {}

# The element types a parameter can have, by the code numpy pickles them with.
_NUMERIC_CODES = frozenset(
    ["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"]
)
_MAX_NDIM = 32
_MAX_DIM = 1 << 40


class _Dtype(safe_unpickle.Pending):
    """`numpy.dtype(code)` as the file asked for it; BUILD may only pick a byte order."""

    def __init__(self, base: np.dtype):
        self.base, self.dtype, self.used, self.built = base, base, False, False

    def build(self, state: Any) -> None:
        if self.built or self.used:
            raise CheckpointError(f"checkpoint sets the state of dtype {self.base} twice or late.")
        # The state must be exactly what numpy itself writes for this type in
        # one of the byte orders: a subarray, fields, item size or flags of
        # the file's own choosing are what let a dtype view past its buffer.
        for order in ("<", ">", "|"):
            candidate = self.base.newbyteorder(order)
            if state == candidate.__reduce__()[2]:
                self.dtype, self.built = candidate, True
                return
        raise CheckpointError(
            f"checkpoint gives dtype {self.base} a non-standard state "
            f"({safe_unpickle.short(state)}); refused."
        )

    def use(self) -> np.dtype:
        self.used = True
        return self.dtype


class _Array(safe_unpickle.Pending):
    """`_reconstruct(ndarray, ...)`: an array waiting for its BUILD state."""

    def __init__(self, loader: "_NumpyLoader"):
        self.loader, self.array = loader, None

    def build(self, state: Any) -> None:
        if self.array is not None:
            raise CheckpointError("checkpoint sets an array's state twice.")
        if type(state) is not tuple or len(state) not in (4, 5):
            raise CheckpointError(f"an array's state is {safe_unpickle.short(state)}; refused.")
        if len(state) == 5:
            version, state = state[0], state[1:]
            if type(version) is not int or version != 1:
                raise CheckpointError(f"unknown array state version {safe_unpickle.short(version)}.")
        shape, dtype, fortran, data = state
        if type(fortran) not in (bool, int) or fortran not in (0, 1):
            raise CheckpointError(f"an array's order flag is {safe_unpickle.short(fortran)}.")
        self.array = self.loader.array(data, dtype, shape, "F" if fortran else "C")


def _shape(shape: Any) -> Tuple[int, ...]:
    if type(shape) is not tuple or len(shape) > _MAX_NDIM:
        raise CheckpointError(f"an array's shape is {safe_unpickle.short(shape)}; refused.")
    for dim in shape:
        if type(dim) is not int or not 0 <= dim <= _MAX_DIM:
            raise CheckpointError(f"an array's shape holds {safe_unpickle.short(dim)}; refused.")
    return shape


def _dtype_of(value: Any) -> np.dtype:
    if not isinstance(value, _Dtype):
        raise CheckpointError(f"an array's dtype is {safe_unpickle.short(value)}; refused.")
    return value.use()


def _data(value: Any) -> bytearray:
    if type(value) is not bytearray:
        raise CheckpointError(
            f"an array's data is {safe_unpickle.short(value)}; only raw bytes are allowed "
            "(object arrays are refused: they can carry arbitrary Python objects)."
        )
    return value


class _NumpyLoader:
    """The handlers of one load; remembers which buffers arrays already own."""

    def __init__(self):
        self._owned = set()

    def array(self, data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        data, dtype, shape = _data(data), _dtype_of(dtype), _shape(shape)
        if order not in ("C", "F"):
            raise CheckpointError(f"an array's order is {safe_unpickle.short(order)}; refused.")
        count = 1
        for dim in shape:
            count *= dim
        if count * dtype.itemsize != len(data):
            raise CheckpointError(
                f"an array of shape {list(shape)} and dtype {dtype} needs "
                f"{count * dtype.itemsize} bytes; the file gives {len(data)}."
            )
        if id(data) in self._owned:  # One buffer given twice: no shared memory.
            data = bytearray(data)
        self._owned.add(id(data))
        # Writable and owned: the array keeps its exact-length bytearray alive.
        flat = np.frombuffer(data, dtype=dtype, count=count) if count else np.empty(0, dtype)
        array = flat.reshape(shape, order=order)
        return _native(array)

    # -- handlers, each taking the REDUCE's argument tuple ------------------

    def reconstruct(self, args: tuple) -> _Array:
        if len(args) != 3 or not _is_global(args[0], "numpy", "ndarray"):
            raise CheckpointError("checkpoint asks _reconstruct for something other than numpy.ndarray.")
        return _Array(self)

    def frombuffer(self, args: tuple) -> np.ndarray:
        if len(args) != 4:
            raise CheckpointError("checkpoint calls _frombuffer with the wrong arguments.")
        return self.array(*args)

    def scalar(self, args: tuple) -> np.generic:
        if len(args) != 2:
            raise CheckpointError("checkpoint calls numpy's scalar() with the wrong arguments.")
        dtype, data = _dtype_of(args[0]), _data(args[1])
        if len(data) != dtype.itemsize:
            raise CheckpointError(
                f"a scalar of dtype {dtype} needs {dtype.itemsize} bytes; the file gives {len(data)}."
            )
        return _native(np.frombuffer(bytes(data), dtype=dtype, count=1))[0]

    def jax_array(self, args: tuple) -> np.ndarray:
        """A pickled jax.Array: numpy's own (_reconstruct, args, state), rebuilt as numpy."""
        if len(args) != 4 or type(args[1]) is not tuple or type(args[3]) is not dict:
            raise CheckpointError("checkpoint rebuilds a jax array with unexpected arguments.")
        func, reconstruct_args, state = args[:3]
        if not any(_is_global(func, module, "_reconstruct") for module in _MULTIARRAY):
            raise CheckpointError("checkpoint rebuilds a jax array with something other than numpy's _reconstruct.")
        array = self.reconstruct(reconstruct_args)
        array.build(state)
        return array.array

    @staticmethod
    def dtype(args: tuple) -> _Dtype:
        if not 1 <= len(args) <= 3 or any(type(a) is not bool for a in args[1:]):
            raise CheckpointError("checkpoint calls numpy.dtype with unexpected arguments.")
        code = args[0]
        if ml_dtypes is not None and _is_global(code, "ml_dtypes", "bfloat16"):
            return _Dtype(np.dtype(ml_dtypes.bfloat16))
        if type(code) is not str or code not in _NUMERIC_CODES:
            raise CheckpointError(
                f"checkpoint holds an array of dtype {safe_unpickle.short(code)}: only numeric and "
                "boolean dtypes are allowed (object and structured dtypes are refused)."
            )
        return _Dtype(np.dtype(code))

    @staticmethod
    def latin1_encode(args: tuple) -> bytearray:
        # Pickle protocols 0-2 write bytes as codecs.encode(text, 'latin1'); any
        # other codec (zlib, base64 ...) has no business in a checkpoint.
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
            raise CheckpointError(
                "checkpoint calls _codecs.encode with something other than (str, 'latin1')."
            )
        return bytearray(args[0].encode("latin1"))

    @staticmethod
    def empty_bytes(args: tuple) -> bytearray:
        if args != ():
            raise CheckpointError("checkpoint calls bytes() with arguments.")
        return bytearray()

    @staticmethod
    def plain_dict(args: tuple) -> dict:
        """FlatMapping(d) or OrderedDict(pairs): a plain dict with str keys."""
        if args == ():
            return {}
        if len(args) != 1:
            raise CheckpointError("checkpoint builds a mapping with unexpected arguments.")
        (source,) = args
        if type(source) is dict:
            return dict(source)  # Keys were checked when it was built.
        if type(source) in (list, tuple):
            result = {}
            for pair in source:
                if type(pair) not in (list, tuple) or len(pair) != 2 or type(pair[0]) is not str:
                    raise CheckpointError("checkpoint builds a mapping from something other than (str, value) pairs.")
                result[pair[0]] = pair[1]
            return result
        raise CheckpointError(f"checkpoint builds a mapping from {safe_unpickle.short(source)}.")

    def handlers(self) -> Dict[Tuple[str, str], Callable]:
        return {key: functools.partial(handler, self) for key, (handler, _) in ALLOWED_GLOBALS.items()}


def _argument_only(name: str) -> Callable:
    def handler(loader, args):
        raise CheckpointError(f"checkpoint calls {name}, which may only be an argument.")

    return handler


def _is_global(value: Any, module: str, name: str) -> bool:
    return isinstance(value, safe_unpickle.Global) and (value.module, value.name) == (module, name)


def _native(array: np.ndarray) -> np.ndarray:
    """The array in the machine's byte order (files may hold big-endian data)."""
    if array.dtype.byteorder in ("=", "|") or array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
for _module in _MULTIARRAY:
    ALLOWED_GLOBALS[(_module, "_reconstruct")] = (
        lambda loader, args: loader.reconstruct(args),
        "numpy pickles every array as _reconstruct(ndarray, shape, dtype) + state",
    )
    ALLOWED_GLOBALS[(_module, "scalar")] = (
        lambda loader, args: loader.scalar(args),
        "numpy pickles scalars (e.g. a BatchNorm counter) as scalar(dtype, bytes)",
    )
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    ALLOWED_GLOBALS[(_module, "_frombuffer")] = (
        lambda loader, args: loader.frombuffer(args),
        "numpy pickles arrays this way under pickle protocol 5",
    )
ALLOWED_GLOBALS[("jax._src.array", "_reconstruct_array")] = (
    lambda loader, args: loader.jax_array(args),
    "jax arrays pickled as they are (pickle.dump of Haiku params); rebuilt as numpy arrays",
)
ALLOWED_GLOBALS[("numpy", "ndarray")] = (
    _argument_only("numpy.ndarray"),
    "the class argument of _reconstruct (only ever this class is built)",
)
ALLOWED_GLOBALS[("numpy", "dtype")] = (
    lambda loader, args: loader.dtype(args),
    "each array's dtype is pickled as dtype(code); only numeric codes are built",
)
ALLOWED_GLOBALS[("haiku._src.data_structures", "FlatMapping")] = (
    lambda loader, args: loader.plain_dict(args),
    "Haiku's 2021 parameter container, rebuilt as a plain dict",
)
ALLOWED_GLOBALS[("collections", "OrderedDict")] = (
    lambda loader, args: loader.plain_dict(args),
    "some Haiku versions pickled parameter trees as OrderedDicts; rebuilt as dict",
)
ALLOWED_GLOBALS[("_codecs", "encode")] = (
    lambda loader, args: loader.latin1_encode(args),
    "pickle protocols 0-2 store bytes (array data) as encode(text, 'latin1'); only that",
)
for _module in ("builtins", "__builtin__"):
    ALLOWED_GLOBALS[(_module, "bytes")] = (
        lambda loader, args: loader.empty_bytes(args),
        "protocols 0-2 write the data of an empty array as bytes(); only that",
    )
if ml_dtypes is not None:
    ALLOWED_GLOBALS[("ml_dtypes", "bfloat16")] = (
        _argument_only("ml_dtypes.bfloat16"),
        "the argument of dtype() for bfloat16 arrays, as `save` writes them from jax",
    )
del _module


def _is_parameter_dtype(dtype: np.dtype) -> bool:
    """Numbers and booleans, the only element types a parameter tree holds."""
    return dtype.kind in "biufc" or (ml_dtypes is not None and dtype == ml_dtypes.bfloat16)


def _path(*keys: str) -> str:
    return "".join(f"[{safe_unpickle.short(k, 100)}]" for k in keys)


def _leaf(value: Any, where: str) -> np.ndarray:
    """A value read from a file as a numeric array, or CheckpointError."""
    if isinstance(value, _Array):
        if value.array is None:
            raise CheckpointError(f"{where} is an array that never received its data.")
        value = value.array
    if isinstance(value, np.generic):
        value = np.asarray(value)
    elif type(value) in (bool, float) or (type(value) is int and -(2**63) <= value < 2**63):
        value = np.asarray(value)
    if type(value) is not np.ndarray or not _is_parameter_dtype(value.dtype):
        what = f"dtype {value.dtype}" if isinstance(value, np.ndarray) else safe_unpickle.short(value)
        raise CheckpointError(f"{where} is {what}; only numeric and boolean arrays are allowed.")
    return value


def _file_tree(obj: Any, what: str, seen: set) -> Tree:
    """`{module: {name: array}}` from what the reader built; every leaf checked."""
    if type(obj) is not dict:
        raise CheckpointError(f"{what} must be a dict of modules; got {safe_unpickle.short(obj)}.")
    tree = {}
    for module, params in obj.items():
        if type(params) is not dict:
            raise CheckpointError(
                f"{what}{_path(module)} must be a dict of arrays; got {safe_unpickle.short(params)}."
            )
        tree[module] = {}
        for name, value in params.items():
            array = _leaf(value, f"{what}{_path(module, name)}")
            if id(array) in seen:  # One array under two names: give each its own.
                array = array.copy()
            seen.add(id(array))
            tree[module][name] = array
    return tree


def _nonfinite(tree: Tree, what: str) -> List[str]:
    lines = []
    for module, params in tree.items():
        for name, array in params.items():
            if array.dtype.kind in "fc" or (ml_dtypes is not None and array.dtype == ml_dtypes.bfloat16):
                bad = array.size - int(np.count_nonzero(np.isfinite(array)))
                if bad:
                    lines.append(f"{what}{_path(module, name)} ({bad} of {array.size})")
    return lines


# The first bytes of the pickles people write: protocol 2+ (PROTO), and
# protocol 0/1's usual openings (MARK, an empty dict, list or tuple, a global).
_PICKLE_OPENINGS = b"\x80(}]),c"


def wrong_kind_hint(path: str, kind: _messages.Kind) -> str:
    """What to give instead of a file of `kind` where a checkpoint was expected ('' if nothing to say)."""
    if kind.name == "description":
        stem = os.path.splitext(path)[0]
        for suffix in (".pystate", SAFETENSORS_SUFFIX, ".pickle", ".pkl"):
            if os.path.isfile(stem + suffix):
                return f"give the checkpoint it describes, {stem + suffix}"
        return "give the checkpoint file it describes (NAME.pystate or NAME.safetensors beside NAME.json)"
    if kind.name == "hf_folder":
        return f"convert it first: perceiver convert {path} model.pystate"
    if kind.name in ("hf_config", "torch"):
        folder = os.path.dirname(os.path.abspath(path))
        return f"for a transformers folder, convert it first: perceiver convert {folder} model.pystate"
    if kind.name == "folder":
        try:
            inside = sorted(
                n for n in os.listdir(path) if n.endswith((".pystate", SAFETENSORS_SUFFIX, ".pickle"))
            )
        except OSError:
            inside = []
        if inside:
            more = f" and {len(inside) - 3} more" if len(inside) > 3 else ""
            return f"it holds {', '.join(inside[:3])}{more}"
    return ""


def _ends_with_stop(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"."
    except OSError:
        return True  # Unreadable now: opening it again will say why.


def check_file(path: "os.PathLike[str] | str") -> _messages.Kind:
    """Raises unless `path` is a file that may be a checkpoint; returns its kind.

    From the file's first bytes only: a folder, an empty file, JSON (a
    checkpoint's description among them), an image, a video, a zip archive...
    are refused, saying what the file is and what to give instead.

    Raises:
      FileNotFoundError: if nothing is at `path`.
      CheckpointError: "PATH is KIND, expected a checkpoint file", for a
        folder or a file of another kind.
    """
    path = os.fspath(path)
    kind = _messages.file_kind(path)
    if kind.name == "missing":
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    # Text is a protocol-0 pickle only if it ends with STOP ('.'): then the parser decides.
    if kind.name == "text" and _ends_with_stop(path):
        return kind
    # An unreadable file says why when opened.
    if kind.name not in ("pickle", "safetensors", "binary", "unreadable"):
        raise CheckpointError(
            _messages.wrong_kind(path, kind, _messages.CHECKPOINT, wrong_kind_hint(path, kind))
        )
    return kind


def _unreadable(source: str, data: bytes, error: "safe_unpickle.UnpicklingError") -> str:
    """Why `data` did not read, in the reader's words: what the bytes are, before opcodes."""
    kind = _messages.bytes_kind(data[:4096], len(data))
    if kind.name not in ("pickle", "safetensors", "text", "binary"):
        return _messages.wrong_kind(source, kind, _messages.CHECKPOINT)
    malformed = isinstance(error, safe_unpickle.MalformedPickle)
    # A protocol-0 pickle is text too: one that is whole (ends with STOP) and
    # refused keeps the refusal's reason.
    if kind.name == "text" and (malformed or not data.rstrip(b"\r\n").endswith(b".")):
        return _messages.wrong_kind(source, kind, _messages.CHECKPOINT)
    if malformed and data[:1] and data[:1] in _PICKLE_OPENINGS:
        return f"{source} is a damaged checkpoint: {error}"
    if malformed:
        return (
            f"{source} is not a checkpoint: neither a pickle nor a safetensors file (it starts "
            f"with {safe_unpickle.short(bytes(data[:12]))})."
        )
    return f"{source}: {error}"


def loads(data: bytes, source: str = "<bytes>", *, allow_nonfinite: bool = False) -> Tuple[Tree, Tree]:
    """Like `load`, from bytes; `source` names them in errors."""
    try:
        obj = safe_unpickle.Reader(_NumpyLoader().handlers()).load(data)
        if type(obj) is dict and "params" in obj and set(obj) <= {"params", "state"}:
            params, state = obj["params"], obj.get("state")
            state = {} if state is None else state
        else:
            params, state = obj, {}
        seen: set = set()
        params, state = _file_tree(params, "params", seen), _file_tree(state, "state", seen)
    except safe_unpickle.UnpicklingError as e:
        raise CheckpointError(_unreadable(source, data, e)) from None
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    except RecursionError:  # pragma: no cover - the reader does not recurse.
        raise CheckpointError(f"{source}: the checkpoint is nested too deeply.") from None
    if not allow_nonfinite:
        bad = _nonfinite(params, "params") + _nonfinite(state, "state")
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            arrays = "array" if len(bad) == 1 else "arrays"
            raise CheckpointError(
                f"{source} holds non-finite values (NaN or Inf) in {len(bad)} {arrays}: {shown}; "
                "a diverged or damaged model (perceiver.checkpoint.load(path, "
                "allow_nonfinite=True) reads it anyway)."
            )
    return params, state


def load(path: "os.PathLike[str] | str", *, allow_nonfinite: bool = False) -> Tuple[Tree, Tree]:
    """Reads a checkpoint without running code from it.

    A `.safetensors` file is read by the safetensors package (see
    `SAFETENSORS_FORMAT` for its keys); any other file as a pickle. For
    pickles: accepts params alone or `{'params': ..., 'state': ...}`, plain dicts or
    Haiku's old `FlatMapping`, arrays pickled by numpy 1.x or 2.x under any
    pickle protocol. Only dicts with str keys and numeric arrays are built
    (`perceiver.safe_unpickle`); each array's bytes are checked against its
    shape and dtype before any view of them is made.

    Args:
      path: the checkpoint file.
      allow_nonfinite: load parameters holding NaN or Inf (by default refused,
        naming them).

    Returns:
      `(params, state)` as `{module: {name: np.ndarray}}` (native byte order,
      writable, no two sharing memory); state is `{}` when the file has none.

    Raises:
      FileNotFoundError: if `path` does not exist.
      CheckpointError: (a ValueError) for a folder or a file of another kind
        ("PATH is a text file, expected a checkpoint file", see
        `check_file`), a damaged, foreign or hostile file, or non-finite
        values, naming the file and what was refused.
      ImportError: for a `.safetensors` file without the safetensors package.
    """
    path = os.fspath(path)
    if is_safetensors(path):
        _safetensors_numpy(path)  # Without the package, what to install comes first.
    kind = check_file(path)  # Before reading it all: a 2 GB video is refused from its first bytes.
    if is_safetensors(path) and kind.name in ("text", "pickle"):
        raise CheckpointError(_messages.wrong_kind(path, kind, "a safetensors file, as its name says"))
    if is_safetensors(path) or kind.name == "safetensors":
        return _load_safetensors(path, allow_nonfinite)
    with open(path, "rb") as f:
        data = f.read()
    return loads(data, source=path, allow_nonfinite=allow_nonfinite)


def _memory_tree(obj: Any, what: str) -> Tree:
    """Checks an in-memory `{module: {name: array}}` and returns numpy arrays."""
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
                    f"{what}[{module!r}][{name!r}] is not an array: {type(e).__name__}"
                ) from None
            if not _is_parameter_dtype(array.dtype):
                raise CheckpointError(
                    f"{what}[{module!r}][{name!r}] has dtype {array.dtype}; "
                    "only numeric and boolean arrays are allowed."
                )
            tree[str(module)][str(name)] = array
    return tree


def _payload(params: Mapping, state: Optional[Mapping]) -> Any:
    params = _memory_tree(params, "params")
    if state:
        return {"params": params, "state": _memory_tree(state, "state")}
    return params


def dumps(params: Mapping, state: Optional[Mapping] = None) -> bytes:
    """The bytes `save` writes."""
    return pickle.dumps(_payload(params, state), protocol=4)


def save(
    path: "os.PathLike[str] | str",
    params: Mapping,
    state: Optional[Mapping] = None,
    *,
    description: Optional[Mapping[str, Any]] = None,
) -> None:
    """Writes a checkpoint, atomically: safetensors for a `.safetensors` path, else a pickle.

    A `.safetensors` path gets `SAFETENSORS_FORMAT` (needs the safetensors
    package). Any other path gets the published format: params alone when
    `state` is empty, else `{'params': ..., 'state': ...}`; arrays become
    numpy arrays so that a plain `pickle.load` reads the file.
    The bytes go to a temporary file in the same directory that is renamed
    over `path` only once complete, so a crash never leaves a partial file.

    Args:
      path: the checkpoint file.
      params: `{module: {name: array}}`.
      state: the same for Haiku state (BatchNorm averages), or None.
      description: what rebuilds and runs the model (see `save_description`),
        written beside the file as `description_path(path)`; None writes none
        (and leaves an existing one alone).

    Raises:
      CheckpointError: if a value is not a numeric or boolean array (or, for
        safetensors, a name or dtype it cannot hold), or the description is
        not as `save_description` needs it.
      ImportError: for a `.safetensors` path without the safetensors package.
      OSError: if the file cannot be written; `path` is then left as it was.
    """
    path = os.fspath(path)
    if is_safetensors(path):
        data = _safetensors_bytes(params, state, path)  # Fails before any file is touched.
        write = lambda f: f.write(data)  # noqa: E731
    else:
        payload = _payload(params, state)  # Fails before any file is touched.
        write = lambda f: pickle.dump(payload, f, protocol=4)  # noqa: E731  Streamed.
    text = None if description is None else _description_text(description, path)
    _write_atomically(path, write)
    if text is not None:
        _write_atomically(description_path(path), lambda f: f.write(text.encode("utf-8")))


def _write_atomically(path: str, write: Callable[[Any], Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # open(..., "xb") rather than mkstemp: the file gets the usual permissions
    # (umask), not mkstemp's owner-only 0600, and a name clash fails loudly.
    tmp = os.path.join(directory, f"{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---------------------------------------------------------------------------
# safetensors: our trees in the format transformers and others read
# ---------------------------------------------------------------------------

SAFETENSORS_FORMAT = "perceiver-tree/1"
"""Our trees in a `.safetensors` file: one tensor per leaf, named `MODULE/NAME`.

Params are keyed `MODULE/NAME` (a Haiku module path holds '/', a leaf name
none: the last '/' splits them); state leaves the same under the prefix
`state/` (`state/MODULE/NAME`), in the same file, so that one file is one
checkpoint as with pickles. The header's metadata is `{"format":
SAFETENSORS_FORMAT}`; reading does not need it. A params module called
`state` or under `state/` cannot be saved (it would read back as state).
"""
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


def _safetensors_numpy(path: str):
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
    except (UnicodeDecodeError, ValueError) as e:
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
    st_numpy = _safetensors_numpy(path)
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
        if not _is_parameter_dtype(array.dtype):
            raise CheckpointError(f"{path}: tensor {safe_unpickle.short(name)} has dtype {array.dtype}.")
        arrays[name] = array
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        metadata = {}
    return arrays, metadata


def _load_safetensors(path: str, allow_nonfinite: bool) -> Tuple[Tree, Tree]:
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
        bad = _nonfinite(params, "params") + _nonfinite(state, "state")
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise CheckpointError(
                f"{path} holds non-finite values (NaN or Inf) in {len(bad)} "
                f"{'array' if len(bad) == 1 else 'arrays'}: {shown}; a diverged or damaged model "
                "(perceiver.checkpoint.load(path, allow_nonfinite=True) reads it anyway)."
            )
    return params, state


def _safetensors_bytes(params: Mapping, state: Optional[Mapping], path: str) -> bytes:
    """The bytes of `SAFETENSORS_FORMAT` for our trees."""
    st_numpy = _safetensors_numpy(path)
    flat: Dict[str, np.ndarray] = {}
    supported = set(_SAFETENSORS_DTYPES.values())
    for prefix, tree in (("", _memory_tree(params, "params")), (STATE_PREFIX, _memory_tree(state or {}, "state"))):
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


# ---------------------------------------------------------------------------
# Descriptions: what rebuilds and runs a checkpoint, in a JSON file beside it
# ---------------------------------------------------------------------------

DESCRIPTION_FORMAT = "perceiver-checkpoint/1"
MAX_DESCRIPTION_BYTES = 8 << 20  # Room for the labels of a 21k-class classifier.
# Keys whose type is fixed; any other key is kept as written (JSON values).
_DESCRIPTION_TYPES = {
    "format": str,
    "factory": str,
    "sizes": dict,
    "task": dict,
    "labels": list,
    "tokenizer": dict,
    "description": str,
}


def description_path(path: "os.PathLike[str] | str") -> str:
    """Where the description of checkpoint `path` lives: `NAME.json` beside `NAME.pystate`."""
    return os.path.splitext(os.fspath(path))[0] + ".json"


def _check_description(description: Any, source: str) -> Dict[str, Any]:
    if not isinstance(description, Mapping):
        raise CheckpointError(
            f"{source}: a checkpoint description must be a JSON object; got "
            f"{type(description).__name__}."
        )
    description = dict(description)
    for key, kind in _DESCRIPTION_TYPES.items():
        if key in description and not isinstance(description[key], kind):
            raise CheckpointError(
                f"{source}: description field {key!r} must be a {kind.__name__}; got "
                f"{type(description[key]).__name__}."
            )
    labels = description.get("labels")
    if labels is not None and not all(isinstance(label, str) for label in labels):
        raise CheckpointError(f"{source}: description field 'labels' must be a list of str.")
    return description


def _description_text(description: Mapping[str, Any], path: str) -> str:
    description = _check_description(description, description_path(path))
    description = {"format": DESCRIPTION_FORMAT, **description}

    def plain(value):  # Tuples (image shapes) and numpy scalars as JSON.
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON")

    try:
        return json.dumps(description, indent=2, ensure_ascii=False, default=plain) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{description_path(path)}: the description is not JSON: {e}") from None


def save_description(path: "os.PathLike[str] | str", description: Mapping[str, Any]) -> str:
    """Writes the description of checkpoint `path` beside it, atomically; returns its path.

    A description says what rebuilds and runs the checkpoint, so that a task
    or `--checkpoint FILE` needs nothing else:

      factory: the `perceiver.models` function that builds the model;
      sizes: that factory's keyword arguments (tuples become lists);
      task: the task's options (e.g. flow's `min_overlap`);
      labels: class names, in the order of the model's outputs;
      tokenizer: facts about the text encoding (e.g. `{"kind": "bytes"}`);
      description: one line for people.

    Other keys are kept as written. `format` is added.

    Raises:
      CheckpointError: if a field has the wrong type or a value is not JSON.
    """
    path = os.fspath(path)
    text = _description_text(description, path)
    target = description_path(path)
    _write_atomically(target, lambda f: f.write(text.encode("utf-8")))
    return target


def read_description(path: "os.PathLike[str] | str") -> Dict[str, Any]:
    """The description saved beside checkpoint `path` (see `save_description`); {} if none.

    Raises:
      CheckpointError: naming the file, if it is unreadable, not a JSON
        object, larger than `MAX_DESCRIPTION_BYTES`, or a field has the wrong
        type.
    """
    target = description_path(path)
    if not os.path.isfile(target):
        return {}
    try:
        with open(target, "rb") as f:
            raw = f.read(MAX_DESCRIPTION_BYTES + 1)
    except OSError as e:
        raise CheckpointError(f"{target} (the description of {os.fspath(path)}) is unreadable: {e}") from None
    if len(raw) > MAX_DESCRIPTION_BYTES:
        raise CheckpointError(f"{target} is larger than {MAX_DESCRIPTION_BYTES} bytes; not a description.")
    try:
        description = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(
            f"{target} (the description of {os.fspath(path)}) is not JSON: "
            f"{safe_unpickle.short(str(e), 150)}"
        ) from None
    return _check_description(description, target)


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


def differences_error(header: str, differences: List[str], shown: int = 12) -> CheckpointError:
    """A `CheckpointError` whose message counts differences by kind and shows a few.

    The full list is the error's `differences` attribute; the message stays
    short (a few thousand characters at most) however many there are.
    """
    kinds: Dict[str, List[str]] = {}
    for line in differences:
        kinds.setdefault(line.split(" ", 1)[0].rstrip(":"), []).append(line)
    counts = ", ".join(f"{len(lines)} {kind}" for kind, lines in sorted(kinds.items()))
    # A few of each kind, so that one kind of damage does not hide another.
    each = max(1, shown // max(1, len(kinds)))
    lines = [line for _, group in sorted(kinds.items()) for line in group[:each]]
    lines = [line if len(line) <= 160 else line[:160] + "..." for line in lines]
    more = len(differences) - len(lines)
    tail = [f"... and {more} more (the error's .differences lists all)"] if more > 0 else []
    return CheckpointError(
        f"{header} ({len(differences)} differences: {counts}):\n  " + "\n  ".join(lines + tail),
        differences,
    )


def check_tree(expected: Mapping, found: Mapping, what: str = "params") -> None:
    """Raises `CheckpointError` listing the differences between two trees (all in `.differences`)."""
    lines = tree_differences(expected, found)
    if lines:
        raise differences_error(f"{what} do not match the model", lines)
