"""See inside a model: attention weights and hidden states beside its outputs.

    outputs, maps = inspect.attention_maps(model, params, state, images)
    maps["perceiver_encoder/~/cross_attention/attention"]  # [B, heads, latents, pixels]

    outputs, states = inspect.hidden_states(model, params, state, images)
    states["perceiver_encoder/~/self_attention_1[3]"]      # [B, latents, channels]
    states["classification_decoder/~/basic_decoder/cross_attention"]  # before the logits layer

`model` is any `hk.TransformedWithState` built from `perceiver.perceiver`'s
modules (every `perceiver.models` factory). Layers are named by their Haiku
module path; a weight-shared layer that runs once per encoder block gets its
block's index, `path[i]`. The function runs under one `jax.jit`.

How it works: while the function traced by `attention_maps` runs, a context
(a contextvar of `perceiver._recording`) is active; each `Attention` module
asks it whether its weights are wanted and, if so, calls the compute seam
once more for them (`want_weights=True`, for the chosen queries only) and
hands them over. The outputs come from the model's own, unchanged
computation. With no context active the modules do nothing extra: no
computation, no state, no parameter. While inspecting, the encoder runs its
blocks unrolled and without rematerialisation (`scan_blocks=False,
remat=False`), so that what is recorded inside them can leave; the outputs
are those of the scanned model.

The jitted function is kept per model and options (the last CACHE_SIZE;
`clear_cache()` forgets them), so repeated calls on inputs of one shape
compile once.
"""

import collections
import contextlib
import fnmatch
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import haiku as hk
import jax
import numpy as np

from perceiver import _recording as recording_hook
from perceiver import compute
from perceiver import perceiver as modules

# The path of the encoder's cross-attention in every `perceiver.models` model.
ENCODER_CROSS_ATTENTION = "perceiver_encoder/~/cross_attention/attention"

# Compiled inspections kept (see `_compiled`): the most recent ones.
CACHE_SIZE = 8

# A decoder attention asked for without `decoder_queries` may have at most
# this many query-key pairs (a classifier's single query, a short text).
MAX_DECODER_PAIRS = 1 << 16


class _Recorder:
    """What one inspection asks for, and what the modules hand over while tracing."""

    def __init__(self, layers, decoder_queries, weights: bool, states: bool):
        self.patterns = None if layers is None else tuple(layers)
        self.decoder_queries = decoder_queries
        self.want_weights = weights
        self.want_states = states
        self.encoder_depth = 0
        self.decoder_depth = 0  # inside a BasicDecoder whose states are wanted
        self.weights: List[Tuple[str, Any]] = []
        self.states: List[Tuple[str, Any]] = []
        self.seen: List[str] = []  # every attention path traced, for error messages

    def _wanted(self, path: str, in_encoder: bool) -> bool:
        if self.patterns is None:
            return in_encoder
        return any(fnmatch.fnmatchcase(path, p) for p in self.patterns)

    def query_index(self, path: str, num_queries: int, num_keys: int):
        """`None`: weights not wanted; `slice(None)`: all queries; else an index array.

        Raises:
          ValueError: for a decoder attention too large to return whole
            without `decoder_queries`, or indices outside its queries.
        """
        self.seen.append(path)
        in_encoder = self.encoder_depth > 0
        if not self.want_weights or not self._wanted(path, in_encoder):
            return None
        if in_encoder:
            return slice(None)
        if self.decoder_queries is None:
            if num_queries * num_keys > MAX_DECODER_PAIRS:
                raise ValueError(
                    f"the decoder attention {path!r} has {num_queries} queries x {num_keys} "
                    f"keys ({num_queries * num_keys} weights per example and head, more than "
                    f"MAX_DECODER_PAIRS = {MAX_DECODER_PAIRS}): pass decoder_queries=[...], "
                    "the indices of the output queries whose weights you want."
                )
            return slice(None)
        return self.chosen_queries(path, num_queries)

    def chosen_queries(self, path: str, num_queries: int):
        """`decoder_queries` as an index array, checked against a layer's queries.

        Raises:
          ValueError: for indices that are not 1D integers in [0, num_queries).
        """
        index = np.asarray(self.decoder_queries)
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(
                f"decoder_queries must be a 1D sequence of integer query indices; got "
                f"{index.dtype} array of shape {index.shape}."
            )
        if index.size and (index.min() < 0 or index.max() >= num_queries):
            raise ValueError(
                f"decoder_queries must lie in [0, {num_queries}) for {path!r}; got values in "
                f"[{index.min()}, {index.max()}]."
            )
        return index

    def intercept(self, next_f, args, kwargs, context: hk.MethodContext):
        """Tracks encoder calls (unrolled while inspecting) and records block outputs."""
        if context.method_name != "__call__":
            return next_f(*args, **kwargs)
        if isinstance(context.module, modules.PerceiverEncoder):
            self.encoder_depth += 1
            try:
                # Inner to any options of the model's own: what is recorded
                # inside a loop or a rematerialised layer could not leave it.
                with compute.options(scan_blocks=False, remat=False):
                    return next_f(*args, **kwargs)
            finally:
                self.encoder_depth -= 1
        if self.want_states and self.encoder_depth == 0 and isinstance(context.module, modules.BasicDecoder):
            self.decoder_depth += 1
            try:
                # Unchunked, so that the block's output (before the decoder's
                # output layer) is formed; the chunked path folds it away.
                with compute.options(decoder_chunk_size=None):
                    return next_f(*args, **kwargs)
            finally:
                self.decoder_depth -= 1
        out = next_f(*args, **kwargs)
        blocks = (modules.SelfAttention, modules.CrossAttention)
        if self.want_states and isinstance(context.module, blocks):
            if self.encoder_depth > 0:
                self.states.append((context.module.module_name, out))
            elif self.decoder_depth > 0:
                path = context.module.module_name
                rows = slice(None)
                if self.decoder_queries is not None:
                    rows = self.chosen_queries(path, out.shape[1])
                self.states.append((path, out[:, rows]))
        return out


