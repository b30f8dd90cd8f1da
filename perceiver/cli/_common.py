"""What the `perceiver` commands share: argument checks, inputs, and outputs written whole.

Output paths are checked before any computing; `_write_all` writes every
output of a command whole or none of them.
"""

import json
import os
import secrets
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from perceiver import _interrupt
from perceiver._outputs import UserError, _Input, _check_not_inputs, _checkpoint_files

# The outputs this command has written, for the line Ctrl-C prints.
_WRITTEN: list = []


def _one_line(error: BaseException) -> str:
    return " | ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())


def _add_cache_dir(parser) -> None:
    parser.add_argument("--cache-dir", help="default: $PERCEIVER_CACHE or ~/.cache/perceiver")


def _check_no_input_replaced(args) -> None:
    """Fails before any work if an output option of the command names one of its inputs.

    The command's parser names its path options (`set_defaults`):
    `input_options` maps a dest to "file", or to "checkpoint" for a checkpoint
    and its description; `output_options` maps a dest to its option, or to a
    function of the arguments giving (option, path) pairs.

    Raises:
      UserError: naming the output option and the input.
    """
    inputs: List[_Input] = []
    for dest, kind in (getattr(args, "input_options", None) or {}).items():
        value = getattr(args, dest, None)
        values = value if isinstance(value, list) else [value]
        what = dest.upper() if dest in ("frame1", "frame2", "video", "image", "images") else (
            "--" + dest.replace("_", "-")
        )
        for item in values:
            if kind == "checkpoint":
                files = _checkpoint_files(item, getattr(args, "cache_dir", None))
                inputs += [(what if i == 0 else f"{what}'s description", f) for i, f in enumerate(files)]
            elif item:
                inputs.append((what, item))
    outputs: List[Tuple[str, str]] = []
    for dest, option in (getattr(args, "output_options", None) or {}).items():
        if getattr(args, dest, None) is None:
            continue
        outputs += option(args) if callable(option) else [(option, getattr(args, dest))]
    _check_not_inputs(outputs, inputs)


def _write_all(writes: Sequence[Tuple[str, Callable[[str], None]]]) -> None:
    """Writes each file under a temporary name beside it, then renames them all into place.

    A failure (or Ctrl-C) before the renames removes the temporary files, so
    no output is left half-written.

    Args:
      writes: `(path, write)` pairs; `write(temporary_path)` writes the file.
        The temporary name keeps the path's extension, from which the image
        and video writers take the format.
    """
    staged = []
    try:
        for path, write in writes:
            target = os.path.realpath(path)
            folder, name = os.path.split(target)
            stem, suffix = os.path.splitext(name)
            temporary = os.path.join(folder, f".{stem}.{secrets.token_hex(4)}.part{suffix}")
            staged.append((temporary, target))
            try:
                write(temporary)
            except (ValueError, OSError) as e:
                # The writer named the file it was given; name the output.
                raise UserError(_one_line(e).replace(temporary, path)) from e
        # All or none: Ctrl-C waits for the last rename.
        with _interrupt.held():
            for (temporary, target), (path, _) in zip(staged, writes):
                os.replace(temporary, target)
                _WRITTEN.append(path)
    finally:
        for temporary, _ in staged:
            if os.path.lexists(temporary):
                os.unlink(temporary)


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _check_positive(option: str, value: Optional[int], least: int = 1) -> None:
    """Fails now, before any model is loaded, unless `value` is None or >= `least`."""
    if value is not None and value < least:
        raise UserError(f"{option} must be >= {least}; got {value}")


def _read_image(path: str) -> np.ndarray:
    """The image at `path`; a folder, a checkpoint, a text... is named as what it is (media's ValueError)."""
    from perceiver import media

    try:
        return media.read_image(path)
    except FileNotFoundError:
        raise UserError(f"no such image: {path}") from None


def _checkpoint_source(value: Optional[str], default: Optional[str]) -> str:
    """`value` (else `default`), checked to be a checkpoint name or a file that may be a checkpoint.

    Raises:
      ValueError, FileNotFoundError, perceiver.checkpoint.CheckpointError:
        as `perceiver.loading.resolve`, saying what was given (an unknown
        name, a path to nothing, a folder, a description, an image...).
    """
    from perceiver import loading

    value = value or default
    loading.resolve(value)  # Raises now, before anything is read or built.
    # As given: a name (e.g. a shipped model's) lets the task say whose model it is.
    return value
