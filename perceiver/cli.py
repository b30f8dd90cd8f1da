"""The `perceiver` command: fetch and check the published checkpoints.

    perceiver list                 # the published checkpoints
    perceiver fetch flow           # download into the cache
    perceiver check flow           # download, verify, run on a known motion

Bad input ends with one line on stderr and exit status 2, never a traceback.
"""

import argparse
import sys
from typing import Optional, Sequence

import numpy as np


class UserError(Exception):
    """An error to report in one line."""


def _smooth_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random texture in [-1, 1], blurred so that motion is recoverable."""
    noise = rng.uniform(-1, 1, (height + 16, width + 16, 3))
    kernel = np.ones(5) / 5
    for axis in (0, 1):
        noise = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, noise)
    return noise / np.abs(noise).max()


def _check_flow(model, params, state, image_shape, shift=(3, -2)) -> str:
    """Runs the flow model on a texture translated by `shift` (dx, dy) pixels."""
    import jax

    height, width = image_shape
    texture = _smooth_texture(np.random.default_rng(0), height, width)
    dx, dy = shift
    first = texture[8 : 8 + height, 8 : 8 + width]
    # Frame 2 shows the content of frame 1 moved by (dx, dy).
    second = texture[8 - dy : 8 - dy + height, 8 - dx : 8 - dx + width]
    frames = np.stack([first, second])[None].astype(np.float32)
    flow, _ = jax.jit(model.apply)(params, state, None, frames)
    median = np.median(np.asarray(flow)[0].reshape(-1, 2), axis=0)
    return (
        f"true motion (dx, dy) = ({dx}, {dy}) px; "
        f"median predicted flow = ({median[0]:.2f}, {median[1]:.2f}) px"
    )


def _run_check(name: str, cache_dir: Optional[str]) -> str:
    import jax

    from perceiver import hub, models

    entry = hub.get(name)
    model, params, state = models.pretrained(name, cache_dir=cache_dir)
    count = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(params))
    lines = [f"{name}: {hub.fetch(name, cache_dir=cache_dir)} matches the model ({count:,} parameters)"]
    if entry.factory == "optical_flow":
        image_shape = dict(entry.factory_kwargs).get("image_shape", (368, 496))
        lines.append(_check_flow(model, params, state, image_shape))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perceiver", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the published checkpoints")
    for command, text in (
        ("fetch", "download a published checkpoint into the cache"),
        ("check", "download, verify and run a published checkpoint"),
    ):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("name", help="checkpoint name (see `perceiver list`)")
        sub.add_argument("--cache-dir", help="default: $PERCEIVER_CACHE or ~/.cache/perceiver")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from perceiver import checkpoint, hub

    try:
        if args.command == "list":
            for entry in hub.CHECKPOINTS.values():
                print(f"{entry.name:20s} {entry.url}")
        elif args.command == "fetch":
            print(hub.fetch(args.name, cache_dir=args.cache_dir))
        else:
            print(_run_check(args.name, args.cache_dir))
    except (UserError, ValueError, hub.FetchError, checkpoint.CheckpointError, OSError) as e:
        message = str(e).strip().replace("\n", " | ") if not isinstance(e, checkpoint.CheckpointError) else str(e)
        print(f"perceiver: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
