"""Causal byte language modelling with Perceiver AR: the `task` section, loss, bits per byte."""

import dataclasses
import math
from typing import Any, Dict

import jax
import jax.numpy as jnp

from perceiver import compute
from perceiver import language_model
from perceiver import models
from perceiver.train import data as data_lib
from perceiver.train import text_data
from perceiver.train.config import Config, ranged
from perceiver.train.objectives import evaluation
from perceiver.train.objectives.kind import ObjectiveKind, size_rules
from perceiver.train.trainer import Objective

COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class CausalLmSettings:
    """The `task` section of causal language modelling: the z-loss (and two older spellings).

    `remat` and `compute_dtype` are the older spellings of every recipe's
    `compute.remat` and `compute.dtype`, still read so that earlier runs
    resume: either spelling turns the mode on.
    """

    # Older spelling of compute.remat: recompute each layer's activations in the backward pass.
    remat: bool = False
    # Older spelling of compute.dtype ('bfloat16': bfloat16 products, float32 parameters and loss).
    compute_dtype: str = ranged("float32", tuple(COMPUTE_DTYPES))
    # The reference's auxiliary loss, z_loss * log(Z)^2 (keeps logits normalised).
    z_loss: float = ranged(1e-4, "[0, inf)")


# The sizes of models.byte_language_model: its signature's, but dropout_prob,
# a float whose range the signature cannot say.
LM_RULES = size_rules("byte_language_model", dropout_prob="[0, 1)")


def check(config: Config) -> None:
    """Raises ValueError for a data.seq_len outside [model.num_latents, model.max_context_length]."""
    seq_len, m = config.data.seq_len, config.model
    try:
        language_model.perceiver_ar_config(**m)  # the sizes' own relations
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    sizes = models.factory_sizes("byte_language_model", **m)  # the factory's defaults filled in
    low, high = sizes["num_latents"], sizes["max_context_length"]
    if not low <= seq_len <= high:
        raise ValueError(
            f"data.seq_len must be in [{low}, {high}] (model.num_latents, "
            f"model.max_context_length); got {seq_len}."
        )


def next_token_nll(output, targets: jax.Array):
    """`(nll [B, Z], weights [B, Z])` of the token after each latent's last input.

    Weights are 0 for latents without an input and for padding targets.
    """
    steps = output.latent_last_steps
    labels = jnp.take_along_axis(targets, jnp.maximum(steps, 0), axis=1)
    logits = output.input_events_logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    nll = log_z - jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
    weights = ((steps >= 0) & (labels > 0)).astype(jnp.float32)
    return nll, weights, log_z


def causal_lm_objective(config: Config, workdir: str, pretrained: bool = True) -> Objective:
    """The byte language model's `Objective` on `data.train_paths`, evaluated in bits per byte."""
    d, t = config.data, config.task
    check(config)
    if not d.train_paths:
        raise ValueError(f"recipe {config.recipe!r} needs data.train_paths=PATH (text or JSON lines), or --tiny.")
    sizes = dict(config.model)
    predicted = sizes.get("num_latents", models.factory_sizes("byte_language_model")["num_latents"])
    train_source = text_data.ByteWindows(d.train_paths, d.seq_len, predicted, d.text_field)
    eval_source = (
        text_data.ByteWindows(d.eval_paths, d.seq_len, predicted, d.text_field) if d.eval_paths else None
    )
    model = models.byte_language_model(**sizes)
    dtype = COMPUTE_DTYPES[t.compute_dtype]
    if dtype is not None:
        model = compute.configure(model, compute_dtype=dtype)

    def init(key):
        tokens = jnp.full((1, d.seq_len), language_model.SOS, jnp.int32)
        return model.init(key, tokens, is_training=True)

    def loss(params, state, key, batch):
        output, state = model.apply(
            params, state, key, batch["inputs"], is_training=True, use_remat=t.remat or config.compute.remat
        )
        nll, w, log_z = next_token_nll(output, batch["targets"])
        total = jnp.maximum(jnp.sum(w), 1.0)
        value = jnp.sum((nll + t.z_loss * jnp.square(log_z)) * w) / total
        return value, ({"bits_per_byte": jnp.sum(nll * w) / total / math.log(2)}, state)

    def evaluate(params, state, batch):
        output, _ = model.apply(params, state, None, batch["inputs"])
        nll, w, _ = next_token_nll(output, batch["targets"])
        w = w * batch["example_weights"][:, None]
        return {"loss": evaluation.sums(nll, w), "bits_per_byte": evaluation.sums(nll / math.log(2), w)}

    def train_loader(batch_size, seed):
        return data_lib.make_loader(
            train_source, [], batch_size=batch_size, seed=seed, worker_count=d.workers
        )

    return Objective(
        init=init,
        loss=loss,
        evaluate=evaluate,
        train_loader=train_loader,
        eval_loader=evaluation.eval_loader_fn(eval_source, [], d.workers),
        num_train_examples=len(train_source),
        export_info=dict(factory="byte_language_model", **sizes),
        # 'loss' (nats) and 'bits_per_byte' are means over predicted tokens: every
        # token of the evaluation text after its first, once.
        eval_counts={"predicted_tokens": "loss"},
    )


def describe_causal_lm(config: Config, objective: Objective) -> Dict[str, Any]:
    """The byte language model, its tokens and the window it was trained on."""
    sizes = dict(config.model)
    return {
        "factory": "byte_language_model",
        "sizes": sizes,
        "task": {"seq_len": config.data.seq_len},
        "tokenizer": {
            "kind": "bytes",
            "reserved": language_model.NUM_RESERVED,  # byte b is token b + 3
            "max_seq_len": sizes.get("max_context_length"),
        },
    }


# Causal byte language modelling with Perceiver AR.
CAUSAL_LM = ObjectiveKind(
    factory="byte_language_model", model_rules=LM_RULES, build=causal_lm_objective,
    describe=describe_causal_lm, check=check,
)
