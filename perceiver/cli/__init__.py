"""The `perceiver` command: run the published models' tasks on your files.

    perceiver demo [-o DIR]        # flow of a synthetic pair with known motion, offline
    perceiver flow FRAME1 FRAME2 -o FLOW.png [--flo FLOW.flo] [--levels N] [--checkpoint NAME_OR_PATH]
    perceiver flow VIDEO -o FLOW.mp4 [--max-frames N]   # flow of each consecutive frame pair
    perceiver autoencode VIDEO -o OUT.mp4 [--audio-out OUT.wav] [--labels-out L.json]
    perceiver fill-mask "The capital of France is _____." [--json OUT.json]
    perceiver classify IMAGE... [--top-k 5] [--json OUT.json] [--checkpoint NAME_OR_PATH]
    perceiver classify-text "some text" ... --checkpoint FILE [--top-k 5] [--json OUT.json]
    perceiver tag "TEXT" ... --checkpoint FILE [--json OUT.json]      # entities / tags per byte
    perceiver answer --question Q (--context C | --context-file F) --checkpoint FILE [--json OUT.json]
    perceiver detect IMAGE... -o BOXES.png --checkpoint FILE [--json OUT.json] [--threshold T]
    perceiver classify-audio CLIP.wav ... --checkpoint FILE [--top-k 5] [--json OUT.json]
    perceiver generate "PROMPT" --checkpoint FILE [--max-new-bytes N] [--temperature T] [--top-k K] [--top-p P]
    perceiver attention IMAGE -o maps.png [--checkpoint NAME_OR_PATH] [--layer PATTERN] [--latents N]
    perceiver train --config NAME --workdir DIR [--tiny] [KEY=VALUE ...]
    perceiver plot WORKDIR [-o curves.png]
    perceiver convert SRC DST        # Hugging Face transformers directory <-> our checkpoint
    perceiver list | fetch NAME | check NAME

A checkpoint file's description beside it (NAME.json, which `perceiver train
--export` writes) gives its model's sizes, task options and class names.

Bad input (a missing or unreadable file, frames of different sizes, an
unknown checkpoint, an output path that cannot be written) ends with one line
on stderr and exit status 2, never a traceback; Ctrl-C, at any moment, with
one line saying what was written ("perceiver: interrupted (no output
written)") and status 130. Output paths are checked before any computing (an
output that names an input, or whose extension names another format, is
refused), and outputs are written whole or not at all.

Each group of commands is one module of this package, its parsers beside
their handlers (`add_parsers`); `GROUPS` lists them.
"""

import argparse
import sys
from typing import Optional, Sequence

from perceiver import _interrupt

# `python -m perceiver.cli` imports this package (with sys.argv[0] "-m") before its __main__ runs.
if _interrupt.is_program(__name__) or sys.argv[:1] == ["-m"]:
    _interrupt.early("perceiver: interrupted (no output written)")  # Ctrl-C while importing: one line

from perceiver._outputs import UserError  # noqa: E402
from perceiver.cli import (  # noqa: E402
    audio,
    checkpoints,
    convert,
    detection,
    export,
    flow,
    generate,
    images,
    qa,
    text,
    tokens,
    train,
    video,
)
from perceiver.cli._common import _WRITTEN, _check_no_input_replaced, _one_line  # noqa: E402

__all__ = ["UserError", "build_parser", "main"]

# The command groups, in the order `perceiver --help` lists their commands: each
# module's `add_parsers(commands)` adds its commands, each with its handler.
GROUPS = (checkpoints, flow, video, text, tokens, qa, generate, images, detection, audio, train, export, convert)


def _version() -> str:
    """This package's version and those of the libraries it computes with (read without importing them)."""
    import importlib.metadata

    from perceiver import __version__

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return f"perceiver-io-jax {__version__} (jax {version('jax')}, jaxlib {version('jaxlib')}, dm-haiku {version('dm-haiku')})"


def build_parser() -> argparse.ArgumentParser:
    """The `perceiver` parser: one subparser per command, its handler in its defaults."""
    return _parser_and_commands()[0]


def _parser_and_commands():
    """The parser, and its subparsers action (whose `choices` maps each command to its parser)."""
    parser = argparse.ArgumentParser(prog="perceiver", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(commands)
    return parser, commands


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one `perceiver` command: exit status 0, 2 for bad input, 130 for Ctrl-C.

    Without `argv` (the program) Ctrl-C is handled by `_interrupt`, which
    stops cleanly at any moment.
    """
    program = argv is None
    if program:
        _interrupt.install()
    _WRITTEN.clear()
    try:
        status = _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        # The user stopped it: say so in one line, as a shell would, without
        # a traceback (`perceiver train` says what it saved itself).
        done = f"wrote {', '.join(_WRITTEN)}" if _WRITTEN else "no output written"
        print(f"perceiver: interrupted ({done})", file=sys.stderr)
        status = 130
    return _interrupt.finish(status) if program else status


def _main(argv: Sequence[str]) -> int:
    parser, commands = _parser_and_commands()
    own = commands.choices.get(argv[0]) if argv else None
    if own is not None and own.get_default("program") is not None:
        # `train` and `plot` parse their own arguments (recipes, KEY=VALUE overrides).
        return own.get_default("program")(argv[1:])
    args = parser.parse_args(argv)
    from perceiver import checkpoint, hub

    expected = (UserError, ValueError, TypeError, hub.FetchError, checkpoint.CheckpointError, OSError)
    try:
        _check_no_input_replaced(args)  # before any work, for every command
        print(args.handler(args))
    except expected as e:
        if isinstance(e, OSError) and e.strerror and e.filename is not None:
            # The system's own error (a permission, a full disk): the path first,
            # not Python's "[Errno 13] Permission denied: 'PATH'".
            print(f"perceiver: error: {e.filename}: {e.strerror}", file=sys.stderr)
            return 2
        print(f"perceiver: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"perceiver: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0
