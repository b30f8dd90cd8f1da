"""A reader of torch's zip checkpoints (`pytorch_model.bin`) that builds only tensors.

Neither torch nor Python's pickle runs: the archive's `data.pkl` goes through
`perceiver.safe_unpickle`, which knows only dicts, `OrderedDict` and torch's
`_rebuild_tensor_v2` on plain storages. Every storage member is read with its
declared size checked against what its tensors need, no tensor is a view past
its storage, and all of it is bounded (`MAX_PICKLE_BYTES`,
`MAX_CHECKPOINT_BYTES`). Any malformed file, however it is broken (a damaged
zip directory, a truncated or corrupted member, a hostile pickle), is refused
with one `perceiver.checkpoint.CheckpointError` line naming the file.
"""

import os
import re
import struct
import sys
import zipfile
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from perceiver import safe_unpickle
from perceiver.checkpoint import CheckpointError

try:  # Ships with jax; lets bfloat16 tensors load.
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

MAX_PICKLE_BYTES = 64 << 20  # data.pkl of the largest published model is under 100 KB.
MAX_CHECKPOINT_BYTES = 16 << 30  # All tensors of one checkpoint; the largest published is ~1 GB.

# What a damaged archive makes zipfile, zlib or numpy raise while it is read:
# a broken end-of-archive record or directory (BadZipFile, struct.error,
# OverflowError, ValueError), a corrupted or cut-short member (zlib.error,
# EOFError, CRC BadZipFile), odd names or flags (UnicodeDecodeError,
# NotImplementedError for encryption or unknown compression, KeyError), and
# reading itself (OSError).
_DAMAGED = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OverflowError,
    UnicodeDecodeError,
    NotImplementedError,
    KeyError,
    IndexError,
    RuntimeError,
    OSError,
    ValueError,
)

