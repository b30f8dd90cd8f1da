"""Deterministic, resumable input pipelines on grain, and their hand-off to devices.

Order comes from grain's `IndexSampler` (a seed, shuffling, epochs) and
per-example randomness from the seed and the record's index, so a run reads
the same batches whatever happens; the iterator's state is saved with each
checkpoint and restored with it. Each process reads its own share of every
global batch (`ShardByJaxProcess`); `to_global` assembles the shares into
one array sharded over the device mesh.
"""

import queue
import threading
from typing import Any, Mapping, Optional, Sequence, Tuple

import grain.python as grain
import jax
import numpy as np


def make_loader(
    source: Any,
    operations: Sequence[Any],
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: Optional[int] = None,
    drop_remainder: bool = True,
    worker_count: int = 0,
    batch_operations: Sequence[Any] = (),
    pre_batch: int = 0,
) -> grain.DataLoader:
    """A grain loader over this process's share of `source`.

    Args:
      source: a random-access source (`__len__`, `__getitem__`, stable `__repr__`).
      operations: per-example transforms.
      batch_size: examples per batch for this process.
      seed: seed of the shuffle and of the transforms' randomness.
      shuffle: shuffle (anew every epoch).
      num_epochs: None repeats forever.
      drop_remainder: drop a last incomplete batch.
      worker_count: grain worker processes (0: read in this process).
      batch_operations: transforms of whole batches (after batching).
      pre_batch: batch this many instead of batch_size before
        `batch_operations` (MixUp/CutMix turn 2B examples into B).
    """
    # With several processes every shard gets the same number of records
    # (dropping fewer than process_count), so that all processes run the same
    # number of (collective) steps, evaluation included.
    shard = (
        grain.ShardByJaxProcess(drop_remainder=True) if jax.process_count() > 1 else grain.NoSharding()
    )
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=shard,
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed,
    )
    if worker_count:
        _absl_flags_ready()
    ops = list(operations) + [
        grain.Batch(pre_batch or batch_size, drop_remainder=drop_remainder)
    ] + list(batch_operations)
    return grain.DataLoader(
        data_source=source, sampler=sampler, operations=ops, worker_count=worker_count
    )


def _absl_flags_ready() -> None:
    """grain's worker processes read absl flags; outside an absl app they were never parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # keep every flag's default


_END = object()


class Prefetcher:
    """Reads batches ahead on a thread; each comes with the iterator state after it.

    The state stored with a checkpoint must be that after the last batch the
    model consumed, not after the ones read ahead, so each batch carries its
    own.
    """

    def __init__(self, loader: grain.DataLoader, state: Optional[bytes] = None, buffer: int = 2):
        self._iterator = iter(loader)
        if state is not None:
            self._iterator.set_state(state)
        self.state = self._iterator.get_state()
        self._queue: "queue.Queue" = queue.Queue(maxsize=max(buffer, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for batch in self._iterator:
                item = (batch, self._iterator.get_state())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put((_END, None))
        except BaseException as e:  # surfaced in the consumer
            self._queue.put((e, None))

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Mapping[str, np.ndarray]:
        batch, state = self._queue.get()
        if batch is _END:
            self._queue.put((_END, None))
            raise StopIteration
        if isinstance(batch, BaseException):
            raise batch
        self.state = state
        return batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        # Stop grain's worker processes now (and free their shared memory)
        # rather than at interpreter exit.
        inner = getattr(self._iterator, "_iterator", None)
        if hasattr(inner, "close"):
            try:
                inner.close()
            except Exception:  # closing is best effort; the data are no longer needed
                pass


def pad_batch(batch: Mapping[str, np.ndarray], size: int) -> Tuple[Mapping[str, np.ndarray], int]:
    """Pads every leaf to `size` rows (repeating row 0) and adds `weights` (0 on padding).

    Returns:
      `(padded batch, number of real rows)`.
    """
    n = len(next(iter(jax.tree_util.tree_leaves(batch))))
    if n > size:
        raise ValueError(f"batch has {n} rows; more than the padded size {size}.")

    def pad(x):
        x = np.asarray(x)
        if n == size:
            return x
        return np.concatenate([x, np.repeat(x[:1], size - n, axis=0)], axis=0)

    out = dict(jax.tree_util.tree_map(pad, dict(batch)))
    weights = np.zeros((size,), np.float32)
    weights[:n] = 1
    out["example_weights"] = weights
    return out, n


def to_global(batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> Any:
    """This process's rows of a batch, as global arrays split over the mesh's data axis."""

    def put(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree_util.tree_map(put, dict(batch))
