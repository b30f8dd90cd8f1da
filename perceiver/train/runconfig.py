"""What a workdir remembers: its config (WORKDIR/config.json), and what may change on resume.

The first start of a run writes the config it runs (the recipe's, with the
overrides given) to WORKDIR/config.json. Every later command on that
workdir (resume, `--eval-only`, `--export`, `--print-config`) starts from
it: overrides apply on top of it, `--config` may be omitted (when given it
must name the same recipe) and `--tiny` only matters at the first start.
Data you name with `--tiny` (`data.train_dir=...`) replace its generated
ones; a data setting beside `data.generate=true`, which would ignore it, is
refused.

An override that changes the stored value of a key is refused, in one line
naming each changed key with its old and new value, unless the key is one
of the few that cannot change what the checkpoints hold: `SAFE_ON_RESUME`
for training, `EVAL_SAFE` for `--eval-only` and `--export`. The flag
`--allow-config-change` lets any change through (a changed model or data
set may then not fit the checkpoint). A resumed training run that changes
keys writes them to config.json; evaluation and export never write it.
"""

import json
import os
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

from perceiver.train import config as config_lib

CONFIG_FILE = "config.json"
ALLOW_FLAG = "--allow-config-change"

# Settings that change neither the model nor what it learns from: the
# evaluation set, the layout over devices (8 devices give the parameters of
# 1), the data workers (batches do not depend on them) and the progress bar.
EVAL_SAFE: Tuple[str, ...] = (
    "data.eval_dir",
    "data.eval_paths",
    "data.eval_seed",
    "data.eval_examples",
    "data.eval_crop_fraction",
    "data.workers",
    "train.eval_batch_size",
    "train.eval_max_batches",
    "train.progress",
    "mesh.data_parallel",
    "mesh.distributed",
    "mesh.shard_params",
    "mesh.shard_min_size",
)
# Also safe when training resumes: logging, evaluation and checkpoint
# frequency, export, and the length (a longer or shorter run continues its
# learning rate without a jump: see `optim.continued_schedule`).
SAFE_ON_RESUME: Tuple[str, ...] = EVAL_SAFE + (
    "train.num_steps",
    "train.epochs",
    "train.log_every",
    "train.eval_every",
    "train.final_eval",
    "checkpoint.every_steps",
    "checkpoint.keep",
    "checkpoint.async_save",
    "checkpoint.export",
)

Changes = Dict[str, Tuple[Any, Any]]


class ConfigChangeError(ValueError):
    """Overrides that change a workdir's stored config in keys that are not safe to change."""


def path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_FILE)


def read(workdir: str) -> Optional[Dict[str, Any]]:
    """The config stored in `workdir` as a dict, or None if there is none.

    Raises:
      ValueError: if WORKDIR/config.json is not a JSON object naming a recipe.
    """
    file = path(workdir)
    if not os.path.isfile(file):
        return None
    try:
        with open(file) as f:
            stored = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{file} is unreadable ({e}); fix or remove it to start afresh.") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("recipe"), str):
        raise ValueError(f"{file} must be a JSON object with a 'recipe'; fix or remove it.")
    return stored


def resolve(
    workdir: str, recipe: Optional[str], tiny: bool, overrides: Sequence[str]
) -> Tuple[config_lib.Config, Optional[Dict[str, Any]], Changes]:
    """The config to run in `workdir`: `(config, stored dict or None, changes)`.

    With a stored config, it is the base and `changes` are the keys the
    overrides change (`{key: (stored, new)}`); without one, the base is the
    recipe `recipe` (its tiny variant with `tiny`) and there are no changes.

    Raises:
      ValueError: without a stored config and without `recipe`; for a
        `recipe` other than the stored one; for a bad override.
    """
    from perceiver.train import recipes  # imports jax: not needed to read the file

    stored = read(workdir)
    if stored is None:
        if not recipe:
            raise ValueError(
                f"--config NAME is needed: {workdir} holds no run yet (no {CONFIG_FILE}); "
                f"recipes: {', '.join(recipes.CONFIGS)}."
            )
        config = recipes.get_config(recipe, tiny=tiny)
        config_lib.apply_overrides(config, overrides)
        if tiny:
            _user_data_wins(config, recipes.get_config(recipe), overrides)
        _check_data_sources(config, overrides, workdir, tiny)
        return config, None, {}
    if recipe and recipe != stored["recipe"]:
        raise ValueError(
            f"--config must be {stored['recipe']!r}, the recipe of the run in {workdir} "
            f"({CONFIG_FILE}); got {recipe!r}. Drop --config, or give another --workdir."
        )
    config = load(stored, path(workdir))
    before = config_lib.to_dict(config)
    config_lib.apply_overrides(config, overrides)
    _check_data_sources(config, overrides, workdir, tiny=False)
    return config, stored, config_lib.differences(before, config_lib.to_dict(config))


