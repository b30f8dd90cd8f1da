"""Reading transformers' `save_pretrained` directories: config.json, weights, `from_hf`.

`from_hf` reads a directory as transformers' `save_pretrained` writes it
(`config.json` plus `model.safetensors` or `pytorch_model.bin`, sharded or
not) and returns one of our factories' models with the sizes the config
implies (`perceiver.hf.config`), its tensors placed by
`perceiver.hf.names`. Neither torch nor transformers is needed: safetensors
files are read with the `safetensors` package's numpy API, and
`pytorch_model.bin` archives by `perceiver.torch_zip`. A malformed file of
any kind is refused with a `CheckpointError` naming it.
"""

import json
import os
from typing import Any, Dict, Optional, Tuple

import haiku as hk
import numpy as np

from perceiver import _validation
from perceiver import checkpoint
from perceiver import loading
from perceiver import models
from perceiver import safe_unpickle
from perceiver.checkpoint import CheckpointError
from perceiver.hf.config import FOLDED_QUERY_FIELD, _refuse, build, hf_factory
from perceiver.hf.names import (
    CONV_KERNEL_LAYOUTS,
    Tree,
    _cast_like,
    _fold_decoder_query,
    convert_state_dict,
)
from perceiver.torch_zip import MAX_CHECKPOINT_BYTES, read_torch_bin

MAX_CONFIG_BYTES = 1 << 20  # A Perceiver config.json is ~2 KB (id2label of 1000 classes ~40 KB).

# Whatever else a damaged safetensors header or body makes the reading raise.
_DAMAGED = (OSError, ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)

WEIGHTS_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def read_config(path: "os.PathLike[str] | str") -> Dict[str, Any]:
    """The parsed `config.json` of a `save_pretrained` directory.

    Raises:
      FileNotFoundError: if there is none.
      CheckpointError: if it is too large, unreadable, or not a JSON object.
    """
    file = os.path.join(os.fspath(path), "config.json")
    if not os.path.exists(file):
        raise FileNotFoundError(f"no config.json in {os.fspath(path)}")
    return _read_json_object(file, "not a Perceiver config")


def _read_json_file(file: str) -> Optional[Dict[str, Any]]:
    """A small JSON object file beside the model, or None when absent."""
    if not os.path.isfile(file):
        return None
    return _read_json_object(file, "not a transformers file")


