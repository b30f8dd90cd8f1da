"""Loading a model: a published checkpoint (downloaded once) or a file of your own, checked.

    model, params, state = loading.pretrained('imagenet_fourier')
    model, params, state = loading.load_for('optical_flow', 'mine.pystate', num_latents=128)

(`perceiver.models.pretrained` and `perceiver.models.load_for` are these.)

This layer stands above the factories (`perceiver._factories`, which
`perceiver.models` exports) and the registry and downloader (`perceiver.hub`,
which knows no model: `fetch` here hands it the published model's check).
It owns the one check that parameter trees are those of `factory(**sizes)`,
`check_fits`, which the loaders here, the tasks and the converters call.
"""

import functools
import os
import pathlib
from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

import haiku as hk
import jax

from perceiver import _factories as factories
from perceiver import _progress
from perceiver import checkpoint
from perceiver import hub

# Differences a message shows (a few of each kind): with the file's path, the
# sizes and a hint it stays well under 2,000 characters; `.differences` has all.
SHOWN = 8


def describe(factory: str, sizes: Optional[Mapping[str, Any]] = None) -> str:
    """`factory(size=value, ...)`: a model as messages name it."""
    arguments = ", ".join(f"{k}={v!r}" for k, v in (sizes or {}).items())
    return f"{factory}({arguments})"


def _expected(factory: str, sizes: Mapping[str, Any], expected: Optional[Tuple[Mapping, Mapping]]):
    """`expected`, or else the `(params, state)` shapes of `factory(**sizes)`."""
    if expected is not None:
        return expected
    return factories.parameter_shapes(factory, **sizes)


def tree_differences(
    factory: "str | Callable",
    params: Mapping,
    state: Mapping,
    sizes: Optional[Mapping[str, Any]] = None,
    *,
    expected: Optional[Tuple[Mapping, Mapping]] = None,
) -> List[str]:
    """Every difference between `params, state` and the trees of `factory(**sizes)`.

    Args:
      factory: a `perceiver.models` factory, by name or as the function.
      params, state: the trees `{module: {name: array}}` to check.
      sizes: the factory's keyword arguments.
      expected: `(params, state)` trees of arrays or shapes to compare with
        instead of the factory's (e.g. its `parameter_shapes`, already
        computed).

    Returns:
      `perceiver.checkpoint.tree_differences` lines: the params' first, then
      the state's, which start with 'state: '.

    Raises:
      ValueError, TypeError: for an unknown factory or sizes it does not
        take (see `perceiver.models.parameter_shapes`).
    """
    sizes = dict(sizes or {})
    want_params, want_state = _expected(factories.factory_name(factory), sizes, expected)
    return checkpoint.tree_differences(want_params, params) + [
        "state: " + line for line in checkpoint.tree_differences(want_state, state)
    ]


def check_fits(
    factory: "str | Callable",
    params: Mapping,
    state: Mapping,
    sizes: Optional[Mapping[str, Any]] = None,
    *,
    header: Optional[str] = None,
    what: Optional[Tuple[str, str]] = None,
    expected: Optional[Tuple[Mapping, Mapping]] = None,
) -> None:
    """Raises unless `params` and `state` are the trees of `perceiver.models` `factory(**sizes)`.

    Args:
      factory: a factory, by name or as the function.
      params, state: the trees `{module: {name: array}}` to check.
      sizes: the factory's keyword arguments.
      header: how the message starts; default 'params and state do not fit
        FACTORY(SIZES)'. The differences of both trees follow, counted by
        kind, a few shown (the state's start with 'state: ').
      what: instead, `(params' name, state's name)`: each tree is checked
        on its own, the params first, and the message starts 'NAME do not
        match the model' (as `perceiver.checkpoint.check_tree`).
      expected: `(params, state)` trees of arrays or shapes to compare with
        instead of the factory's (e.g. its `parameter_shapes`, already
        computed).

    Raises:
      perceiver.checkpoint.CheckpointError: for trees that do not fit; all
        the differences are in `.differences`.
      ValueError, TypeError: for an unknown factory or sizes it does not
        take (see `perceiver.models.parameter_shapes`).
    """
    factory = factories.factory_name(factory)
    sizes = dict(sizes or {})
    if what is not None:
        want_params, want_state = _expected(factory, sizes, expected)
        checkpoint.check_tree(want_params, params, what[0])
        checkpoint.check_tree(want_state, state, what[1])
        return
    lines = tree_differences(factory, params, state, sizes, expected=expected)
    if lines:
        if header is None:
            header = f"params and state do not fit {describe(factory, sizes)}"
        raise checkpoint.differences_error(header, lines, shown=SHOWN)


