"""Starting from published weights: a text classifier on the byte MLM, and loading with new heads."""

import os
from typing import Any, List, Mapping, Sequence, Tuple

import numpy as np

from perceiver import checkpoint
from perceiver import models


# What the finetune_text recipe trains; one definition, so that an export
# rebuilds with the factory its description names.
text_classifier = models.text_classifier


def _is_fresh(module: str, fresh: Sequence[str]) -> bool:
    return any(module == p or module.startswith(p + "/") or module.startswith(p + "/~") for p in fresh)


def merge_pretrained(
    initial: Mapping[str, Mapping[str, Any]],
    pretrained: Mapping[str, Mapping[str, Any]],
    fresh: Sequence[str] = (),
    what: str = "params",
) -> Tuple[dict, List[str], List[str]]:
    """`initial` with every module taken from `pretrained`, except the fresh ones.

    Args:
      initial: the new model's freshly initialised tree.
      pretrained: a checkpoint's tree.
      fresh: module names (or prefixes: 'classification_decoder' covers its
        sub-modules) that keep their initial values: the new head.
      what: 'params' or 'state', for messages.

    Returns:
      `(merged, loaded modules, dropped modules)`: dropped are the
      checkpoint's modules the new model does not use (the old head).

    Raises:
      checkpoint.CheckpointError: listing every module outside `fresh` that
        the checkpoint lacks or holds with other names or shapes.
    """
    merged, loaded, problems = {}, [], []
    for module, values in initial.items():
        if _is_fresh(module, fresh):
            merged[module] = dict(values)
            continue
        if module not in pretrained:
            problems.append(f"missing {module}")
            merged[module] = dict(values)
            continue
        got = pretrained[module]
        for name, value in values.items():
            if name not in got:
                problems.append(f"missing {module}/{name}")
            elif tuple(np.shape(got[name])) != tuple(np.shape(value)):
                problems.append(
                    f"mismatched {module}/{name}: model {list(np.shape(value))}, "
                    f"checkpoint {list(np.shape(got[name]))}"
                )
        merged[module] = {
            n: np.asarray(got[n], np.asarray(v).dtype) if n in got else v for n, v in values.items()
        }
        loaded.append(module)
    if problems:
        raise checkpoint.CheckpointError(
            f"the pretrained {what} do not fit the model outside the new modules {list(fresh)} "
            f"({len(problems)} problems):\n  " + "\n  ".join(problems)
        )
    dropped = sorted(m for m in pretrained if m not in initial or _is_fresh(m, fresh))
    return merged, loaded, dropped


def resolve_pretrained(name_or_path: str, cache_dir: str = None) -> str:
    """A checkpoint file: a path as it is, or a published name fetched by `perceiver.hub`.

    Raises:
      FileNotFoundError: if it is neither an existing file nor a published
        name, or a published name not in the cache that cannot be downloaded
        (offline): the message says how to fetch it.
    """
    path = os.path.expanduser(name_or_path)
    if os.path.isfile(path):
        return path
    from perceiver import hub, loading

    if name_or_path in hub.SHIPPED:  # Every name `perceiver list` shows is accepted.
        return str(hub.shipped_path(name_or_path))
    if name_or_path in hub.CHECKPOINTS:
        try:
            return str(loading.fetch(name_or_path, cache_dir=cache_dir))
        except hub.FetchError as e:
            reason = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            raise FileNotFoundError(
                f"the pretrained checkpoint {name_or_path!r} (task.pretrained) is not in the cache "
                f"and could not be fetched: {reason}. Run `perceiver fetch {name_or_path}` where the "
                "internet is reachable, or set task.pretrained=PATH to a local file."
            ) from None
    where = "" if os.path.isabs(path) else f", relative to {os.getcwd()},"
    raise FileNotFoundError(
        f"pretrained checkpoint {name_or_path!r} is neither a file{where} nor a checkpoint name "
        f"({', '.join(hub.names())})."
    )
