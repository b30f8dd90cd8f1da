"""`perceiver flow` (two images, or each frame pair of a video) and `perceiver demo`."""

import os
import sys
from typing import Optional

import numpy as np

from perceiver._outputs import UserError, _check_output_folder, _check_outputs
from perceiver.cli._common import (
    _add_cache_dir,
    _check_positive,
    _checkpoint_source,
    _read_image,
    _write_all,
)

_DEMO_IMAGES = ("frame1.png", "frame2.png", "flow.png", "true_flow.png", "figure.png")


def add_parsers(commands) -> None:
    """Adds `flow` and `demo` to the CLI's subparsers."""
    sub = commands.add_parser(
        "flow", help="optical flow between two images, or of each frame pair of a video"
    )
    sub.add_argument("frame1", help="first image (PNG, JPEG, ...), or a video (MP4, GIF, ...)")
    sub.add_argument("frame2", nargs="?", help="second image, same size (none for a video)")
    sub.add_argument(
        "-o", "--output", required=True,
        help="flow as a colour image (PNG), or for a video a colour video (MP4, GIF)",
    )
    sub.add_argument("--flo", help="also write the flow as a Middlebury .flo file (two images)")
    sub.add_argument(
        "--max-flow",
        type=float,
        metavar="PX",
        help="flow length in pixels drawn at full colour, the rim of the colour key drawn in "
        "the corner (default 10: a fixed scale, so that no motion is near-white and pictures "
        "compare)",
    )
    sub.add_argument(
        "--levels",
        type=int,
        help="coarse-to-fine pyramid levels; 1 is single-scale (default: from the image size "
        "and the model's trained range; at most as many as keep the coarsest level 16 px or "
        "one tile wide)",
    )
    sub.add_argument("--max-frames", type=int, help="for a video: read at most this many frames")
    sub.add_argument(
        "--checkpoint",
        help="checkpoint name or path (default: flow if downloaded, else the shipped small model)",
    )
    _add_cache_dir(sub)
    sub.set_defaults(
        handler=_cmd_flow,
        input_options={"frame1": "file", "frame2": "file", "checkpoint": "checkpoint"},
        output_options={"output": "-o", "flo": "--flo"},
    )

    sub = commands.add_parser(
        "demo", help="flow of a synthetic pair with known motion, its error, and one figure of it all"
    )
    sub.add_argument(
        "-o", "--outdir", default="perceiver_demo",
        help="folder for the images, figure.png among them (default perceiver_demo)",
    )
    sub.add_argument("--seed", type=int, default=0, help="which synthetic pair, >= 0 (default 0)")
    sub.add_argument(
        "--checkpoint",
        help="checkpoint name or path (default: flow if downloaded, else the shipped small model)",
    )
    _add_cache_dir(sub)
    sub.set_defaults(
        handler=_cmd_demo,
        input_options={"checkpoint": "checkpoint"},
        output_options={
            "outdir": lambda args: [
                ("-o", os.path.join(args.outdir, name)) for name in _DEMO_IMAGES + ("flow.flo",)
            ]
        },
    )


def _bundled_flow_model() -> str:
    """The small flow model shipped in perceiver/data (see its .json): `flow_small`."""
    from perceiver import hub

    return str(hub.shipped_path("flow_small"))


def _default_flow_source(cache_dir: Optional[str]) -> str:
    """The published flow model if it is in the cache, else the shipped small one, saying so.

    The same choice, and the same line, as `OpticalFlow.from_pretrained()`'s.
    """
    from perceiver import loading

    source, note = loading.default_source("flow", "flow_small", cache_dir)
    if note:
        print(f"perceiver: {note}.", file=sys.stderr)
    return source


def _flow_estimator(checkpoint: Optional[str], cache_dir: Optional[str]):
    from perceiver.tasks import flow as flow_lib

    if checkpoint is None:
        source = _default_flow_source(cache_dir)
    else:
        source = _checkpoint_source(checkpoint, "flow")
    # The task reads the file's description (sizes, min_overlap), as from Python.
    return flow_lib.OpticalFlow.from_pretrained(source, cache_dir=cache_dir)


