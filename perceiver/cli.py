"""The `perceiver` command: run the published models' tasks on your files.

    perceiver demo [-o DIR]        # flow of a synthetic pair with known motion, offline
    perceiver flow FRAME1 FRAME2 -o FLOW.png [--flo FLOW.flo] [--levels N] [--checkpoint NAME_OR_PATH]
    perceiver flow VIDEO -o FLOW.mp4 [--max-frames N]   # flow of each consecutive frame pair
    perceiver autoencode VIDEO -o OUT.mp4 [--audio-out OUT.wav] [--labels-out L.json]
    perceiver fill-mask "The capital of France is _____." [--json OUT.json]
    perceiver classify IMAGE... [--top-k 5] [--json OUT.json] [--checkpoint NAME_OR_PATH]
    perceiver classify-text "some text" ... --checkpoint FILE [--top-k 5] [--json OUT.json]
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
"""

import argparse
import json
import os
import pathlib
import secrets
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from perceiver import _interrupt

if _interrupt.is_program(__name__):  # Ctrl-C while the imports run: one line, no traceback
    _interrupt.early("perceiver: interrupted (no output written)")

import numpy as np  # noqa: E402
from perceiver._outputs import (  # noqa: E402
    UserError,
    _Input,
    _check_not_inputs,
    _check_outputs,
    _check_output_folder,
    _checkpoint_files,
)


# ---------------------------------------------------------------------------
# Checkpoint housekeeping
# ---------------------------------------------------------------------------


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


