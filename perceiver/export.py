"""Models serialized as StableHLO with `jax.export`, to run without this package.

    exported = export.export('imagenet_fourier', batch='dynamic')
    export.save(exported, 'imagenet.jaxexport')
    # Elsewhere, with jax alone:
    #   exp = jax.export.deserialize(open('imagenet.jaxexport', 'rb').read())
    #   logits = exp.call(images)

What is exported is the network a factory of `perceiver.models` builds,
with its weights inside: it takes the inputs that factory's `apply` takes
(`inputs` lists them) in inference mode. The tasks' steps around it
(tokenizing, cropping, tiling a large frame, sampling) stay in Python.
"""

import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import jax
import numpy as np

from perceiver import _factories as factories
from perceiver import _messages
from perceiver import checkpoint
from perceiver import hub
from perceiver import loading

DYNAMIC = "dynamic"
# jax indexes in int32 unless jax_enable_x64 is set: a larger batch overflows.
MAX_BATCH = 2**31 - 1


def _load(name_or_path: Any, sizes: Mapping[str, Any], cache_dir: Optional[str] = None):
    """`(factory, sizes, params, state)` of a published name, a shipped name, or a described file."""
    source = loading.resolve(name_or_path)
    if loading.is_published(source):
        if sizes:
            raise ValueError(
                f"{name_or_path!r} is a published model of fixed sizes; sizes apply only to a file."
            )
        entry = hub.get(source)
        _, params, state = loading.pretrained(source, cache_dir=cache_dir)
        return entry.factory, dict(entry.factory_kwargs), params, state
    factory, sizes, _, params, state = loading.load_described(source, **sizes)
    return factory, dict(sizes), params, state


def _batch_inputs(factory: str, sizes: Mapping[str, Any]) -> List[np.ndarray]:
    """The arrays the factory's `apply` takes, at batch 1 (its optional arguments left out)."""
    example = factories._BUILDERS[factory](**sizes).example_inputs
    arrays = []
    for value in example:
        if not isinstance(value, np.ndarray) or value.ndim == 0:
            break  # e.g. the video autoencoder's `subsampling`: None decodes every output.
        arrays.append(value)
    return arrays


def _specs(arrays: List[np.ndarray], batch: Union[int, str]) -> Tuple[jax.ShapeDtypeStruct, ...]:
    if batch == DYNAMIC:
        (size,) = jax.export.symbolic_shape("batch")
    else:
        size = batch
    return tuple(jax.ShapeDtypeStruct((size,) + x.shape[1:], x.dtype) for x in arrays)


def _plain(tree: Any) -> Any:
    """`tree` with named tuples as dicts of their fields, fields holding no array left out.

    A deserializing process knows dicts, lists and tuples, but not our
    classes (Perceiver AR's `Output`).
    """
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {k: _plain(v) for k, v in zip(tree._fields, tree) if jax.tree_util.tree_leaves(v)}
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_plain(v) for v in tree)
    return tree


def _check_batch(batch: Any) -> Union[int, str]:
    if batch == DYNAMIC:
        return batch
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be a positive int (at most {MAX_BATCH}) or {DYNAMIC!r}; got {batch!r}.")
    return int(batch)


def inputs(factory: str, **sizes) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """Shapes (batch first) and dtypes of what an exported `factory(**sizes)` takes, in order."""
    arrays = _batch_inputs(factories.factory_name(factory), sizes)
    return {f"input{i}": (x.shape, str(x.dtype)) for i, x in enumerate(arrays)}


def export(
    name_or_path: Any,
    *,
    batch: Union[int, str] = "dynamic",
    platforms: Optional[Tuple[str, ...]] = None,
    cache_dir: Optional[str] = None,
    **sizes,
) -> "jax.export.Exported":
    """One of our models, with its weights, as a `jax.export.Exported`.

    Args:
      name_or_path: a published name ('flow', 'mlm', ...), a shipped one
        ('flow_small'), or a checkpoint file with its description (what
        `perceiver train --export` writes).
      batch: the batch size the export takes, or 'dynamic' (default) for any
        batch (a symbolic dimension; tiles and chunks are then planned per
        example).
      platforms: the platforms it may run on (default: this machine's), e.g.
        ('cpu', 'cuda').
      cache_dir: where published checkpoints are cached (see `perceiver.hub`).
      **sizes: factory arguments overriding a file's description.

    Returns:
      The exported function: `exported.call(*inputs)` returns what the
      model's `apply` returns (its first element; no state), in inference mode.

    Raises:
      ValueError: for a bad batch, or sizes given with a published name.
      FileNotFoundError, perceiver.checkpoint.CheckpointError: for a file
        that is missing, not a checkpoint, or without a description.
    """
    batch = _check_batch(batch)
    factory, sizes, params, state = _load(name_or_path, sizes, cache_dir)
    model = factories._BUILDERS[factory](**sizes).model

    def serve(*arrays):
        out, _ = model.apply(params, state, None, *arrays, is_training=False)
        return _plain(out)

    specs = _specs(_batch_inputs(factory, sizes), batch)
    try:
        return jax.export.export(jax.jit(serve), platforms=platforms)(*specs)
    except Exception as e:  # jax's own errors for shapes a model cannot leave symbolic
        if batch != DYNAMIC:
            raise
        raise ValueError(
            f"{factory} cannot be exported with a dynamic batch ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); give a batch size."
        ) from None


def check_serializable() -> None:
    """Fails early, in one line, where jax.export cannot serialize (it needs flatbuffers).

    Raises:
      ImportError: naming the extra that installs it.
    """
    try:
        import flatbuffers  # noqa: F401
    except ImportError:
        raise ImportError(
            f"writing an exported model needs the flatbuffers package: {_messages.install_hint('export')}"
        ) from None


def save(exported: "jax.export.Exported", path: Union[str, "os.PathLike[str]"]) -> None:
    """Writes `exported.serialize()` to `path`, whole or not at all.

    Raises:
      ImportError: without flatbuffers (see `check_serializable`).
    """
    check_serializable()
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    data = exported.serialize()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".export-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path: Union[str, "os.PathLike[str]"]) -> "jax.export.Exported":
    """An exported model read back (`jax.export.deserialize`; needs no part of this package).

    Raises:
      perceiver.checkpoint.CheckpointError: for a file that is not one.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return jax.export.deserialize(bytearray(data))
    except Exception:
        raise checkpoint.CheckpointError(
            f"{os.fspath(path)} is not a model exported with jax.export ({len(data)} bytes)."
        ) from None
