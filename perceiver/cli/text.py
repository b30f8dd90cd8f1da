"""`perceiver fill-mask` and `perceiver classify-text`: the byte-level text models."""

from perceiver._outputs import UserError, _check_outputs
from perceiver.cli._common import (
    _add_cache_dir,
    _check_positive,
    _checkpoint_source,
    _write_all,
    _write_json,
)


def add_parsers(commands) -> None:
    """Adds `fill-mask` and `classify-text` to the CLI's subparsers."""
    sub = commands.add_parser("fill-mask", help="fill the placeholder runs in text, byte by byte")
    sub.add_argument("texts", nargs="+", help="text with runs of the placeholder to fill")
    sub.add_argument("--placeholder", default="_", help="the character marking bytes to fill (default _)")
    sub.add_argument("--json", help="write completions and per-byte probabilities as JSON")
    sub.add_argument("--checkpoint", help="checkpoint name or path (default: mlm)")
    _add_cache_dir(sub)
    sub.set_defaults(
        handler=_cmd_fill_mask, input_options={"checkpoint": "checkpoint"}, output_options={"json": "--json"}
    )

    sub = commands.add_parser("classify-text", help="classes of texts, with a text classifier you trained")
    sub.add_argument("texts", nargs="+", help="texts to classify")
    sub.add_argument(
        "--checkpoint", help="the exported classifier (perceiver train --config finetune_text --export FILE)"
    )
    sub.add_argument("--top-k", type=int, default=5, help="classes per text (default 5)")
    sub.add_argument("--json", help="write the labels and probabilities as JSON")
    _add_cache_dir(sub)
    sub.set_defaults(
        handler=_cmd_classify_text, input_options={"checkpoint": "checkpoint"}, output_options={"json": "--json"}
    )


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
