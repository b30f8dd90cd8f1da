"""Loading a task's model from a published name or a checkpoint file."""

from typing import Callable, Optional, TypeVar

from perceiver import checkpoint
from perceiver import hub

T = TypeVar("T")


def build_from_checkpoint(
    build: Callable[[dict, dict], T],
    name_or_path: str,
    *,
    cache_dir: Optional[str] = None,
    progress: bool = True,
) -> T:
    """`build(params, state)` on a published checkpoint (downloaded once) or a file.

    Raises:
      perceiver.checkpoint.CheckpointError: if the file is not a checkpoint,
        or `build` finds it does not fit; the message names the file and,
        for a cached published file, how to download it again.
    """
    path = hub.fetch(name_or_path, cache_dir=cache_dir, progress=progress)
    try:
        params, state = checkpoint.load(path)  # Its errors name the file.
        try:
            return build(params, state)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"{path}: {e}", e.differences) from None
    except checkpoint.CheckpointError as e:
        if not (isinstance(name_or_path, str) and name_or_path in hub.CHECKPOINTS):
            raise
        raise hub.bad_cache_error(name_or_path, path, e) from None  # Says how to replace the file.
