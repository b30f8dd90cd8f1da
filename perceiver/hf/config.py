"""transformers' PerceiverConfig <-> our factories' keyword arguments, by one two-way table.

`FIELDS` says, for each config.json field and each of the seven transformers
heads, which of our sizes it holds, or the one value it must have; sizes that
transformers fixes in code are rows without a field. `hf_factory` reads a
config by it, `hf_config` writes one from it, so the two directions cannot
drift apart. See docs/guides/hf_measurements.md for how the models compare.
"""

from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import haiku as hk

from perceiver import models

# transformers class -> (our factory, imagenet variant or None).
ARCHITECTURES: Dict[str, Tuple[str, Optional[str]]] = {
    "PerceiverForMaskedLM": ("masked_language_model", None),
    "PerceiverForSequenceClassification": ("text_classifier", None),
    "PerceiverForImageClassificationLearned": ("imagenet_classifier", "learned_position_encoding"),
    "PerceiverForImageClassificationFourier": ("imagenet_classifier", "fourier_position_encoding"),
    "PerceiverForImageClassificationConvProcessing": ("imagenet_classifier", "conv_preprocessing"),
    "PerceiverForOpticalFlow": ("optical_flow", None),
    "PerceiverForMultimodalAutoencoding": ("video_autoencoder", None),
}
# Our factory (and imagenet variant) -> transformers' class.
HF_ARCHITECTURES: Dict[Tuple[str, Optional[str]], str] = {v: k for k, v in ARCHITECTURES.items()}

# "gelu" is transformers' exact GELU, read with the reference's tanh GELU (see the guide).
HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh")
# The tanh GELU in transformers' names: its outputs then use our activation.
_HF_TANH_GELU = "gelu_new"

# config.json field `to_hf` sets on a learned classifier whose decoder query it
# folded into the output bias; `from_hf` then unfolds it.
FOLDED_QUERY_FIELD = "perceiver_decoder_query_folded"

# transformers' PerceiverConfig defaults, for a config.json that omits a field.
_HF_DEFAULTS: Dict[str, Any] = {
    "num_latents": 256,
    "d_latents": 1280,
    "d_model": 768,
    "num_blocks": 1,
    "num_self_attends_per_block": 26,
    "num_self_attention_heads": 8,
    "num_cross_attention_heads": 8,
    "qk_channels": None,
    "v_channels": None,
    "cross_attention_shape_for_attention": "kv",
    "self_attention_widening_factor": 1,
    "cross_attention_widening_factor": 1,
    "hidden_act": "gelu",
    "use_query_residual": True,
    "vocab_size": 262,
    "max_position_embeddings": 2048,
    "image_size": 56,
    "train_size": [368, 496],
    "num_frames": 16,
    "audio_samples_per_frame": 1920,
    "samples_per_patch": 16,
    "output_shape": [1, 16, 224, 224],
    "output_num_channels": 512,
    "_label_trainable_num_channels": 1024,
}

# The seven heads, by short name: (our factory, imagenet variant).
_MODELS: Dict[str, Tuple[str, Optional[str]]] = {
    "mlm": ("masked_language_model", None),
    "text": ("text_classifier", None),
    "learned": ("imagenet_classifier", "learned_position_encoding"),
    "fourier": ("imagenet_classifier", "fourier_position_encoding"),
    "conv": ("imagenet_classifier", "conv_preprocessing"),
    "flow": ("optical_flow", None),
    "video": ("video_autoencoder", None),
}
_ALL = tuple(_MODELS)
_TEXT = ("mlm", "text")
_IMAGE = ("learned", "fourier", "conv")
_NOT_TEXT = _IMAGE + ("flow", "video")
_ANY = object()  # A row whose field may hold any positive int (or what its form reads).


