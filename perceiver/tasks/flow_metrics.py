"""How far a predicted optical flow is from the true one: the end-point error."""

import numpy as np


def end_point_error(pred, target, valid=None) -> float:
    """The mean end-point error: the average Euclidean distance between flows.

    Args:
      pred, target: flows `[..., 2]` of the same shape.
      valid: optional mask `[...]` (bool, or 0/1); only its true pixels count.

    Returns:
      the mean of `|pred - target|` over the (valid) pixels, in pixels.

    Raises:
      ValueError: for mismatched shapes, or a mask that selects nothing.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape or pred.ndim < 1 or pred.shape[-1] != 2:
        raise ValueError(
            f"pred and target must be flows [..., 2] of the same shape; got {pred.shape} "
            f"and {target.shape}."
        )
    errors = np.linalg.norm(pred - target, axis=-1)
    if valid is None:
        if errors.size == 0:
            raise ValueError("pred and target hold no flow vectors.")
        return float(errors.mean())
    valid = np.asarray(valid)
    if valid.shape != errors.shape:
        raise ValueError(f"valid must have shape {errors.shape}; got {valid.shape}.")
    valid = valid.astype(bool)
    if not valid.any():
        raise ValueError("valid selects no pixels.")
    return float(errors[valid].mean())
