"""Checkpoints of the whole training state with orbax, and export to the inference format.

Each checkpoint is a step folder `WORKDIR/checkpoints/STEP/` holding the
train state (params, model state, optimiser state, step, key) and the data
iterator's state. Orbax writes into a temporary folder and renames it when
complete, so a run killed mid-save leaves the previous checkpoints intact;
only the last `keep` are kept. `export` writes params and model state in
the published `.pystate` format that `perceiver.checkpoint.load` and the
inference tasks (`perceiver.tasks`) read.
"""

import os
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from perceiver import _interrupt
from perceiver import checkpoint as inference_checkpoint


class NonFiniteError(RuntimeError):
    """Training diverged: a loss, parameter or optimiser statistic became NaN or infinite."""


class Checkpointer:
    """Saves and restores `(train_state, data_state)` under `directory`.

    Args:
      directory: where step folders go (created, unless `read_only`).
      every_steps: `due` is true when the step is a multiple of this.
      keep: how many of the latest checkpoints to keep.
      async_save: write in a background thread (arrays are copied to host first).
      read_only: only restore (export, evaluation): create nothing, and leave
        unfinished saves alone (a trainer may be writing them).

    Raises:
      FileNotFoundError: with `read_only`, if `directory` holds no checkpoint.
    """

    def __init__(
        self,
        directory: str,
        every_steps: int = 1000,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.every_steps = max(int(every_steps), 1)
        if read_only and not any(d.isdigit() for d in _listdir(self.directory)):
            # Checked before orbax starts its threads, which would outlive the error.
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(int(keep), 1),
            create=not read_only,
            enable_async_checkpointing=async_save and not read_only,
            # Folders of saves cut short (a kill mid-write) are removed on start;
            # not by a reader, which never saves (and so never deletes old steps).
            cleanup_tmp_directories=not read_only,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data")
        )

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def save(self, step: int, train_state: Any, data_state: Optional[bytes]) -> None:
        """Saves now (overwriting nothing: a step already saved is skipped)."""
        if self.read_only:
            raise ValueError(f"checkpoints in {self.directory} were opened read-only.")
        if step in self._manager.all_steps():
            return
        data = {"iterator": data_state.decode() if data_state is not None else None}
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(train_state), data=ocp.args.JsonSave(data)
            ),
            force=True,
        )

    def due(self, step: int) -> bool:
        """Whether `step` is one to save (a multiple of `every_steps`)."""
        return step % self.every_steps == 0

    def maybe_save(self, step: int, train_state: Any, data_state: Optional[bytes]) -> bool:
        if not self.due(step):
            return False
        self.save(step, train_state, data_state)
        return True

    def _step(self, step: Optional[int]) -> int:
        """`step`, or the latest; FileNotFoundError if there is no such checkpoint."""
        steps = sorted(self._manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {self.directory}; saved steps: {steps}."
            )
        return int(step)

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> Tuple[Any, Optional[bytes], int]:
        """The train state (laid out like `abstract_state`) and data state of `step` (default: latest).

        Raises:
          FileNotFoundError: if there is no checkpoint (of `step`).
        """
        step = self._step(step)
        restored = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        iterator = restored["data"].get("iterator") if restored["data"] else None
        return restored["state"], (iterator.encode() if iterator is not None else None), int(step)

    def restore_params(self, step: Optional[int] = None) -> Tuple[Any, Any, int]:
        """`(params, model_state, step)` of a checkpoint, as numpy, without building the model.

        Raises:
          FileNotFoundError: if there is no checkpoint (of `step`).
        """
        step = self._step(step)
        restored = self._manager.restore(
            int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore())
        )
        tree = restored["state"]
        get = tree.get if isinstance(tree, dict) else lambda k: getattr(tree, k)
        to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)
        return to_np(get("params")), to_np(get("state") or {}), int(step)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def saved_steps(directory: str) -> list:
    """The steps saved under `directory` (complete step folders), without starting orbax."""
    return sorted(int(d) for d in _listdir(directory) if d.isdigit())


def _listdir(path: str):
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def nonfinite_leaves(tree: Any) -> list:
    """The paths ('params/module/w') of the floating-point leaves of `tree` holding NaN or inf.

    Arrays stay where they are: one jit-compiled reduction per leaf, and
    one small vector of flags comes to the host.
    """
    leaves = [
        ("/".join(_key_name(k) for k in path), x)
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    if not leaves:
        return []
    flags = _all_finite([x for _, x in leaves])
    return [name for (name, _), ok in zip(leaves, np.asarray(jax.device_get(flags))) if not ok]


@jax.jit
def _all_finite(leaves):
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def export(path: str, params: Any, state: Any = None, description: Any = None) -> str:
    """Writes params and model state in the published inference format (atomically).

    The file loads with `perceiver.checkpoint.load` (and `models.load_for`);
    `description` (what rebuilds the model: factory, sizes, labels...) goes
    beside it as `perceiver.checkpoint.description_path(path)`.

    Returns:
      `path`.

    Raises:
      NonFiniteError: if a parameter or state value is NaN or infinite
        (nothing is written).
      OSError: if a file cannot be written.
    """
    to_host = lambda tree: {m: {n: fetch(v) for n, v in ps.items()} for m, ps in (tree or {}).items()}
    params, state = to_host(params), to_host(state)  # every process takes part in gathers
    bad = [
        f"{m}/{n}" for tree in (params, state) for m, ps in tree.items() for n, v in ps.items()
        if np.issubdtype(v.dtype, np.inexact) and not np.all(np.isfinite(v))
    ]
    if bad:
        raise NonFiniteError(
            f"refusing to export {path}: non-finite values in {few(bad)}."
        )
    if jax.process_index() == 0:
        # The checkpoint and its description are one export: Ctrl-C waits for both.
        with _interrupt.held():
            inference_checkpoint.save(path, params, state, description=description)
    return path


def few(names, n: int = 3) -> str:
    """The first `n` names, and how many more: for one-line messages."""
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def fetch(x: Any) -> np.ndarray:
    """A (possibly sharded, multi-host) array as one numpy array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
