"""Masked byte language modelling, and text classification on the masked language model's encoder.

Also the byte corpus section (`TextDataSettings`) every text recipe reads.
"""

import dataclasses
import os
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from perceiver import models
from perceiver.train import data as data_lib
from perceiver.train import finetune
from perceiver.train import losses
from perceiver.train import text_data
from perceiver.train.config import Config, ranged
from perceiver.train.objectives import classification, evaluation, generated
from perceiver.train.objectives import pretrained as pretrained_lib
from perceiver.train.objectives.kind import ObjectiveKind, size_rules
from perceiver.train.trainer import Objective


@dataclasses.dataclass
class TextDataSettings:
    """The `data` section of the text recipes: a byte corpus, or a labelled set."""

    train_paths: Tuple[str, ...] = ()  # files, folders or globs (.txt, .jsonl)
    eval_paths: Tuple[str, ...] = ()
    seq_len: int = ranged(2048, "[1, inf)")  # <= model.max_seq_len
    text_field: str = "text"
    label_field: str = "label"
    generate: bool = False
    workers: int = ranged(0, "[0, inf)")


@dataclasses.dataclass
class MlmSettings:
    """The `task` section of masked language modelling: which bytes are masked."""

    mask_prob: float = ranged(0.15, "[0, 1]")
    mean_span: float = ranged(3.0, "[1, inf)")  # mean masked span length in bytes (geometric)
    max_span: int = ranged(10, "[1, inf)")


# The sizes of models.masked_language_model, and of models.text_classifier (the
# same encoder), whose num_classes may also be 0: training's value for one per label.
MLM_RULES = size_rules("masked_language_model")
CLASSIFIER_RULES = size_rules("text_classifier", num_classes="int [0, inf)")


def check_seq_len(config: Config) -> int:
    """`data.seq_len`, checked against the model's `max_seq_len`.

    Raises:
      ValueError: for a length outside [1, model.max_seq_len].
    """
    seq_len, max_len = config.data.seq_len, config.model["max_seq_len"]
    if not 1 <= seq_len <= max_len:
        raise ValueError(f"data.seq_len must be in [1, {max_len}] (model.max_seq_len); got {seq_len}.")
    return seq_len


def _tiny_pretrained_mlm(workdir: str, sizes: Dict[str, Any]) -> str:
    """A stand-in for the published MLM: the tiny masked language model."""
    tokens = jnp.zeros((1, sizes["max_seq_len"]), jnp.int32)
    return generated.stand_in_checkpoint(
        os.path.join(generated.generated_dir(workdir), "pretrained_mlm.pystate"),
        models.masked_language_model(**sizes),
        tokens,
        jnp.ones_like(tokens),
    )


def mlm_objective(config: Config, workdir: str, pretrained: bool = True) -> Objective:
    """The masked language model's `Objective` on `data.train_paths` (a generated corpus for tiny runs)."""
    d, t = config.data, config.task
    seq_len = check_seq_len(config)
    if d.generate:
        paths = text_data.write_generated_text(generated.generated_dir(workdir, "text"))
        d.train_paths, d.eval_paths = (paths["corpus"],), (paths["eval"],)
    if not d.train_paths:
        raise ValueError(
            f"recipe {config.recipe!r} needs data.train_paths=PATH (text or JSON lines), or --tiny."
        )
    train_source = text_data.ByteChunks(d.train_paths, seq_len, d.text_field)
    eval_source = text_data.ByteChunks(d.eval_paths, seq_len, d.text_field) if d.eval_paths else None
    model = models.masked_language_model(**config.model)
    masking = text_data.MaskTokens(t.mask_prob, t.mean_span, t.max_span)

    def init(key):
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        return model.init(key, tokens, jnp.ones_like(tokens), is_training=True)

    def loss(params, state, key, batch):
        logits, state = model.apply(
            params, state, key, batch["inputs"], batch["input_mask"], is_training=True
        )
        value, acc = losses.masked_lm_loss(logits, batch["targets"], batch["weights"])
        return value, ({"masked_acc": acc}, state)

    def evaluate(params, state, batch):
        logits, _ = model.apply(params, state, None, batch["inputs"], batch["input_mask"])
        log_probs = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
        w = batch["weights"] * batch["example_weights"][:, None]
        correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
        return {"loss": evaluation.sums(nll, w), "masked_acc": evaluation.sums(correct, w)}

    def train_loader(batch_size, seed):
        return data_lib.make_loader(
            train_source, [masking], batch_size=batch_size, seed=seed, worker_count=d.workers
        )

    # A fixed seed: the same positions are masked at every evaluation.
    eval_loader = evaluation.eval_loader_fn(eval_source, [masking], d.workers)

    return Objective(
        init=init,
        loss=loss,
        evaluate=evaluate,
        train_loader=train_loader,
        eval_loader=eval_loader,
        num_train_examples=len(train_source),
        export_info=dict(factory="masked_language_model", **config.model),
        # 'loss' and 'masked_acc' are means over masked tokens, not examples.
        eval_counts={"masked_tokens": "loss"},
    )


