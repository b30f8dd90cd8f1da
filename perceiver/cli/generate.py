"""`perceiver generate`: continue a text with a Perceiver AR byte language model you trained.

    perceiver generate "PROMPT" --checkpoint lm.pystate --max-new-bytes 200 \
        [--temperature T] [--top-k K] [--top-p P] [--seed S] [--no-cache]

The continuation goes to stdout as it is produced (whole UTF-8 characters);
the speed, in bytes per second, to stderr at the end.
"""

import argparse
import math
import sys
import time
import warnings


class UsageError(ValueError):
    """A bad option, said in one line."""


def add_parsers(commands) -> None:
    """Adds `generate` to the CLI's subparsers."""
    sub = commands.add_parser(
        "generate", help="continue a text with a byte language model you trained (Perceiver AR)"
    )
    sub.add_argument("prompt", help="the text to continue ('-': read it from stdin)")
    sub.add_argument(
        "--checkpoint", required=True,
        help="the exported model (perceiver train --config perceiver_ar ... --export FILE)",
    )
    sub.add_argument("--max-new-bytes", type=int, default=256, help="bytes to generate (default 256)")
    sub.add_argument("--temperature", type=float, default=1.0,
                     help="0 for greedy decoding; higher draws more freely (default 1)")
    sub.add_argument("--top-k", type=int, default=0, help="draw among the K most probable bytes (0: all)")
    sub.add_argument("--top-p", type=float, default=1.0,
                     help="draw among the most probable bytes reaching probability P (default 1: all)")
    sub.add_argument("--seed", type=int, default=0, help="for the draws (default 0)")
    sub.add_argument("--no-cache", action="store_true",
                     help="recompute the whole window at every byte (slow; the same bytes)")
    sub.set_defaults(handler=command, input_options={"checkpoint": "checkpoint"})


def check_options(args) -> None:
    """Fails before any model is loaded for options out of range."""
    if args.max_new_bytes < 1:
        raise UsageError(f"--max-new-bytes must be >= 1; got {args.max_new_bytes}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature must be a finite number >= 0; got {args.temperature}")
    if not 0 < args.top_p <= 1:  # NaN fails too
        raise UsageError(f"--top-p must be in (0, 1]; got {args.top_p}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (0: no limit); got {args.top_k}")
    if not args.prompt:
        raise UsageError("the prompt is empty; give at least one character to continue")


def command(args: argparse.Namespace) -> str:
    """Streams the continuation to stdout; returns '' (the CLI ends the line)."""
    from perceiver.tasks import generation

    if args.prompt == "-":
        args.prompt = sys.stdin.read()
    check_options(args)
    from perceiver import loading

    # Before the model is built: an unknown name, a path to nothing, a folder or
    # a file of another kind is named as what it is.
    loading.resolve(args.checkpoint)
    generator = generation.TextGenerator.from_pretrained(args.checkpoint)
    out = sys.stdout

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    stream = generation.Utf8Stream(write)
    count = 0
    started = None

    def on_bytes(_, data: bytes) -> None:
        nonlocal count, started
        if started is None:
            started = time.perf_counter()  # from the first byte: compiling is not generating
        count += len(data)
        stream.write(data)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", generation.ContextWarning)
        began = time.perf_counter()
        generator.generate(
            args.prompt, max_new_bytes=args.max_new_bytes, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache,
            on_bytes=on_bytes,
        )
        ended = time.perf_counter()
    stream.close()
    for warning in caught[:1]:
        print(f"perceiver: note: {warning.message}", file=sys.stderr)
    first = (started or ended) - began
    rate = (count - 1) / (ended - started) if started is not None and count > 1 and ended > started else 0.0
    print(
        f"\n{count} bytes in {ended - began:.2f} s ({first:.2f} s to the first, then "
        f"{rate:.1f} bytes/s)" + (", without the cache" if args.no_cache else ""),
        file=sys.stderr,
    )
    return ""
