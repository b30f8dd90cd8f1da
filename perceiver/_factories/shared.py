"""What every factory of the package shares: the built model and its sizes bound to defaults."""

import dataclasses
import inspect
from typing import Any, Callable, Dict, Mapping, Tuple

import haiku as hk


@dataclasses.dataclass(frozen=True)
class _Built:
    """A model and inputs of the right shapes, to trace its parameter tree."""

    model: hk.TransformedWithState
    example_inputs: Tuple


def _bind_sizes(name: str, builder: Callable, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """`builder`'s arguments from `kwargs`, its defaults filled in.

    Raises:
      TypeError: for an argument `builder` does not take, or a missing one,
        naming the factory `name` and the arguments it takes.
    """
    signature = inspect.signature(builder)
    try:
        bound = signature.bind(**kwargs)
    except TypeError as e:
        raise TypeError(
            f"{name}: {e}; it takes {', '.join(signature.parameters)}."
        ) from None
    bound.apply_defaults()
    return dict(bound.arguments)
