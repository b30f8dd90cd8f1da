"""Token classification: a BIO tag for every byte, on the masked language model's encoder.

Data are JSON lines `{"text": str, "spans": [[start, end, "LABEL"], ...]}`
(`perceiver.datasets.token_spans.read_span_file`); the labels are those of
the training file, each a `B-`/`I-` tag pair after `O` (`bio_tags`), and
the exported description lists the tag names in the order of the logits.
Texts longer than `data.seq_len` bytes are read in windows: overlapping
ones (`data.stride`) for training, consecutive ones for evaluation, so each
byte is scored once.

Evaluation reports the per-byte loss and tag accuracy, and entity
precision, recall and F1 as seqeval defines them, computed on the device
from the windows' byte tags (`entity_counts`): exact for texts that fit in
one window and end entities on whole characters; an entity cut by a window
edge counts as missed. `TokenClassifier.tag` and `benchmarks/tokens_quality.py`
score whole texts (overlapping windows averaged, character spans).
"""

import dataclasses
import os
import pathlib
import sysconfig
from typing import Any, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from perceiver import models
from perceiver.datasets import token_spans
from perceiver.train import data as data_lib
from perceiver.train import finetune
from perceiver.train import losses
from perceiver.train.config import Config, ranged
from perceiver.train.objectives import evaluation, generated
from perceiver.train.objectives import pretrained as pretrained_lib
from perceiver.train.objectives.kind import ObjectiveKind, size_rules
from perceiver.train.trainer import Objective

# Standard-library modules of every CPython 3, tagged by `tokenize` for tiny runs.
TINY_TRAIN_FILES = ("abc.py", "_weakrefset.py", "_threading_local.py")
TINY_EVAL_FILES = ("_compression.py",)
TINY_MAX_CHARS = 512


@dataclasses.dataclass
class TokenDataSettings:
    """The `data` section of `finetune_tokens`: labelled span files, and how texts are windowed."""

    train_paths: Tuple[str, ...] = ()  # one JSON-lines file of {"text", "spans"}
    eval_paths: Tuple[str, ...] = ()  # at most one such file
    seq_len: int = ranged(2048, "[1, inf)")  # bytes per window, <= model.max_seq_len
    stride: int = ranged(0, "[0, inf)")  # bytes between training windows; 0: seq_len // 2
    generate: bool = False  # tiny runs: stdlib source tagged by tokenize
    workers: int = ranged(0, "[0, inf)")


# The sizes of models.token_classifier; num_labels 0: one B-/I- pair per label of the data, and O.
TOKEN_RULES = size_rules("token_classifier", num_labels="int [0, inf)")


