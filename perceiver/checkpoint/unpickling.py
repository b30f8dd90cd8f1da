"""What a checkpoint pickle may build: `ALLOWED_GLOBALS`, and numpy arrays checked first.

The published checkpoints are pickles of nested dicts of numpy arrays. Their
opcodes run on `perceiver.safe_unpickle.Reader`, which builds only dicts and
plain values, and calls for a global only the handlers here: each checks the
arguments the file gives before anything of numpy sees them, and no array is
ever a view of memory it does not own.
"""

import functools
from typing import Any, Callable, Dict, Tuple

import numpy as np

from perceiver import safe_unpickle
from perceiver.checkpoint.errors import CheckpointError
from perceiver.checkpoint.trees import Tree, is_parameter_dtype, leaf_path

try:  # Ships with jax; lets bfloat16 checkpoints written by `save` load again.
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

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
    if type(value) is not np.ndarray or not is_parameter_dtype(value.dtype):
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
                f"{what}{leaf_path(module)} must be a dict of arrays; got {safe_unpickle.short(params)}."
            )
        tree[module] = {}
        for name, value in params.items():
            array = _leaf(value, f"{what}{leaf_path(module, name)}")
            if id(array) in seen:  # One array under two names: give each its own.
                array = array.copy()
            seen.add(id(array))
            tree[module][name] = array
    return tree


def read_trees(data: bytes) -> Tuple[Tree, Tree]:
    """`(params, state)` of a checkpoint pickle: params alone, or `{'params': ..., 'state': ...}`.

    Raises:
      safe_unpickle.UnpicklingError: for bytes the reader refuses or cannot parse.
      CheckpointError: for a global, array or tree the handlers refuse.
    """
    obj = safe_unpickle.Reader(_NumpyLoader().handlers()).load(data)
    if type(obj) is dict and "params" in obj and set(obj) <= {"params", "state"}:
        params, state = obj["params"], obj.get("state")
        state = {} if state is None else state
    else:
        params, state = obj, {}
    seen: set = set()
    return _file_tree(params, "params", seen), _file_tree(state, "state", seen)