def check_checkpoint(
    path: Union[str, "os.PathLike[str]"],
    entry: Union[hub.Checkpoint, str],
    expected: Optional[Tuple[Mapping, Mapping]] = None,
) -> None:
    """Checks that a file reads as a checkpoint of a published entry's model.

    What `fetch` has `perceiver.hub.fetch` run on a download before keeping it.

    Args:
      path: the file.
      entry: the registry entry (or its name) the file should be.
      expected: `(params, state)` trees of arrays or shapes to compare with.
        Default: the entry's model's, from `perceiver.models.parameter_shapes`.

    Raises:
      perceiver.checkpoint.CheckpointError: if the file is not a readable
        checkpoint, or its trees differ from `expected`.
      ValueError: for an unknown entry name.
    """
    if isinstance(entry, str):
        entry = hub.get(entry)
    params, state = checkpoint.load(path)  # First: a bad file fails before the model is built.
    check_fits(
        entry.factory, params, state, entry.factory_kwargs,
        what=("params", "state"), expected=expected,
    )


def is_published(name_or_path: Any) -> bool:
    """Whether `name_or_path` is a name in `perceiver.hub.CHECKPOINTS` (names win over paths)."""
    return isinstance(name_or_path, str) and name_or_path in hub.CHECKPOINTS


def _looks_like_a_name(value: Any) -> bool:
    """A str without a folder or an extension: meant as a name, not as a path."""
    marks = [mark for mark in (os.sep, os.altsep, ".") if mark]
    return isinstance(value, str) and not any(mark in value for mark in marks)


def resolve(name_or_path: Any) -> Union[str, "os.PathLike[str]"]:
    """What a checkpoint argument names, checked before anything is read or built.

    Every name `perceiver list` shows is accepted wherever a checkpoint is:
    a published name is returned as it is (it is downloaded later), a model
    shipped with the package (`perceiver.hub.SHIPPED`, e.g. 'flow_small')
    as its file's path; a path must be a file that may be a checkpoint
    (`perceiver.checkpoint.check_file`: a folder, a description, an image...
    are refused from their first bytes, saying what they are).

    Raises:
      TypeError: for something other than a str or a path.
      ValueError: for a word that is neither a file nor a known name,
        listing the names.
      FileNotFoundError: for a path to nothing.
      perceiver.checkpoint.CheckpointError: "PATH is KIND, expected a
        checkpoint file", for a folder or a file of another kind.
    """
    if isinstance(name_or_path, str):
        if name_or_path in hub.CHECKPOINTS:
            return name_or_path
        if name_or_path in hub.SHIPPED:
            return str(hub.shipped_path(name_or_path))
    elif not isinstance(name_or_path, os.PathLike):
        raise TypeError(
            f"a checkpoint must be a name or a path (str or os.PathLike); got "
            f"{type(name_or_path).__name__}."
        )
    path = os.fspath(name_or_path)
    if not os.path.lexists(path) and _looks_like_a_name(name_or_path):
        raise ValueError(
            f"unknown checkpoint {name_or_path!r}: no such file, nor a checkpoint name "
            f"({', '.join(hub.names())}; `perceiver list` describes them)."
        )
    checkpoint.check_file(path)  # FileNotFoundError for a path to nothing.
    return name_or_path


def default_source(
    published: str, shipped: str, cache_dir: Union[str, "os.PathLike[str]", None] = None
) -> Tuple[str, Optional[str]]:
    """The published model if it is in the cache, else the one shipped with the package.

    What `perceiver flow` and `OpticalFlow.from_pretrained()` both do when no
    checkpoint is named: never a download the caller did not ask for.

    Args:
      published: a name in `perceiver.hub.CHECKPOINTS`.
      shipped: a name in `perceiver.hub.SHIPPED`, of the same task.
      cache_dir: where checkpoints are kept (default `perceiver.hub.cache_dir()`).

    Returns:
      `(source, note)`: `published` and None when it is cached; else the
      shipped model's path and one line saying so and how to get the
      published one (the caller warns or prints it).
    """
    directory = pathlib.Path(cache_dir).expanduser() if cache_dir else hub.cache_dir()
    if (directory / hub.get(published).filename).is_file():
        return published, None
    note = (
        f"using the small {published} model shipped with the package ({shipped}: "
        f"{hub.SHIPPED[shipped].about}), "
        f"as {published!r} is not in the cache {directory}; `perceiver fetch {published}` "
        "downloads DeepMind's published model"
    )
    return str(hub.shipped_path(shipped)), note