def stride_of(config: Config) -> int:
    """`data.stride`, or half of `data.seq_len` for 0."""
    d = config.data
    return d.stride or max(d.seq_len // 2, 1)


def check(config: Config) -> None:
    """Raises ValueError for a data.seq_len beyond model.max_seq_len or a stride beyond it."""
    seq_len, max_len = config.data.seq_len, config.model["max_seq_len"]
    if not 1 <= seq_len <= max_len:
        raise ValueError(f"data.seq_len must be in [1, {max_len}] (model.max_seq_len); got {seq_len}.")
    if config.data.stride > seq_len:
        raise ValueError(f"data.stride must be in [0, {seq_len}] (data.seq_len); got {config.data.stride}.")


class SpanWindows:
    """Labelled texts as windows `{'tokens': [T], 'mask': [T], 'tags': [T]}` (a grain source).

    Args:
      examples: the texts and their spans.
      tag_index: `{tag name: class}` (`bio_tags`).
      seq_len: bytes per window T.
      stride: bytes from one window to the next (seq_len: consecutive).
      name: what the examples are (a file), for `repr`.
    """

    def __init__(self, examples: Sequence[token_spans.SpanExample], tag_index: Dict[str, int],
                 seq_len: int, stride: int, name: str):
        rows = [w for e in examples for w in token_spans.windows(e.text, e.spans, tag_index, seq_len, stride)]
        self.tokens = np.stack([w.ids for w in rows])
        self.tags = np.stack([w.tags for w in rows])
        self.mask = np.stack([w.mask for w in rows]).astype(np.int32)
        self.name, self.seq_len, self.stride = name, seq_len, stride

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        i = int(i)
        return {"tokens": self.tokens[i], "mask": self.mask[i], "tags": self.tags[i]}

    def __repr__(self) -> str:
        return f"SpanWindows({self.name!r}, windows={len(self)}, seq_len={self.seq_len}, stride={self.stride})"


def entity_counts(pred: jax.Array, true: jax.Array, mask: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Entities of BIO byte tags, as seqeval reads them: `(correct, predicted, true)` counts.

    Tag 0 is O, tag 2k+1 B- and 2k+2 I- of label k (`bio_tags`). An entity
    starts at a B- tag, or at an I- tag not after a tag of its label; it is
    correct if a true entity has the same first byte, last byte and label.

    Args:
      pred, true: `[B, T]` int tags; mask: `[B, T]`, 0 where there is no byte.

    Returns:
      Three scalars, summed over the batch.
    """

    def entities(tags):
        tags = jnp.where(mask > 0, tags, 0)
        label = jnp.where(tags > 0, (tags - 1) // 2, -1)
        begin = (tags % 2) == 1
        before = jnp.pad(label, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
        after = jnp.pad(label, ((0, 0), (0, 1)), constant_values=-1)[:, 1:]
        after_begins = jnp.pad(begin, ((0, 0), (0, 1)), constant_values=True)[:, 1:]
        starts = (label >= 0) & (begin | (before != label))
        ends = (label >= 0) & ((after != label) | after_begins)
        # The last byte of the entity starting at i: the first end at or after i.
        positions = jnp.arange(tags.shape[1])
        last = jax.lax.cummin(jnp.where(ends, positions, tags.shape[1]), axis=1, reverse=True)
        return starts, label, last

    p_starts, p_label, p_last = entities(pred)
    t_starts, t_label, t_last = entities(true)
    correct = p_starts & t_starts & (p_label == t_label) & (p_last == t_last)
    count = lambda x: jnp.sum(x.astype(jnp.float32))
    return count(correct), count(p_starts), count(t_starts)


def _tiny_data(workdir: str, max_chars: int) -> Tuple[str, str]:
    """JSON-lines files of stdlib source tagged by tokenize (held-out files for evaluation)."""
    import json

    folder = generated.generated_dir(workdir, "tokens")
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for name, files in (("train", TINY_TRAIN_FILES), ("eval", TINY_EVAL_FILES)):
        path = os.path.join(folder, f"{name}.jsonl")
        examples = token_spans.stdlib_token_spans([stdlib / f for f in files if (stdlib / f).is_file()], max_chars)
        if not examples:
            raise ValueError(f"--tiny needs the standard library's {', '.join(files)} in {stdlib}.")
        with open(path, "w", encoding="utf-8") as f:
            for e in examples:
                f.write(json.dumps({"text": e.text, "spans": [list(s) for s in e.spans]}) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def _tiny_pretrained_mlm(workdir: str, sizes: Dict[str, Any]) -> str:
    """A stand-in for the published MLM: the tiny masked language model, random weights."""
    tokens = jnp.zeros((1, sizes["max_seq_len"]), jnp.int32)
    return generated.stand_in_checkpoint(
        os.path.join(generated.generated_dir(workdir), "pretrained_mlm.pystate"),
        models.masked_language_model(**sizes), tokens, jnp.ones_like(tokens),
    )


def _unknown_labels(path: str, examples, labels: List[str]) -> None:
    """Raises ValueError naming the first label of `examples` not in `labels`."""
    known = set(labels)
    for i, example in enumerate(examples):
        for span in example.spans:
            if span[2] not in known:
                raise ValueError(
                    f"{path}: example {i + 1} has label {span[2]!r}, which the training file does not "
                    f"have (its labels: {', '.join(labels)})."
                )


def token_classification_objective(config: Config, workdir: str, pretrained: bool = True) -> Objective:
    """The byte tagger's `Objective`, from `task.pretrained`'s encoder (a stand-in for tiny runs).

    `task.pretrained='none'` trains every module from a random start.
    `model.num_labels` 0 is set to the number of tags of the training data.

    Raises:
      ValueError: for missing or bad data (naming the file and line), eval
        labels the training file lacks, or a num_labels that is not the
        number of tags.
    """
    d, t = config.data, config.task
    check(config)
    sizes = {k: v for k, v in config.model.items() if k != "num_labels"}
    load_pretrained = None
    if pretrained:  # first: a missing checkpoint fails before any data is made
        path = t.pretrained
        if d.generate and not path:
            path = _tiny_pretrained_mlm(workdir, sizes)
        if not path:
            raise ValueError(f"{config.recipe} needs task.pretrained=PATH, 'mlm', or 'none' (from scratch).")
        if path != "none":
            load_pretrained = pretrained_lib.load_pretrained_fn(finetune.resolve_pretrained(path), t.new_modules)
    if d.generate:
        train_path, eval_path = _tiny_data(workdir, TINY_MAX_CHARS)
        d.train_paths, d.eval_paths = (train_path,), (eval_path,)
    if len(d.train_paths) != 1 or len(d.eval_paths) > 1:
        raise ValueError(
            f"{config.recipe} needs one data.train_paths entry (a JSON-lines file of "
            f'{{"text", "spans"}}) and at most one data.eval_paths entry; got {d.train_paths}, {d.eval_paths}.'
        )
    train_examples = token_spans.read_span_file(d.train_paths[0])
    labels = token_spans.label_set(train_examples)
    if not labels:
        raise ValueError(f"{d.train_paths[0]}: no spans, so no labels to learn.")
    tags = token_spans.bio_tags(labels)
    tag_index = {name: i for i, name in enumerate(tags)}
    num_labels = config.model.get("num_labels") or len(tags)
    if num_labels != len(tags):
        raise ValueError(
            f"model.num_labels must be 0 or {len(tags)} (O and B-/I- of {len(labels)} labels); got {num_labels}."
        )
    config.model["num_labels"] = num_labels
    train_source = SpanWindows(train_examples, tag_index, d.seq_len, stride_of(config), d.train_paths[0])
    eval_source = None
    if d.eval_paths:
        eval_examples = token_spans.read_span_file(d.eval_paths[0])
        _unknown_labels(d.eval_paths[0], eval_examples, labels)
        eval_source = SpanWindows(eval_examples, tag_index, d.seq_len, d.seq_len, d.eval_paths[0])
    model = models.token_classifier(num_labels, **sizes)

    def init(key):
        tokens = jnp.zeros((1, d.seq_len), jnp.int32)
        return model.init(key, tokens, jnp.ones_like(tokens), is_training=True)

    def per_byte(params, state, key, batch, is_training):
        logits, state = model.apply(params, state, key, batch["tokens"], batch["mask"], is_training=is_training)
        targets = jax.nn.one_hot(batch["tags"], num_labels)
        if is_training and t.label_smoothing:
            targets = losses.smooth_labels(targets, t.label_smoothing)
        ce = losses.softmax_cross_entropy(logits, targets)
        correct = (jnp.argmax(logits, -1) == batch["tags"]).astype(jnp.float32)
        return logits, ce, correct, state

    def loss(params, state, key, batch):
        _, ce, correct, state = per_byte(params, state, key, batch, True)
        w = batch["mask"].astype(jnp.float32)
        n = jnp.maximum(jnp.sum(w), 1.0)
        return jnp.sum(ce * w) / n, ({"byte_acc": jnp.sum(correct * w) / n}, state)

    def evaluate(params, state, batch):
        logits, ce, correct, _ = per_byte(params, state, None, batch, False)
        w = batch["mask"] * batch["example_weights"][:, None]
        hits, predicted, true = entity_counts(jnp.argmax(logits, -1), batch["tags"], w)
        return {
            "loss": evaluation.sums(ce, w),
            "byte_acc": evaluation.sums(correct, w),
            # Ratios of sums, so the trainer's sum / count is the micro average.
            "entity_precision": (hits, predicted),
            "entity_recall": (hits, true),
            "entity_f1": (2 * hits, predicted + true),
        }

    def train_loader(batch_size, seed):
        return data_lib.make_loader(train_source, [], batch_size=batch_size, seed=seed, worker_count=d.workers)

    eval_loader = evaluation.eval_loader_fn(eval_source, [], d.workers)
    return Objective(
        init=init,
        loss=loss,
        evaluate=evaluate,
        train_loader=train_loader,
        eval_loader=eval_loader,
        num_train_examples=len(train_source),
        load_pretrained=load_pretrained,
        export_info=dict(factory="token_classifier", classes=tags, **config.model),
        eval_counts={"eval_bytes": "loss", "true_entities": "entity_recall"},
    )


def describe(config: Config, objective: Objective) -> Dict[str, Any]:
    """The byte tagger, its tokenizer, its tag names (O, B-/I- per label) and windows."""
    sizes = dict(config.model)
    tags = [str(c) for c in objective.export_info.get("classes", [])][:sizes["num_labels"]]
    return {
        "factory": "token_classifier",
        "sizes": sizes,
        "task": {"seq_len": config.data.seq_len, "stride": stride_of(config)},
        "labels": tags + [str(i) for i in range(len(tags), sizes["num_labels"])],
        "tokenizer": {"kind": "bytes", "max_seq_len": sizes["max_seq_len"]},
    }


# Token classification (BIO tags per byte) with a new decoder on a (pretrained) byte encoder.
TOKEN_CLASSIFICATION = ObjectiveKind(
    factory="token_classifier", model_rules=TOKEN_RULES, build=token_classification_objective,
    describe=describe, check=check,
)