def _named(records: Sequence[Tuple[str, Any]]) -> Dict[str, Any]:
    """`{path: value}`, or `{path[i]: value}` for a path recorded more than once."""
    counts: Dict[str, int] = {}
    for path, _ in records:
        counts[path] = counts.get(path, 0) + 1
    seen: Dict[str, int] = {}
    named = {}
    for path, value in records:
        if counts[path] == 1:
            named[path] = value
        else:
            named[f"{path}[{seen.get(path, 0)}]"] = value
            seen[path] = seen.get(path, 0) + 1
    return named


# What the modules (perceiver.perceiver) call while they are traced lives in
# `perceiver._recording`, beneath both; its old names here still work.
record_attention = recording_hook.record_attention
select_queries = recording_hook.select_queries


# ---------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _recording(recorder: _Recorder):
    """Makes `recorder` the active inspection and lets it watch the modules' calls."""
    with recording_hook.active(recorder):
        with hk.intercept_methods(recorder.intercept):
            yield recorder


def _check_model(model) -> None:
    if not hasattr(model, "apply") or not hasattr(model, "init"):
        raise TypeError(
            f"model must be an hk.TransformedWithState (a perceiver.models factory's "
            f"result); got {type(model).__name__}."
        )


def _check_layers(layers) -> None:
    if layers is None:
        return
    if isinstance(layers, str) or not all(isinstance(p, str) for p in layers):
        raise TypeError(
            f"layers must be a sequence of module paths or fnmatch patterns (e.g. "
            f"['*cross_attention/attention']); got {layers!r}."
        )