def fetch(
    name_or_path: Union[str, "os.PathLike[str]"],
    cache_dir: Union[str, "os.PathLike[str]", None] = None,
    progress: bool = True,
    timeout: float = 60,
    force: bool = False,
) -> pathlib.Path:
    """`perceiver.hub.fetch`, keeping a download only if it is the published model's checkpoint.

    Args:
      name_or_path: a name in `perceiver.hub.CHECKPOINTS` or
        `perceiver.hub.SHIPPED` (its file is returned), or the path of an
        existing file (returned as is, once `resolve` has checked it).
      cache_dir, timeout, force: as for `perceiver.hub.fetch`.
      progress: show a download progress bar (only when stderr is a terminal).

    Raises:
      ValueError, FileNotFoundError, perceiver.checkpoint.CheckpointError:
        as `resolve`, for a name or path that is no checkpoint.
      perceiver.hub.FetchError: as `perceiver.hub.fetch`; a download whose
        trees are not the published model's (`check_checkpoint`) is refused
        with a FetchError.
    """
    name_or_path = resolve(name_or_path)
    verify = None
    if is_published(name_or_path):
        verify = functools.partial(check_checkpoint, entry=hub.get(name_or_path))
    return hub.fetch(
        name_or_path, cache_dir=cache_dir, progress=_progress.shown(progress), timeout=timeout,
        force=force, verify=verify,
    )


def load_for(
    factory: "str | Callable", path, **kwargs
) -> Tuple[hk.TransformedWithState, Mapping, Mapping]:
    """Builds a factory's model and loads a checkpoint file for it, checked.

    Args:
      factory: a factory, by name or as the function (see
        `perceiver.models.parameter_shapes`).
      path: the checkpoint file.
      **kwargs: the factory's arguments.

    Returns:
      `(model, params, state)`, the parameters and state as jax arrays on
      the default device (in jax's dtypes: 64-bit arrays become 32-bit
      unless jax_enable_x64 is on, as a compiled call would make them).

    Raises:
      perceiver.checkpoint.CheckpointError: listing every missing, unexpected
        and mis-shaped parameter when the file does not fit.
    """
    factory = factories.factory_name(factory)
    params, state = checkpoint.load(path)
    header = f"{path} does not fit {describe(factory, kwargs)}"
    check_fits(factory, params, state, kwargs, header=header)
    model = factories._BUILDERS[factory](**kwargs).model
    # Held by the device once: numpy arrays would be copied in on every call
    # of a compiled apply (MLM: 0.75 GiB, a fifth of its forward pass).
    params, state = jax.device_put((params, state))
    return model, params, state


def load_described(
    path: Union[str, "os.PathLike[str]"], **sizes
) -> Tuple[str, Mapping[str, Any], hk.TransformedWithState, Mapping, Mapping]:
    """A checkpoint file loaded for the model its description (NAME.json beside it) names.

    Args:
      path: the checkpoint file.
      **sizes: factory arguments that override the description's.

    Returns:
      `(factory, sizes, model, params, state)`.

    Raises:
      perceiver.checkpoint.CheckpointError: if no description names the
        model, or the file does not read or fit it.
      FileNotFoundError: for a path to nothing.
    """
    checkpoint.check_file(path)
    description = checkpoint.read_description(path)
    factory = description.get("factory")
    if not factory:
        checkpoint.load(path)  # A file that is no checkpoint says so first.
        raise checkpoint.CheckpointError(
            f"{os.fspath(path)} has no description naming its model "
            f"({checkpoint.description_path(path)} with \"factory\" and \"sizes\", which "
            "`perceiver train --export` writes)."
        )

    def tuples(value):  # JSON lists as the tuples the factories take (image shapes).
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    sizes = {**{k: tuples(v) for k, v in description.get("sizes", {}).items()}, **sizes}
    model, params, state = load_for(factory, path, **sizes)
    return factory, sizes, model, params, state


def pretrained(
    name: str, *, cache_dir: Optional[str] = None, progress: bool = True
) -> Tuple[hk.TransformedWithState, Mapping, Mapping]:
    """One of DeepMind's published models, or one shipped with the package, ready to apply.

    Downloads the checkpoint on first use (see `fetch`), reads it safely, and
    checks it against the model.

    Args:
      name: a name in `perceiver.hub.CHECKPOINTS`: 'mlm', 'imagenet_learned',
        'imagenet_fourier', 'imagenet_conv', 'flow' or 'video_autoencoding';
        or in `perceiver.hub.SHIPPED`: 'flow_small' (read with its
        description). (For a file of your own, use `load_for`.)
      cache_dir: where checkpoints are kept (default `$PERCEIVER_CACHE` or
        ~/.cache/perceiver).
      progress: show a download progress bar (only when stderr is a terminal).

    Returns:
      `(model, params, state)`.

    Raises:
      ValueError: for an unknown name.
      perceiver.checkpoint.CheckpointError: if the cached file does not read
        or fit the model, with the differences and how to download it again.
    """
    if isinstance(name, str) and name in hub.SHIPPED:
        return load_described(hub.shipped_path(name))[2:]
    entry = hub.get(name)
    path = fetch(name, cache_dir=cache_dir, progress=progress)
    try:
        return load_for(entry.factory, path, **dict(entry.factory_kwargs))
    except checkpoint.CheckpointError as e:
        raise hub.bad_cache_error(name, path, e) from None  # Says how to replace the file.