class Field(NamedTuple):
    """One row of the table: a config.json field, our size, or both, for some heads.

    - `hf` and `ours`: the field holds our keyword argument (a positive int
      unless `form` says otherwise). With `fixed`, transformers' code fixes
      both at that value. When `ours` was read from an earlier row, the
      field must agree with it (one of our sizes that transformers keeps
      twice).
    - `hf` alone: the field must hold `fixed` (the first value is written).
    - `ours` alone: a size transformers fixes in code at `fixed`; read as
      that value, and a model with another is refused when written.

    `none_means` names our size that a None in the field stands for (its
    default in transformers). `form` says how the field holds the size:
    'int', 'pair' ([height, width] <-> a tuple), 'pixels' (the video's
    output_shape [1, frames, S, S] <-> image_size S), 'grid' (image_size
    // 4, the video's patch grid), 'labels' (id2label <-> num_classes), or
    'written' (written as `fixed`, never checked: reading ignores it).
    """

    hf: Optional[str]
    ours: Optional[str]
    models: Tuple[str, ...]
    fixed: Any = _ANY
    why: str = ""
    form: str = "int"
    none_means: Optional[str] = None


_DEFAULT_SIZE = "our factories use the default size"

FIELDS: Tuple[Field, ...] = (
    # transformers' activation and attention options: one choice each in our models.
    Field("hidden_act", None, _ALL, (_HF_TANH_GELU, "gelu", "gelu_pytorch_tanh"),
          "our MLPs use the tanh GELU"),
    Field("cross_attention_widening_factor", None, _ALL, (1,)),
    Field("self_attention_widening_factor", None, _ALL, (1,)),
    Field("use_query_residual", None, _ALL, (True,)),
    # The reference trains these without dropout; inference has none, so any is read.
    Field("attention_probs_dropout_prob", None, _ALL, (0.0,), form="written"),
    # The text models' encoder attention sizes transformers' decoder shares.
    Field("vocab_size", None, _TEXT, (262,), "our byte tokenizer's vocabulary"),
    Field("num_blocks", None, _TEXT, (1,)),
    Field("num_self_attention_heads", "num_heads", ("mlm",), (8,),
          "the decoder's heads; our model has one head count"),
    Field("num_self_attention_heads", "num_heads", ("text", "video")),
    Field("num_self_attention_heads", "num_self_attend_heads", _IMAGE + ("flow",)),
    Field("num_cross_attention_heads", "num_heads", _TEXT,
          why="num_self_attention_heads: our model has one head count"),
    Field("qk_channels", "qk_channels", ("mlm",), (8 * 32,),
          "the decoder's 8 * 32 query-key channels; our model has one size"),
    Field("num_latents", "num_latents", _ALL),
    Field("d_latents", "num_latent_channels", _ALL),
    Field("qk_channels", "qk_channels", ("text",), none_means="num_latent_channels"),
    Field("v_channels", "num_latent_channels", _TEXT, why="d_latents: our model has one size",
          none_means="qk_channels"),
    Field("cross_attention_shape_for_attention", None, _TEXT, ("kv",), form="written"),
    Field("d_model", "d_model", _TEXT),
    Field("max_position_embeddings", "max_seq_len", _TEXT),
    Field("num_self_attends_per_block", "num_self_attends", _TEXT + ("flow", "video")),
    Field("num_self_attends_per_block", "num_self_attends_per_block", _IMAGE),
    Field("id2label", "num_classes", ("text",) + _IMAGE + ("video",), form="labels"),
    # The other heads leave attention sizes to their defaults, as ours do.
    Field("qk_channels", None, _NOT_TEXT, (None,), _DEFAULT_SIZE),
    Field("v_channels", None, _NOT_TEXT, (None,), _DEFAULT_SIZE),
    Field("cross_attention_shape_for_attention", None, _NOT_TEXT, ("kv",)),
    Field("num_cross_attention_heads", None, _NOT_TEXT, (1,)),
    Field("num_blocks", "num_blocks", _IMAGE),
    Field("num_blocks", None, ("flow", "video"), (1,)),
    # The image classifiers' inputs.
    Field("image_size", "image_size", ("learned",)),
    Field(None, "learned_pos_channels", ("learned",), (256,),
          "the 1x1 conv's and the position table's channels"),
    Field(None, "image_size", ("fourier",), (224,), "the Fourier features' 224x224 grid"),
    Field(None, "image_size", ("conv",), (224,),
          "the Fourier features' 56x56 grid after the conv stem"),
    Field(None, "num_bands", ("fourier", "conv"), (64,), "the Fourier features' bands"),
    # Optical flow.
    Field("train_size", "image_shape", ("flow",), form="pair"),
    Field(None, "num_bands", ("flow",), (64,), "the Fourier features' bands"),
    # The video autoencoder. transformers' image_size is the patch grid's side
    # (its Fourier max_resolution); output_shape holds the pixels.
    Field("num_frames", "num_frames", ("video",)),
    Field("output_shape", "image_size", ("video",), form="pixels"),
    Field("image_size", "image_size", ("video",), form="grid",
          why="output_shape's side // 4, the 4x4 patch grid"),
    Field("audio_samples_per_frame", "audio_samples_per_frame", ("video",)),
    Field("samples_per_patch", "samples_per_patch", ("video",)),
    Field("output_num_channels", "decoder_channels", ("video",)),
    Field("_label_trainable_num_channels", "label_query_channels", ("video",)),
    Field(None, "image_bands", ("video",), (32,), "the image Fourier features' bands"),
    Field(None, "audio_bands", ("video",), (192,), "the audio Fourier features' bands"),
)

