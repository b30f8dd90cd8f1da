"""Sampling from a Perceiver AR, with a key/value cache or without, as its authors' sampler does.

With the cache, each step feeds one new event and one latent: the
cross-attention's memory holds the context's keys, each latent layer's
memory the keys of earlier latents (appendix E.3 of the paper). When the
latent memories are full they are refilled from a full pass over the
context with half as many latents, as google-research/perceiver-ar's
`sample_utils` does. Without the cache (`use_cache=False`) every step runs
the whole context with as many latents as the cache would hold, so both
ways compute the same logits and, greedily, the same tokens.

The model must read its positions from the data (`use_positions_from_data`);
they are fed 1-based, as the reference's sampler feeds them.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, List, Mapping, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import compute
from perceiver import perceiver_ar


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How the next token is drawn from the logits.

    Attributes:
      temperature: 0 for greedy (argmax), else logits are divided by it.
      top_k: keep the k most probable tokens (0: all).
      top_p: keep the smallest set of most probable tokens whose
        probability reaches top_p (nucleus sampling; 1: all).

    Raises:
      ValueError: for a negative or non-finite temperature, a negative
        top_k, or top_p outside (0, 1].
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0; got {t!r}.")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0: no limit); got {k!r}.")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {p!r}.")


def filter_logits(logits: jnp.ndarray, options: SamplingOptions) -> jnp.ndarray:
    """`[B, C]` logits over the temperature, with the tokens top-k and top-p exclude at -inf."""
    logits = logits.astype(jnp.float32)
    if options.temperature > 0:
        logits = logits / options.temperature
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, options.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if options.top_p < 1:
        order = jnp.argsort(-logits, axis=-1)
        probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
        # A token stays while the probability of those before it is below top_p.
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < options.top_p
        rows = jnp.arange(logits.shape[0])[:, None]
        keep = jnp.zeros_like(keep_sorted).at[rows, order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def draw(key: jax.Array, logits: jnp.ndarray, options: SamplingOptions,
         never: Sequence[int] = (0,)) -> jnp.ndarray:
    """`[B]` tokens: the argmax for temperature 0, else a sample of the filtered logits.

    Tokens in `never` are never drawn. Token 0 should be among them:
    Perceiver AR reads it as padding, the end of the sequence, so feeding it
    back would cut the context short.
    """
    logits = jnp.asarray(logits, jnp.float32)
    if len(never):
        logits = logits.at[:, jnp.asarray(never, jnp.int32)].set(-jnp.inf)
    if options.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits, options), axis=-1).astype(jnp.int32)


def _frozen(value):
    """A hashable copy of a configuration (lists as tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


@functools.lru_cache(maxsize=16)
def _compiled(frozen_config):
    """The jitted step of one configuration, shared by every `Model` of it (compiled once per shape)."""
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in frozen_config}

    def forward(inputs, input_idxs, memory, z_index_dim, memory_type):
        model = perceiver_ar.PerceiverAR(**config)
        out = model(inputs, input_idxs, is_training=False, memory_type=memory_type,
                    memory=memory, z_index_dim=z_index_dim)
        return out.input_events_logits[:, -1], out.perceiver_state

    return jax.jit(hk.without_apply_rng(hk.transform(forward)).apply, static_argnums=(4, 5))


class Model:
    """A PerceiverAR configuration and its parameters, called as the sampler needs.

    Args:
      config: PerceiverAR's constructor keywords (with use_positions_from_data=True).
      params: its parameters.

    Raises:
      ValueError: if the configuration does not read positions from the data.
    """

    def __init__(self, config: Mapping[str, Any], params):
        config = dict(config)
        if not config.get("use_positions_from_data"):
            raise ValueError(
                "sampling with a cache needs use_positions_from_data=True in the model's "
                "configuration (positions are fed as the data's event indices)."
            )
        self.config = config
        self.params = params
        self._apply = _compiled(_frozen(config))

    def __call__(self, inputs, idxs, memory, z_index_dim: int, memory_type: str):
        """`(logits [B, C] of the next event, memory)`."""
        return self._apply(self.params, inputs, idxs, memory, z_index_dim, memory_type)

    def empty_memory(self, batch: int, context: int, latents: int) -> List[compute.KVCache]:
        """Empty caches: `context` slots for the cross-attention, `latents` for each latent layer."""
        c = self.config
        return perceiver_ar.initialize_memory(
            batch_size=batch,
            num_transformers_per_block=c.get("num_transformers_per_block", 12),
            num_cross_attend_heads=c.get("num_cross_attend_heads", 1),
            num_transformer_heads=c.get("num_transformer_heads", 8),
            num_z_channels=c.get("num_z_channels", 1024),
            max_context_length_memory=context,
            z_index_dim_memory=latents,
            position_encoding_type=c["position_encoding_type"],
        )


