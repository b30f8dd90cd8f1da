"""Checkpoints of the whole training state with orbax, and export to the inference format.

Each checkpoint is a step folder `WORKDIR/checkpoints/STEP/` holding the
train state (params, model state, optimiser state, step, key) and the data
iterator's state. Orbax writes into a temporary folder and renames it when
complete, so a run killed mid-save leaves the previous checkpoints intact;
only the last `keep` are kept. `export` writes params and model state in
the published `.pystate` format that `perceiver.checkpoint.load` and the
task functions read.
"""

import os
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from perceiver import checkpoint as inference_checkpoint


class Checkpointer:
    """Saves and restores `(train_state, data_state)` under `directory`.

    Args:
      directory: where step folders go (created).
      every_steps: `maybe_save` saves when the step is a multiple of this.
      keep: how many of the latest checkpoints to keep.
      async_save: write in a background thread (arrays are copied to host first).
    """

    def __init__(self, directory: str, every_steps: int = 1000, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.every_steps = max(int(every_steps), 1)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(int(keep), 1),
            create=True,
            enable_async_checkpointing=async_save,
            # Folders of saves cut short (a kill mid-write) are removed on start.
            cleanup_tmp_directories=True,
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

    def maybe_save(self, step: int, train_state: Any, data_state: Optional[bytes]) -> bool:
        if step % self.every_steps:
            return False
        self.save(step, train_state, data_state)
        return True

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> Tuple[Any, Optional[bytes], int]:
        """The train state (laid out like `abstract_state`) and data state of `step` (default: latest).

        Raises:
          FileNotFoundError: if there is no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        restored = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        iterator = restored["data"].get("iterator") if restored["data"] else None
        return restored["state"], (iterator.encode() if iterator is not None else None), int(step)

    def restore_params(self, step: Optional[int] = None) -> Tuple[Any, Any, int]:
        """`(params, model_state, step)` of a checkpoint, as numpy, without building the model."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
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


def export(path: str, params: Any, state: Any = None) -> str:
    """Writes params and model state in the published inference format (atomically).

    The file loads with `perceiver.checkpoint.load` (and `models.load_for`).

    Returns:
      `path`.
    """
    to_host = lambda tree: {m: {n: fetch(v) for n, v in ps.items()} for m, ps in (tree or {}).items()}
    params, state = to_host(params), to_host(state)  # every process takes part in gathers
    if jax.process_index() == 0:
        inference_checkpoint.save(path, params, state)
    return path


def fetch(x: Any) -> np.ndarray:
    """A (possibly sharded, multi-host) array as one numpy array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
