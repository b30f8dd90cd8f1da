"""Training configurations as nested dataclasses, with `KEY=VALUE` overrides.

A recipe returns a `Config`; the command line changes any field by its
dotted path (`optimizer.base_lr=1e-3`, `model.num_latents=64`,
`data.image_shape=(32,48)`), parsed to the field's declared type, so a
misspelt key or a badly typed value fails before anything runs.
"""

import ast
import dataclasses
import json
import types
import typing
from typing import Any, Dict, Sequence, Tuple


@dataclasses.dataclass
class OptimizerConfig:
    """Optimiser, learning-rate schedule, weight decay and clipping.

    Defaults are the reference's ImageNet settings: LAMB, base learning rate
    5e-4 scaled by batch size / 256, weight decay 0.1 on everything but
    biases and norms, clipping at global norm 10, constant then cosine.
    """

    optimizer: str = "lamb"  # 'lamb' or 'adamw'
    base_lr: float = 5e-4
    # Linear scaling rule (Goyal et al. 2017): every learning-rate value of the
    # schedule is multiplied by batch_size / 256.
    scale_by_batch: bool = True
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6  # the reference: 1e-6 for LAMB, 1e-8 for Adam
    weight_decay: float = 0.1
    decay_biases: bool = False
    decay_norms: bool = False
    decay_pos_embs: bool = True
    max_norm: float = 10.0  # clip gradients to this global norm; <= 0 disables
    # 'constant', 'constant_cosine', 'cosine' (warm-up then cosine) or 'steps'.
    schedule: str = "constant_cosine"
    constant_fraction: float = 0.5  # constant_cosine: share of steps at base_lr
    warmup_steps: int = 0  # cosine: linear warm-up from init_lr to base_lr
    init_lr: float = 0.0  # cosine: learning rate at step 0
    end_lr: float = 0.0  # cosine, constant_cosine: learning rate at the end
    decay_boundaries: Tuple[float, ...] = (0.5, 0.8, 0.95)  # steps: fractions of training
    decay_rate: float = 0.1  # steps: factor applied at each boundary


@dataclasses.dataclass
class TrainConfig:
    """Length of training, batch, logging and evaluation."""

    batch_size: int = 1024  # global, over all devices and hosts
    num_steps: int = 0  # 0: epochs * examples per epoch / batch_size
    epochs: float = 0.0
    seed: int = 0
    log_every: int = 50  # plain log lines (metrics.jsonl gets every step)
    eval_every: int = 0  # 0: evaluate only at the end
    final_eval: bool = True  # evaluate when training ends
    eval_batch_size: int = 0  # 0: batch_size
    eval_max_batches: int = 0  # 0: the whole evaluation set
    progress: bool = True  # tqdm progress bar (when stderr is a terminal)


@dataclasses.dataclass
class CheckpointConfig:
    """Periodic, atomic checkpoints (orbax) of the full training state."""

    every_steps: int = 1000
    keep: int = 3  # the last K are kept
    async_save: bool = True  # write in the background while training goes on
    export: bool = True  # at the end, also write model.pystate (inference format)


@dataclasses.dataclass
class MeshConfig:
    """How the computation is laid out over devices and hosts."""

    # Devices on the data axis; -1: all devices / model_parallel.
    data_parallel: int = -1
    # Shard each parameter (and its optimiser state) over the data axis along
    # its largest divisible dimension (fully sharded data parallel), for
    # models too large to replicate.
    shard_params: bool = False
    # 'auto': call jax.distributed.initialize() when the environment says
    # several processes take part; 'on': always; 'off': never.
    distributed: str = "auto"


@dataclasses.dataclass
class Config:
    """A complete training run."""

    recipe: str
    model: Dict[str, Any]
    data: Any
    task: Any
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


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
                setattr(node, part, _coerce(_parse_literal(text), annotation, path))
                return
            node = getattr(node, part)
        elif isinstance(node, dict):
            if last:
                current = node.get(part)
                annotation = Any if current is None else _example_type(current)
                node[part] = _coerce(_parse_literal(text), annotation, path)
                return
            if part not in node:
                raise ValueError(f"unknown config key {path!r}; known here: {', '.join(sorted(node))}.")
            node = node[part]
        else:
            raise ValueError(f"config key {path!r}: {'.'.join(parts[:depth])} is a value, not a section.")


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