def _empty_like(cache: compute.KVCache, capacity: int) -> compute.KVCache:
    batch, _, heads, qk_dim = cache.k.shape
    return compute.KVCache.empty(batch, capacity, heads, qk_dim, cache.v.shape[-1], cache.k.dtype)


def _realign_after_refill(memory: List[compute.KVCache], filled: int, latents: int):
    """After a refill over the whole buffer: the context memory keeps its first `filled`
    inputs, moved to the end; the latent memories get empty slots in front up to `latents`."""

    def context_slots(x):
        keep = (jnp.arange(x.shape[1]) < filled).reshape((1, -1) + (1,) * (x.ndim - 2))
        return jnp.roll(jnp.where(keep, x, jnp.zeros_like(x)), -filled, axis=1)

    first = memory[0]
    first = compute.KVCache(*(context_slots(x) for x in first[:4]),
                            count=jnp.full_like(first.count, filled))
    return [first] + [m.grown(latents - m.capacity) for m in memory[1:]]


@functools.partial(jax.jit, static_argnums=(3, 4))
def _draw_rows(keys, step, logits, options, never):
    """`[B]` tokens, row b drawn with `fold_in(keys[b], step)`."""
    def one(key, row):
        return draw(jax.random.fold_in(key, step), row[None], options, never)[0]

    return jax.vmap(one)(keys, logits)


class _Finished(Exception):
    """Every row has drawn its stop token."""


def run_steps(model: Model, prompt: np.ndarray, max_new: int, context: int, latents: int,
              use_cache: bool, choose: Callable[[int, jnp.ndarray], np.ndarray]) -> None:
    """The decoding loop: `choose(step, logits [B, C])` returns each step's `[B]` tokens.

    The window holds at most `context` events. When it is full it slides by
    `latents // 2` events, dropping the oldest, and the memories are refilled
    from it, as they are when the latent memories fill; so both happen at the
    same steps, once every `latents // 2` events, and a slide costs no extra
    pass in the long run. A prompt longer than `context` keeps its last
    `context` events.
    """
    prompt = prompt[:, -context:]
    batch, i = prompt.shape  # i: where the next event goes
    shift = latents // 2
    # One buffer of fixed length (zeros after the events so far), 1-based positions.
    events = np.zeros((batch, context + 1), np.int32)
    events[:, :i] = prompt
    idxs = np.broadcast_to(np.arange(1, context + 2, dtype=np.int32)[None, :, None],
                           (batch, context + 1, 1))
    memory = model.empty_memory(batch, context, latents) if use_cache else None
    held = 0  # latents the cache holds; the plain path uses as many
    for step in range(max_new):
        if i == context:
            events[:, : context - shift] = events[:, shift:context]
            events[:, context - shift:] = 0
            i -= shift
            held = latents
        if held == latents:
            held = latents // 2
            if use_cache:
                # Refill: the whole buffer once, with half the latents.
                memory = [_empty_like(memory[0], context)] + [
                    _empty_like(m, held) for m in memory[1:]
                ]
                logits, memory = model(events[:, :-1], idxs[:, :-1], memory, held, "fixed_size_kv")
                memory = _realign_after_refill(memory, i, latents)
        else:
            held += 1
            if use_cache:
                # The prompt at once, then one event a step.
                first = i - 1 if step else 0
                logits, memory = model(events[:, first:i], idxs[:, first:i], memory, 1,
                                       "fixed_size_kv")
        if not use_cache:
            # One latent sits on the last input, padding or not, as in the reference.
            end = i if held == 1 else context
            logits, _ = model(events[:, :end], idxs[:, :end], None, held, "none")
        events[:, i] = choose(step, logits)
        i += 1