def _megabytes(path: pathlib.Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _cmd_list(args) -> str:
    """The published checkpoints, which of them are cached (with sizes), and the shipped models.

    Every name shown is accepted wherever a checkpoint is (--checkpoint,
    `fetch`, `check`, the tasks' from_pretrained).
    """
    import textwrap

    from perceiver import checkpoint, hub

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


# ---------------------------------------------------------------------------
# Output files: checked before computing, written whole or not at all
# ---------------------------------------------------------------------------

# Each command's input options (dest: "file", or "checkpoint" for a checkpoint
# and its description) and output options (dest: option, or a function of
# the arguments giving (option, path) pairs). `perceiver convert` checks its
# own (convert.convert); `train` and `plot` have their own parsers.
_INPUT_OPTIONS: Dict[str, Dict[str, str]] = {
    "flow": {"frame1": "file", "frame2": "file", "checkpoint": "checkpoint"},
    "demo": {"checkpoint": "checkpoint"},
    "autoencode": {"video": "file", "checkpoint": "checkpoint"},
    "fill-mask": {"checkpoint": "checkpoint"},
    "classify": {"images": "file", "checkpoint": "checkpoint"},
    "classify-text": {"checkpoint": "checkpoint"},
    "attention": {"image": "file", "checkpoint": "checkpoint"},
    "generate": {"checkpoint": "checkpoint"},
    "export": {"checkpoint": "checkpoint"},
}
_OUTPUT_OPTIONS: Dict[str, Dict[str, object]] = {
    "flow": {"output": "-o", "flo": "--flo"},
    "demo": {
        "outdir": lambda args: [
            ("-o", os.path.join(args.outdir, name)) for name in _DEMO_IMAGES + ("flow.flo",)
        ]
    },
    "autoencode": {"output": "-o", "audio_out": "--audio-out", "labels_out": "--labels-out"},
    "fill-mask": {"json": "--json"},
    "classify": {"json": "--json"},
    "classify-text": {"json": "--json"},
    "attention": {"output": "-o"},
    "export": {"output": "-o"},
}


def _check_no_input_replaced(args) -> None:
    """Fails before any work if an output option of `args.command` names one of its inputs.

    Raises:
      UserError: naming the output option and the input.
    """
    inputs: List[_Input] = []
    for dest, kind in _INPUT_OPTIONS.get(args.command, {}).items():
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
    for dest, option in _OUTPUT_OPTIONS.get(args.command, {}).items():
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


# The outputs this command has written, for the line Ctrl-C prints.
_WRITTEN: list = []


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------


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


_DEMO_IMAGES = ("frame1.png", "frame2.png", "flow.png", "true_flow.png", "figure.png")


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


def _cmd_autoencode(args) -> str:
    from perceiver import media
    from perceiver.tasks import video as video_lib

    _check_outputs([
        ("-o", args.output, "video"),
        ("--audio-out", args.audio_out, "audio"),
        ("--labels-out", args.labels_out, "json"),
    ])
    _check_positive("--top-k", args.top_k)
    _check_positive("--max-frames", args.max_frames)
    # One image and one audio query per decode call at least.
    _check_positive("--chunk-size", args.chunk_size, least=2)
    if not os.path.exists(args.video):
        raise UserError(f"no such video: {args.video}")
    frames, fps, audio, rate = media.read_video(args.video, max_frames=args.max_frames)
    if not fps > 0:
        raise UserError(f"{args.video} gives no frame rate, which its audio and output need")
    source = _checkpoint_source(args.checkpoint, "video_autoencoding")
    # Sizes and options come from the file's description; --chunk-size overrides it.
    model = video_lib.VideoAutoencoder.from_pretrained(
        source, cache_dir=args.cache_dir, chunk_size=args.chunk_size
    )
    frames = video_lib.center_crop_and_resize(frames, model.image_size)
    if audio is not None:
        audio = video_lib.prepare_audio(audio, rate, fps, model.audio_samples_per_frame)
        # Containers often hold a little more audio than video; keep what the frames span.
        audio = audio[: len(frames) * model.audio_samples_per_frame]
        if audio.size == 0:
            audio = None  # An audio track without samples: reconstruct silence.
    result = model(frames, audio, top_k=args.top_k, progress=True)
    # The model's raw outputs overshoot their nominal ranges a little; the
    # writers take [0, 1] frames and [-1, 1] audio.
    video = np.clip(result.video, 0.0, 1.0)
    sound = np.clip(result.audio, -1.0, 1.0)
    out_rate = int(round(fps * model.audio_samples_per_frame))
    with_audio = audio is not None and not args.output.lower().endswith(".gif")
    writes = [(args.output, lambda p: media.write_video(
        p,
        video,
        fps,
        audio=sound[:, None] if with_audio else None,
        sample_rate=out_rate if with_audio else None,
    ))]
    if args.audio_out:
        writes.append((args.audio_out, lambda p: media.write_wav(p, sound, out_rate)))
    if args.labels_out:
        clips = [
            {"start_frame": int(start), "labels": [[n, float(p)] for n, p in labels]}
            for start, labels in zip(result.clip_starts, result.labels)
        ]
        writes.append((args.labels_out, lambda p: _write_json(p, clips)))
    _write_all(writes)
    lines = [f"{len(frames)} frames in {len(result.labels)} clip(s)"]
    lines.append(f"image PSNR {video_lib.psnr(video, frames.astype(np.float32) / 255.0):.2f} dB")
    if audio is not None:
        lines.append(f"audio PSNR {video_lib.psnr(result.audio, audio.reshape(-1), max_value=2.0):.2f} dB")
    for start, labels in zip(result.clip_starts, result.labels):
        top = ", ".join(f"{name} ({p:.2f})" for name, p in labels)
        lines.append(f"clip at frame {start}: {top}")
    lines.append(f"wrote {', '.join(path for path, _ in writes)}")
    return "\n".join(lines)


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _cmd_fill_mask(args) -> str:
    from perceiver.tasks import text as text_lib

    _check_outputs([("--json", args.json, "json")])
    spans = [text_lib.spans_from_placeholder(t, args.placeholder) for t in args.texts]
    empty = [t for t, s in zip(args.texts, spans) if not s]
    if empty:
        raise UserError(f"no {args.placeholder!r} placeholder to fill in {empty[0]!r}")
    source = _checkpoint_source(args.checkpoint, "mlm")
    model = text_lib.MaskedLanguageModel.from_pretrained(source, cache_dir=args.cache_dir)
    results = model.fill(list(args.texts), spans)
    if args.json:
        filled = [
            {
                "input": r.input,
                "text": r.text,
                "spans": [
                    {
                        "start": s.start,
                        "end": s.end,
                        "text": s.text,
                        "bytes": list(s.predicted),
                        "probabilities": [float(p) for p in s.probabilities],
                    }
                    for s in r.spans
                ],
            }
            for r in results
        ]
        _write_all([(args.json, lambda p: _write_json(p, filled))])
    return "\n".join(r.text for r in results)


def _cmd_classify_text(args) -> str:
    from perceiver.tasks import text_classification

    _check_outputs([("--json", args.json, "json")])
    _check_positive("--top-k", args.top_k)
    if not args.checkpoint:
        raise UserError(
            "classify-text needs --checkpoint FILE: a text classifier exported by "
            "`perceiver train --config finetune_text ... --export FILE` (none is published)"
        )
    # Checked before the model is built; a published name is refused by the
    # task itself, saying what to do instead.
    source = _checkpoint_source(args.checkpoint, None)
    model = text_classification.TextClassifier.from_pretrained(source, cache_dir=args.cache_dir)
    results = model.classify(list(args.texts), top_k=args.top_k)
    if args.json:
        classes = [
            {"text": text, "labels": [[name, float(p)] for name, p in labels]}
            for text, labels in zip(args.texts, results)
        ]
        _write_all([(args.json, lambda p: _write_json(p, classes))])
    lines = []
    for text, labels in zip(args.texts, results):
        lines.append(text if len(text) <= 70 else text[:67] + "...")
        lines.extend(f"  {p:6.3f}  {name}" for name, p in labels)
    return "\n".join(lines)


def _cmd_classify(args) -> str:
    from perceiver.tasks import imagenet as imagenet_lib

    _check_outputs([("--json", args.json, "json")])
    _check_positive("--top-k", args.top_k)
    images = [_read_image(path) for path in args.images]
    source = _checkpoint_source(args.checkpoint, "imagenet_conv")
    # A description's labels (e.g. the training folders' names) name the classes.
    model = imagenet_lib.ImageClassifier.from_pretrained(source, cache_dir=args.cache_dir)
    results = model.classify(images, top_k=args.top_k)
    if args.json:
        classes = [
            {"image": path, "labels": [[name, float(p)] for name, p in labels]}
            for path, labels in zip(args.images, results)
        ]
        _write_all([(args.json, lambda p: _write_json(p, classes))])
    lines = []
    for path, labels in zip(args.images, results):
        lines.append(path)
        lines.extend(f"  {p:6.3f}  {name}" for name, p in labels)
    return "\n".join(lines)


# The published image classifiers, in the order `perceiver attention` looks for them in the cache.
_IMAGE_CLASSIFIERS = ("imagenet_conv", "imagenet_fourier", "imagenet_learned")


def _cached_image_classifier(cache_dir: Optional[str]) -> str:
    """The first published image classifier in the cache; never downloads.

    Raises:
      UserError: saying what to fetch, if none is cached.
    """
    from perceiver import hub

    cache = pathlib.Path(cache_dir).expanduser() if cache_dir else hub.cache_dir()
    for name in _IMAGE_CLASSIFIERS:
        if (cache / hub.get(name).filename).is_file():
            return name
    raise UserError(
        f"no image classifier in the cache {cache}: run `perceiver fetch imagenet_conv` (or "
        "imagenet_fourier, imagenet_learned), or give --checkpoint FILE (e.g. from "
        "`perceiver train --export`)"
    )


def _cmd_attention(args) -> str:
    """Each latent's encoder cross-attention laid over the photo's centre crop, in a grid."""
    import importlib.util

    _check_outputs([("-o", args.output, "figure")])
    _check_positive("--latents", args.latents)
    from perceiver import inspect_plots

    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(f"perceiver attention draws with matplotlib: {inspect_plots.INSTALL_HINT}")
    from perceiver import inspect, models
    from perceiver.tasks import imagenet as imagenet_lib

    image = _read_image(args.image)
    if args.checkpoint is None:
        source = _cached_image_classifier(args.cache_dir)
    else:
        source = _checkpoint_source(args.checkpoint, "imagenet_conv")
    classifier = imagenet_lib.ImageClassifier.from_pretrained(source, cache_dir=args.cache_dir)
    model = models.imagenet_classifier(classifier.variant, **classifier.sizes)
    batch = classifier.preprocess(image)[None]
    logits, maps = inspect.attention_maps(
        model, classifier.params, classifier.state, batch, layers=[args.layer]
    )
    name, weights = next(iter(maps.items()))  # the first layer the pattern matches
    # The keys are the image's pixels, or for the conv stem's a grid 4 times coarser.
    side = classifier.image_size // (4 if classifier.variant == "conv_preprocessing" else 1)
    if weights.shape[-1] != side * side or "self_attention" in name or "decoder" in name:
        raise UserError(
            f"--layer {args.layer!r} picks {name}, which does not attend from latents to the "
            f"image's {side}x{side} grid; the encoder's cross-attention does: "
            f"{inspect.ENCODER_CROSS_ATTENTION!r}"
        )
    count = min(args.latents, weights.shape[2])
    logits = np.asarray(logits, np.float64)[0]
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    top = int(np.argmax(probabilities))
    label = f"{classifier.class_names[top]} ({probabilities[top]:.3f})"
    # The part of the photo the model sees (its centre crop), at the photo's
    # own resolution: the keys' grid covers it, and each map is drawn over it.
    crop = imagenet_lib.center_crop(image, classifier.crop_fraction, classifier.min_crop_size)
    fig = inspect_plots.latent_grid(
        weights, (side, side), latents=range(count), image=np.asarray(crop, np.float32) / 255.0,
        title=f"{name}: {label}",
    )
    _write_all([(args.output, lambda p: fig.savefig(p, dpi=100))])
    return (
        f"{args.image}: {label}\n"
        f"wrote {args.output}: the attention of {count} of {weights.shape[2]} latents over "
        f"{side}x{side} keys ({name}, head 0), each over the photo's {crop.shape[0]}x"
        f"{crop.shape[1]} centre crop in grey: red to yellow where the latent looks, "
        "the brighter the more"
    )


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="default: $PERCEIVER_CACHE or ~/.cache/perceiver")


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
    parser = argparse.ArgumentParser(prog="perceiver", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)

    sub = commands.add_parser(
        "list", help="list the published checkpoints, which are cached, and the shipped model"
    )
    _add_cache_dir(sub)
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

    sub = commands.add_parser("autoencode", help="reconstruct a video and its audio, and name its action")
    sub.add_argument("video", help="input video (MP4, GIF, ...)")
    sub.add_argument("-o", "--output", required=True, help="reconstructed video (MP4 with audio, or GIF)")
    sub.add_argument("--audio-out", help="also write the reconstructed audio (a .wav file)")
    sub.add_argument("--labels-out", help="write the top Kinetics-700 labels per clip (a .json file)")
    sub.add_argument("--top-k", type=int, default=5, help="labels per clip (default 5)")
    sub.add_argument("--max-frames", type=int, help="read at most this many frames")
    sub.add_argument("--chunk-size", type=int, help="outputs decoded per call (bounds memory)")
    sub.add_argument("--checkpoint", help="checkpoint name or path (default: video_autoencoding)")
    _add_cache_dir(sub)

    sub = commands.add_parser("fill-mask", help="fill the placeholder runs in text, byte by byte")
    sub.add_argument("texts", nargs="+", help="text with runs of the placeholder to fill")
    sub.add_argument("--placeholder", default="_", help="the character marking bytes to fill (default _)")
    sub.add_argument("--json", help="write completions and per-byte probabilities as JSON")
    sub.add_argument("--checkpoint", help="checkpoint name or path (default: mlm)")
    _add_cache_dir(sub)

    commands.add_parser(
        "train",
        help="train or fine-tune with a named recipe (see `perceiver train --help`)",
        add_help=False,
    )
    commands.add_parser(
        "plot", help="draw a training run's curves into a PNG (perceiver plot WORKDIR -o curves.png)",
        add_help=False,
    )

    sub = commands.add_parser(
        "classify", help="classes of images: ImageNet's, or the labels of your model's description"
    )
    sub.add_argument("images", nargs="+", help="images (PNG, JPEG, ...)")
    sub.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    sub.add_argument("--json", help="write the labels and probabilities as JSON")
    sub.add_argument(
        "--checkpoint",
        help="imagenet_conv (default), imagenet_fourier, imagenet_learned, or a path",
    )
    _add_cache_dir(sub)

    sub = commands.add_parser("classify-text", help="classes of texts, with a text classifier you trained")
    sub.add_argument("texts", nargs="+", help="texts to classify")
    sub.add_argument(
        "--checkpoint", help="the exported classifier (perceiver train --config finetune_text --export FILE)"
    )
    sub.add_argument("--top-k", type=int, default=5, help="classes per text (default 5)")
    sub.add_argument("--json", help="write the labels and probabilities as JSON")
    _add_cache_dir(sub)

    from perceiver import cli_generate

    cli_generate.add_parser(commands)
    from perceiver import cli_export

    cli_export.add_parser(commands)

    sub = commands.add_parser(
        "attention", help="draw each latent's cross-attention over an image (an image classifier's)"
    )
    sub.add_argument("image", help="image (PNG, JPEG, ...); its centre crop, as the classifier sees it, is drawn")
    sub.add_argument(
        "-o", "--output", required=True,
        help="the grid (PNG): the crop, then each latent's map over it (the photo in grey, "
        "the map red to yellow)",
    )
    sub.add_argument(
        "--checkpoint",
        help="imagenet_conv, imagenet_fourier, imagenet_learned, or a path (default: the first "
        "of those in the cache; never downloads)",
    )
    sub.add_argument(
        "--layer", default="*perceiver_encoder/~/cross_attention/attention",
        help="module path or fnmatch pattern of the attention to draw, the first it matches "
        "(default: the encoder's cross-attention)",
    )
    sub.add_argument("--latents", type=int, default=32, help="latents drawn: the first N (default 32)")
    _add_cache_dir(sub)

    sub = commands.add_parser(
        "convert", help="convert a checkpoint between transformers' format and ours (either way)"
    )
    sub.add_argument(
        "src",
        help="a transformers save_pretrained folder, or our checkpoint file (with its NAME.json) "
        "or a published name",
    )
    sub.add_argument(
        "dst",
        help="our checkpoint file to write (.pystate or .safetensors, with NAME.json), or the "
        "folder for transformers' from_pretrained",
    )
    sub.add_argument(
        "--conv-kernel-layout", choices=("oihw", "oiwh"), default="oihw",
        help="oiwh: the conv kernel transposed as transformers' conversion script wrote "
        "DeepMind's (default oihw, as torch applies it)",
    )
    sub.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"),
        help="the transformers weights' dtype (default float32)",
    )
    sub.add_argument(
        "--allow-deviations", action="store_true",
        help="write the conv-stem classifier, whose padding transformers cannot express",
    )
    _add_cache_dir(sub)
    return parser


