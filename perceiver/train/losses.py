"""Losses and metrics for each training objective (classification, masked LM, flow).

All take and return jax arrays and work under `jit`; each returns a scalar
(mean over the batch unless stated) so that a data-parallel step over a
sharded batch computes the same value as one device would.
"""

from typing import Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from perceiver import _validation


def smooth_labels(one_hot: jnp.ndarray, label_smoothing: float) -> jnp.ndarray:
    """Label smoothing as the reference applies it: `(1 - e) y + e / K`.

    Args:
      one_hot: `[..., K]` (possibly mixed) target distributions.
      label_smoothing: e in [0, 1).

    Raises:
      ValueError: if e is outside [0, 1).
    """
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}.")
    num_classes = one_hot.shape[-1]
    return (1.0 - label_smoothing) * one_hot + label_smoothing / num_classes


def softmax_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Cross-entropy of `logits` `[..., K]` against distributions `[..., K]`; `[...]`."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def classification_loss(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    label_smoothing: float = 0.0,
    mix_labels: Optional[jnp.ndarray] = None,
    ratio: Optional[jnp.ndarray] = None,
    weights: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
    """Mean softmax cross-entropy with MixUp/CutMix targets and label smoothing.

    Args:
      logits: `[B, K]`.
      labels: `[B]` int class ids.
      label_smoothing: see `smooth_labels`.
      mix_labels: `[B]` classes mixed in by MixUp/CutMix (None: no mixing).
      ratio: `[B]` weight of `labels` in the mix (the rest goes to `mix_labels`).
      weights: `[B]` per-example weights (e.g. 0 for padding); the mean is
        over their sum.

    Returns:
      a scalar.
    """
    _validation.check_rank("logits", logits, (2,), "[B, K]")
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes)
    if mix_labels is not None:
        if ratio is None:
            raise ValueError("mix_labels needs ratio ([B] share of labels); got None.")
        r = ratio[:, None]
        targets = r * targets + (1.0 - r) * jax.nn.one_hot(mix_labels, num_classes)
    if label_smoothing:
        targets = smooth_labels(targets, label_smoothing)
    per_example = softmax_cross_entropy(logits, targets)
    return _weighted_mean(per_example, weights)


def _weighted_mean(values: jnp.ndarray, weights: Optional[jnp.ndarray]) -> jnp.ndarray:
    if weights is None:
        return jnp.mean(values)
    weights = weights.astype(values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


def topk_correct(
    logits: jnp.ndarray, labels: jnp.ndarray, topk: Sequence[int] = (1, 5)
) -> Mapping[str, jnp.ndarray]:
    """`{'top_k_acc': [B]}`: 1.0 where the label is among the k largest logits.

    Ties are broken towards the label (a label whose logit equals the k-th
    largest counts as correct).
    """
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    rank = jnp.sum(logits > label_logit, axis=-1)  # classes strictly above the label
    return {f"top_{k}_acc": (rank < k).astype(jnp.float32) for k in topk}


def masked_lm_loss(
    logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray
) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Cross-entropy over the masked positions only.

    Args:
      logits: `[B, T, V]`.
      targets: `[B, T]` the original tokens.
      weights: `[B, T]`, 1 at the positions to predict (the masked ones).

    Returns:
      `(loss, accuracy)`: means over the positions with weight, as scalars
      (0 when there are none).
    """
    _validation.check_rank("logits", logits, (3,), "[B, T, V]")
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(weights), 1.0)
    loss = jnp.sum(nll * weights) / total
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return loss, jnp.sum(correct * weights) / total


def endpoint_error(
    flow: jnp.ndarray, target: jnp.ndarray, valid: Optional[jnp.ndarray] = None
) -> jnp.ndarray:
    """Mean end-point error: the Euclidean distance between flow vectors.

    Args:
      flow: predicted `[B, H, W, 2]`.
      target: ground truth `[B, H, W, 2]`.
      valid: optional `[B, H, W]`, nonzero where the pixel counts.

    Returns:
      a scalar: mean over (valid) pixels of `|flow - target|_2`.
    """
    if flow.shape != target.shape:
        raise ValueError(
            f"flow and target must have the same shape; got {flow.shape} and {target.shape}."
        )
    diff = (flow - target).astype(jnp.float32)
    # A tiny epsilon inside the root keeps the gradient finite at zero error.
    epe = jnp.sqrt(jnp.sum(diff * diff, axis=-1) + 1e-12)
    return _weighted_mean(epe, valid)


MODALITY_LOSSES = ("l1", "l2", "softmax_cross_entropy")


def multimodal_autoencoding_loss(
    outputs: Mapping[str, jnp.ndarray],
    targets: Mapping[str, jnp.ndarray],
    weights: Mapping[str, float],
    kinds: Optional[Mapping[str, str]] = None,
) -> Tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
    """Weighted sum of per-modality reconstruction losses.

    Args:
      outputs: e.g. `{'image': [B, N, 3], 'audio': [B, M], 'label': [B, K]}`.
      targets: the same keys; for 'softmax_cross_entropy' modalities either
        class ids `[B]` or distributions `[B, K]`.
      weights: loss weight per modality (a modality weighted 0 is still
        reported).
      kinds: loss per modality: 'l1' or 'l2' (mean absolute / squared error
        over all elements) or 'softmax_cross_entropy'. Default: 'label' is
        cross-entropy, everything else L1.

    Returns:
      `(total, {modality: unweighted loss})`.

    Raises:
      ValueError: if the modalities of outputs, targets and weights differ.
    """
    names = sorted(outputs)
    if sorted(targets) != names or sorted(weights) != names:
        raise ValueError(
            f"outputs, targets and weights must name the same modalities; got "
            f"{names}, {sorted(targets)} and {sorted(weights)}."
        )
    kinds = dict(kinds or {})
    per_modality = {}
    total = jnp.zeros((), jnp.float32)
    for name in names:
        kind = kinds.get(name, "softmax_cross_entropy" if name == "label" else "l1")
        _validation.check_choice(f"kinds[{name!r}]", kind, MODALITY_LOSSES)
        out, tgt = outputs[name], targets[name]
        if kind == "softmax_cross_entropy":
            if tgt.ndim == out.ndim - 1:
                tgt = jax.nn.one_hot(tgt, out.shape[-1])
            value = jnp.mean(softmax_cross_entropy(out, tgt))
        else:
            diff = (out - tgt).astype(jnp.float32)
            value = jnp.mean(jnp.abs(diff)) if kind == "l1" else jnp.mean(diff * diff)
        per_modality[name] = value
        total = total + weights[name] * value
    return total, per_modality
