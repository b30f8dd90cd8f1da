"""What the task builders share: the classification task section, pretrained loading, losses."""

import dataclasses
import os
from typing import Dict, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import checkpoint as inference_checkpoint
from perceiver.train import data as data_lib
from perceiver.train import finetune
from perceiver.train import losses
from perceiver.train.config import ranged
from perceiver.train.trainer import Task

# The values a factory's size arguments allow.
SIZE = "int [1, inf)"


@dataclasses.dataclass
class ClassificationTask:
    label_smoothing: float = ranged(0.1, "[0, 1)")
    # A checkpoint file, or a published name ('imagenet_fourier', 'mlm'); for
    # finetune_text also 'none' (no pretrained encoder: trained from scratch).
    pretrained: str = ""
    new_modules: Tuple[str, ...] = ()  # initialised afresh instead of loaded (the new head)


def generated_dir(workdir: str, *parts: str) -> str:
    """WORKDIR/generated/PARTS..., created: where tiny runs write their data."""
    path = os.path.join(workdir, "generated", *parts)
    os.makedirs(path, exist_ok=True)
    return path


def sums(values: jax.Array, weights: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """`(sum of values x weights, sum of weights)`: an evaluation metric the trainer averages."""
    return jnp.sum(values * weights), jnp.sum(weights)


def eval_loader_fn(source, transforms, workers: int):
    """batch_size -> a loader over `source` once, in order, the last partial batch kept.

    The seed is fixed, so random transforms (e.g. MLM masking) are the same
    at every evaluation.
    """

    def eval_loader(batch_size):
        return data_lib.make_loader(
            source, list(transforms), batch_size=batch_size, seed=0, shuffle=False,
            num_epochs=1, drop_remainder=False, worker_count=workers,
        )

    return eval_loader


def load_pretrained_fn(path: str, fresh, log=print):
    """(params, state) -> the same with the checkpoint at `path` merged in, but modules `fresh`."""

    def load(params, state):
        ckpt_params, ckpt_state = inference_checkpoint.load(path)
        params, loaded, dropped = finetune.merge_pretrained(params, ckpt_params, fresh, "params")
        state, _, _ = finetune.merge_pretrained(state, ckpt_state, fresh, "state")
        if jax.process_index() == 0:
            log(
                f"loaded {len(loaded)} modules from {path}; initialised afresh: {list(fresh)}; "
                f"dropped from the checkpoint: {summarize(dropped) or 'nothing'}"
            )
        return params, state

    return load


def summarize(modules) -> str:
    """Module names grouped by their top-level module: 'basic_decoder (10 modules), embed'."""
    groups: Dict[str, list] = {}
    for m in modules:
        groups.setdefault(m.split("/")[0], []).append(m)
    return ", ".join(f"{k} ({len(v)} modules)" if len(v) > 1 else v[0] for k, v in groups.items())


def classification_fns(apply_logits, label_smoothing: float):
    """Loss and evaluation for a model mapping a batch to logits."""

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


def stand_in_checkpoint(path: str, model: hk.TransformedWithState, *inputs) -> str:
    """A stand-in 'published' checkpoint for tiny runs: random weights of the model's shapes.

    Shapes come from `jax.eval_shape` (nothing is compiled); values follow
    the usual initialisers (weights N(0, 1/fan_in), tables N(0, 0.02), norm
    scales 1, offsets and biases 0, statistics 0): what a fine-tuning smoke
    test needs.
    """
    if os.path.exists(path):
        return path
    params, state = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs, is_training=True))
    rng = np.random.default_rng(1)

    def value(name, s):
        if name == "scale":
            return np.ones(s.shape, s.dtype)
        if name in ("w", "embeddings", "pos_embs") and len(s.shape) >= 2:
            std = 0.02 if name != "w" else 1 / np.sqrt(np.prod(s.shape[:-1]))
            return (std * rng.standard_normal(s.shape)).astype(s.dtype)
        return np.zeros(s.shape, s.dtype)

    fill = lambda tree: {m: {n: value(n, v) for n, v in ps.items()} for m, ps in tree.items()}
    inference_checkpoint.save(path, fill(params), fill(state))
    return path


def labels(task: Task, num_classes: int) -> list:
    """Class names in output order; outputs beyond the data's classes are named by index."""
    names = [str(c) for c in task.export_info.get("classes", [])][:num_classes]
    return names + [str(i) for i in range(len(names), num_classes)]