def _static_key(value):
    """`value` as a hashable cache key; raises TypeError if it cannot be one."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(_static_key(v) for v in value)
    if isinstance(value, dict):
        return ("dict",) + tuple(sorted((k, _static_key(v)) for k, v in value.items()))
    hash(value)
    return value


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, jax.Array, np.generic))


_CACHE: "collections.OrderedDict[Any, Tuple[Callable, List[str]]]" = collections.OrderedDict()


def _compiled(model, layers, decoder_queries, static_kwargs, weights, states):
    """`(jitted run, names)` for one model and inspection, made once and kept (CACHE_SIZE).

    `jax.jit` traces `run` once per input shape; `names` holds the recorded
    layers' names, which depend on the model and the options, not the shapes.
    """
    # A copy: what is compiled must not change with the caller's list.
    queries = None if decoder_queries is None else np.array(decoder_queries)
    try:
        key = (
            model, None if layers is None else tuple(layers),
            None if queries is None else (queries.dtype.str, queries.shape, queries.tobytes()),
            _static_key(static_kwargs), weights, states, MAX_DECODER_PAIRS,
        )
        hash(key)
    except TypeError:  # e.g. a model that cannot be hashed: compile for this call only
        key = None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    names: List[str] = []

    def run(params, state, rng, inputs, array_kwargs):
        recorder = _Recorder(layers, queries, weights, states)
        with _recording(recorder):
            out = model.apply(params, state, rng, *inputs, **static_kwargs, **array_kwargs)
        if layers is not None and weights and not recorder.weights:
            raise ValueError(
                f"layers {list(layers)} match none of the model's attention layers: "
                f"{sorted(set(recorder.seen))}."
            )
        # A transformed-with-state apply returns (outputs, state).
        out = out[0] if isinstance(out, tuple) and len(out) == 2 else out
        recorded = _named(recorder.weights if weights else recorder.states)
        names[:] = list(recorded)  # the same names at every trace
        # A list, not the dict: jit would return a dict's keys sorted.
        return out, list(recorded.values())

    entry = (jax.jit(run), names)
    if key is not None:
        _CACHE[key] = entry
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return entry


def clear_cache() -> None:
    """Forgets the compiled inspections (and the models and options they hold)."""
    _CACHE.clear()


def _inspect(model, params, state, inputs, *, layers, rng, decoder_queries, kwargs, weights, states):
    _check_model(model)
    _check_layers(layers)
    # Arrays are traced; anything else (is_training=False, ...) is part of the program.
    array_kwargs = {k: v for k, v in kwargs.items() if _is_array(v)}
    static_kwargs = {k: v for k, v in kwargs.items() if k not in array_kwargs}
    run, names = _compiled(model, layers, decoder_queries, static_kwargs, weights, states)
    out, values = run(params, state, rng, tuple(inputs), array_kwargs)
    return out, dict(zip(names, values))


def attention_maps(
    model,
    params,
    state,
    *inputs,
    layers: Optional[Sequence[str]] = None,
    rng=None,
    decoder_queries=None,
    **kwargs,
) -> Tuple[Any, Mapping[str, jax.Array]]:
    """A model's outputs and the attention weights of chosen layers.

    Args:
      model: an `hk.TransformedWithState` built from `perceiver.perceiver`'s modules.
      params, state: its parameters and state.
      *inputs: apply's positional inputs (e.g. images `[B, H, W, 3]`).
      layers: module paths or fnmatch patterns of attention layers (e.g.
        `['*basic_decoder*']`); default: the encoder's cross-attention and
        every latent self-attention (each block's application).
      rng: apply's random key (None for evaluation).
      decoder_queries: indices of the decoder queries (outputs) whose weights
        to return, for decoder layers named in `layers`.
      **kwargs: apply's keyword arguments (e.g. `is_training=False`).

    Returns:
      `(outputs, maps)`: apply's outputs and `{layer: weights [B, heads,
      queries, keys]}` in the order the layers ran; rows of queries with no
      valid key are zero.

    Raises:
      ValueError: if `layers` match no attention layer, or a decoder's
        weights would be too large without `decoder_queries`.
    """
    return _inspect(
        model, params, state, inputs, layers=layers, rng=rng, decoder_queries=decoder_queries,
        kwargs=kwargs, weights=True, states=False,
    )


def hidden_states(
    model, params, state, *inputs, rng=None, decoder_queries=None, **kwargs
) -> Tuple[Any, Mapping[str, jax.Array]]:
    """A model's outputs, its latents after each encoder layer, and the decoder's states.

    Args:
      model, params, state, *inputs, rng, **kwargs: as for `attention_maps`.
      decoder_queries: indices of the decoder queries (outputs) whose states
        to return (default: all).

    Returns:
      `(outputs, states)`: apply's outputs and `{block: [B, N, C]}`, in the
      order they ran: the latents after the encoder's cross-attention block
      and after each self-attention block, then each `BasicDecoder`'s
      cross-attention block output `[B, queries, C]` (before its output
      layer; the decoder runs unchunked for it). A decoder called through
      its folded tail (the multimodal one) gives none.

    Raises:
      ValueError: for decoder_queries outside a decoder's queries.
    """
    return _inspect(
        model, params, state, inputs, layers=None, rng=rng, decoder_queries=decoder_queries,
        kwargs=kwargs, weights=False, states=True,
    )
