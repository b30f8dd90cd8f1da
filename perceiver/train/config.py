"""Training configurations as nested dataclasses, with `KEY=VALUE` overrides and ranges.

A recipe returns a `Config`; the command line changes any field by its
dotted path (`optimizer.base_lr=1e-3`, `model.num_latents=64`,
`data.image_shape=(32,48)`), parsed to the field's declared type, so a
misspelt key or a badly typed value fails before anything runs.

Every numeric field declares the values it allows (`ranged(0.9, "[0, 1)")`,
kept in the field's metadata; dict sections such as `model` get a table of
rules), and `validate` checks them all before any data or model is built.
"""

import ast
import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

# ---------------------------------------------------------------------------
# Ranges
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Interval:
    """Numbers allowed for a field, in interval notation.

    `"[0, 1)"`, `"(0, inf)"`, `"int [1, inf)"` (ints only), `"-1 or [1, inf)"`
    (single values besides an interval). Bounds at infinity are open, so
    every range refuses inf and NaN. A tuple value (a shape, a list of
    boundaries) must hold allowed numbers only, `length` of them when given.

    Args:
      spec: the notation above.
      integer: ints only (fields annotated `int` are integer anyway).
      length: the number of items a tuple value must have.
    """

    spec: str
    integer: bool = False
    length: Optional[int] = None

    def __post_init__(self):
        self.parts  # a malformed spec fails where it is declared

    @functools.cached_property
    def parts(self) -> Tuple[bool, Tuple[float, ...], Tuple[Tuple[str, float, float, str], ...]]:
        """`(ints only, single values, intervals as (bracket, low, high, bracket))`."""
        text = self.spec.strip()
        integer = self.integer
        if text.startswith("int "):
            integer, text = True, text[4:].strip()
        values, intervals = [], []
        for part in text.split(" or "):
            part = part.strip()
            if part[:1] in "[(" and part[-1:] in "])":
                low, sep, high = part[1:-1].partition(",")
                if not sep:
                    raise ValueError(f"range {self.spec!r}: {part!r} needs two bounds.")
                intervals.append((part[0], float(low), float(high), part[-1]))
            else:
                values.append(float(part))
        return integer, tuple(values), tuple(intervals)

    def allows(self, value: Any, integer: bool = False) -> bool:
        """Whether one number is allowed (`integer`: also demand an int)."""
        want_int, values, intervals = self.parts
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if (want_int or integer) and not isinstance(value, numbers.Integral):
            return False
        if value in values:
            return True
        for left, low, high, right in intervals:
            above = value > low if left == "(" or math.isinf(low) else value >= low
            below = value < high if right == ")" or math.isinf(high) else value <= high
            if above and below:
                return True
        return False

    def describe(self, integer: bool = False, plural: bool = False) -> str:
        """'an int in [1, inf)', '-1 or an int in [1, inf)' (plural: 'ints in [1, inf)')."""
        want_int, values, intervals = self.parts
        if want_int or integer:
            kind = "ints" if plural else "an int"
        else:
            kind = "numbers" if plural else "a number"
        texts = [_bound(v) for v in values]
        texts += [
            f"{kind} in {left}{_bound(low)}, {_bound(high)}{right}"
            for left, low, high, right in intervals
        ]
        return " or ".join(texts)

    def check(self, key: str, value: Any, integer: bool = False) -> None:
        """Raises ValueError naming `key`, the range and `value` unless it is allowed."""
        if isinstance(value, (tuple, list)):
            count = f"{self.length} " if self.length is not None else ""
            if (self.length is not None and len(value) != self.length) or not all(
                self.allows(v, integer) for v in value
            ):
                raise ValueError(
                    f"{key} must be {count}{self.describe(integer, plural=True)}; got {value!r}."
                )
            return
        if self.length is not None:
            raise ValueError(
                f"{key} must be {self.length} {self.describe(integer, plural=True)}; got {value!r}."
            )
        if not self.allows(value, integer):
            raise ValueError(f"{key} must be {self.describe(integer)}; got {value!r}.")