# Sizes a variant's model does not use (its parameter tree and outputs ignore them).
_UNUSED_SIZES = {
    "learned_position_encoding": ("num_bands",),
    "fourier_position_encoding": ("learned_pos_channels",),
    "conv_preprocessing": ("learned_pos_channels",),
}


def _rows(model: str) -> List[Field]:
    return [row for row in FIELDS if model in row.models]


def _model_name(factory: str, variant: Optional[str]) -> str:
    return next(name for name, key in _MODELS.items() if key == (factory, variant))


# ---------------------------------------------------------------------------
# Reading: config.json -> our factory and sizes
# ---------------------------------------------------------------------------


def _field(config: Mapping, name: str) -> Any:
    return config.get(name, _HF_DEFAULTS.get(name))


def _refuse(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(
        f"config.json field {name}={value!r} cannot be expressed by our factories: "
        f"expected {expected}."
    )


def _require(config: Mapping, name: str, allowed: Tuple, why: str = "") -> Any:
    value = _field(config, name)
    if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
        want = " or ".join(map(repr, allowed))
        raise _refuse(name, value, want + (f" ({why})" if why else ""))
    return value


def _int(config: Mapping, name: str) -> int:
    value = _field(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _refuse(name, value, "a positive int")
    return value


def _num_labels(config: Mapping) -> int:
    # transformers keeps the label count as id2label; "num_labels" only in hand-written files.
    id2label = config.get("id2label")
    if id2label is not None:
        if not isinstance(id2label, dict) or not id2label:
            raise _refuse("id2label", id2label, "a non-empty mapping")
        return len(id2label)
    return _int({"num_labels": config.get("num_labels", 2)}, "num_labels")


def _pair(config: Mapping, name: str) -> Tuple[int, int]:
    value = _field(config, name)
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    ):
        raise _refuse(name, value, "[height, width]")
    return tuple(value)


def _pixels(config: Mapping, name: str, frames: int) -> int:
    value = _field(config, name)
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or value[1] != frames
        or value[2] != value[3]
        or not isinstance(value[2], int)
        or value[2] < 4
        or value[2] % 4
    ):
        raise _refuse(name, value, f"[batch, num_frames={frames}, S, S] with S a multiple of 4")
    return value[2]


# form -> how a field's value is read: (config, row, sizes read so far) -> our size.
_DECODE: Dict[str, Callable[[Mapping, Field, Dict[str, Any]], Any]] = {
    "int": lambda config, row, kwargs: _int(config, row.hf),
    "pair": lambda config, row, kwargs: _pair(config, row.hf),
    "pixels": lambda config, row, kwargs: _pixels(config, row.hf, kwargs["num_frames"]),
    "labels": lambda config, row, kwargs: _num_labels(config),
}
# form -> how our size is written: (sizes, row) -> the field's value.
_ENCODE: Dict[str, Callable[[Mapping, Field], Any]] = {
    "int": lambda sizes, row: sizes[row.ours],
    "pair": lambda sizes, row: list(sizes[row.ours]),
    "pixels": lambda sizes, row: [1, sizes["num_frames"], sizes[row.ours], sizes[row.ours]],
    "grid": lambda sizes, row: sizes[row.ours] // 4,
}