def generate(config: Mapping[str, Any], params, prompt, *, max_new: int, context: int,
             latents: int, options: SamplingOptions = SamplingOptions(), seed: int = 0,
             use_cache: bool = True,
             on_token: Optional[Callable[[np.ndarray], None]] = None,
             never: Sequence[int] = (0,), stop: Optional[int] = None,
             row_ids: Optional[Sequence[int]] = None) -> np.ndarray:
    """`[B, n]` tokens following `prompt` `[B, P]` (int tokens > 0, no padding).

    n is max_new, or fewer when every row has drawn `stop`.

    Past `context` events the window slides (see `run_steps`).

    Args:
      config: PerceiverAR's constructor keywords (with use_positions_from_data=True).
      params: its parameters.
      prompt: `[B, P]`, P >= 1; only its last `context` tokens are read.
      max_new: tokens to generate (>= 1).
      context: the longest sequence the memories hold (the window's length),
        at least `latents`.
      latents: latent slots of the cache (even, >= 4); refilled to half when full.
      options: how tokens are drawn.
      seed: for the draws, an int in [-2**63, 2**63); the same seed gives the
        same tokens with or without the cache.
        Row r draws with its own key, `fold_in(PRNGKey(seed), row_ids[r])`, so
        its tokens do not depend on the rows beside it.
      use_cache: False runs every step on the whole window (slower; the same function).
      on_token: called with each step's `[B]` tokens as they come.
      never: tokens never drawn (0, padding, should be one).
      stop: a token that ends a row: it is returned, the row's later tokens
        are 0, and generation ends when every row has drawn it.
      row_ids: each row's id for its key (default 0, 1, ...).

    Raises:
      ValueError: for a prompt that is empty, padded or not 2-D, max_new < 1, a seed
        out of range,
        an odd or too small latent count, or a context shorter than it.
    """
    prompt = np.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"prompt must be [batch, length >= 1] int tokens; got shape {prompt.shape}.")
    if (prompt <= 0).any():
        raise ValueError("prompt tokens must be > 0 (0 is padding).")
    if isinstance(max_new, bool) or not isinstance(max_new, (int, np.integer)) or max_new < 1:
        raise ValueError(f"max_new must be an int >= 1; got {max_new!r}.")
    # After a refill the latents are half as many: at least 2, which read the padding right.
    if isinstance(latents, bool) or not isinstance(latents, (int, np.integer)) or latents < 4 \
            or latents % 2:
        raise ValueError(f"latents must be an even int >= 4; got {latents!r}.")
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < latents:
        raise ValueError(f"context must be an int >= latents ({latents}); got {context!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not -2**63 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [-2**63, 2**63); got {seed!r}.")
    batch = prompt.shape[0]
    row_ids = np.arange(batch) if row_ids is None else np.asarray(row_ids)
    if row_ids.shape != (batch,):
        raise ValueError(f"row_ids must give one id per prompt ({batch}); got shape {row_ids.shape}.")
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(seed), row_ids)
    # Grown step by step, not allocated for max_new: generation may stop early
    # (every row at `stop`), and max_new may be far beyond what is ever reached.
    drawn: List[np.ndarray] = []
    done = np.zeros(batch, bool)

    def choose(step, logits):
        tokens = np.asarray(_draw_rows(keys, step, logits, options, tuple(never)))
        tokens = np.where(done, 0, tokens)
        drawn.append(tokens)
        if on_token is not None:
            on_token(tokens)
        if stop is not None:
            done[:] |= tokens == stop
            if done.all():
                raise _Finished
        # A finished row goes on reading something that is not padding.
        return np.where(done, stop if stop is not None else 0, tokens)

    try:
        run_steps(Model(config, params), prompt.astype(np.int32), max_new, context, latents,
                  use_cache, choose)
    except _Finished:
        pass
    return np.stack(drawn, axis=1)
