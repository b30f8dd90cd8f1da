"""`perceiver list`, `fetch` and `check`: the published and shipped checkpoints, and the cache."""

import pathlib

import numpy as np

from perceiver.cli._common import _add_cache_dir


def add_parsers(commands) -> None:
    """Adds `list`, `fetch` and `check` to the CLI's subparsers."""
    sub = commands.add_parser(
        "list", help="list the published checkpoints, which are cached, the shipped model, and the models you train"
    )
    _add_cache_dir(sub)
    sub.set_defaults(handler=_cmd_list)
    for command, text in (
        ("fetch", "download a published checkpoint into the cache"),
        ("check", "verify and run a checkpoint: a published one (downloaded), a shipped one, or a file"),
    ):
        sub = commands.add_parser(command, help=text)
        sub.add_argument(
            "name",
            help="checkpoint name (see `perceiver list`)"
            + (", or a checkpoint file with its description" if command == "check" else ""),
        )
        _add_cache_dir(sub)
        if command == "fetch":
            sub.add_argument(
                "--force", action="store_true", help="download again even if cached (replaces a bad file)"
            )
        sub.set_defaults(handler=_cmd_fetch if command == "fetch" else _cmd_check)


# The models with no published weights: the recipe that trains each (kept equal to the
# recipes' own table by tests/cli/test_cli.py, without importing training here).
TRAINED_HERE = {
    "text_classifier": "finetune_text",
    "token_classifier": "finetune_tokens",
    "question_answerer": "finetune_qa",
    "audio_classifier": "finetune_audio",
    "object_detector": "finetune_detection",
    "byte_language_model": "perceiver_ar",
}


def _megabytes(path: pathlib.Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _cmd_list(args) -> str:
    """The published checkpoints, which of them are cached (with sizes), the shipped models, and the rest.

    Every name shown is accepted wherever a checkpoint is (--checkpoint,
    `fetch`, `check`, the tasks' from_pretrained).
    """
    import textwrap

    from perceiver import checkpoint, hub
    from perceiver.tasks._loading import TASKS

    cache = pathlib.Path(args.cache_dir).expanduser() if args.cache_dir else hub.cache_dir()
    lines = [f"published checkpoints (`perceiver fetch NAME` downloads one into {cache}):"]
    for entry in hub.CHECKPOINTS.values():
        cached = cache / entry.filename
        where = f"cached, {_megabytes(cached)}" if cached.is_file() else "not cached"
        lines.append(f"  {entry.name:20s} {where:18s} {entry.description}")
    lines.append("shipped with the package (what `perceiver flow` and `demo` use while flow is not cached):")
    for name in hub.SHIPPED:
        shipped = hub.shipped_path(name)
        about = checkpoint.read_description(shipped).get("description", "")
        lines.append(f"  {name:20s} {_megabytes(shipped):18s} {shipped}")
        if about:
            lines.append(f"  {'':20s} {'':18s} {textwrap.shorten(about, 100, placeholder=' ...')}")
    lines.append("no published weights: train one (`perceiver train --config RECIPE`), export it, then run it:")
    for factory, recipe in TRAINED_HERE.items():
        task, command = TASKS[factory]
        lines.append(f"  {recipe:20s} {factory:20s} {command} --checkpoint FILE  ({task})")
    return "\n".join(lines)


def _cmd_fetch(args) -> str:
    from perceiver import loading

    # --force replaces a cached file that fails to load; a download is checked before it is kept.
    # A shipped model's name gives its file, which is never downloaded.
    return str(loading.fetch(args.name, cache_dir=args.cache_dir, force=args.force, progress=True))


def _cmd_check(args) -> str:
    """A published or shipped model (or a file with its description) read and checked against its model."""
    import jax

    from perceiver import hub, loading, models

    source = loading.resolve(args.name)  # What the name or path is, before anything is read.
    if loading.is_published(source):
        entry = hub.get(source)
        model, params, state = models.pretrained(source, cache_dir=args.cache_dir)
        factory, sizes = entry.factory, dict(entry.factory_kwargs)
        path = loading.fetch(source, cache_dir=args.cache_dir, progress=False)
    else:
        path = source
        factory, sizes, model, params, state = loading.load_described(path)
    count = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(params))
    lines = [f"{args.name}: {path} matches the model ({count:,} parameters)"]
    if factory == "optical_flow":
        lines.append(_check_flow(model, params, state, sizes.get("image_shape", (368, 496))))
    return "\n".join(lines)


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
