"""The hook through which the modules hand what they compute to an inspection.

`perceiver.perceiver`'s attention modules call `record_attention` (and
`select_queries`) while they are traced; `perceiver.inspect` makes a
recorder active (`active`) for the length of one inspection. With none
active, `record_attention` returns at once: no computation, no state, no
parameter. This module imports nothing of the package, so that the modules
and the inspection both stand above it.
"""

import contextlib
import contextvars
from typing import Any, Callable, Iterator

# The recorder of the inspection being traced, or None.
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("perceiver_inspect", default=None)


@contextlib.contextmanager
def active(recorder: Any) -> Iterator[Any]:
    """Makes `recorder` the one `record_attention` hands weights to, while the block runs.

    Args:
      recorder: has `query_index(path, num_queries, num_keys)`, which gives
        None (weights not wanted), `slice(None)` (all queries) or an index
        array of queries, and a list `weights` that `(path, weights)` pairs
        are appended to.
    """
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def record_attention(
    path: str,
    weights: Callable[[Any], Any],
    num_queries: int,
    num_keys: int,
) -> None:
    """Hands an attention's weights to the active inspection, if it asks for them.

    Args:
      path: the attention module's path.
      weights: `index -> [B, H, T', S]`, the softmax weights of the queries
        `[:, index]` (computed only if called).
      num_queries: T, the layer's queries.
      num_keys: S, its keys.

    Raises:
      ValueError: from the recorder, for weights it cannot return (see
        `perceiver.inspect.attention_maps`).
    """
    recorder = _ACTIVE.get()
    if recorder is None:
        return
    index = recorder.query_index(path, num_queries, num_keys)
    if index is not None:
        recorder.weights.append((path, weights(index)))


def select_queries(x, index):
    """`x[:, index]` for queries `[B, T, ...]` (a mask `[1, T, S]` too); None stays None."""
    return None if x is None else x[:, index]
