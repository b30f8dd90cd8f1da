"""What recipes of one kind share (`ObjectiveKind`), and its model-size rules read from the factory.

A recipe registers under a kind (`perceiver.train.recipes._registry.register`):
the `perceiver.models` factory whose sizes its config's `model` section holds,
the rules those sizes obey, the builder of its `Objective` and the
description of an exported checkpoint. The size rules come from the
factory's signature (`size_rules`), so a size is declared once: there.
"""

import dataclasses
import inspect
from typing import Any, Callable, Dict, Mapping, Optional

from perceiver import models
from perceiver.train.config import Config, Interval
from perceiver.train.trainer import Objective

# A factory's size argument: a positive int (a count, a width, a side).
SIZE = "int [1, inf)"


@dataclasses.dataclass(frozen=True)
class ObjectiveKind:
    """What recipes of one kind share: model, size rules, objective builder, checkpoint description.

    Attributes:
      factory: the `perceiver.models` factory whose sizes a config's `model` section holds.
      model_rules: the values each of those sizes allows (short forms, see
        `config.rule`); see `size_rules`.
      build: (config, workdir, pretrained) -> `Objective`, with its data; see `recipes.build_task`.
      describe: (config, objective) -> the exported checkpoint's factory, sizes,
        settings at inference (its `task` entry) and labels; see `recipes.describe`.
      check: config -> None, raising ValueError for fields of this kind's
        sections that bound each other (after the common checks); or None.
      steps_only: '' when `train.epochs` may set the length of training;
        otherwise who needs `train.num_steps`, and why, as the error names it.
    """

    factory: str
    model_rules: Mapping[str, Any]
    build: Callable[[Config, str, bool], Objective]
    describe: Callable[[Config, Objective], Dict[str, Any]]
    check: Optional[Callable[[Config], None]] = None
    steps_only: str = ""


def _derived_rule(annotation: Any, default: Any) -> Optional[Any]:
    """The rule of one size from its annotation or default, or None when neither says it."""
    if annotation is bool or isinstance(default, bool):
        return (True, False)
    if annotation is int or (isinstance(default, int) and not isinstance(default, bool)):
        return SIZE
    if isinstance(default, (tuple, list)) and default and all(
        isinstance(v, int) and not isinstance(v, bool) for v in default
    ):
        return Interval(SIZE, length=len(default))  # a shape: as many sides as the default's
    return None


def size_rules(factory: str, **overrides: Any) -> Dict[str, Any]:
    """The rules of every size argument of `factory`, in its order, from its signature.

    An int argument (by annotation or default) is a positive int; a bool
    True or False; a tuple of ints (a shape) positive ints, as many as its
    default has. `overrides`
    give the rules a signature cannot: the words a string allows, the range
    of a float, or a meaning training gives a value (0 classes: one per class
    of the data).

    Args:
      factory: a `perceiver.models` factory's name.
      **overrides: rules (short forms, see `config.rule`) by argument name.

    Raises:
      TypeError: for an argument whose rule is neither derivable nor in `overrides`.
      ValueError: for an override that names no argument of `factory`.
    """
    parameters = inspect.signature(getattr(models, factory)).parameters
    # Arguments without a default (imagenet_classifier's variant) get a stand-in to read the others'.
    required = {
        name: None for name, p in parameters.items()
        if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    defaults = models.factory_sizes(factory, **required)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"size_rules({factory!r}): no argument {', '.join(unknown)}; it takes {', '.join(defaults)}."
        )
    rules = {}
    for name, default in defaults.items():
        if name in overrides:
            rules[name] = overrides[name]
            continue
        parameter = parameters.get(name)
        annotation = parameter.annotation if parameter is not None else inspect.Parameter.empty
        rule = _derived_rule(annotation, None if name in required else default)
        if rule is None:
            raise TypeError(f"size_rules({factory!r}): the rule of {name} ({default!r}) needs an override.")
        rules[name] = rule
    return rules
