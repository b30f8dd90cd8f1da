"""Output files of the commands: checked before any computing, never replacing an input.

Shared by the command line (`perceiver.cli`) and training (`perceiver.train.main`).
"""

import os
import pathlib
from typing import List, Optional, Sequence, Tuple


class UserError(Exception):
    """An error to report in one line."""


# (option, path, kind): kind "image", "video", "audio", "json", "flo",
# "checkpoint" or "figure" checks the extension against what the writer
# writes (see `_check_output`); None takes any name.
_Output = Tuple[str, Optional[str], Optional[str]]
# (what, path) of an input: what names it for the user ("FRAME1", "--checkpoint").
_Input = Tuple[str, str]

# Kinds of output with one format: the extensions that name it.
_SUFFIXES = {
    "json": ("JSON", (".json",)),
    "flo": ("a Middlebury .flo file", (".flo",)),
    "checkpoint": ("a checkpoint", (".pystate", ".safetensors")),
}


def _check_output(option: str, path: str, kind: Optional[str] = None) -> None:
    """Fails now, before any computing, if `path` cannot be written.

    Raises:
      UserError: naming the option, if path is a directory or another
        non-regular file, its folder is missing or not writable, or its
        extension does not name what `kind` writes: an image or video format
        the writer knows, .wav for "audio", .json for "json", .flo for "flo",
        .pystate or .safetensors for "checkpoint", matplotlib's for "figure".
    """
    from perceiver import media

    target = os.path.realpath(path)
    if os.path.isdir(target):
        raise UserError(f"{option} {path} is a directory; give a file name")
    if os.path.exists(target) and not os.path.isfile(target):
        raise UserError(f"{option} {path} exists and is not a regular file")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise UserError(f"{option} {path}: there is no folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: the folder {folder} is not writable")
    if kind in _SUFFIXES:
        what, suffixes = _SUFFIXES[kind]
        suffix = os.path.splitext(path)[1]
        if suffix.lower() not in suffixes:
            raise UserError(
                f"{option} {path}: it is written as {what}, so its name must end in "
                f"{' or '.join(suffixes)}; got {suffix or 'no extension'!r}"
            )
    if kind == "figure":
        _check_figure_suffix(option, path)
    try:
        if kind == "image":
            media.check_image_suffix(path)
        elif kind == "video":
            media.check_video_suffix(path)
        elif kind == "audio":
            media.check_audio_suffix(path)
    except ValueError as e:
        raise UserError(f"{option}: {e}") from None


def _check_figure_suffix(option: str, path: str) -> None:
    """Fails unless matplotlib's savefig writes `path`'s extension (nothing to check without it)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return  # the command says what it needs

    known = sorted(FigureCanvasBase.get_supported_filetypes())
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if suffix not in known:
        raise UserError(
            f"{option}: cannot write a figure to {path}: the extension must be one of "
            f"{', '.join('.' + k for k in known)}; got {('.' + suffix) if suffix else 'none'!r}"
        )


def _same_file(one: str, other: str) -> bool:
    """Whether two paths name one file: the same path, a symbolic or a hard link."""
    if os.path.realpath(one) == os.path.realpath(other):
        return True
    try:
        return os.path.samefile(one, other)
    except OSError:  # one of them does not exist (yet)
        return False


def _check_not_inputs(outputs: Sequence[Tuple[str, str]], inputs: Sequence[_Input]) -> None:
    """Fails if an output `(option, path)` names an existing input file (or a file in an input folder).

    Raises:
      UserError: naming the option, the output and the input it would replace.
    """
    for option, path in outputs:
        if path is None or not os.path.isfile(path):
            continue  # only an existing file can be an input
        for what, source in inputs:
            if source is None or not os.path.exists(source):
                continue
            if os.path.isdir(source):
                # Every file of an input folder (a transformers folder) is read.
                hit = os.path.dirname(os.path.realpath(path)) == os.path.realpath(source)
            else:
                hit = _same_file(path, source)
            if hit:
                shown = source if os.path.isfile(source) else f"the folder {source}"
                raise UserError(
                    f"{option} {path} would replace the input {what} ({shown}); give another "
                    "file name"
                )


def _check_outputs(outputs: Sequence[_Output], inputs: Sequence[_Input] = ()) -> None:
    """`_check_output` on each output given (path not None); that no two are one file, and none an input."""
    given = [(option, path, kind) for option, path, kind in outputs if path is not None]
    for i, (option, path, _) in enumerate(given):
        for earlier, other, _ in given[:i]:
            if _same_file(path, other):
                raise UserError(f"{earlier} and {option} both name {path}; give two files")
    for option, path, kind in given:
        _check_output(option, path, kind)
    _check_not_inputs([(option, path) for option, path, _ in given], inputs)


def _check_output_folder(
    option: str, folder: str, names: Sequence[str], inputs: Sequence[_Input] = ()
) -> None:
    """Fails now if `folder` cannot be made or its files `names` cannot be written or are inputs."""
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            raise UserError(f"{option} {folder} exists and is not a folder")
        _check_outputs([(option, os.path.join(folder, name), None) for name in names], inputs)
        return
    parent = os.path.dirname(os.path.abspath(folder))
    while not os.path.exists(parent):  # makedirs makes every missing level.
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {folder}: cannot make it in {parent} (not a writable folder)")


def _checkpoint_files(value: Optional[str], cache_dir: Optional[str]) -> List[str]:
    """The files a --checkpoint value reads: the file (a published name's cached one) and its description."""
    if not value:
        return []
    from perceiver import checkpoint, hub

    path = value
    if value in hub.CHECKPOINTS and not os.path.exists(value):
        cache = pathlib.Path(cache_dir).expanduser() if cache_dir else hub.cache_dir()
        path = str(cache / hub.get(value).filename)
    elif value in hub.SHIPPED and not os.path.exists(value):
        path = str(hub.shipped_path(value))
    if os.path.isdir(path):
        return [path]
    return [path, checkpoint.description_path(path)]