COMMANDS: Dict[str, Callable] = {
    "list": _cmd_list,
    "fetch": _cmd_fetch,
    "check": _cmd_check,
    "flow": _cmd_flow,
    "demo": _cmd_demo,
    "autoencode": _cmd_autoencode,
    "fill-mask": _cmd_fill_mask,
    "classify": _cmd_classify,
    "classify-text": _cmd_classify_text,
    "attention": _cmd_attention,
    "generate": lambda args: __import__("perceiver.cli_generate", fromlist=["command"]).command(args),
    "export": lambda args: __import__("perceiver.cli_export", fromlist=["command"]).command(args),
    # perceiver.convert (jax, haiku) is imported only when the command runs.
    "convert": lambda args: __import__("perceiver.convert", fromlist=["command"]).command(args),
}


def _one_line(error: BaseException) -> str:
    return " | ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())


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
    if argv[:1] == ["train"]:
        # Training has its own parser (recipes, KEY=VALUE overrides).
        from perceiver.train import main as train_main

        return train_main.main(argv[1:])
    if argv[:1] == ["plot"]:
        # A training run's curves: part of training, with its own parser.
        from perceiver.train import plot

        return plot.main(argv[1:])
    args = build_parser().parse_args(argv)
    from perceiver import checkpoint, hub

    expected = (UserError, ValueError, TypeError, hub.FetchError, checkpoint.CheckpointError, OSError)
    try:
        _check_no_input_replaced(args)  # before any work, for every command
        print(COMMANDS[args.command](args))
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


if __name__ == "__main__":
    sys.exit(main())