def _read_row(config: Mapping, row: Field, kwargs: Dict[str, Any]) -> None:
    """Checks one row against `config`, adding the size it holds to `kwargs`."""
    if row.form == "written":
        return
    if row.hf is None:  # A size transformers fixes in code.
        kwargs[row.ours] = row.fixed[0]
        return
    if row.ours is None:
        _require(config, row.hf, row.fixed, row.why)
        return
    if row.ours in kwargs:  # Our size, held a second time: it must agree.
        value = _field(config, row.hf)
        if value is None and row.none_means is not None:
            if kwargs[row.none_means] != kwargs[row.ours]:
                raise _refuse(row.hf, value, f"{kwargs[row.ours]} ({row.why})")
            return
        _require(config, row.hf, (_ENCODE[row.form](kwargs, row),), row.why)
        return
    if row.none_means is not None and _field(config, row.hf) is None:
        kwargs[row.ours] = kwargs[row.none_means]
        return
    value = _DECODE[row.form](config, row, kwargs)
    if row.fixed is not _ANY:
        _require(config, row.hf, row.fixed, "transformers' code fixes " + row.why)
        value = row.fixed[0]
    kwargs[row.ours] = value


def hf_factory(config: Mapping) -> Tuple[str, Dict[str, Any]]:
    """Our factory and its keyword arguments for a transformers Perceiver config.

    Args:
      config: the parsed `config.json` of a transformers Perceiver model.

    Returns:
      `(factory name, kwargs)` for `models.parameter_shapes(factory, **kwargs)`;
      imagenet kwargs include `variant`.

    Raises:
      ValueError: naming the field and value for a model our factories cannot
        express (unknown architecture, activation, sizes they fix differently).
    """
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a mapping (parsed config.json); got {type(config).__name__}."
        )
    model_type = config.get("model_type", "perceiver")
    if model_type != "perceiver":
        raise _refuse("model_type", model_type, "'perceiver'")
    archs = config.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise _refuse("architectures", archs, "one of " + ", ".join(ARCHITECTURES))
    factory, variant = ARCHITECTURES[archs[0]]
    kwargs: Dict[str, Any] = {} if variant is None else {"variant": variant}
    for row in _rows(_model_name(factory, variant)):
        _read_row(config, row, kwargs)
    return factory, kwargs


def build(factory: str, kwargs: Mapping[str, Any]) -> hk.TransformedWithState:
    """Our model for `hf_factory`'s `(factory, kwargs)`."""
    kwargs = dict(kwargs)
    if factory == "imagenet_classifier":
        return models.imagenet_classifier(kwargs.pop("variant"), **kwargs)
    return getattr(models, factory)(**kwargs)


# ---------------------------------------------------------------------------
# Writing: our factory and sizes -> config.json
# ---------------------------------------------------------------------------


def _factory_and_sizes(
    factory: Any, sizes: Optional[Mapping[str, Any]]
) -> Tuple[str, Dict[str, Any]]:
    """A factory name (or a perceiver.models factory) and its complete sizes."""
    if callable(factory) and getattr(models, getattr(factory, "__name__", ""), None) is factory:
        factory = factory.__name__
    names = sorted({f for f, _ in HF_ARCHITECTURES})
    if isinstance(factory, str) and factory in models.FACTORIES and factory not in names:
        raise ValueError(
            f"transformers has no Perceiver class for our {factory} models; it holds "
            f"{', '.join(names)} (see perceiver.convert)."
        )
    if not isinstance(factory, str) or factory not in names:
        raise ValueError(
            f"factory must be one of {', '.join(names)} (or that perceiver.models function); "
            f"got {factory!r}."
        )
    if sizes is not None and not isinstance(sizes, Mapping):
        raise TypeError(
            "sizes must be a mapping of the factory's keyword arguments; got "
            f"{type(sizes).__name__}."
        )
    sizes = dict(sizes or {})
    if factory == "imagenet_classifier" and "variant" not in sizes:
        raise ValueError(
            "sizes must hold 'variant' for imagenet_classifier (one of "
            f"{', '.join(models.IMAGENET_VARIANTS)})."
        )
    if "image_shape" in sizes and isinstance(sizes["image_shape"], list):
        sizes["image_shape"] = tuple(sizes["image_shape"])
    return factory, models.factory_sizes(factory, **sizes)