def _cmd_demo(args) -> str:
    """Flow of a synthetic pair whose true flow is known, with its error."""
    from perceiver import media
    from perceiver.tasks import flow as flow_lib
    from perceiver.train import synthetic_flow

    _check_positive("--seed", args.seed, least=0)
    _check_output_folder("-o", args.outdir, _DEMO_IMAGES + ("flow.flo",))
    from perceiver import checkpoint

    scene = checkpoint.read_description(_bundled_flow_model()).get("scene", {})
    spec = synthetic_flow.FlowSceneSpec(image_shape=(96, 128), **scene)
    pair = synthetic_flow.make_pair(spec, seed=args.seed, index=0)
    frames = np.round((pair["frames"] + 1) * 127.5).clip(0, 255).astype(np.uint8)
    estimator = _flow_estimator(args.checkpoint, args.cache_dir)
    flow = estimator(frames[0], frames[1], progress=True)
    truth, valid = pair["flow"], pair["valid"]
    # One colour scale for both flows, so that they can be compared: the
    # truth's largest motion (the scene's are a few pixels).
    max_flow = max(float(np.linalg.norm(truth, axis=-1).max()), 1e-3)
    images = dict(zip(_DEMO_IMAGES, (
        frames[0],
        frames[1],
        flow_lib.draw_flow(flow, max_flow=max_flow),
        flow_lib.draw_flow(truth, max_flow=max_flow),
        flow_lib.flow_figure(frames[0], frames[1], flow, truth, valid, max_flow=max_flow),
    )))
    writes = [
        (os.path.join(args.outdir, name), lambda p, image=image: media.write_image(p, image))
        for name, image in images.items()
    ]
    writes.append((os.path.join(args.outdir, "flow.flo"), lambda p: flow_lib.write_flo(p, flow)))
    made, folder = [], os.path.abspath(args.outdir)
    while not os.path.exists(folder):  # the folders makedirs will make, deepest first
        made.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(args.outdir, exist_ok=True)
    try:
        _write_all(writes)
    except BaseException:
        # A failed or interrupted demo leaves no empty folders behind.
        for folder in made:
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        raise
    error = flow_lib.end_point_error(flow, truth, valid)
    baseline = flow_lib.end_point_error(np.zeros_like(truth), truth, valid)
    return (
        f"synthetic pair 128x96 with known motion (seed {args.seed}): end-point error "
        f"{error:.2f} px, against {baseline:.2f} px for zero flow\n"
        f"wrote {', '.join(_DEMO_IMAGES)} and flow.flo to {args.outdir}; figure.png shows "
        f"frames, true and predicted flow, error and colour key together"
    )


def _cmd_flow(args) -> str:
    from perceiver import media
    from perceiver.tasks import flow as flow_lib

    if args.frame2 is None:
        return _cmd_flow_video(args)
    if args.max_frames is not None:
        raise UserError("--max-frames is for a video; two images give one pair")
    _check_outputs([("-o", args.output, "image"), ("--flo", args.flo, "flo")])
    _check_flow_options(args)
    first, second = _read_image(args.frame1), _read_image(args.frame2)
    if first.shape != second.shape:
        raise UserError(
            f"the frames differ in size: {args.frame1} is {first.shape[1]}x{first.shape[0]}, "
            f"{args.frame2} is {second.shape[1]}x{second.shape[0]} (width x height)"
        )
    estimator = _flow_estimator(args.checkpoint, args.cache_dir)
    _check_levels_fit(args.levels, estimator, first.shape[:2])
    flow = estimator(first, second, levels=args.levels, progress=True)
    # A fixed colour scale (--max-flow, default flow_lib.DEFAULT_MAX_FLOW): no
    # motion is near-white, and pictures of several pairs compare.
    max_flow = args.max_flow or flow_lib.DEFAULT_MAX_FLOW
    color = flow_lib.draw_flow(flow, max_flow=max_flow)
    writes = [(args.output, lambda p: media.write_image(p, color))]
    if args.flo:
        writes.append((args.flo, lambda p: flow_lib.write_flo(p, flow)))
    _write_all(writes)
    written = [path for path, _ in writes]
    levels = args.levels or estimator.levels_for(*flow.shape[:2])
    return (
        f"flow {flow.shape[1]}x{flow.shape[0]} ({levels} pyramid level{'s' * (levels > 1)}): "
        f"{_flow_numbers(flow, max_flow)}; wrote {', '.join(written)}"
    )


