"""Cutting a long axis into chunks without padding it, and decoding over chunks of queries."""

from typing import Any, Callable, Optional, Tuple

import haiku as hk
import jax
import jax.numpy as jnp

from perceiver.compute import settings
from perceiver.compute.recompute import haiku_checkpoint


def split_evenly(length: int, max_chunk: int) -> Tuple[int, int]:
    """`(num_chunks, chunk)`: near-equal chunks of at most `max_chunk` covering `length`."""
    max_chunk = max(1, min(max_chunk, length))
    num = -(-length // max_chunk)
    return num, -(-length // num)


def chunk_start(index, length: int, chunk: int):
    """Start of chunk `index`; the last chunk ends at `length`, overlapping its neighbour.

    Overlapping (rather than padding) the last chunk means no padded copy of
    a large input is ever made.
    """
    return jnp.minimum(index * chunk, length - chunk)


def join_chunks(stacked: jnp.ndarray, length: int, chunk: int, axis: int) -> jnp.ndarray:
    """Joins `[num, ..., chunk (at axis + 1), ...]` outputs of overlapping chunks along `axis`."""
    num = stacked.shape[0]
    parts = jnp.moveaxis(stacked, 0, axis)  # [..., num, chunk, ...]
    shape = parts.shape[:axis] + (num * chunk,) + parts.shape[axis + 2 :]
    flat = parts.reshape(shape)
    tail = length - (num - 1) * chunk  # rows the last chunk adds
    if tail == chunk:
        return flat
    head = jax.lax.slice_in_dim(flat, 0, (num - 1) * chunk, axis=axis)
    last = jax.lax.slice_in_dim(flat, num * chunk - tail, num * chunk, axis=axis)
    return jnp.concatenate([head, last], axis=axis)


def decoder_chunk(batch: int, heads: int, num_queries: int, num_latents: int) -> Optional[int]:
    """Queries per decoder chunk under the current options, or None for one piece."""
    chosen = settings.current().decoder_chunk_size
    if chosen is None or settings.running_init():
        return None
    if chosen != settings.AUTO:
        return int(chosen) if int(chosen) < num_queries else None
    per_query = max(1, settings.planned_batch(batch) * max(1, heads) * num_latents)
    max_chunk = max(8, settings.TILE_ELEMENTS // per_query)
    if num_queries <= 2 * max_chunk:
        return None
    _, chunk = split_evenly(num_queries, max_chunk)
    return chunk


def over_query_chunks(
    block: Callable[[jnp.ndarray, Any], jnp.ndarray],
    queries: jnp.ndarray,
    per_query: Any,
    chunk_size: int,
) -> jnp.ndarray:
    """`block(queries, per_query)` computed over chunks of `chunk_size` queries in one loop.

    `block` must treat each query alone (as attention from queries does) and
    draw no random keys. Inside a Haiku transform; under differentiation each
    chunk is recomputed rather than stored.

    Args:
      block: `(queries [B, chunk, C], per_query of the chunk) -> [B, chunk, D]`.
      queries: `[B, T, C]`.
      per_query: arrays with the query axis at 1 (`[B|1, T, ...]`: a query
        mask, attention-mask rows, positions), any pytree of them, or None;
        each chunk gets its slice.
      chunk_size: queries per chunk.

    Returns:
      `[B, T, D]`.
    """
    num_queries = queries.shape[1]
    num_chunks = -(-num_queries // chunk_size)
    if num_chunks == 1:
        return block(queries, per_query)

    def chunk(index):
        # Slices of the queries, not a padded copy: the last chunk overlaps
        # the one before it and recomputes a few queries.
        start = chunk_start(index, num_queries, chunk_size)

        def cut(x):
            return jax.lax.dynamic_slice_in_dim(x, start, chunk_size, axis=1)

        return block(cut(queries), jax.tree_util.tree_map(cut, per_query))

    stacked = hk.map(haiku_checkpoint(chunk), jnp.arange(num_chunks))
    return join_chunks(stacked, num_queries, chunk_size, axis=1)
