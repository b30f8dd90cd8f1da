"""The recipe registry: each recipe module registers its config function and its kind of objective.

`perceiver.train.recipes` imports every module of its folder whose name does
not start with '_' (see `discover`); a module registers itself with
`@register(name, kind)` on its config function, so a new recipe is one new
file and no list elsewhere changes.
"""

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Dict, Mapping

from perceiver.train.config import Config
from perceiver.train.objectives.kind import ObjectiveKind
from perceiver.train.trainer import Objective


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named recipe: its config function (tiny -> `Config`), its kind, its place in listings."""

    name: str
    config: Callable[[bool], Config]
    kind: ObjectiveKind
    order: int


# Every recipe by name, in listing order (`order`, then name); the tables
# below are views of it, kept in the same order, that callers index by name.
RECIPES: Dict[str, Recipe] = {}
CONFIGS: Dict[str, Callable[[bool], Config]] = {}
# (config, workdir, pretrained: whether to load task.pretrained) -> Objective
BUILDERS: Dict[str, Callable[..., Objective]] = {}
# The model factory of each recipe, whose sizes the `model` section holds.
FACTORIES: Dict[str, str] = {}
DESCRIBERS: Dict[str, Callable[[Config, Objective], Dict[str, Any]]] = {}
# The values each factory's sizes allow (the `model` section is a dict of them).
MODEL_RULES: Dict[str, Mapping[str, Any]] = {}


def register(name: str, kind: ObjectiveKind, order: int = 1000) -> Callable:
    """Decorates a recipe's config function `(tiny: bool = False) -> Config`, registering it.

    Args:
      name: the recipe's name (`perceiver train --config NAME`); the config's `recipe`.
      kind: what it optimises (an `ObjectiveKind` of `perceiver.train.objectives`).
      order: its place in listings (help, error messages); ties go by name.

    Raises:
      ValueError: for a name another function already registered.
      TypeError: for a `kind` that is not an `ObjectiveKind`.
    """
    if not isinstance(kind, ObjectiveKind):
        raise TypeError(f"register({name!r}): kind must be an ObjectiveKind; got {type(kind).__name__}.")

    def add(config_fn: Callable[[bool], Config]) -> Callable[[bool], Config]:
        old = RECIPES.get(name)
        where = lambda fn: f"{fn.__module__}.{fn.__qualname__}"
        if old is not None and where(old.config) != where(config_fn):
            raise ValueError(
                f"recipe {name!r} is registered twice: by {where(old.config)} and {where(config_fn)}."
            )
        RECIPES[name] = Recipe(name, config_fn, kind, order)
        listed = sorted(RECIPES.values(), key=lambda r: (r.order, r.name))
        RECIPES.clear()
        RECIPES.update((r.name, r) for r in listed)
        for table, value in (
            (CONFIGS, lambda r: r.config),
            (BUILDERS, lambda r: r.kind.build),
            (FACTORIES, lambda r: r.kind.factory),
            (DESCRIBERS, lambda r: r.kind.describe),
        ):
            table.clear()
            table.update((r.name, value(r)) for r in listed)
        MODEL_RULES.clear()
        MODEL_RULES.update((r.kind.factory, r.kind.model_rules) for r in listed)
        return config_fn

    return add


def discover(package: str, path) -> None:
    """Imports every module of `package` (folder `path`) not named '_*' and not a sub-package."""
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not info.ispkg and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
