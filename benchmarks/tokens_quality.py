"""Token classification: the trained byte tagger against the logistic-regression baseline.

    python benchmarks/tokens_quality.py [--num-steps 800] [--workdir DIR] [--skip-baseline]

Data as `benchmarks/heads_baselines.py tokens`: `stdlib_token_spans` (labels
KEYWORD, NAME, NUMBER, STRING, COMMENT from `tokenize`) over the standard
library's top-level modules of 5-40 kB sorted by name, the first 20 for
training, the next 5 held out; texts of at most 2048 characters. The model
is `finetune_tokens` from scratch (`task.pretrained=none`: the published
MLM is too large to fine-tune on a CPU) at small sizes that train in a few
minutes on a CPU; it tags the held-out texts with `TokenClassifier.tag`
(windows of 256 bytes, 128 apart). Scores: entity micro precision, recall
and F1 (`entity_scores`, seqeval's definition) on character spans, for the
model and for the baseline run here on the same split.
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import re
import sys
import sysconfig
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import heads_baselines  # noqa: E402

from perceiver.datasets import token_spans as ts  # noqa: E402
from perceiver.evaluation.entities import entity_scores  # noqa: E402

MAX_CHARS = 2048
SIZES = dict(max_seq_len=256, d_model=64, num_latents=64, num_latent_channels=128, num_self_attends=2,
             num_heads=4, qk_channels=32)


def split():
    """The baseline's files: 20 for training, 5 held out."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(stdlib.glob("*.py")) if 5_000 <= p.stat().st_size <= 40_000]
    return files[:20], files[20:25]


def write_jsonl(path, examples) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"text": e.text, "spans": [list(s) for s in e.spans]}) + "\n")
    return str(path)


def train_model(workdir: str, train_path: str, eval_path: str, num_steps: int) -> str:
    """Trains finetune_tokens on the files; the exported checkpoint's path."""
    from perceiver.train import main

    overrides = [f"model.{k}={v}" for k, v in SIZES.items()] + [
        f"data.train_paths=('{train_path}',)", f"data.eval_paths=('{eval_path}',)", "data.seq_len=256",
        "data.stride=128", "task.pretrained=none", f"train.num_steps={num_steps}", "train.epochs=0",
        "train.batch_size=16", "train.eval_batch_size=64", f"train.log_every={max(num_steps // 6, 1)}",
        "train.progress=false", "optimizer.base_lr=2e-3", "optimizer.warmup_steps=30",
        "optimizer.end_lr=1e-4", f"checkpoint.every_steps={num_steps}",
    ]
    status = main.main(["--config", "finetune_tokens", "--workdir", workdir] + overrides)
    if status != 0:
        raise SystemExit(f"training failed with status {status}")
    return os.path.join(workdir, "model.pystate")


def baseline_row() -> str:
    """Runs heads_baselines' logistic regression on the same split; its P/R/F1 line's numbers."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        heads_baselines.run_tokens(argparse.Namespace(context=3, max_chars=MAX_CHARS, max_iter=300))
    text = out.getvalue()
    print(text, end="")
    found = re.search(r"entity micro P ([\d.]+)\s+R ([\d.]+)\s+F1 ([\d.]+)", text)
    return " | ".join(found.groups())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-steps", type=int, default=800)
    parser.add_argument("--workdir", help="default: a temporary folder")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    from perceiver.tasks.token_classification import TokenClassifier

    train_files, eval_files = split()
    train, held_out = ts.stdlib_token_spans(train_files, MAX_CHARS), ts.stdlib_token_spans(eval_files, MAX_CHARS)
    workdir = args.workdir or tempfile.mkdtemp(prefix="tokens_quality_")
    train_path = write_jsonl(os.path.join(workdir, "train.jsonl"), train)
    eval_path = write_jsonl(os.path.join(workdir, "eval.jsonl"), held_out)
    start = time.perf_counter()
    path = train_model(os.path.join(workdir, "run"), train_path, eval_path, args.num_steps)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    tagger = TokenClassifier.from_pretrained(path, batch_size=32)
    predicted = tagger.tag([e.text for e in held_out])
    tag_s = time.perf_counter() - start
    scores = entity_scores([e.spans for e in held_out], predicted)
    print(f"model: {args.num_steps} steps of 16 windows in {train_s:.0f} s; tagging {len(held_out)} held-out "
          f"texts ({sum(len(e.spans) for e in held_out)} entities) {tag_s:.1f} s")
    for label, row in scores["per_label"].items():
        print(f"  {label:8s} P {row['precision']:.4f}  R {row['recall']:.4f}  F1 {row['f1']:.4f}  "
              f"support {row['support']}")
    rows = [f"| perceiver finetune_tokens, from scratch, {args.num_steps} steps | "
            f"{scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} |"]
    if not args.skip_baseline:
        rows.insert(0, f"| logistic regression, bytes +-3 (heads_baselines.py tokens) | {baseline_row()} |")
    print("\n| held-out stdlib files: entities | precision | recall | F1 |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