# The settings that name the user's own data. `data.generate` (the tiny image
# and text recipes') writes generated data and points these at it, replacing
# whatever they held.
DATA_SOURCES = ("data.train_dir", "data.eval_dir", "data.train_paths", "data.eval_paths")
TRAINING_SOURCES = ("data.train_dir", "data.train_paths")


def _given(overrides: Sequence[str]) -> Dict[str, str]:
    """`{key: value text}` of the KEY=VALUE overrides (already checked by apply_overrides)."""
    return {k.strip(): v.strip() for k, _, v in (item.partition("=") for item in overrides)}


def _user_data_wins(config: config_lib.Config, full: config_lib.Config, overrides: Sequence[str]) -> None:
    """With --tiny, training data the user names replace the tiny variant's data, in place.

    A training source given (e.g. `data.train_dir=my_photos`) turns off the
    tiny variant's generated data, and the sources not given go back to the
    full recipe's defaults (so a tiny text run given `data.train_paths` does
    not evaluate on the tiny variant's texts). Sizes and the rest stay tiny.
    An evaluation source alone keeps the tiny training data (see
    `_check_data_sources` for generated ones).
    """
    given = _given(overrides)
    if not any(key in given and getattr(config.data, key[5:], None) for key in TRAINING_SOURCES):
        return
    if "data.generate" in given:
        return  # said explicitly: `_check_data_sources` judges it
    if getattr(config.data, "generate", False):
        config.data.generate = False
    for key in DATA_SOURCES:
        name = key[5:]
        if key not in given and hasattr(config.data, name) and hasattr(full.data, name):
            setattr(config.data, name, getattr(full.data, name))


def _check_data_sources(
    config: config_lib.Config, overrides: Sequence[str], workdir: str, tiny: bool
) -> None:
    """Refuses data sources given alongside `data.generate=true`, which would ignore them.

    Raises:
      ValueError: naming the sources and where `data.generate` comes from.
    """
    if not getattr(config.data, "generate", False):
        return
    given = _given(overrides)
    named = [
        f"{key}={given[key]}"
        for key in DATA_SOURCES
        if key in given and getattr(config.data, key[5:], None)
    ]
    if not named:
        return
    if "data.generate" not in given and tiny:
        raise ValueError(
            f"{', '.join(named)} would be ignored: --tiny trains on generated data "
            "(data.generate=true), which brings its own evaluation set; name your training "
            "data too (data.train_dir or data.train_paths), or drop it."
        )
    if "data.generate" not in given and os.path.isfile(path(workdir)):
        raise ValueError(
            f"{', '.join(named)} would be ignored: the run in {workdir} trains on generated data "
            f"(data.generate=true in {CONFIG_FILE}), which puts its own data there; a run on your "
            "own data needs a new --workdir."
        )
    raise ValueError(
        f"{', '.join(named)} would be ignored: data.generate=true writes its own data and uses "
        "it instead; drop one of the two."
    )


def load(stored: Dict[str, Any], source: str = CONFIG_FILE) -> config_lib.Config:
    """A `Config` from a stored dict: its recipe's config with every stored value set.

    Keys added to the recipe since the file was written keep their defaults;
    dict sections (`model`) hold exactly the stored entries.

    Raises:
      ValueError: naming `source`, for an unknown recipe or key or a bad value.
    """
    from perceiver.train import recipes

    if stored.get("recipe") not in recipes.CONFIGS:
        raise ValueError(f"{source}: unknown recipe {stored.get('recipe')!r}.")
    config = recipes.get_config(stored["recipe"])
    config_lib.from_dict(config, stored, source)
    for name, value in stored.items():
        section = getattr(config, name, None)
        if isinstance(section, dict) and isinstance(value, dict):
            for key in set(section) - set(value):
                del section[key]  # a default the stored run did not have
    return config


def check(changes: Changes, allowed: Iterable[str], workdir: str, allow_any: bool, what: str) -> Changes:
    """The changes that are allowed; raises if any other is asked for without `allow_any`.

    Args:
      changes: `{key: (stored, new)}`.
      allowed: keys always safe to change here.
      workdir: named in the message.
      allow_any: `--allow-config-change` was given.
      what: 'resuming' or 'evaluating and exporting', for the message.

    Raises:
      ConfigChangeError: listing every changed key outside `allowed`.
    """
    allowed = set(allowed)
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused and not allow_any:
        raise ConfigChangeError(
            f"these overrides change the run stored in {path(workdir)}: {describe(refused)}; "
            f"{what} takes the stored values (only evaluation, logging, checkpoint, device and "
            f"length settings may change). Drop them, or pass {ALLOW_FLAG} to run with them anyway."
        )
    return changes


def describe(changes: Changes) -> str:
    """'model.num_latents 16 -> 8, optimizer.base_lr 0.002 -> 0.001'."""
    return ", ".join(f"{k} {_text(a)} -> {_text(b)}" for k, (a, b) in sorted(changes.items()))


def _text(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return json.dumps(value)  # true, "text", [16, 16]
