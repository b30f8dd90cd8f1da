"""`perceiver classify-audio`: classes of audio clips, with an audio classifier you trained."""

from perceiver._outputs import UserError, _check_outputs
from perceiver.cli._common import (
    _add_cache_dir,
    _check_positive,
    _checkpoint_source,
    _write_all,
    _write_json,
)


def add_parsers(commands) -> None:
    """Adds `classify-audio` to the CLI's subparsers."""
    sub = commands.add_parser("classify-audio", help="classes of audio clips, with an audio classifier you trained")
    sub.add_argument("clips", nargs="+", help="audio files (WAV, FLAC, MP3)")
    sub.add_argument(
        "--checkpoint", help="the exported classifier (perceiver train --config finetune_audio --export FILE)"
    )
    sub.add_argument("--top-k", type=int, default=5, help="classes per clip (default 5)")
    sub.add_argument("--json", help="write the labels and probabilities as JSON")
    _add_cache_dir(sub)
    sub.set_defaults(
        handler=_cmd_classify_audio,
        input_options={"checkpoint": "checkpoint", "clips": "file"},
        output_options={"json": "--json"},
    )


def _cmd_classify_audio(args) -> str:
    from perceiver.tasks import audio_classification

    _check_outputs([("--json", args.json, "json")])
    _check_positive("--top-k", args.top_k)
    if not args.checkpoint:
        raise UserError(
            "classify-audio needs --checkpoint FILE: an audio classifier exported by "
            "`perceiver train --config finetune_audio ... --export FILE` (none is published)"
        )
    # Checked before the model is built; a published name is refused by the task itself.
    source = _checkpoint_source(args.checkpoint, None)
    model = audio_classification.AudioClassifier.from_pretrained(source, cache_dir=args.cache_dir)
    results = model.classify(list(args.clips), top_k=args.top_k)
    if args.json:
        classes = [
            {"clip": clip, "labels": [[name, float(p)] for name, p in labels]}
            for clip, labels in zip(args.clips, results)
        ]
        _write_all([(args.json, lambda p: _write_json(p, classes))])
    lines = []
    for clip, labels in zip(args.clips, results):
        lines.append(clip)
        lines.extend(f"  {p:6.3f}  {name}" for name, p in labels)
    return "\n".join(lines)
