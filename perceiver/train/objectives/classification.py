"""Classification: the `task` section, the loss and evaluation of a model of logits, class names."""

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp

from perceiver.train import losses
from perceiver.train.config import ranged
from perceiver.train.objectives.evaluation import sums
from perceiver.train.trainer import Objective


@dataclasses.dataclass
class ClassificationSettings:
    """The `task` section of the classification recipes."""

    label_smoothing: float = ranged(0.1, "[0, 1)")
    # A checkpoint file, or a published name ('imagenet_fourier', 'mlm'); for
    # finetune_text also 'none' (no pretrained encoder: trained from scratch).
    pretrained: str = ""
    new_modules: Tuple[str, ...] = ()  # initialised afresh instead of loaded (the new head)


def classification_fns(apply_logits, label_smoothing: float):
    """Loss and evaluation for a model mapping a batch to logits.

    Args:
      apply_logits: (params, state, key, batch, is_training) -> (logits [B, C], state).
      label_smoothing: of the training loss.
    """

    def loss(params, state, key, batch):
        logits, state = apply_logits(params, state, key, batch, True)
        value = losses.classification_loss(
            logits,
            batch["labels"],
            label_smoothing=label_smoothing,
            mix_labels=batch.get("mix_labels"),
            ratio=batch.get("ratio"),
        )
        acc = losses.topk_correct(logits, batch["labels"], (1,))
        return value, ({"top_1_acc": jnp.mean(acc["top_1_acc"])}, state)

    def evaluate(params, state, batch):
        logits, _ = apply_logits(params, state, None, batch, False)
        w = batch["example_weights"]
        ce = losses.softmax_cross_entropy(logits, jax.nn.one_hot(batch["labels"], logits.shape[-1]))
        # Top-5 only when it says something: with 5 classes or fewer it is always 1.
        acc = losses.topk_correct(logits, batch["labels"], (1, 5) if logits.shape[-1] > 5 else (1,))
        out = {"loss": sums(ce, w)}
        out.update({name: sums(v, w) for name, v in acc.items()})
        return out

    return loss, evaluate


def labels(objective: Objective, num_classes: int) -> list:
    """Class names in output order; outputs beyond the data's classes are named by index."""
    names = [str(c) for c in objective.export_info.get("classes", [])][:num_classes]
    return names + [str(i) for i in range(len(names), num_classes)]