def text_classification_objective(config: Config, workdir: str, pretrained: bool = True) -> Objective:
    """The byte classifier's `Objective`, from `task.pretrained`'s encoder (a stand-in for tiny runs).

    `task.pretrained='none'` trains every module from a random start.
    `model.num_classes` 0 is set to the number of labels of the training data.
    """
    d, t = config.data, config.task
    seq_len = check_seq_len(config)
    sizes = {k: v for k, v in config.model.items() if k != "num_classes"}
    # First: a missing checkpoint fails before any data is made.
    load_pretrained = None
    if pretrained:
        path = t.pretrained
        if d.generate and not path:
            path = _tiny_pretrained_mlm(workdir, sizes)
        if not path:
            raise ValueError(
                f"{config.recipe} needs task.pretrained=PATH, 'mlm', or 'none' (from scratch)."
            )
        if path != "none":
            load_pretrained = pretrained_lib.load_pretrained_fn(
                finetune.resolve_pretrained(path), t.new_modules
            )
    if d.generate:
        paths = text_data.write_generated_text(generated.generated_dir(workdir, "text"))
        d.train_paths, d.eval_paths = (paths["train"],), (paths["eval"],)
    if len(d.train_paths) != 1 or len(d.eval_paths) > 1:
        raise ValueError(
            f"{config.recipe} needs one data.train_paths entry (a .jsonl file or a folder of class "
            f"folders) and at most one data.eval_paths entry; got {d.train_paths}, {d.eval_paths}."
        )
    train_source = text_data.TextClassificationSource(
        d.train_paths[0], seq_len, text_field=d.text_field, label_field=d.label_field
    )
    eval_source = (
        text_data.TextClassificationSource(
            d.eval_paths[0], seq_len, train_source.classes, d.text_field, d.label_field
        )
        if d.eval_paths
        else None
    )
    num_classes = config.model.get("num_classes") or len(train_source.classes)
    config.model["num_classes"] = num_classes
    model = finetune.text_classifier(num_classes, **sizes)

    def apply_logits(params, state, key, batch, is_training):
        return model.apply(
            params, state, key, batch["tokens"], batch["mask"], is_training=is_training
        )

    cls_loss, evaluate = classification.classification_fns(apply_logits, t.label_smoothing)

    def init(key):
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        return model.init(key, tokens, jnp.ones_like(tokens), is_training=True)

    def as_labels(batch):
        return dict(batch, labels=batch["label"])

    def loss(params, state, key, batch):
        return cls_loss(params, state, key, as_labels(batch))

    def train_loader(batch_size, seed):
        return data_lib.make_loader(
            train_source, [], batch_size=batch_size, seed=seed, worker_count=d.workers
        )

    eval_loader = evaluation.eval_loader_fn(eval_source, [], d.workers)

    return Objective(
        init=init,
        loss=loss,
        evaluate=lambda p, s, b: evaluate(p, s, as_labels(b)),
        train_loader=train_loader,
        eval_loader=eval_loader,
        num_train_examples=len(train_source),
        load_pretrained=load_pretrained,
        export_info=dict(factory="text_classifier", classes=train_source.classes, **config.model),
    )


def describe_mlm(config: Config, objective: Objective) -> Dict[str, Any]:
    """The masked byte language model and its tokenizer."""
    sizes = dict(config.model)
    return {
        "factory": "masked_language_model",
        "sizes": sizes,
        "task": {"seq_len": config.data.seq_len, "mask_prob": config.task.mask_prob},
        "tokenizer": {"kind": "bytes", "max_seq_len": sizes["max_seq_len"]},
    }


def describe_classifier(config: Config, objective: Objective) -> Dict[str, Any]:
    """The byte classifier, its tokenizer and label names."""
    sizes = dict(config.model)
    return {
        "factory": "text_classifier",
        "sizes": sizes,
        "task": {"seq_len": config.data.seq_len},  # the length it was trained on
        "labels": classification.labels(objective, sizes["num_classes"]),
        "tokenizer": {"kind": "bytes", "max_seq_len": sizes["max_seq_len"]},
    }


def check(config: Config) -> None:
    """Raises ValueError for a data.seq_len beyond model.max_seq_len."""
    check_seq_len(config)


# Masked byte language modelling (pre-training).
MASKED_LM = ObjectiveKind(
    factory="masked_language_model", model_rules=MLM_RULES, build=mlm_objective, describe=describe_mlm,
    check=check,
)
# Text classification with a new classification decoder on a (pretrained) byte encoder.
TEXT_CLASSIFICATION = ObjectiveKind(
    factory="text_classifier", model_rules=CLASSIFIER_RULES, build=text_classification_objective,
    describe=describe_classifier, check=check,
)
