"""`perceiver export`: a model, with its weights, as serialized StableHLO (`jax.export`).

    perceiver export imagenet_fourier -o imagenet.jaxexport [--batch N|dynamic]
    perceiver export mine.pystate -o mine.jaxexport        # with its description

The file runs with jax alone (`jax.export.deserialize(data).call(*inputs)`);
`perceiver.export` says what it takes.
"""

import argparse
import os

SUFFIX = ".jaxexport"


class UsageError(ValueError):
    """A bad option, said in one line."""


def add_parsers(commands) -> None:
    """Adds `export` to the CLI's subparsers."""
    sub = commands.add_parser(
        "export", help="save a model with its weights as StableHLO (jax.export), to run without this package"
    )
    sub.add_argument(
        "checkpoint",
        help="a published name (perceiver list), or your checkpoint file with its description",
    )
    sub.add_argument("-o", "--output", required=True, help=f"the exported model ({SUFFIX})")
    sub.add_argument(
        "--batch", default="dynamic",
        help="batch size the export takes, or 'dynamic' for any (default dynamic)",
    )
    sub.add_argument(
        "--platform", action="append", choices=("cpu", "cuda", "rocm", "tpu"),
        help="a platform it must run on (repeat for several; default: this machine's)",
    )
    sub.add_argument("--cache-dir", help="where published checkpoints are cached")
    sub.set_defaults(
        handler=command, input_options={"checkpoint": "checkpoint"}, output_options={"output": "-o"}
    )


def _batch(value: str):
    if value == "dynamic":
        return value
    try:
        batch = int(value)
    except ValueError:
        batch = 0
    if not 1 <= batch <= 2**31 - 1:  # jax indexes in int32
        raise UsageError(f"--batch must be a positive integer (at most 2147483647) or 'dynamic'; got {value!r}")
    return batch


def command(args: argparse.Namespace) -> str:
    """Exports, then writes the file whole; returns what was written."""
    if not args.output.endswith(SUFFIX):
        raise UsageError(f"-o must end in {SUFFIX}; got {args.output!r}")
    batch = _batch(args.batch)
    from perceiver import export

    export.check_serializable()  # before the model is loaded and traced
    exported = export.export(
        args.checkpoint,
        batch=batch,
        platforms=tuple(args.platform) if args.platform else None,
        cache_dir=args.cache_dir,
    )
    export.save(exported, args.output)  # whole or not at all
    shapes = ", ".join(
        f"{a.dtype}[{', '.join(str(d) for d in a.shape)}]" for a in exported.in_avals
    )
    size = os.path.getsize(args.output) / 1e6
    return (
        f"wrote {args.output} ({size:.1f} MB): takes {shapes} on "
        f"{', '.join(exported.platforms)}"
    )
