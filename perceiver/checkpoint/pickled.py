"""Checkpoint pickles: `loads` without running code from them, and `dumps`.

The published checkpoints (`*.pystate`, `*.pickle`) are Python pickles of
nested dicts of numpy arrays, sometimes inside Haiku's old `FlatMapping`
container, and either params alone or `{'params': ..., 'state': ...}`.
`loads` never unpickles: `perceiver.checkpoint.unpickling` builds the trees.
"""

import pickle
from typing import Any, Mapping, Optional, Tuple

from perceiver import _messages
from perceiver import safe_unpickle
from perceiver.checkpoint.errors import CheckpointError
from perceiver.checkpoint.trees import Tree, check_finite, memory_tree
from perceiver.checkpoint.unpickling import read_trees

# The first bytes of the pickles people write: protocol 2+ (PROTO), and
# protocol 0/1's usual openings (MARK, an empty dict, list or tuple, a global).
_PICKLE_OPENINGS = b"\x80(}]),c"


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
        params, state = read_trees(data)
    except safe_unpickle.UnpicklingError as e:
        raise CheckpointError(_unreadable(source, data, e)) from None
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    except RecursionError:  # pragma: no cover - the reader does not recurse.
        raise CheckpointError(f"{source}: the checkpoint is nested too deeply.") from None
    if not allow_nonfinite:
        check_finite(params, state, source)
    return params, state


def pickle_payload(params: Mapping, state: Optional[Mapping]) -> Any:
    """What a pickle checkpoint holds: params alone when `state` is empty, else both."""
    params = memory_tree(params, "params")
    if state:
        return {"params": params, "state": memory_tree(state, "state")}
    return params


def dumps(params: Mapping, state: Optional[Mapping] = None) -> bytes:
    """The bytes `save` writes."""
    return pickle.dumps(pickle_payload(params, state), protocol=4)
