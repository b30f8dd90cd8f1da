"""Checkpoint files: `load` and `save` by the file's extension, and what a file is.

A path ending in `.safetensors` is read and written as safetensors
(`perceiver.checkpoint.safetensors_format`); any other path is a pickle
(`perceiver.checkpoint.pickled`). A description (`save_description`) sits
beside either as `NAME.json`. Before reading, `load` tells from the file's
first bytes what it is (`check_file`), so that a folder, a description, a
text, an image... is refused as what it is.
"""

import os
import pickle
from typing import Any, Mapping, Optional, Tuple

from perceiver import _messages
from perceiver.checkpoint.atomic_write import write_atomically
from perceiver.checkpoint.description import description_path, description_text
from perceiver.checkpoint.errors import CheckpointError
from perceiver.checkpoint.pickled import loads, pickle_payload
from perceiver.checkpoint.safetensors_format import (
    SAFETENSORS_SUFFIX,
    is_safetensors,
    load_safetensors,
    safetensors_bytes,
    safetensors_numpy,
)
from perceiver.checkpoint.trees import Tree


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
        safetensors_numpy(path)  # Without the package, what to install comes first.
    kind = check_file(path)  # Before reading it all: a 2 GB video is refused from its first bytes.
    if is_safetensors(path) and kind.name in ("text", "pickle"):
        raise CheckpointError(_messages.wrong_kind(path, kind, "a safetensors file, as its name says"))
    if is_safetensors(path) or kind.name == "safetensors":
        return load_safetensors(path, allow_nonfinite)
    with open(path, "rb") as f:
        data = f.read()
    return loads(data, source=path, allow_nonfinite=allow_nonfinite)


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
        data = safetensors_bytes(params, state, path)  # Fails before any file is touched.
        write = lambda f: f.write(data)  # noqa: E731
    else:
        payload = pickle_payload(params, state)  # Fails before any file is touched.
        write = lambda f: pickle.dump(payload, f, protocol=4)  # noqa: E731  Streamed.
    text = None if description is None else description_text(description, path)
    write_atomically(path, write)
    if text is not None:
        write_atomically(description_path(path), lambda f: f.write(text.encode("utf-8")))
