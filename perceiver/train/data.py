"""Deterministic, resumable input pipelines on grain, and their hand-off to devices.

Order comes from grain's `IndexSampler` (a seed, shuffling, epochs) and
per-example randomness from the seed and the record's position, so a run
reads the same batches whatever happens. Batch i is always made of the
sampler's records `i*B .. i*B+B-1`, whatever the number of worker processes
(`data.workers`): each worker builds whole batches and grain hands them back
in order, so the workers only change the speed. The loader's position (the
next batch) is saved with each checkpoint and restored with it. With several
processes (`jax.distributed`) every process walks the same global order and
reads its contiguous rows of each global batch; `to_global` assembles the
rows into one array sharded over the device mesh, so a run sees the same
batches on 1 process as on N (batch operations such as MixUp act on each
process's rows).
"""

import json
import queue
import sys
import threading
from typing import Any, Mapping, Optional, Sequence, Tuple

import grain.python as grain
import jax
import numpy as np

# Batches computed ahead by each process (and threads doing so): whole batches
# of images can be large, so few.
READ_AHEAD = 4
READ_THREADS = 2
STATE_VERSION = 1


class _MakeBatch:
    """Batch `i` of a loader: its records read, transformed, stacked and batch-transformed."""

    def __init__(self, source, sampler, operations, batch_operations, group, shard, seed):
        self.source = source
        self.sampler = sampler
        self.operations = list(operations)
        self.batch_operations = list(batch_operations)
        self.group = group  # this process's records per batch before the batch operations
        self.shard = shard  # (index, count) of this process's share
        self.seed = seed
        count = shard[1]
        # Every process walks the same global order; a last partial batch is
        # trimmed to a multiple of the process count (dropping fewer than
        # count records) so that every process gets an equal share of it.
        self.num_records = len(sampler) - len(sampler) % count  # global
        self.global_group = group * count

    def _element(self, position: int) -> Any:
        meta = self.sampler[position]
        element = self.source[meta.record_key]
        for op in self.operations:
            element = _apply(op, element, meta.rng)
        return element

    def positions(self, i: int) -> range:
        """The sampler positions of this process's share of batch `i`: contiguous rows of the global batch."""
        index, count = self.shard
        first = int(i) * self.global_group
        share = (min(first + self.global_group, self.num_records) - first) // count
        return range(first + index * share, first + (index + 1) * share)

    def __call__(self, i: int) -> Any:
        elements = [self._element(p) for p in self.positions(i)]
        batch = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *elements)
        if self.batch_operations:
            # A stream of its own per batch, apart from the examples' streams.
            rng = np.random.default_rng([self.seed, 0xBA7C4, int(i)])
            for op in self.batch_operations:
                batch = _apply(op, batch, rng)
        return batch


def _apply(op: Any, element: Any, rng: Optional[np.random.Generator]) -> Any:
    if isinstance(op, grain.RandomMapTransform):
        return op.random_map(element, rng)
    if isinstance(op, grain.MapTransform):
        return op.map(element)
    raise TypeError(f"loader operations must be grain MapTransform or RandomMapTransform; got {op!r}.")


class Loader:
    """An iterable of batches in a fixed order, independent of the number of workers.

    Made by `make_loader`; `iter(loader)` gives a `LoaderIterator` with
    `get_state`/`set_state` (bytes) like grain's.
    """

    def __init__(self, make_batch: _MakeBatch, num_batches: int, worker_count: int, description: str):
        self.make_batch = make_batch
        self.num_batches = num_batches
        self.worker_count = worker_count
        self.description = description

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> "LoaderIterator":
        return LoaderIterator(self)

    def __repr__(self) -> str:
        return self.description

    def dataset(self, start: int) -> grain.IterDataset:
        """The grain pipeline of batches `start, start + 1, ...`."""
        ds = grain.MapDataset.range(self.num_batches)[start:].map(self.make_batch)
        ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=READ_AHEAD)
        )
        if self.worker_count:
            _absl_flags_ready()
            # Each worker makes whole batches (its slice of the batch indices);
            # grain returns them round-robin, i.e. in index order.
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
        return ds


