"""`perceiver answer`: extractive question answering with a question answerer you trained."""

from perceiver._outputs import UserError, _check_outputs
from perceiver.cli._common import _add_cache_dir, _checkpoint_source, _write_all, _write_json


def add_parsers(commands) -> None:
    """Adds `answer` to the CLI's subparsers."""
    sub = commands.add_parser("answer", help="answer a question with a span of a context, with a model you trained")
    sub.add_argument("--question", action="append", required=True,
                     help="the question (repeat for several, on the same context)")
    given = sub.add_mutually_exclusive_group(required=True)
    given.add_argument("--context", help="the text holding the answer")
    given.add_argument("--context-file", help="a UTF-8 text file holding the answer")
    sub.add_argument(
        "--checkpoint", help="the exported answerer (perceiver train --config finetune_qa --export FILE)"
    )
    sub.add_argument("--json", help="write the answers, offsets and scores as JSON")
    _add_cache_dir(sub)
    sub.set_defaults(
        handler=_cmd_answer,
        input_options={"checkpoint": "checkpoint", "context_file": "file"},
        output_options={"json": "--json"},
    )


def _read_context(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a text file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise UserError(f"{path}: the context is empty")
    return text


def _cmd_answer(args) -> str:
    from perceiver.tasks import question_answering

    _check_outputs([("--json", args.json, "json")])
    if not args.checkpoint:
        raise UserError(
            "answer needs --checkpoint FILE: a question answerer exported by "
            "`perceiver train --config finetune_qa ... --export FILE` (none is published)"
        )
    context = _read_context(args.context_file) if args.context_file else args.context
    if not context.strip():
        raise UserError("--context is empty")
    empty = [q for q in args.question if not q.strip()]
    if empty:
        raise UserError("--question is empty")
    source = _checkpoint_source(args.checkpoint, None)
    model = question_answering.QuestionAnswerer.from_pretrained(source, cache_dir=args.cache_dir)
    results = model.answer(list(args.question), context)
    if args.json:
        answers = [
            {"question": q, "answer": text, "start": start, "end": end, "score": score}
            for q, (text, start, end, score) in zip(args.question, results)
        ]
        _write_all([(args.json, lambda p: _write_json(p, answers))])
    lines = []
    for question, (text, start, end, score) in zip(args.question, results):
        if len(args.question) > 1:
            lines.append(question if len(question) <= 70 else question[:67] + "...")
        lines.append(f"{text}\t[{start}:{end}]\tscore {score:.3f}")
    return "\n".join(lines)