def _read_json_object(file: str, too_large: str) -> Dict[str, Any]:
    """A JSON object file of at most MAX_CONFIG_BYTES; any other file is a CheckpointError."""
    try:
        with open(file, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as e:  # A folder of that name, unreadable, ...
        raise CheckpointError(f"{file}: cannot be read ({type(e).__name__}).") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{file}: larger than {MAX_CONFIG_BYTES} bytes; {too_large}.")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # Recursion: [[[[...]]]].
        deep = isinstance(e, RecursionError)
        reason = "nested too deep" if deep else " ".join(str(e).split())[:200]
        raise CheckpointError(f"{file}: not valid JSON ({reason}).") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: must hold a JSON object; got {type(value).__name__}.")
    return value


def read_safetensors(file: "os.PathLike[str] | str") -> Dict[str, np.ndarray]:
    """`{name: array}` of a `.safetensors` file, through the safetensors package (no torch).

    See `checkpoint.read_safetensors`: the header is bounded and its dtypes
    checked before safetensors reads the file.

    Raises:
      FileNotFoundError: for a missing file.
      ImportError: without the `safetensors` package (`pip install 'perceiver-io-jax[hf]'`).
      CheckpointError: for a file safetensors cannot read, naming it.
    """
    file = os.fspath(file)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no checkpoint file {file}")
    try:
        return checkpoint.read_safetensors(file)[0]
    except (CheckpointError, ImportError):
        raise
    except _DAMAGED as e:
        raise CheckpointError(
            f"{file}: not a readable safetensors file "
            f"({type(e).__name__}: {safe_unpickle.short(str(e), 150)})."
        ) from None


def read_weights(
    path: "os.PathLike[str] | str", weights_name: Optional[str] = None
) -> Dict[str, np.ndarray]:
    """`{name: array}` of a `save_pretrained` directory's weights.

    Args:
      path: the directory.
      weights_name: one of `WEIGHTS_NAMES`; by default the first present
        (safetensors before pytorch_model.bin, as transformers prefers).

    Raises:
      FileNotFoundError: if there is no weights file.
      CheckpointError: for a file that cannot be read, naming it.
    """
    path = os.fspath(path)
    if weights_name is None:
        present = [n for n in WEIGHTS_NAMES if os.path.isfile(os.path.join(path, n))]
        if not present:
            raise FileNotFoundError(f"{path} holds none of {', '.join(WEIGHTS_NAMES)}.")
        weights_name = present[0]
    elif weights_name not in WEIGHTS_NAMES:
        raise ValueError(
            f"weights_name must be one of {', '.join(WEIGHTS_NAMES)}; got {weights_name!r}."
        )
    file = os.path.join(path, weights_name)
    safetensors = weights_name.startswith("model.safetensors")
    budget = [MAX_CHECKPOINT_BYTES]  # Shared by the shards of one checkpoint.

    def read_one(file):
        return read_safetensors(file) if safetensors else read_torch_bin(file, budget)

    if not weights_name.endswith(".index.json"):
        return read_one(file)
    # A sharded checkpoint: the index maps every tensor to its shard.
    limit = 16 * MAX_CONFIG_BYTES
    try:
        with open(file, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CheckpointError(f"{file}: cannot be read ({type(e).__name__}).") from None
    try:
        weight_map = json.loads(raw.decode("utf-8"))["weight_map"] if len(raw) <= limit else None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        weight_map = None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{file}: not a checkpoint index (JSON of at most {limit} bytes with a 'weight_map')."
        )
    shards = sorted(set(map(str, weight_map.values())))
    tensors: Dict[str, np.ndarray] = {}
    for shard in shards:
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise CheckpointError(
                f"{file}: shard {safe_unpickle.short(shard)} is not a file name in the directory."
            )
        part = read_one(os.path.join(path, shard))
        for name, value in part.items():
            if name in tensors:
                raise CheckpointError(
                    f"{file}: tensor {safe_unpickle.short(name)} appears in two shards."
                )
            tensors[name] = value
    if set(tensors) != set(weight_map):
        missing = [safe_unpickle.short(n, 80) for n in sorted(set(weight_map) - set(tensors))[:5]]
        extra = [safe_unpickle.short(n, 80) for n in sorted(set(tensors) - set(weight_map))[:5]]
        raise CheckpointError(
            f"{file}: shards disagree with the index (missing [{', '.join(missing)}], "
            f"unlisted [{', '.join(extra)}])."
        )
    return tensors


def from_hf(
    path: "os.PathLike[str] | str",
    *,
    weights_name: Optional[str] = None,
    conv_kernel_layout: str = "oihw",
) -> Tuple[hk.TransformedWithState, Tree, Tree]:
    """Our model and trees for a transformers Perceiver `save_pretrained` directory.

    Tensors are read as they are, except a learned classifier whose config
    has `FOLDED_QUERY_FIELD` (written by `to_hf`): its decoder query is added
    back to the output bias, so that ours computes what transformers does.

    Args:
      path: the directory (`config.json` and the weights).
      weights_name: which weights file to read (see `read_weights`).
      conv_kernel_layout: 'oihw' (default: the conv kernel as torch applies
        it) or 'oiwh' (undo transformers' conversion script's transpose,
        recovering DeepMind's kernel); see `perceiver.hf.names`.

    Returns:
      `(model, params, state)`, ready for `model.apply(params, state, None, ...)`.

    Raises:
      FileNotFoundError: for a missing config.json or weights file.
      ValueError: naming the config field and value our factories cannot express.
      CheckpointError: (a ValueError) for an unreadable or hostile file, or
        tensors that do not fit the model, with every difference listed.
    """
    _, factory, kwargs, params, state = _read_hf(
        path, weights_name=weights_name, conv_kernel_layout=conv_kernel_layout
    )
    return build(factory, kwargs), params, state


def _read_hf(
    path: "os.PathLike[str] | str", *, weights_name: Optional[str], conv_kernel_layout: str
) -> Tuple[Dict[str, Any], str, Dict[str, Any], Tree, Tree]:
    """`(config, factory, kwargs, params, state)` of a save_pretrained directory (see `from_hf`)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"path must be a save_pretrained directory; {path} is not a directory."
        )
    _validation.check_choice("conv_kernel_layout", conv_kernel_layout, CONV_KERNEL_LAYOUTS)
    config = read_config(path)
    factory, kwargs = hf_factory(config)
    tensors = read_weights(path, weights_name)
    folded = config.get(FOLDED_QUERY_FIELD, False)
    if folded not in (True, False):
        raise _refuse(FOLDED_QUERY_FIELD, folded, "true or false")
    if folded and kwargs.get("variant") == "learned_position_encoding":
        tensors = _fold_decoder_query(tensors, +1)  # Written by to_hf: undo its fold.
    params, state, unused = convert_state_dict(
        config["architectures"][0], tensors, conv_kernel_layout=conv_kernel_layout
    )
    described = loading.describe(factory, kwargs)
    if unused:
        raise checkpoint.differences_error(
            f"{path}: {len(unused)} checkpoint tensors have no place in {described}", unused
        )
    expected = models.parameter_shapes(factory, **kwargs)
    params, state = _cast_like(expected[0], params), _cast_like(expected[1], state)
    what = (
        f"{path}: the params converted for {described}",
        f"{path}: the state converted for {described}",
    )
    loading.check_fits(factory, params, state, kwargs, what=what, expected=expected)
    return config, factory, kwargs, params, state


