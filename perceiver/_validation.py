"""Argument checks shared by the public modules.

Every helper raises a `ValueError` or `TypeError` whose message names the
argument, what was expected and what was given, so that bad input fails at
the call site instead of deep inside XLA.
"""

from typing import Any, Iterable, Optional, Sequence

import jax
import numpy as np


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raises `ValueError` unless `value` is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}."
        )


def check_rank(name: str, x: Any, ranks: Sequence[int], layout: str = "") -> None:
    """Raises `ValueError` unless `x.ndim` is in `ranks`."""
    shape = np.shape(x)
    if len(shape) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        layout = f" ({layout})" if layout else ""
        raise ValueError(
            f"{name} must have rank {want}{layout}; got shape {tuple(shape)}."
        )


def check_divisible(name: str, size: int, factor: int, factor_name: str) -> None:
    """Raises `ValueError` unless `factor` divides `size`."""
    if factor <= 0 or size % factor:
        raise ValueError(
            f"{name} ({size}) must be divisible by {factor_name} ({factor})."
        )


def check_positive_int(name: str, value: Any) -> None:
    """Raises `TypeError`/`ValueError` unless `value` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}.")


def check_probability(name: str, value: Any, upper_inclusive: bool = True) -> None:
    """Raises `TypeError`/`ValueError` unless `value` is a probability in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1]; got {type(value).__name__} {value!r}.")
    top_ok = value <= 1 if upper_inclusive else value < 1
    if not (0 <= value and top_ok):
        bound = "1]" if upper_inclusive else "1)"
        raise ValueError(f"{name} must be in [0, {bound}; got {value}.")


def check_mask_shape(name: str, mask: Any, expected: Sequence[int]) -> None:
    """Raises `ValueError` unless `mask` has exactly the `expected` shape."""
    if mask is None:
        return
    if tuple(np.shape(mask)) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)}; got {tuple(np.shape(mask))}."
        )


def concrete_or_none(x: Any) -> Optional[np.ndarray]:
    """`x` as a numpy array when its value is known now, `None` under tracing."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