def _flow_numbers(flow: np.ndarray, max_flow: float) -> str:
    """The mean motion (dx, dy), the mean and largest length, and the colour scale, in words."""
    vectors = flow.reshape(-1, 2)
    mean = vectors.mean(axis=0)
    magnitude = np.linalg.norm(vectors, axis=-1)
    return (
        f"mean (dx, dy) = ({mean[0]:.2f}, {mean[1]:.2f}) px, mean |flow| {magnitude.mean():.2f} px, "
        f"max {magnitude.max():.2f} px (drawn at full colour: {max_flow:g} px)"
    )


def _check_flow_options(args) -> None:
    if args.max_flow is not None and not (np.isfinite(args.max_flow) and args.max_flow > 0):
        raise UserError(f"--max-flow must be a positive number of pixels; got {args.max_flow}")
    _check_positive("--levels", args.levels)
    _check_positive("--max-frames", args.max_frames, least=2)


def _check_levels_fit(levels: Optional[int], estimator, shape) -> None:
    """Fails before any computing if --levels would halve the frames below what the model reads."""
    if levels is None:
        return
    limit = estimator.max_levels(*shape)
    if levels > limit:
        raise UserError(
            f"--levels must be at most {limit} for these {shape[1]}x{shape[0]} frames (each level "
            f"halves them, and the coarsest must keep sides of {estimator.least_level_side()} px "
            f"or more); got {levels}"
        )


def _cmd_flow_video(args) -> str:
    """The flow of each pair of consecutive frames of a video, as a colour video."""
    from perceiver import media
    from perceiver import _messages
    from perceiver.tasks import flow as flow_lib

    kind = _messages.file_kind(args.frame1)
    if kind.name == "image":  # The second frame was left out: say so, before the outputs.
        raise UserError(
            f"{args.frame1} is {kind.phrase} and no second frame is given: flow needs two images "
            "(perceiver flow FRAME1 FRAME2 -o FLOW.png) or one video"
        )
    if args.flo:
        raise UserError("--flo writes the flow of one pair; give two images (FRAME1 FRAME2)")
    _check_outputs([("-o", args.output, "video")])
    _check_flow_options(args)
    if not os.path.exists(args.frame1):
        raise UserError(f"no such video: {args.frame1}")
    try:
        media.check_video_suffix(args.frame1)
    except ValueError:
        raise UserError(
            f"{args.frame1}: one input is read as a video ({', '.join(media.VIDEO_SUFFIXES)}); "
            "for two images give FRAME1 FRAME2"
        ) from None
    frames, fps, _, _ = media.read_video(args.frame1, max_frames=args.max_frames)
    if len(frames) < 2:
        raise UserError(f"{args.frame1} has {len(frames)} frame; flow needs at least 2")
    if not fps > 0:
        fps = 25.0  # a container without a rate: the output plays at PAL's
    estimator = _flow_estimator(args.checkpoint, args.cache_dir)
    _check_levels_fit(args.levels, estimator, frames.shape[1:3])
    flows = estimator.sequence(frames, levels=args.levels, progress=True)
    # One fixed colour scale for the whole video, so that frames compare.
    max_flow = args.max_flow or flow_lib.DEFAULT_MAX_FLOW
    colors = flow_lib.draw_flow(flows, max_flow=max_flow)
    if not args.output.lower().endswith(".gif"):
        # H.264 needs even sides: repeat the last row or column where one is odd.
        height, width = colors.shape[1:3]
        colors = np.pad(colors, [(0, 0), (0, height % 2), (0, width % 2), (0, 0)], mode="edge")
    _write_all([(args.output, lambda p: media.write_video(p, colors, fps))])
    levels = args.levels or estimator.levels_for(*flows.shape[1:3])
    return (
        f"flow of {len(flows)} frame pairs {flows.shape[2]}x{flows.shape[1]} ({levels} pyramid "
        f"level{'s' * (levels > 1)}): {_flow_numbers(flows, max_flow)}; wrote {args.output}"
    )