# torch storage class -> element type, as torch pickles storages.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("f4"),
    "DoubleStorage": np.dtype("f8"),
    "HalfStorage": np.dtype("f2"),
    "LongStorage": np.dtype("i8"),
    "IntStorage": np.dtype("i4"),
    "ShortStorage": np.dtype("i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
if ml_dtypes is not None:
    _STORAGE_DTYPES["BFloat16Storage"] = np.dtype(ml_dtypes.bfloat16)
_MAX_NDIM = 32
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class _Storage:
    """One storage of a torch zip archive: a flat array read from `<archive>/data/<key>`."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


class _TorchZip:
    """Reads one `pytorch_model.bin` (torch's zip format) without torch or running its pickle."""

    def __init__(self, file: str, zf: zipfile.ZipFile, budget: List[int]):
        self.file, self.zf, self.budget = file, zf, budget
        names = [i.filename for i in zf.infolist()]
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise self.error(
                f"a torch archive holds one <name>/data.pkl; found {len(pickles)} "
                "(torch's legacy non-zip format is not supported)"
            )
        self.prefix = pickles[0][: -len("/data.pkl")]
        self.members = {i.filename: i for i in zf.infolist()}
        self.storages: Dict[str, _Storage] = {}
        self.byteorder = self._byteorder()

    @staticmethod
    def error(message: str) -> safe_unpickle.UnpicklingError:
        # Raised inside the pickle machine too, which passes only its own error through;
        # read_torch_bin adds the file name.
        return safe_unpickle.UnpicklingError(message)

    def read(self, name: str, size: int) -> bytes:
        """Member `name`, whose declared size must be exactly `size` bytes; read with that bound."""
        info = self.members.get(name)
        if info is None:
            raise self.error(f"the archive has no member {safe_unpickle.short(name)}")
        if info.file_size != size:
            raise self.error(f"member {name} declares {info.file_size} bytes; expected {size}")
        with self.zf.open(info) as f:
            data = f.read(size + 1)
        if len(data) != size:
            raise self.error(f"member {name} holds {len(data)} bytes; expected {size}")
        return data

    def _bounded(self, name: str, limit: int) -> bytes:
        info = self.members[name]
        if info.file_size > limit:
            raise self.error(
                f"member {name} declares {info.file_size} bytes; at most {limit} allowed"
            )
        return self.read(name, info.file_size)

    def _byteorder(self) -> str:
        name = f"{self.prefix}/byteorder"
        if name not in self.members:
            return "little"  # Archives before torch 1.x wrote none: always little-endian.
        order = self._bounded(name, 16)
        if order not in (b"little", b"big"):
            raise self.error(
                f"byteorder is {safe_unpickle.short(order)}; expected b'little' or b'big'"
            )
        return order.decode()

    def tensors(self) -> Dict[str, np.ndarray]:
        data = self._bounded(f"{self.prefix}/data.pkl", MAX_PICKLE_BYTES)
        reader = safe_unpickle.Reader(self._handlers(), persistent_load=self._persistent_load)
        obj = reader.load(data)
        if type(obj) is safe_unpickle.AttributedDict:
            obj = dict(obj)  # The tensors only; `_metadata` is dropped.
        if type(obj) is not dict:
            raise self.error(f"the pickle holds {safe_unpickle.short(obj)}; expected a state dict")
        for name, value in obj.items():
            if type(value) is not np.ndarray:
                raise self.error(
                    f"state dict entry {safe_unpickle.short(name)} is "
                    f"{safe_unpickle.short(value)}; expected a tensor"
                )
        return obj

    # -- the pickle's globals and persistent ids ----------------------------

    def _handlers(self) -> Dict[Tuple[str, str], Callable]:
        handlers: Dict[Tuple[str, str], Callable] = {
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("collections", "OrderedDict"): _ordered_dict,
        }
        for name in _STORAGE_DTYPES:
            handlers[("torch", name)] = _argument_only(f"torch.{name}")
        return handlers

    def _persistent_load(self, pid: Any) -> _Storage:
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
            raise safe_unpickle.UnpicklingError(
                f"a persistent id is {safe_unpickle.short(pid)}; "
                "expected ('storage', class, key, location, numel)"
            )
        _, cls, key, _location, numel = pid
        if (
            not isinstance(cls, safe_unpickle.Global)
            or cls.module != "torch"
            or cls.name not in _STORAGE_DTYPES
        ):
            raise safe_unpickle.UnpicklingError(
                f"a storage has class {safe_unpickle.short(cls)}; refused"
            )
        if type(key) is not str or not _KEY.fullmatch(key):
            raise safe_unpickle.UnpicklingError(
                f"a storage key is {safe_unpickle.short(key)}; refused"
            )
        if type(numel) is not int or numel < 0:
            raise safe_unpickle.UnpicklingError(
                f"storage {key} has {safe_unpickle.short(numel)} elements"
            )
        dtype = _STORAGE_DTYPES[cls.name]
        if key in self.storages:
            cached = self.storages[key].array
            if cached.dtype != dtype or cached.size != numel:
                raise safe_unpickle.UnpicklingError(
                    f"storage {key} is named with two types or sizes"
                )
            return self.storages[key]
        nbytes = numel * dtype.itemsize
        if nbytes > self.budget[0]:
            raise safe_unpickle.UnpicklingError(
                f"storage {key} needs {nbytes} bytes, past the "
                f"{MAX_CHECKPOINT_BYTES}-byte limit of one checkpoint"
            )
        raw = self.read(f"{self.prefix}/data/{key}", nbytes)  # Exact size, bounded read.
        self.budget[0] -= nbytes
        array = np.frombuffer(bytearray(raw), dtype=dtype, count=numel)  # Owns its bytes.
        if self.byteorder != sys.byteorder and dtype.itemsize > 1:
            array.byteswap(inplace=True)
        self.storages[key] = _Storage(array)
        return self.storages[key]

    def _rebuild_tensor(self, args: tuple) -> np.ndarray:
        if len(args) not in (6, 7):
            raise safe_unpickle.UnpicklingError(
                f"_rebuild_tensor_v2 takes 6 or 7 arguments; got {len(args)}"
            )
        storage, offset, size, stride, requires_grad, hooks = args[:6]
        metadata = args[6] if len(args) == 7 else None
        if not isinstance(storage, _Storage):
            raise safe_unpickle.UnpicklingError(
                f"a tensor's storage is {safe_unpickle.short(storage)}"
            )
        if type(requires_grad) is not bool or hooks != {} or metadata not in (None, {}):
            raise safe_unpickle.UnpicklingError(
                "a tensor carries gradient hooks or metadata; refused"
            )
        return _strided(storage.array, offset, size, stride)


def _strided(flat: np.ndarray, offset: Any, size: Any, stride: Any) -> np.ndarray:
    """A copy of the strided view `flat[offset + sum(i_k * stride_k)]`, checked inside `flat`."""

    def ints(value, what):
        if (
            type(value) is not tuple
            or len(value) > _MAX_NDIM
            or any(type(v) is not int or v < 0 for v in value)
        ):
            raise safe_unpickle.UnpicklingError(
                f"a tensor's {what} is {safe_unpickle.short(value)}; refused"
            )
        return value

    size, stride = ints(size, "size"), ints(stride, "stride")
    if len(size) != len(stride):
        raise safe_unpickle.UnpicklingError(f"a tensor has size {size} but stride {stride}")
    if type(offset) is not int or not 0 <= offset <= flat.size:
        raise safe_unpickle.UnpicklingError(
            f"a tensor's offset {safe_unpickle.short(offset)} lies outside "
            f"its storage of {flat.size}"
        )
    if 0 in size:
        return np.zeros(size, flat.dtype)
    extent = (
        offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    )  # Python ints: no overflow.
    if extent > flat.size:
        raise safe_unpickle.UnpicklingError(
            f"a tensor of size {size}, stride {stride} at offset {offset} "
            f"reaches element {extent - 1} "
            f"of a storage of {flat.size}"
        )
    base = flat[offset:extent]
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=tuple(s * flat.itemsize for s in stride), writeable=False
    )
    return np.array(view, copy=True)


def _ordered_dict(args: tuple) -> dict:
    # torch.save(model.state_dict()) sets the OrderedDict's `_metadata` (module
    # versions) by BUILD: an AttributedDict keeps it apart from the tensors.
    if args == ():
        return safe_unpickle.AttributedDict()
    if (
        len(args) == 1
        and type(args[0]) in (list, tuple)
        and all(type(p) in (list, tuple) and len(p) == 2 and type(p[0]) is str for p in args[0])
    ):
        return safe_unpickle.AttributedDict(args[0])
    raise safe_unpickle.UnpicklingError(
        "OrderedDict is built from something other than (str, value) pairs"
    )


def _argument_only(name: str) -> Callable:
    def handler(args):
        raise safe_unpickle.UnpicklingError(
            f"the pickle calls {name}, which may only be an argument"
        )

    return handler


def read_torch_bin(
    file: "os.PathLike[str] | str", _budget: Optional[List[int]] = None
) -> Dict[str, np.ndarray]:
    """`{name: array}` of a torch zip checkpoint (`pytorch_model.bin`), without torch.

    Only `_rebuild_tensor_v2` tensors on plain storages, `OrderedDict` and
    dicts are built; each storage member's declared size must equal what
    its tensors need, and each tensor must lie inside its storage.

    Raises:
      FileNotFoundError: if there is no such file.
      CheckpointError: naming the file, on one line, for anything else (a
        non-zip file, a damaged archive or member, other globals, a missing
        or mis-sized member, a tensor past its storage, members over the
        size limits).
    """
    file = os.fspath(file)
    budget = [MAX_CHECKPOINT_BYTES] if _budget is None else _budget
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no checkpoint file {file}")
    try:
        if not zipfile.is_zipfile(file):
            raise CheckpointError(
                f"{file}: not a zip archive; only torch's zip checkpoints (torch >= 1.6) are read"
            )
        with zipfile.ZipFile(file) as zf:
            return _TorchZip(file, zf, budget).tensors()
    except CheckpointError:
        raise
    except safe_unpickle.UnpicklingError as e:
        raise CheckpointError(f"{file}: {_one_line(str(e))}") from None
    except _DAMAGED as e:
        kind = type(e).__name__
        if type(e).__module__ not in ("builtins", "zipfile"):  # zlib.error, struct.error
            kind = f"{type(e).__module__}.{kind}"
        reason = _one_line(f"{kind}: {e}")
        raise CheckpointError(f"{file}: damaged zip archive ({reason})") from None


def _one_line(text: str, limit: int = 500) -> str:
    """`text` on one line of at most `limit` characters (it may quote the file's bytes)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