class LoaderIterator:
    """Batches of a `Loader` from a position; the state is the next batch's index."""

    def __init__(self, loader: Loader, next_batch: int = 0):
        self._loader = loader
        self._next = int(next_batch)
        self._iterator = None

    def __iter__(self) -> "LoaderIterator":
        return self

    def __next__(self) -> Any:
        if self._next >= self._loader.num_batches:
            self.close()  # the workers are done: stop them now
            raise StopIteration
        if self._iterator is None:
            self._iterator = iter(self._loader.dataset(self._next))
        batch = next(self._iterator)
        self._next += 1
        return batch

    def get_state(self) -> bytes:
        return json.dumps(
            {"version": STATE_VERSION, "next_batch": self._next, "loader": repr(self._loader)}
        ).encode()

    def set_state(self, state: bytes) -> None:
        """Continues from a saved state.

        Raises:
          ValueError: if the state is of another data set, order or batch size.
        """
        record = json.loads(state.decode() if isinstance(state, bytes) else state)
        if "next_batch" not in record:
            next_batch = _from_grain_state(record, self._loader)
        else:
            if record.get("loader") != repr(self._loader):
                raise ValueError(
                    f"the saved data position is for {record.get('loader')}; this run reads "
                    f"{self._loader!r} (data, order or batch size changed)."
                )
            next_batch = int(record["next_batch"])
        self.close()
        self._next = next_batch

    def close(self) -> None:
        """Stops the worker processes (and frees their shared memory) now."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            try:
                iterator.close()
            except Exception:  # closing is best effort; the data are no longer needed
                pass


def _from_grain_state(record: Mapping[str, Any], loader: Loader) -> int:
    """The next batch of a state saved by a grain DataLoader of one process without workers.

    Raises:
      ValueError: for any other grain state (it depends on the worker count).
    """
    seen = record.get("last_seen_indices", {})
    if record.get("worker_count") != 0 or list(seen) != ["0"] or jax.process_count() != 1:
        raise ValueError(
            "the saved data position was written by an older perceiver train with data.workers > 0 "
            "or several processes; it cannot be continued (start a new --workdir)."
        )
    return (int(seen["0"]) + 1) // loader.make_batch.group


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
) -> Loader:
    """A loader of this process's rows of each global batch of `source`.

    Global batch i holds the sampler's records `i * G .. i * G + G - 1` (G =
    `pre_batch or batch_size` times the process count), with the same
    per-example randomness, for any `worker_count` and process count;
    process k reads rows `k * n .. k * n + n - 1` of it.

    Args:
      source: a random-access source (`__len__`, `__getitem__`, stable `__repr__`).
      operations: per-example transforms (grain `MapTransform` / `RandomMapTransform`).
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
    several = jax.process_count() > 1
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=grain.NoSharding(),
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed,
    )
    shard = (jax.process_index(), jax.process_count()) if several else (0, 1)
    group = pre_batch or batch_size
    make_batch = _MakeBatch(source, sampler, operations, batch_operations, group, shard, seed)
    records, global_group = make_batch.num_records, make_batch.global_group
    if num_epochs is None:
        num_batches = sys.maxsize // global_group
    elif drop_remainder:
        num_batches = records // global_group
    else:
        num_batches = -(-records // global_group)
    description = (
        f"Loader(source={source!r}, sampler={sampler!r}, batch={group}, "
        f"drop_remainder={drop_remainder}, shard={shard})"
    )
    return Loader(make_batch, num_batches, int(worker_count), description)


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

    def __init__(self, loader: Loader, state: Optional[bytes] = None, buffer: int = 2):
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
        # Stop grain's worker processes now rather than at interpreter exit.
        if hasattr(self._iterator, "close"):
            self._iterator.close()


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