def _id2label(labels: Optional[Sequence[str]], num_classes: int) -> Dict[str, Any]:
    names = [f"LABEL_{i}" for i in range(num_classes)] if labels is None else list(labels)
    if len(names) != num_classes or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"labels must be {num_classes} str, one per class; got {len(names)} values."
        )
    return {
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


def hf_config(
    factory: Any,
    sizes: Optional[Mapping[str, Any]] = None,
    *,
    labels: Optional[Sequence[str]] = None,
    allow_deviations: bool = False,
    fold_query_residual: bool = True,
) -> Dict[str, Any]:
    """The transformers `config.json` of one of our models: the inverse of `hf_factory`.

    Args:
      factory: a `perceiver.models` factory name or function.
      sizes: its keyword arguments (imagenet_classifier's include `variant`);
        missing ones take the factory's defaults.
      labels: class names for `id2label` (classifiers and the video model),
        one per class; default `LABEL_<i>`.
      allow_deviations: write a model transformers computes differently (the
        conv-stem classifier's padding; see docs/guides/hf_measurements.md).
      fold_query_residual: mark a learned classifier's decoder query as folded
        into its output bias (see `to_hf`).

    Returns:
      the config as a dict, with `hidden_act` "gelu_new" (our tanh GELU).

    Raises:
      ValueError: naming the size and why, for a model transformers cannot
        express (sizes its classes fix in code), or a deviation not allowed.
    """
    factory, sizes = _factory_and_sizes(factory, sizes)
    variant = sizes.get("variant")
    arch = HF_ARCHITECTURES[(factory, variant)]
    rows = _rows(_model_name(factory, variant))
    fixed = [r for r in rows if r.ours is not None and r.fixed is not _ANY]
    wrong = [r for r in fixed if sizes[r.ours] != r.fixed[0]]
    if wrong:
        raise ValueError(
            f"transformers' {arch} cannot hold this model: its code fixes "
            + "; ".join(f"{r.ours}={r.fixed[0]!r} ({r.why})" for r in wrong)
            + "; this model has "
            + ", ".join(f"{r.ours}={sizes[r.ours]!r}" for r in wrong)
            + f". Only {factory} models of those sizes convert, as the published ones; no "
            f"tiny recipe's {factory} (--tiny) can."
        )
    if variant == "conv_preprocessing" and not allow_deviations:
        raise ValueError(
            f"transformers' {arch} pads its 7x7/2 conv (3, 3) and max-pools unpadded "
            "(55x55 features) where ours pads as TF SAME (56x56), so its outputs differ on "
            "every input (see docs/guides/hf_measurements.md for how much); pass "
            "allow_deviations=True (perceiver convert --allow-deviations) to write it anyway."
        )
    config: Dict[str, Any] = {"architectures": [arch], "model_type": "perceiver"}
    for row in rows:
        if row.hf is None:
            continue  # Checked above.
        if row.form == "labels":
            config.update(_id2label(labels, sizes[row.ours]))
        elif row.ours is None:
            config[row.hf] = row.fixed[0]
        else:
            config[row.hf] = _ENCODE[row.form](sizes, row)
    if labels is not None and "id2label" not in config:
        raise ValueError(f"labels: {factory} has no classes to name.")
    if variant == "learned_position_encoding" and fold_query_residual:
        config[FOLDED_QUERY_FIELD] = True
    # The config must read back as this very model: a difference here is a bug in the table.
    back_factory, back = hf_factory(config)
    back = models.factory_sizes(back_factory, **back)
    unused = _UNUSED_SIZES.get(variant, ())
    lost = sorted(k for k in sizes if k not in unused and sizes[k] != back.get(k))
    if back_factory != factory or lost:  # pragma: no cover - a mapping bug.
        raise ValueError(f"transformers' {arch} cannot express sizes {', '.join(lost)}.")
    return config