def _bound(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(int(x)) if x.is_integer() else repr(x)


@dataclasses.dataclass(frozen=True)
class Choice:
    """Words allowed for a field."""

    options: Tuple[str, ...]

    def check(self, key: str, value: Any, integer: bool = False) -> None:
        if value not in self.options:
            raise ValueError(
                f"{key} must be one of {', '.join(map(repr, self.options))}; got {value!r}."
            )


Rule = Union[Interval, Choice]
# Seeds feed numpy, JAX and grain, whose common range is 32 bits.
SEED = "int [0, 4294967295]"


def rule(spec: Union[str, Sequence[str], Rule]) -> Rule:
    """A rule from its short form: an interval's notation, or a tuple of words."""
    if isinstance(spec, (Interval, Choice)):
        return spec
    if isinstance(spec, str):
        return Interval(spec)
    return Choice(tuple(spec))


def ranged(default: Any, spec: Union[str, Sequence[str], Rule]) -> Any:
    """A dataclass field with a default and the values it allows (see `Interval`, `Choice`)."""
    return dataclasses.field(default=default, metadata={"range": rule(spec)})


OPTIMIZERS = ("lamb", "adamw")
SCHEDULES = ("constant", "constant_cosine", "cosine", "steps")


# ---------------------------------------------------------------------------
# The common sections
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class OptimizerSettings:
    """Optimiser, learning-rate schedule, weight decay and clipping.

    Defaults are the reference's ImageNet settings: LAMB, base learning rate
    5e-4 scaled by batch size / 256, weight decay 0.1 on everything but
    biases and norms, clipping at global norm 10, constant then cosine.
    """

    optimizer: str = ranged("lamb", OPTIMIZERS)
    base_lr: float = ranged(5e-4, "[0, inf)")
    # Linear scaling rule (Goyal et al. 2017): every learning-rate value of the
    # schedule is multiplied by batch_size / 256.
    scale_by_batch: bool = True
    b1: float = ranged(0.9, "[0, 1)")
    b2: float = ranged(0.999, "[0, 1)")
    eps: float = ranged(1e-6, "(0, inf)")  # the reference: 1e-6 for LAMB, 1e-8 for Adam
    weight_decay: float = ranged(0.1, "[0, inf)")
    decay_biases: bool = False
    decay_norms: bool = False
    decay_pos_embs: bool = True
    # Clip gradients to this global norm; <= 0 disables.
    max_norm: float = ranged(10.0, "(-inf, inf)")
    schedule: str = ranged("constant_cosine", SCHEDULES)
    constant_fraction: float = ranged(0.5, "[0, 1]")  # constant_cosine: share of steps at base_lr
    warmup_steps: int = ranged(0, "[0, inf)")  # cosine: linear warm-up from init_lr to base_lr
    init_lr: float = ranged(0.0, "[0, inf)")  # cosine: learning rate at step 0
    end_lr: float = ranged(0.0, "[0, inf)")  # cosine, constant_cosine: learning rate at the end
    # steps: fractions of training where the rate is multiplied by decay_rate.
    decay_boundaries: Tuple[float, ...] = ranged((0.5, 0.8, 0.95), "[0, 1]")
    decay_rate: float = ranged(0.1, "(0, inf)")


@dataclasses.dataclass
class TrainSettings:
    """Length of training, batch, logging and evaluation."""

    batch_size: int = ranged(1024, "[1, inf)")  # global, over all devices and hosts
    num_steps: int = ranged(0, "[0, inf)")  # 0: epochs * examples per epoch / batch_size
    epochs: float = ranged(0.0, "[0, inf)")
    seed: int = ranged(0, SEED)
    # Plain log lines every N steps (0: every step); metrics.jsonl gets every step.
    log_every: int = ranged(50, "[0, inf)")
    eval_every: int = ranged(0, "[0, inf)")  # 0: evaluate only at the end
    final_eval: bool = True  # evaluate when training ends
    eval_batch_size: int = ranged(0, "[0, inf)")  # 0: batch_size
    eval_max_batches: int = ranged(0, "[0, inf)")  # 0: the whole evaluation set
    progress: bool = True  # tqdm progress bar (when stderr is a terminal)


@dataclasses.dataclass
class CheckpointSettings:
    """Periodic, atomic checkpoints (orbax) of the full training state."""

    every_steps: int = ranged(1000, "[1, inf)")
    keep: int = ranged(3, "[1, inf)")  # the last K are kept
    async_save: bool = True  # write in the background while training goes on
    export: bool = True  # at the end, also write model.pystate (inference format)


@dataclasses.dataclass
class MeshSettings:
    """How the computation is laid out over devices and hosts."""

    # Devices on the data axis; -1: all devices.
    data_parallel: int = ranged(-1, "-1 or [1, inf)")
    # Shard each parameter (and its optimiser state) over the data axis along
    # its largest divisible dimension (fully sharded data parallel), for
    # models too large to replicate.
    shard_params: bool = False
    # Under shard_params, arrays with fewer values than this stay replicated:
    # splitting them saves little memory and costs a collective each.
    shard_min_size: int = ranged(2**14, "[0, inf)")
    # 'auto': call jax.distributed.initialize() when the environment says
    # several processes take part; 'on': always; 'off': never.
    distributed: str = ranged("auto", ("auto", "on", "off"))


@dataclasses.dataclass
class ComputeSettings:
    """How the model computes while training (`perceiver.compute` options); parameters stay float32.

    dtype 'bfloat16' is mixed precision: float32 parameters and optimizer
    state, bfloat16 activations and products, float32 layer norms, softmax
    statistics and losses. remat recomputes each encoder layer's activations
    in the backward pass instead of storing them (less memory, about a third
    more compute). Neither changes the parameter tree or the exported model.
    """

    dtype: str = ranged("float32", ("float32", "bfloat16"))
    remat: bool = False
    attention: str = ranged("auto", ("auto", "plain", "tiled", "fused"))


@dataclasses.dataclass
class Config:
    """A complete training run: one section per key, each a `*Settings` dataclass but `model`.

    `model` is a dict of the factory's sizes; `data` and `task` are the
    settings of the recipe's objective (e.g. `ImageDataSettings`,
    `ClassificationSettings`, in `perceiver.train.objectives`).
    """

    recipe: str
    model: Dict[str, Any]
    data: Any
    task: Any
    optimizer: OptimizerSettings = dataclasses.field(default_factory=OptimizerSettings)
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    checkpoint: CheckpointSettings = dataclasses.field(default_factory=CheckpointSettings)
    mesh: MeshSettings = dataclasses.field(default_factory=MeshSettings)
    compute: ComputeSettings = dataclasses.field(default_factory=ComputeSettings)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _is_numeric(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return bool(value) and all(_is_numeric(v) for v in value)
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def field_rules(
    config: Any, sections: Optional[Mapping[str, Mapping[str, Any]]] = None
) -> Iterator[Tuple[str, Any, Optional[Rule], bool]]:
    """`(dotted key, value, rule or None, is an int field)` for every leaf field of `config`.

    Args:
      config: a `Config` (or any dataclass of sections).
      sections: rules (short forms, see `rule`) of the entries of dict
        sections, by section name: `{"model": {"num_latents": "int [1, inf)"}}`.
        An entry of such a section without a rule is yielded with None.
    """
    sections = sections or {}
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            inner = typing.get_type_hints(type(value))
            for g in dataclasses.fields(value):
                integer = _is_int_annotation(inner.get(g.name))
                yield f"{f.name}.{g.name}", getattr(value, g.name), g.metadata.get("range"), integer
        elif isinstance(value, dict):
            table = sections.get(f.name, {})
            for key, item in value.items():
                spec = table.get(key)
                yield f"{f.name}.{key}", item, (rule(spec) if spec is not None else None), False
        else:
            integer = _is_int_annotation(hints.get(f.name))
            yield f.name, value, f.metadata.get("range"), integer


def _is_int_annotation(annotation: Any) -> bool:
    if annotation is int:
        return True
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) is tuple and bool(args) and all(
        a is int or a is Ellipsis for a in args
    )


def validate(config: Any, sections: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Any:
    """Checks every field of `config` against its declared range; returns `config`.

    Args:
      config: a `Config`.
      sections: rules of dict sections' entries, as in `field_rules`; an
        entry it does not list is refused as an unknown key.

    Raises:
      ValueError: naming the first field out of its range, the range and
        the value (or an unknown entry of a dict section).
      TypeError: for a numeric field that declares no range: every number
        must say what it allows (a mistake in the config's definition).
    """
    sections = sections or {}
    for key, value, rule_, integer in field_rules(config, sections):
        if rule_ is not None:
            rule_.check(key, value, integer)
            continue
        section = key.split(".")[0]
        if section in sections:
            known = ", ".join(sorted(sections[section]))
            raise ValueError(f"unknown config key {key!r}; known here: {known}.")
        if _is_numeric(value):
            raise TypeError(
                f"config field {key} ({value!r}) declares no range; give it one with ranged()."
            )
    return config


# ---------------------------------------------------------------------------
# Serialisation and overrides
# ---------------------------------------------------------------------------


def to_dict(config: Any) -> Any:
    """A JSON-ready copy of a config (dataclasses become dicts)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _parse_literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """`value` converted to `annotation`, or a ValueError naming `key`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{key}: cannot parse {value!r}.")
    if origin in (tuple, list) or annotation in (tuple, list):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = (value,)  # `image_shape=64` is not a tuple; `x=(64,)` is
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"{key} must be a {_type_name(annotation)}; got {value!r}.")
        if args and not (len(args) == 2 and args[1] is Ellipsis) and len(args) != len(value):
            raise ValueError(f"{key} must have {len(args)} items; got {value!r}.")
        if args and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], key) for v in value]
        elif args:
            items = [_coerce(v, a, key) for v, a in zip(value, args)]
        else:
            items = list(value)
        return tuple(items) if (origin or annotation) is tuple else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{key} must be a bool (true/false); got {value!r}.")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{key} must be an int; got {value!r}.")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number; got {value!r}.")
        return float(value)
    if annotation is str:
        return value if isinstance(value, str) else str(value)
    if dataclasses.is_dataclass(annotation) or annotation is dict or origin is dict:
        raise ValueError(f"{key} is a section, not a value; set its fields ({key}.FIELD=VALUE).")
    return value


