"""Descriptions: what rebuilds and runs a checkpoint, in a JSON file beside it."""

import json
import os
from typing import Any, Dict, Mapping

import numpy as np

from perceiver import safe_unpickle
from perceiver.checkpoint.atomic_write import write_atomically
from perceiver.checkpoint.errors import CheckpointError

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


def description_text(description: Mapping[str, Any], path: str) -> str:
    """The JSON text `save_description` writes for checkpoint `path`, `format` added.

    Raises:
      CheckpointError: if a field has the wrong type or a value is not JSON.
    """
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
    text = description_text(description, path)
    target = description_path(path)
    write_atomically(target, lambda f: f.write(text.encode("utf-8")))
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
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(
            f"{target} (the description of {os.fspath(path)}) is not JSON: "
            f"{safe_unpickle.short(str(e), 150)}"
        ) from None
    return _check_description(description, target)
