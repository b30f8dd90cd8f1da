"""`perceiver tag`: labelled spans of texts, with a token classifier you trained."""

from perceiver._outputs import UserError, _check_outputs
from perceiver.cli._common import _add_cache_dir, _checkpoint_source, _write_all, _write_json


def add_parsers(commands) -> None:
    """Adds `tag` to the CLI's subparsers."""
    sub = commands.add_parser("tag", help="labelled spans of texts (entities), with a token classifier you trained")
    sub.add_argument("texts", nargs="+", help="texts to tag")
    sub.add_argument(
        "--checkpoint", help="the exported tagger (perceiver train --config finetune_tokens --export FILE)"
    )
    sub.add_argument("--json", help="write the spans (character offsets, end exclusive) as JSON")
    _add_cache_dir(sub)
    sub.set_defaults(handler=_cmd_tag, input_options={"checkpoint": "checkpoint"}, output_options={"json": "--json"})


def _cmd_tag(args) -> str:
    from perceiver.tasks import token_classification

    _check_outputs([("--json", args.json, "json")])
    if not args.checkpoint:
        raise UserError(
            "tag needs --checkpoint FILE: a token classifier exported by "
            "`perceiver train --config finetune_tokens ... --export FILE` (none is published)"
        )
    # A published name is refused by the task itself, saying what to do instead.
    source = _checkpoint_source(args.checkpoint, None)
    model = token_classification.TokenClassifier.from_pretrained(source, cache_dir=args.cache_dir)
    results = model.tag(list(args.texts))
    if args.json:
        tagged = [
            {
                "text": text,
                "spans": [
                    {"start": s, "end": e, "label": label, "score": float(p), "text": text[s:e]}
                    for s, e, label, p in spans
                ],
            }
            for text, spans in zip(args.texts, results)
        ]
        _write_all([(args.json, lambda p: _write_json(p, tagged))])
    lines = []
    for text, spans in zip(args.texts, results):
        lines.append(text if len(text) <= 70 else text[:67] + "...")
        lines.extend(f"  {s}-{e}  {label}  {p:.3f}  {text[s:e]!r}" for s, e, label, p in spans)
        if not spans:
            lines.append("  (no spans)")
    return "\n".join(lines)