def _field_types(obj: Any) -> Dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(obj)}


def _example_type(value: Any) -> Any:
    """The annotation to parse a new value for a dict entry that holds `value`."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int
    if isinstance(value, float):
        return float
    if isinstance(value, str):
        return str
    if isinstance(value, tuple):
        return Tuple[Any, ...]
    if isinstance(value, list):
        return list
    return Any


def override(config: Any, key: str, text: str) -> None:
    """Sets the field at dotted path `key` from its text form, in place.

    Dataclass fields are parsed to their declared types; entries of a dict
    section (such as `model`) to the type of the value they replace (a new
    key takes any Python literal).

    Raises:
      ValueError: for an unknown key, or a value of the wrong type.
    """
    assign(config, key, _parse_literal(text))


def assign(config: Any, key: str, value: Any) -> None:
    """Sets the field at dotted path `key` to `value` converted to the field's type, in place.

    Raises:
      ValueError: for an unknown key, or a value of the wrong type.
    """
    parts = key.split(".")
    if not key or not all(parts):
        raise ValueError(f"override key must be a dotted path like optimizer.base_lr; got {key!r}.")
    node = config
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if dataclasses.is_dataclass(node):
            types_ = _field_types(node)
            if part not in types_:
                raise ValueError(
                    f"unknown config key {path!r}; known here: {', '.join(sorted(types_))}."
                )
            if last:
                annotation = types_[part]
                current = getattr(node, part)
                if annotation is Any and current is not None:
                    annotation = _example_type(current)
                setattr(node, part, _coerce(value, annotation, path))
                return
            node = getattr(node, part)
        elif isinstance(node, dict):
            if last:
                current = node.get(part)
                annotation = Any if current is None else _example_type(current)
                node[part] = _coerce(value, annotation, path)
                return
            if part not in node:
                raise ValueError(f"unknown config key {path!r}; known here: {', '.join(sorted(node))}.")
            node = node[part]
        else:
            raise ValueError(f"config key {path!r}: {'.'.join(parts[:depth])} is a value, not a section.")


def leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """`(dotted key, value)` of every leaf of a `to_dict` tree."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def from_dict(base: Any, tree: Mapping[str, Any], source: str = "the config") -> Any:
    """`base` with every leaf of `tree` (a `to_dict` of a config) set, in place; returns `base`.

    Fields `tree` lacks keep `base`'s values (a field added since it was
    written takes its default); lists become the fields' tuples.

    Raises:
      ValueError: naming `source` and the key, for a key `base` has no field
        for or a value of the wrong type.
    """
    for key, value in leaves(tree):
        try:
            assign(base, key, value)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    return base


def apply_overrides(config: Any, overrides: Sequence[str]) -> Any:
    """Applies `KEY=VALUE` strings in order; returns `config` (changed in place).

    Raises:
      ValueError: for an item without '=', an unknown key or a bad value.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"overrides must look like KEY=VALUE; got {item!r}.")
        override(config, key.strip(), text.strip())
    return config


def differences(old: Any, new: Any, prefix: str = "") -> Dict[str, Tuple[Any, Any]]:
    """Dotted paths whose values differ between two `to_dict` trees."""
    out: Dict[str, Tuple[Any, Any]] = {}
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            out.update(differences(old.get(k), new.get(k), f"{prefix}{k}."))
        return out
    if old != new:
        out[prefix[:-1]] = (old, new)
    return out
