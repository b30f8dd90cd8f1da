"""`perceiver autoencode`: a video and its audio reconstructed, and its action named."""

import os

import numpy as np

from perceiver._outputs import UserError, _check_outputs
from perceiver.cli._common import (
    _add_cache_dir,
    _check_positive,
    _checkpoint_source,
    _write_all,
    _write_json,
)


def add_parsers(commands) -> None:
    """Adds `autoencode` to the CLI's subparsers."""
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
    sub.set_defaults(
        handler=_cmd_autoencode,
        input_options={"video": "file", "checkpoint": "checkpoint"},
        output_options={"output": "-o", "audio_out": "--audio-out", "labels_out": "--labels-out"},
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
