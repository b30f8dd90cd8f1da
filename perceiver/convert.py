"""Hugging Face transformers' Perceiver checkpoints: read into our models, and written from them.

    model, params, state = from_hf("path/to/save_pretrained/dir")
    logits, _ = model.apply(params, state, None, images)
    to_hf(params, state, "imagenet_classifier", {"variant": ...}, "out_dir")
    convert("hf_dir", "ours.pystate")   # or convert("ours.pystate", "hf_dir"):
                                        # `perceiver convert SRC DST`

`from_hf` reads a directory as transformers' `save_pretrained` writes it
(`config.json` plus `model.safetensors` or `pytorch_model.bin`, sharded or
not) for the seven Perceiver IO heads transformers ships, and returns one of
our factories' models with the sizes the config implies:

- PerceiverForMaskedLM -> `masked_language_model`
- PerceiverForSequenceClassification -> `text_classifier` (the MLM's
  encoder and a one-query classification decoder, as ours)
- PerceiverForImageClassificationLearned, ...Fourier, ...ConvProcessing ->
  `imagenet_classifier` ('learned_position_encoding',
  'fourier_position_encoding', 'conv_preprocessing')
- PerceiverForOpticalFlow -> `optical_flow`
- PerceiverForMultimodalAutoencoding -> `video_autoencoder`

Neither torch nor transformers is needed: safetensors files are read with the
`safetensors` package's numpy API (`pip install 'perceiver-io-jax[hf]'`), and
`pytorch_model.bin` zip archives with our own pickle machine
(`perceiver.safe_unpickle`), which builds only dicts and tensors: nothing from
the file runs, every storage is read with its size checked, and no tensor is a
view past its storage.

Tensors are mapped by rule (module paths by pattern, leaves by kind): torch
Linear `weight [out, in]` -> `w [in, out]`, conv `weight` OIHW -> `w` HWIO,
LayerNorm `weight/bias` -> `scale/offset`, BatchNorm `running_mean/var` ->
the `average` of our state's `mean_ema`/`var_ema`. torch's running
statistics are an un-debiased EMA, i.e. a warm Haiku one: `counter` is
`num_batches_tracked` but at least 1000, where Haiku's debiasing factor
`1 - 0.9**counter` is 1 in float32, and `hidden` equals `average`. Floating
tensors become float32 (our factories' dtype; float16/bfloat16 files load
exactly). The result is checked against `models.parameter_shapes`; a
checkpoint tensor with no place, or a parameter with none, is an error
listing every difference.

Where transformers' port differs from DeepMind's reference (which our models
follow), checked on tiny random models (transformers 4.57.6, torch 2.13;
`tests/make_hf_fixtures.py`, `tests/test_convert_hf.py`):

- GELU: transformers' `hidden_act="gelu"` (its default, and the published
  configs') is the exact erf GELU; the reference's is the tanh approximation
  (at most 4.7e-4 apart). Such checkpoints are read as they are, with our
  tanh GELU; `"gelu_new"` and `"gelu_pytorch_tanh"` are the tanh GELU.
- Learned-position ImageNet classifier: transformers adds a query residual
  in the decoder's cross-attention, which the reference turns off.
- Conv-preprocessing ImageNet classifier: transformers pads the 7x7/2 conv
  (3, 3) and max-pools without padding (224 -> 112 -> 55x55); TF/Haiku SAME
  pads (2, 3) and pools to 56x56, so every input differs.
- Masked language model: transformers ignores the decoder's query mask, so
  the logits at padded positions differ (by O(10) on the tiny model); real
  positions agree.

Measured max `|ours - transformers|` / max `|transformers|` (float32; "undone":
transformers with the deviation patched out on the torch side):

| model   | vs undone | vs transformers' own            |
| ------- | --------- | ------------------------------- |
| mlm     | 2.8e-7    | 2.0e-4 (GELU; real positions)   |
| text    | 3.1e-7    | 1.0e-4 (GELU)                   |
| learned | 6.1e-7    | 2.8 (query residual)            |
| fourier | 2.3e-7    | 7.8e-5 (GELU)                   |
| conv    | 4.2e-7    | 1.3e-2 (padding, and GELU)      |
| flow    | 9.2e-7    | 9.1e-7 (saved with "gelu_new")  |
| video   | 3.2e-6    | 2.7e-4 (GELU)                   |

Conv kernel layout: transformers' conversion script wrote DeepMind's HWIO
7x7 kernel as `np.transpose(w)`, i.e. OIWH, which torch applies as OIHW: the
published `deepmind/vision-perceiver-conv` runs each kernel with height and
width swapped. By default (`conv_kernel_layout="oihw"`) we read a kernel as
torch applies it, so a model trained or fine-tuned in transformers keeps its
function (the tests check this); `"oiwh"` undoes the script's transpose and
recovers DeepMind's kernel for checkpoints it converted (for that published
one, `models.pretrained('imagenet_conv')` has the original). 1x1 kernels
are the same either way.

Our optical-flow model returns transformers' `logits` times
`models.FLOW_OUTPUT_SCALE` (20), as the reference notebook does. Configs our
factories cannot express (another activation, widening factors other than
1, attention sizes they fix differently, an unknown head, ...) are refused
with a ValueError naming the field and value.

Writing (`to_hf`, `hf_config`, `to_hf_state_dict`) inverts the same rules
(the reading rules' name templates list the names to write), into
`config.json` and `model.safetensors` (the safetensors package's numpy
API, no torch); HF -> ours -> HF gives every fixture tensor back exactly.
transformers then computes our function, not its deviations:

- GELU: the config says "gelu_new", transformers' tanh GELU, which is ours.
- Learned classifier: transformers' decoder adds its query, one learned
  vector the same for every input, to the cross-attention's output; `to_hf`
  takes it from that output's bias (exact), and marks the config
  (`FOLDED_QUERY_FIELD`) so that `from_hf` adds it back.
- Conv-stem classifier: the padding cannot be expressed; `to_hf` refuses
  unless `allow_deviations=True`.
- Masked language model: the padded positions' logits still differ (their
  queries are not masked); real positions agree.
- Sizes transformers fixes in code (MLM decoder heads 8 and qk channels 256,
  learned position channels 256, Fourier bands and the 224x224 resolution
  of the classifiers, flow bands 64, video bands 32/192) must have those
  values; other sizes are refused, before anything is read or written, by
  one ValueError naming every such size, its fixed value and why. The
  published models and the full-size imagenet, finetune_image, mlm and flow
  recipes have them; no tiny recipe's model does, except the text
  classifier's, whose sizes transformers all takes from the config (so
  finetune_text converts, tiny or not). flow_small (16 bands) and the
  Perceiver AR byte_language_model (no transformers class) do not convert.

Measured at the published models' sizes, random weights (every tensor, as
`tests/make_hf_fixtures.py` draws them), batch 1, float32, CPU, torch 2.13,
transformers 4.57.6: max `|ours - transformers|` / max `|transformers|`, with
`python tests/make_hf_fixtures.py --measure mlm imagenet_learned
imagenet_fourier imagenet_conv` (about 4 minutes on 2 cores):

| model            | transformers' own (erf GELU)   | undone  | written by to_hf  |
| ---------------- | ------------------------------ | ------- | ----------------- |
| mlm              | 1.7e-4 (GELU, real positions)  | 1.5e-6  | 1.3e-6            |
| mlm, padded      | 1.1 (query mask)               | 1.1     | 1.1 (query mask)  |
| imagenet_learned | 6.9e-1 (query residual)        | 1.4e-6  | 1.4e-6            |
| imagenet_fourier | 1.1e-4 (GELU)                  | 8.7e-7  | 9.4e-7            |
| imagenet_conv    | 7.7e-3 (padding, GELU)         | 9.8e-7  | 7.7e-3 (padding)  |

("undone": transformers' with its deviations patched out on the torch
side; the MLM's padded positions stay apart, since nothing there is text.)
The learned classifier's 0.69 comes from a decoder query drawn N(0, 1);
its size in a trained model is that query's against the attention output.

`convert(src, dst)` writes either way, choosing by what `src` is: a
transformers directory becomes our checkpoint file (`.pystate`, or
`.safetensors`, see `perceiver.checkpoint`) with its description (factory,
sizes, labels) beside it, which every task and `--checkpoint` read; our
file with its description, or a published name, becomes a transformers
directory.

Beside the model, the directory gets what transformers' pipelines read: an
image classifier's `preprocessor_config.json` (PerceiverImageProcessor: our
crop as `size / crop_size`, bicubic resize, ImageNet's scaling; see
`hf_preprocessor_config`), a language model's `tokenizer_config.json` and
`special_tokens_map.json` (PerceiverTokenizer, the same byte tokens as
ours); transformers has no processor for the flow and video models. So
`pipeline("image-classification", model=DIR)` and `pipeline("fill-mask",
model=DIR)` load it and give our top answers (checked on photos with
transformers 4.57.6; PIL's bicubic is not TensorFlow's, so the scores
differ in the third decimal). config.json also keeps our description
(`DESCRIPTION_FIELD`, with the sha256 of model.safetensors): converting
back gives the same description and the same model, as long as the
weights file is unchanged and transformers' files still agree with it;
otherwise the description is made from those files (the crop from
`preprocessor_config.json`). Every file is written, or none; a folder
holding another model's files, or a destination that would replace an
input, is refused before anything is read.
"""

import hashlib
import json
import os
import re
import secrets
import sys
import zipfile
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import haiku as hk
import numpy as np

from perceiver import _validation
from perceiver import checkpoint
from perceiver import hub
from perceiver import loading
from perceiver import models
from perceiver import safe_unpickle

try:  # Ships with jax; lets bfloat16 tensors load.
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

CheckpointError = checkpoint.CheckpointError
Tree = Dict[str, Dict[str, np.ndarray]]

MAX_CONFIG_BYTES = 1 << 20  # A Perceiver config.json is ~2 KB (id2label of 1000 classes ~40 KB).
MAX_PICKLE_BYTES = 64 << 20  # data.pkl of the largest published model is under 100 KB.
MAX_CHECKPOINT_BYTES = 16 << 30  # All tensors of one checkpoint; the largest published is ~1 GB.

WEIGHTS_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
CONV_KERNEL_LAYOUTS = ("oihw", "oiwh")

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
# "gelu" is transformers' exact GELU, read with the reference's tanh GELU (see above).
HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh")

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

# Sizes transformers' classes fix in code rather than in the config.
_HF_MLM_DECODER_QK = 8 * 32
_HF_MLM_DECODER_HEADS = 8
_HF_LEARNED_CHANNELS = 256
_HF_IMAGE_SIZE = 224  # Fourier and conv classifiers: max_resolution (224, 224) / (56, 56).
_HF_IMAGE_BANDS = 64
_HF_FLOW_BANDS = 64
_HF_VIDEO_IMAGE_BANDS = 32
_HF_VIDEO_AUDIO_BANDS = 192

_BN_DECAY = 0.9  # Our Conv2DDownsample's BatchNorm decay_rate.
_BN_WARM_COUNTER = 1000  # 0.9**1000 underflows float32: debiasing is then the identity.


# ---------------------------------------------------------------------------
# The config
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

    _require(config, "hidden_act", HIDDEN_ACTS, "our MLPs use the tanh GELU")
    _require(config, "cross_attention_widening_factor", (1,))
    _require(config, "self_attention_widening_factor", (1,))
    _require(config, "use_query_residual", (True,))
    latents = _int(config, "num_latents")
    channels = _int(config, "d_latents")
    self_attends = _int(config, "num_self_attends_per_block")
    self_heads = _int(config, "num_self_attention_heads")

    if factory == "masked_language_model":
        _require(config, "vocab_size", (262,), "our byte tokenizer's vocabulary")
        _require(config, "num_blocks", (1,))
        fixed = (
            f"transformers fixes the decoder's at {_HF_MLM_DECODER_HEADS} heads "
            "and our model shares one count"
        )
        _require(config, "num_self_attention_heads", (_HF_MLM_DECODER_HEADS,), fixed)
        _require(config, "num_cross_attention_heads", (_HF_MLM_DECODER_HEADS,), fixed)
        _require(
            config,
            "qk_channels",
            (_HF_MLM_DECODER_QK,),
            "transformers fixes the decoder's at 8 * 32 and our model shares one size",
        )
        v_channels = _field(config, "v_channels")
        effective_v = _HF_MLM_DECODER_QK if v_channels is None else v_channels
        if effective_v != channels:
            raise _refuse("v_channels", v_channels, f"d_latents ({channels})")
        return factory, dict(
            max_seq_len=_int(config, "max_position_embeddings"),
            d_model=_int(config, "d_model"),
            num_latents=latents,
            num_latent_channels=channels,
            num_self_attends=self_attends,
            num_heads=self_heads,
            qk_channels=_HF_MLM_DECODER_QK,
        )

    if factory == "text_classifier":
        # The MLM's encoder with a classification decoder whose sizes transformers
        # derives from d_latents, as ours does: nothing is fixed in code.
        _require(config, "vocab_size", (262,), "our byte tokenizer's vocabulary")
        _require(config, "num_blocks", (1,))
        _require(
            config, "num_cross_attention_heads", (self_heads,),
            "num_self_attention_heads: our model has one head count",
        )
        qk = _field(config, "qk_channels")
        qk = channels if qk is None else _int(config, "qk_channels")
        v_channels = _field(config, "v_channels")
        if (qk if v_channels is None else v_channels) != channels:
            raise _refuse("v_channels", v_channels, f"d_latents ({channels})")
        return factory, dict(
            num_classes=_num_labels(config),
            max_seq_len=_int(config, "max_position_embeddings"),
            d_model=_int(config, "d_model"),
            num_latents=latents,
            num_latent_channels=channels,
            num_self_attends=self_attends,
            num_heads=self_heads,
            qk_channels=qk,
        )

    # The other heads leave attention sizes to their defaults, as ours do.
    _require(config, "qk_channels", (None,), "our factories use the default size")
    _require(config, "v_channels", (None,), "our factories use the default size")
    _require(config, "cross_attention_shape_for_attention", ("kv",))
    _require(config, "num_cross_attention_heads", (1,))

    if factory == "imagenet_classifier":
        kwargs = dict(
            variant=variant,
            num_classes=_num_labels(config),
            num_latents=latents,
            num_latent_channels=channels,
            num_blocks=_int(config, "num_blocks"),
            num_self_attends_per_block=self_attends,
            num_self_attend_heads=self_heads,
        )
        if variant == "learned_position_encoding":
            kwargs.update(
                image_size=_int(config, "image_size"), learned_pos_channels=_HF_LEARNED_CHANNELS
            )
        else:
            # transformers fixes the Fourier features at 224x224 (56x56 after the conv).
            kwargs.update(image_size=_HF_IMAGE_SIZE, num_bands=_HF_IMAGE_BANDS)
        return factory, kwargs

    _require(config, "num_blocks", (1,))
    if factory == "optical_flow":
        train_size = _field(config, "train_size")
        if (
            not isinstance(train_size, (list, tuple))
            or len(train_size) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in train_size)
        ):
            raise _refuse("train_size", train_size, "[height, width]")
        return factory, dict(
            image_shape=tuple(train_size),
            num_latents=latents,
            num_latent_channels=channels,
            num_self_attends=self_attends,
            num_self_attend_heads=self_heads,
            num_bands=_HF_FLOW_BANDS,
        )

    # The video autoencoder. transformers' image_size is the patch grid's side
    # (its Fourier max_resolution); output_shape holds the pixels.
    frames = _int(config, "num_frames")
    output_shape = _field(config, "output_shape")
    if (
        not isinstance(output_shape, (list, tuple))
        or len(output_shape) != 4
        or output_shape[1] != frames
        or output_shape[2] != output_shape[3]
        or not isinstance(output_shape[2], int)
        or output_shape[2] < 4
        or output_shape[2] % 4
    ):
        raise _refuse(
            "output_shape",
            output_shape,
            f"[batch, num_frames={frames}, S, S] with S a multiple of 4",
        )
    size = output_shape[2]
    _require(config, "image_size", (size // 4,), f"output_shape's {size} // 4, the 4x4 patch grid")
    return factory, dict(
        num_frames=frames,
        image_size=size,
        audio_samples_per_frame=_int(config, "audio_samples_per_frame"),
        samples_per_patch=_int(config, "samples_per_patch"),
        num_latents=latents,
        num_latent_channels=channels,
        num_self_attends=self_attends,
        num_heads=self_heads,
        decoder_channels=_int(config, "output_num_channels"),
        num_classes=_num_labels(config),
        image_bands=_HF_VIDEO_IMAGE_BANDS,
        audio_bands=_HF_VIDEO_AUDIO_BANDS,
        label_query_channels=_int(config, "_label_trainable_num_channels"),
    )


def build(factory: str, kwargs: Mapping[str, Any]) -> hk.TransformedWithState:
    """Our model for `hf_factory`'s `(factory, kwargs)`."""
    kwargs = dict(kwargs)
    if factory == "imagenet_classifier":
        return models.imagenet_classifier(kwargs.pop("variant"), **kwargs)
    return getattr(models, factory)(**kwargs)


# ---------------------------------------------------------------------------
# Names: transformers' state dict -> our tree
# ---------------------------------------------------------------------------

# Within one PerceiverLayer: transformers module -> ours (cross, self).
_LAYER_MODULES = {
    "attention.self.query": ("attention/linear", "attention/linear"),
    "attention.self.key": ("attention/linear_1", "attention/linear_1"),
    "attention.self.value": ("attention/linear_2", "attention/linear_2"),
    "attention.output.dense": ("attention/linear_3", "attention/linear_3"),
    "attention.self.layernorm1": ("layer_norm", "layer_norm"),
    "attention.self.layernorm2": ("layer_norm_1", None),  # Only cross-attention normalises kv.
    "layernorm": ("layer_norm_2", "layer_norm_1"),
    "mlp.dense1": ("mlp/linear", "mlp/linear"),
    "mlp.dense2": ("mlp/linear_1", "mlp/linear_1"),
}
_LAYER = "(?P<layer>" + "|".join(re.escape(k) for k in _LAYER_MODULES) + ")"
_MODALITIES = ("audio", "image", "label")
_MODALITY = "(?P<m>" + "|".join(_MODALITIES) + ")"
# Placeholders of a rule's name template: {i} a layer index, {m} a modality.
_PLACEHOLDERS = {"i": r"(?P<i>0|[1-9]\d*)", "m": _MODALITY}

# Kinds of module, each with its leaves: transformers leaf -> our leaf.
_LEAVES = {
    "linear": {"weight": "w", "bias": "b"},
    "conv": {"weight": "w", "bias": "b"},
    "norm": {"weight": "scale", "bias": "offset"},
    "embed": {"weight": "embeddings"},
    "bias": {"bias": "bias"},
    "bn": {
        "weight": "scale",
        "bias": "offset",
        "running_mean": None,
        "running_var": None,
        "num_batches_tracked": None,
    },
}
_HF_LEAVES = tuple(sorted({leaf for leaves in _LEAVES.values() for leaf in leaves}))


class Rule(NamedTuple):
    """Transformers names `template[.LAYER].LEAF` -> `target(match) = (our module, kind)`.

    `form` is 'layer' (a PerceiverLayer: `template.<layer module>.<leaf>`),
    'module' (`template.<leaf>`) or 'pos' (the template names one bare
    parameter). The template's `{i}` and `{m}` stand for a layer index and a
    modality; the same template both matches names (reading) and lists them
    (writing, `_hf_names`), so the two directions cannot disagree.
    """

    template: str
    form: str
    pattern: "re.Pattern[str]"
    target: Callable[["re.Match[str]"], Tuple[str, str]]


def _rule(template: str, form: str, target: Callable) -> Rule:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if k % 2 == 0 else _PLACEHOLDERS[p] for k, p in enumerate(parts))
    regex += {
        "layer": r"\." + _LAYER + r"\.(?P<leaf>\w+)",
        "module": r"\.(?P<leaf>\w+)",
        "pos": "(?P<leaf>)",
    }[form]
    return Rule(template, form, re.compile(regex), target)


def _layer_rule(hf_prefix: str, ours: Callable[["re.Match[str]"], str], cross: bool) -> Rule:
    """A PerceiverLayer under `hf_prefix` -> our CrossAttention/SelfAttention module."""

    def target(m):
        module = _LAYER_MODULES[m["layer"]][0 if cross else 1]
        if module is None:
            raise KeyError(m["layer"])
        kind = "norm" if "layer_norm" in module else "linear"
        return f"{ours(m)}/{module}", kind

    return _rule(hf_prefix, "layer", target)


def _module_rule(hf_module: str, ours: Any, kind: str) -> Rule:
    """A whole transformers module -> our module (str, or a function of the match)."""
    name = ours if callable(ours) else (lambda m, ours=ours: ours)
    return _rule(hf_module, "module", lambda m: (name(m), kind))


def _pos_rule(hf_name: str, ours: Any) -> Rule:
    """One position table (a bare parameter) -> our `pos_embs`."""
    name = ours if callable(ours) else (lambda m, ours=ours: ours)
    return _rule(hf_name, "pos", lambda m: (name(m), "pos"))


def _encoder_rules(ours: str) -> List[Rule]:
    return [
        _pos_rule("perceiver.embeddings.latents", f"{ours}/~/trainable_position_encoding"),
        _layer_rule(
            "perceiver.encoder.cross_attention", lambda m: f"{ours}/~/cross_attention", True
        ),
        _layer_rule(
            "perceiver.encoder.self_attends.{i}",
            lambda m: f"{ours}/~/self_attention" + ("" if m["i"] == "0" else f"_{m['i']}"),
            False,
        ),
    ]


def _decoder_rules(hf: str, ours: str) -> List[Rule]:
    """A transformers PerceiverBasicDecoder at `hf` -> our BasicDecoder at `ours`."""
    return [
        _layer_rule(hf + ".decoding_cross_attention", lambda m: f"{ours}/cross_attention", True),
        _module_rule(hf + ".final_layer", f"{ours}/output", "linear"),
        _pos_rule(
            hf + ".output_position_encodings.position_embeddings",
            f"{ours}/~/trainable_position_encoding",
        ),
    ]


def _rules(architecture: str) -> List[Rule]:
    factory, variant = ARCHITECTURES[architecture]
    pre = "perceiver.input_preprocessor"
    if factory == "masked_language_model":
        return (
            _encoder_rules("perceiver_encoder")
            + _decoder_rules("perceiver.decoder", "basic_decoder")
            + [
                _module_rule(pre + ".embeddings", "embed", "embed"),
                _pos_rule(pre + ".position_embeddings.weight", "trainable_position_encoding"),
                _module_rule("embedding_decoder", "embedding_decoder", "bias"),
            ]
        )
    if factory == "text_classifier":
        return (
            _encoder_rules("perceiver_encoder")
            + _decoder_rules("perceiver.decoder.decoder", "classification_decoder/~/basic_decoder")
            + [
                _module_rule(pre + ".embeddings", "embed", "embed"),
                _pos_rule(pre + ".position_embeddings.weight", "trainable_position_encoding"),
            ]
        )
    if factory == "imagenet_classifier":
        rules = _encoder_rules("perceiver_encoder") + _decoder_rules(
            "perceiver.decoder.decoder", "classification_decoder/~/basic_decoder"
        )
        if variant == "learned_position_encoding":
            net = "image_preprocessor/~_build_network_inputs"
            rules += [
                _module_rule(pre + ".convnet_1x1", "image_preprocessor/~/conv2_d", "conv"),
                _pos_rule(
                    pre + ".position_embeddings.position_embeddings",
                    f"{net}/trainable_position_encoding",
                ),
                _module_rule(
                    pre + ".positions_projection",
                    f"{net}/position_encoding_projector/linear",
                    "linear",
                ),
            ]
        elif variant == "conv_preprocessing":
            down = "image_preprocessor/~/conv2_d_downsample/~"
            rules += [
                _module_rule(pre + ".convnet.conv", f"{down}/conv", "conv"),
                _module_rule(pre + ".convnet.batchnorm", f"{down}/batchnorm", "bn"),
            ]
        return rules
    if factory == "optical_flow":
        return (
            _encoder_rules("perceiver_encoder")
            + _decoder_rules("perceiver.decoder.decoder", "flow_decoder/~/basic_decoder")
            + [
                _module_rule(
                    pre + ".conv_after_patches", "image_preprocessor/patches_linear", "linear"
                )
            ]
        )
    post = {
        "audio": "audio_postprocessor",
        "image": "projection_postprocessor",
        "label": "classification_postprocessor",
    }
    return (
        _encoder_rules("encoder")
        + _decoder_rules("perceiver.decoder.decoder", "multimodal_decoder/~/basic_decoder")
        + [
            _pos_rule(pre + ".padding.{m}", lambda m: f"multimodal_preprocessor/{m['m']}_padding"),
            _pos_rule(pre + ".mask.{m}", lambda m: f"multimodal_preprocessor/{m['m']}_mask_token"),
            _module_rule(
                "perceiver.output_postprocessor.modalities.{m}.classifier",
                lambda m: f"{post[m['m']]}/linear",
                "linear",
            ),
            _pos_rule(
                "perceiver.decoder.modalities.label.decoder"
                ".output_position_encodings.position_embeddings",
                "classification_decoder/~/basic_decoder/~/trainable_position_encoding",
            ),
            _pos_rule(
                "perceiver.decoder.padding.{m}",
                lambda m: f"multimodal_decoder/~decoder_query/{m['m']}_padding",
            ),
        ]
    )


def _match(rules: List[Rule], name: str) -> Optional[Tuple[str, str, str]]:
    """`(our module, kind, transformers leaf)` for one tensor name, or None."""
    for rule in rules:
        m = rule.pattern.fullmatch(name)
        if m is None:
            continue
        try:
            module, kind = rule.target(m)
        except KeyError:
            return None
        leaf = m["leaf"]
        if kind != "pos" and leaf not in _LEAVES[kind]:
            return None
        return module, kind, leaf
    return None


def _hf_names(rules: List[Rule], num_layers: int) -> List[str]:
    """Every transformers name the rules could match, with `{i}` below `num_layers`."""
    names = []
    for rule in rules:
        stems = [rule.template]
        if "{i}" in rule.template:
            stems = [t.replace("{i}", str(i)) for t in stems for i in range(num_layers)]
        if "{m}" in rule.template:
            stems = [t.replace("{m}", m) for t in stems for m in _MODALITIES]
        for stem in stems:
            if rule.form == "pos":
                names.append(stem)
            elif rule.form == "module":
                names.extend(f"{stem}.{leaf}" for leaf in _HF_LEAVES)
            else:
                names.extend(
                    f"{stem}.{layer}.{leaf}" for layer in _LAYER_MODULES for leaf in _HF_LEAVES
                )
    return names


def _conv_kernel(weight: np.ndarray, layout: str) -> np.ndarray:
    if weight.ndim != 4:
        raise CheckpointError(
            f"a conv weight must be 4-D [out, in, kh, kw]; got shape {list(weight.shape)}."
        )
    if layout == "oiwh":  # transformers' conversion script wrote HWIO transposed whole.
        return np.transpose(weight, (3, 2, 1, 0))
    return np.transpose(weight, (2, 3, 1, 0))  # OIHW -> HWIO


def convert_state_dict(
    architecture: str, tensors: Mapping[str, np.ndarray], *, conv_kernel_layout: str = "oihw"
) -> Tuple[Tree, Tree, List[str]]:
    """Our `(params, state)` from a transformers state dict, by rule.

    Args:
      architecture: a key of `ARCHITECTURES`.
      tensors: `{transformers name: array}`.
      conv_kernel_layout: 'oihw' or 'oiwh' (see the module docstring).

    Returns:
      `(params, state, unused)`: unused lists the tensors no rule places,
      as "unused NAME (found SHAPE)" lines.
    """
    _validation.check_choice("architecture", architecture, ARCHITECTURES)
    _validation.check_choice("conv_kernel_layout", conv_kernel_layout, CONV_KERNEL_LAYOUTS)
    rules = _rules(architecture)
    params: Tree = {}
    state: Tree = {}
    unused: List[str] = []
    counters: Dict[str, np.ndarray] = {}

    def put(tree: Tree, module: str, leaf: str, value: np.ndarray, source: str) -> None:
        slot = tree.setdefault(module, {})
        if leaf in slot:
            raise CheckpointError(
                f"two checkpoint tensors map to {module}/{leaf} (the second is {source})."
            )
        slot[leaf] = value

    for name in sorted(tensors):
        value = np.asarray(tensors[name])
        target = _match(rules, name)
        if target is None:
            unused.append(f"unused {name} (found {list(value.shape)})")
            continue
        module, kind, leaf = target
        if kind == "pos":
            put(params, module, "pos_embs", value, name)
        elif kind == "linear" and leaf == "weight":
            if value.ndim != 2:
                raise CheckpointError(
                    f"{name} must be a 2-D Linear weight; got shape {list(value.shape)}."
                )
            put(params, module, "w", value.T, name)
        elif kind == "conv" and leaf == "weight":
            put(params, module, "w", _conv_kernel(value, conv_kernel_layout), name)
        elif kind == "bn" and leaf in ("weight", "bias"):
            put(params, module, _LEAVES[kind][leaf], value.reshape(1, 1, 1, -1), name)
        elif kind == "bn" and leaf in ("running_mean", "running_var"):
            ema = f"{module}/~/{'mean' if leaf == 'running_mean' else 'var'}_ema"
            put(state, ema, "average", value.reshape(1, 1, 1, -1), name)
        elif kind == "bn":  # num_batches_tracked
            counters[module] = value
        else:
            put(params, module, _LEAVES[kind][leaf], value, name)

    # BatchNorm counters, also where the file has no num_batches_tracked (older torch).
    for ema in [m for m in state if m.endswith(("/~/mean_ema", "/~/var_ema"))]:
        bn = ema.rsplit("/~/", 1)[0]
        tracked = counters.get(bn, np.zeros((), np.int64))
        if tracked.size != 1 or tracked.dtype.kind not in "iu":
            raise CheckpointError(
                f"{bn}: num_batches_tracked must be one integer; "
                f"got {tracked.dtype} {list(tracked.shape)}."
            )
        # torch's running statistics are a warm EMA: counter at least _BN_WARM_COUNTER,
        # so that Haiku's debiased average hidden / (1 - decay**counter) is the average.
        counter = min(max(int(tracked.reshape(())), _BN_WARM_COUNTER), np.iinfo(np.int32).max)
        average = state[ema]["average"]
        state[ema]["hidden"] = (average * (1 - _BN_DECAY**counter)).astype(average.dtype)
        state[ema]["counter"] = np.asarray(counter, np.int32)
    for bn, value in counters.items():  # A counter with no running statistics to go with.
        if f"{bn}/~/mean_ema" not in state and f"{bn}/~/var_ema" not in state:
            unused.append(f"unused {bn} num_batches_tracked (found {list(value.shape)})")
    return params, state, unused


def _cast_like(want: Mapping, tree: Tree) -> Tree:
    """`tree` in the dtypes of `want` (float32 params): floats to floats, ints to ints."""
    out: Tree = {}
    for module, leaves in tree.items():
        out[module] = {}
        for leaf, value in leaves.items():
            spec = want.get(module, {}).get(leaf)
            if spec is not None and value.dtype != spec.dtype:
                if (
                    _is_float(value.dtype) != _is_float(np.dtype(spec.dtype))
                    or value.dtype.kind == "b"
                ):
                    raise CheckpointError(
                        f"{module}/{leaf} has dtype {value.dtype}; "
                        f"the model needs {np.dtype(spec.dtype)}."
                    )
                value = value.astype(spec.dtype)
            # Own, contiguous memory; np.array keeps 0-d counters 0-d.
            out[module][leaf] = np.array(value, order="C")
    return out


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or (ml_dtypes is not None and dtype == ml_dtypes.bfloat16)


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def read_config(path: "os.PathLike[str] | str") -> Dict[str, Any]:
    """The parsed `config.json` of a `save_pretrained` directory.

    Raises:
      FileNotFoundError: if there is none.
      CheckpointError: if it is too large or not a JSON object.
    """
    file = os.path.join(os.fspath(path), "config.json")
    with open(file, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"{file}: larger than {MAX_CONFIG_BYTES} bytes; not a Perceiver config."
        )
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: must hold a JSON object; got {type(config).__name__}.")
    return config


def read_safetensors(file: "os.PathLike[str] | str") -> Dict[str, np.ndarray]:
    """`{name: array}` of a `.safetensors` file, through the safetensors package (no torch).

    See `checkpoint.read_safetensors`: the header is bounded and its dtypes
    checked before safetensors reads the file.

    Raises:
      ImportError: without the `safetensors` package (`pip install 'perceiver-io-jax[hf]'`).
      CheckpointError: for a file safetensors cannot read, naming it.
    """
    return checkpoint.read_safetensors(file)[0]


# torch storage class -> element type, as torch pickles storages.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("f4"),
    "DoubleStorage": np.dtype("f8"),
    "HalfStorage": np.dtype("f2"),
    "LongStorage": np.dtype("i8"),
    "IntStorage": np.dtype("i4"),
    "ShortStorage": np.dtype("i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
if ml_dtypes is not None:
    _STORAGE_DTYPES["BFloat16Storage"] = np.dtype(ml_dtypes.bfloat16)
_MAX_NDIM = 32
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class _Storage:
    """One storage of a torch zip archive: a flat array read from `<archive>/data/<key>`."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


class _TorchZip:
    """Reads one `pytorch_model.bin` (torch's zip format) without torch or running its pickle."""

    def __init__(self, file: str, zf: zipfile.ZipFile, budget: List[int]):
        self.file, self.zf, self.budget = file, zf, budget
        names = [i.filename for i in zf.infolist()]
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise self.error(
                f"a torch archive holds one <name>/data.pkl; found {len(pickles)} "
                "(torch's legacy non-zip format is not supported)"
            )
        self.prefix = pickles[0][: -len("/data.pkl")]
        self.members = {i.filename: i for i in zf.infolist()}
        self.storages: Dict[str, _Storage] = {}
        self.byteorder = self._byteorder()

    @staticmethod
    def error(message: str) -> safe_unpickle.UnpicklingError:
        # Raised inside the pickle machine too, which passes only its own error through;
        # read_torch_bin adds the file name.
        return safe_unpickle.UnpicklingError(message)

    def read(self, name: str, size: int) -> bytes:
        """Member `name`, whose declared size must be exactly `size` bytes; read with that bound."""
        info = self.members.get(name)
        if info is None:
            raise self.error(f"the archive has no member {safe_unpickle.short(name)}")
        if info.file_size != size:
            raise self.error(f"member {name} declares {info.file_size} bytes; expected {size}")
        with self.zf.open(info) as f:
            data = f.read(size + 1)
        if len(data) != size:
            raise self.error(f"member {name} holds {len(data)} bytes; expected {size}")
        return data

    def _bounded(self, name: str, limit: int) -> bytes:
        info = self.members[name]
        if info.file_size > limit:
            raise self.error(
                f"member {name} declares {info.file_size} bytes; at most {limit} allowed"
            )
        return self.read(name, info.file_size)

    def _byteorder(self) -> str:
        name = f"{self.prefix}/byteorder"
        if name not in self.members:
            return "little"  # Archives before torch 1.x wrote none: always little-endian.
        order = self._bounded(name, 16)
        if order not in (b"little", b"big"):
            raise self.error(
                f"byteorder is {safe_unpickle.short(order)}; expected b'little' or b'big'"
            )
        return order.decode()

    def tensors(self) -> Dict[str, np.ndarray]:
        data = self._bounded(f"{self.prefix}/data.pkl", MAX_PICKLE_BYTES)
        reader = safe_unpickle.Reader(self._handlers(), persistent_load=self._persistent_load)
        obj = reader.load(data)
        if type(obj) is safe_unpickle.AttributedDict:
            obj = dict(obj)  # The tensors only; `_metadata` is dropped.
        if type(obj) is not dict:
            raise self.error(f"the pickle holds {safe_unpickle.short(obj)}; expected a state dict")
        for name, value in obj.items():
            if type(value) is not np.ndarray:
                raise self.error(
                    f"state dict entry {safe_unpickle.short(name)} is "
                    f"{safe_unpickle.short(value)}; expected a tensor"
                )
        return obj

    # -- the pickle's globals and persistent ids ----------------------------

    def _handlers(self) -> Dict[Tuple[str, str], Callable]:
        handlers: Dict[Tuple[str, str], Callable] = {
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("collections", "OrderedDict"): _ordered_dict,
        }
        for name in _STORAGE_DTYPES:
            handlers[("torch", name)] = _argument_only(f"torch.{name}")
        return handlers

    def _persistent_load(self, pid: Any) -> _Storage:
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
            raise safe_unpickle.UnpicklingError(
                f"a persistent id is {safe_unpickle.short(pid)}; "
                "expected ('storage', class, key, location, numel)"
            )
        _, cls, key, _location, numel = pid
        if (
            not isinstance(cls, safe_unpickle.Global)
            or cls.module != "torch"
            or cls.name not in _STORAGE_DTYPES
        ):
            raise safe_unpickle.UnpicklingError(
                f"a storage has class {safe_unpickle.short(cls)}; refused"
            )
        if type(key) is not str or not _KEY.fullmatch(key):
            raise safe_unpickle.UnpicklingError(
                f"a storage key is {safe_unpickle.short(key)}; refused"
            )
        if type(numel) is not int or numel < 0:
            raise safe_unpickle.UnpicklingError(
                f"storage {key} has {safe_unpickle.short(numel)} elements"
            )
        dtype = _STORAGE_DTYPES[cls.name]
        if key in self.storages:
            cached = self.storages[key].array
            if cached.dtype != dtype or cached.size != numel:
                raise safe_unpickle.UnpicklingError(
                    f"storage {key} is named with two types or sizes"
                )
            return self.storages[key]
        nbytes = numel * dtype.itemsize
        if nbytes > self.budget[0]:
            raise safe_unpickle.UnpicklingError(
                f"storage {key} needs {nbytes} bytes, past the "
                f"{MAX_CHECKPOINT_BYTES}-byte limit of one checkpoint"
            )
        raw = self.read(f"{self.prefix}/data/{key}", nbytes)  # Exact size, bounded read.
        self.budget[0] -= nbytes
        array = np.frombuffer(bytearray(raw), dtype=dtype, count=numel)  # Owns its bytes.
        if self.byteorder != sys.byteorder and dtype.itemsize > 1:
            array.byteswap(inplace=True)
        self.storages[key] = _Storage(array)
        return self.storages[key]

    def _rebuild_tensor(self, args: tuple) -> np.ndarray:
        if len(args) not in (6, 7):
            raise safe_unpickle.UnpicklingError(
                f"_rebuild_tensor_v2 takes 6 or 7 arguments; got {len(args)}"
            )
        storage, offset, size, stride, requires_grad, hooks = args[:6]
        metadata = args[6] if len(args) == 7 else None
        if not isinstance(storage, _Storage):
            raise safe_unpickle.UnpicklingError(
                f"a tensor's storage is {safe_unpickle.short(storage)}"
            )
        if type(requires_grad) is not bool or hooks != {} or metadata not in (None, {}):
            raise safe_unpickle.UnpicklingError(
                "a tensor carries gradient hooks or metadata; refused"
            )
        return _strided(storage.array, offset, size, stride)


def _strided(flat: np.ndarray, offset: Any, size: Any, stride: Any) -> np.ndarray:
    """A copy of the strided view `flat[offset + sum(i_k * stride_k)]`, checked inside `flat`."""

    def ints(value, what):
        if (
            type(value) is not tuple
            or len(value) > _MAX_NDIM
            or any(type(v) is not int or v < 0 for v in value)
        ):
            raise safe_unpickle.UnpicklingError(
                f"a tensor's {what} is {safe_unpickle.short(value)}; refused"
            )
        return value

    size, stride = ints(size, "size"), ints(stride, "stride")
    if len(size) != len(stride):
        raise safe_unpickle.UnpicklingError(f"a tensor has size {size} but stride {stride}")
    if type(offset) is not int or not 0 <= offset <= flat.size:
        raise safe_unpickle.UnpicklingError(
            f"a tensor's offset {safe_unpickle.short(offset)} lies outside "
            f"its storage of {flat.size}"
        )
    if 0 in size:
        return np.zeros(size, flat.dtype)
    extent = (
        offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    )  # Python ints: no overflow.
    if extent > flat.size:
        raise safe_unpickle.UnpicklingError(
            f"a tensor of size {size}, stride {stride} at offset {offset} "
            f"reaches element {extent - 1} "
            f"of a storage of {flat.size}"
        )
    base = flat[offset:extent]
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=tuple(s * flat.itemsize for s in stride), writeable=False
    )
    return np.array(view, copy=True)


def _ordered_dict(args: tuple) -> dict:
    # torch.save(model.state_dict()) sets the OrderedDict's `_metadata` (module
    # versions) by BUILD: an AttributedDict keeps it apart from the tensors.
    if args == ():
        return safe_unpickle.AttributedDict()
    if (
        len(args) == 1
        and type(args[0]) in (list, tuple)
        and all(type(p) in (list, tuple) and len(p) == 2 and type(p[0]) is str for p in args[0])
    ):
        return safe_unpickle.AttributedDict(args[0])
    raise safe_unpickle.UnpicklingError(
        "OrderedDict is built from something other than (str, value) pairs"
    )


def _argument_only(name: str) -> Callable:
    def handler(args):
        raise safe_unpickle.UnpicklingError(
            f"the pickle calls {name}, which may only be an argument"
        )

    return handler


def read_torch_bin(
    file: "os.PathLike[str] | str", _budget: Optional[List[int]] = None
) -> Dict[str, np.ndarray]:
    """`{name: array}` of a torch zip checkpoint (`pytorch_model.bin`), without torch.

    Only `_rebuild_tensor_v2` tensors on plain storages, `OrderedDict` and
    dicts are built; each storage member's declared size must equal what
    its tensors need, and each tensor must lie inside its storage.

    Raises:
      CheckpointError: naming the file, for anything else (a non-zip file,
        other globals, a missing or mis-sized member, a tensor past its
        storage, members over the size limits).
    """
    file = os.fspath(file)
    budget = [MAX_CHECKPOINT_BYTES] if _budget is None else _budget
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no checkpoint file {file}")
    if not zipfile.is_zipfile(file):
        raise CheckpointError(
            f"{file}: not a zip archive; only torch's zip checkpoints (torch >= 1.6) are read"
        )
    try:
        with zipfile.ZipFile(file) as zf:
            return _TorchZip(file, zf, budget).tensors()
    except safe_unpickle.UnpicklingError as e:
        raise CheckpointError(f"{file}: {e}") from None
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        RuntimeError,
        EOFError,
        OSError,
    ) as e:
        # Damaged members (CRC, truncation), encryption, unknown compression.
        raise CheckpointError(f"{file}: damaged zip archive ({type(e).__name__}: {e})") from None


def read_weights(
    path: "os.PathLike[str] | str", weights_name: Optional[str] = None
) -> Dict[str, np.ndarray]:
    """`{name: array}` of a `save_pretrained` directory's weights.

    Args:
      path: the directory.
      weights_name: one of `WEIGHTS_NAMES`; by default the first present
        (safetensors before pytorch_model.bin, as transformers prefers).

    Raises:
      FileNotFoundError: if there is no weights file.
      CheckpointError: for a file that cannot be read, naming it.
    """
    path = os.fspath(path)
    if weights_name is None:
        present = [n for n in WEIGHTS_NAMES if os.path.isfile(os.path.join(path, n))]
        if not present:
            raise FileNotFoundError(f"{path} holds none of {', '.join(WEIGHTS_NAMES)}.")
        weights_name = present[0]
    elif weights_name not in WEIGHTS_NAMES:
        raise ValueError(
            f"weights_name must be one of {', '.join(WEIGHTS_NAMES)}; got {weights_name!r}."
        )
    file = os.path.join(path, weights_name)
    safetensors = weights_name.startswith("model.safetensors")
    budget = [MAX_CHECKPOINT_BYTES]  # Shared by the shards of one checkpoint.

    def read_one(file):
        return read_safetensors(file) if safetensors else read_torch_bin(file, budget)

    if not weights_name.endswith(".index.json"):
        return read_one(file)
    # A sharded checkpoint: the index maps every tensor to its shard.
    limit = 16 * MAX_CONFIG_BYTES
    with open(file, "rb") as f:
        raw = f.read(limit + 1)
    try:
        weight_map = json.loads(raw.decode("utf-8"))["weight_map"] if len(raw) <= limit else None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        weight_map = None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{file}: not a checkpoint index (JSON of at most {limit} bytes with a 'weight_map')."
        )
    shards = sorted(set(map(str, weight_map.values())))
    tensors: Dict[str, np.ndarray] = {}
    for shard in shards:
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{file}: shard {shard!r} is not a file name in the directory.")
        part = read_one(os.path.join(path, shard))
        for name, value in part.items():
            if name in tensors:
                raise CheckpointError(f"{file}: tensor {name} appears in two shards.")
            tensors[name] = value
    if set(tensors) != set(weight_map):
        missing = sorted(set(weight_map) - set(tensors))[:5]
        extra = sorted(set(tensors) - set(weight_map))[:5]
        raise CheckpointError(
            f"{file}: shards disagree with the index (missing {missing}, unlisted {extra})."
        )
    return tensors


def from_hf(
    path: "os.PathLike[str] | str",
    *,
    weights_name: Optional[str] = None,
    conv_kernel_layout: str = "oihw",
) -> Tuple[hk.TransformedWithState, Tree, Tree]:
    """Our model and trees for a transformers Perceiver `save_pretrained` directory.

    Tensors are read as they are, except a learned classifier whose config
    has `FOLDED_QUERY_FIELD` (written by `to_hf`): its decoder query is added
    back to the output bias, so that ours computes what transformers does.

    Args:
      path: the directory (`config.json` and the weights).
      weights_name: which weights file to read (see `read_weights`).
      conv_kernel_layout: 'oihw' (default: the conv kernel as torch applies
        it) or 'oiwh' (undo transformers' conversion script's transpose,
        recovering DeepMind's kernel); see the module docstring.

    Returns:
      `(model, params, state)`, ready for `model.apply(params, state, None, ...)`.

    Raises:
      FileNotFoundError: for a missing config.json or weights file.
      ValueError: naming the config field and value our factories cannot express.
      CheckpointError: (a ValueError) for an unreadable or hostile file, or
        tensors that do not fit the model, with every difference listed.
    """
    _, factory, kwargs, params, state = _read_hf(
        path, weights_name=weights_name, conv_kernel_layout=conv_kernel_layout
    )
    return build(factory, kwargs), params, state


def _read_hf(
    path: "os.PathLike[str] | str", *, weights_name: Optional[str], conv_kernel_layout: str
) -> Tuple[Dict[str, Any], str, Dict[str, Any], Tree, Tree]:
    """`(config, factory, kwargs, params, state)` of a save_pretrained directory (see `from_hf`)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"path must be a save_pretrained directory; {path} is not a directory."
        )
    _validation.check_choice("conv_kernel_layout", conv_kernel_layout, CONV_KERNEL_LAYOUTS)
    config = read_config(path)
    factory, kwargs = hf_factory(config)
    tensors = read_weights(path, weights_name)
    folded = config.get(FOLDED_QUERY_FIELD, False)
    if folded not in (True, False):
        raise _refuse(FOLDED_QUERY_FIELD, folded, "true or false")
    if folded and kwargs.get("variant") == "learned_position_encoding":
        tensors = _fold_decoder_query(tensors, +1)  # Written by to_hf: undo its fold.
    params, state, unused = convert_state_dict(
        config["architectures"][0], tensors, conv_kernel_layout=conv_kernel_layout
    )
    described = loading.describe(factory, kwargs)
    if unused:
        raise checkpoint.differences_error(
            f"{path}: {len(unused)} checkpoint tensors have no place in {described}", unused
        )
    expected = models.parameter_shapes(factory, **kwargs)
    params, state = _cast_like(expected[0], params), _cast_like(expected[1], state)
    what = (
        f"{path}: the params converted for {described}",
        f"{path}: the state converted for {described}",
    )
    loading.check_fits(factory, params, state, kwargs, what=what, expected=expected)
    return config, factory, kwargs, params, state


# ---------------------------------------------------------------------------
# Writing: our checkpoints -> transformers' save_pretrained directories
# ---------------------------------------------------------------------------

# Our factory (and imagenet variant) -> transformers' class.
HF_ARCHITECTURES: Dict[Tuple[str, Optional[str]], str] = {v: k for k, v in ARCHITECTURES.items()}

# config.json field `to_hf` sets on a learned classifier whose decoder query it
# folded into the output bias; `from_hf` then unfolds it.
FOLDED_QUERY_FIELD = "perceiver_decoder_query_folded"
_QUERY = "perceiver.decoder.decoder.output_position_encodings.position_embeddings"
_QUERY_BIAS = "perceiver.decoder.decoder.decoding_cross_attention.attention.output.dense.bias"

# The tanh GELU in transformers' names: its outputs then use our activation.
_HF_TANH_GELU = "gelu_new"
HF_DTYPES = ("float32", "float16", "bfloat16")

# Sizes transformers fixes in code: (factory, variant) -> {size: (its value, why)}.
_HF_FIXED_SIZES: Dict[Tuple[str, Optional[str]], Dict[str, Tuple[Any, str]]] = {
    ("masked_language_model", None): {
        "num_heads": (
            _HF_MLM_DECODER_HEADS,
            "the decoder's heads; our model has one head count",
        ),
        "qk_channels": (
            _HF_MLM_DECODER_QK,
            "the decoder's 8 * 32 query-key channels; our model has one size",
        ),
    },
    ("text_classifier", None): {},
    ("imagenet_classifier", "learned_position_encoding"): {
        "learned_pos_channels": (
            _HF_LEARNED_CHANNELS,
            "the 1x1 conv's and the position table's channels",
        ),
    },
    ("imagenet_classifier", "fourier_position_encoding"): {
        "image_size": (_HF_IMAGE_SIZE, "the Fourier features' 224x224 grid"),
        "num_bands": (_HF_IMAGE_BANDS, "the Fourier features' bands"),
    },
    ("imagenet_classifier", "conv_preprocessing"): {
        "image_size": (_HF_IMAGE_SIZE, "the Fourier features' 56x56 grid after the conv stem"),
        "num_bands": (_HF_IMAGE_BANDS, "the Fourier features' bands"),
    },
    ("optical_flow", None): {
        "num_bands": (_HF_FLOW_BANDS, "the Fourier features' bands"),
    },
    ("video_autoencoder", None): {
        "image_bands": (_HF_VIDEO_IMAGE_BANDS, "the image Fourier features' bands"),
        "audio_bands": (_HF_VIDEO_AUDIO_BANDS, "the audio Fourier features' bands"),
    },
}
# Sizes a variant's model does not use (its parameter tree and outputs ignore them).
_UNUSED_SIZES = {
    "learned_position_encoding": ("num_bands",),
    "fourier_position_encoding": ("learned_pos_channels",),
    "conv_preprocessing": ("learned_pos_channels",),
}


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
        conv-stem classifier's padding; see the module docstring).
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
    fixed = _HF_FIXED_SIZES[(factory, variant)]
    wrong = [name for name, (value, _) in fixed.items() if sizes[name] != value]
    if wrong:
        raise ValueError(
            f"transformers' {arch} cannot hold this model: its code fixes "
            + "; ".join(f"{n}={fixed[n][0]!r} ({fixed[n][1]})" for n in wrong)
            + "; this model has "
            + ", ".join(f"{n}={sizes[n]!r}" for n in wrong)
            + f". Only {factory} models of those sizes convert, as the published ones; no "
            f"tiny recipe's {factory} (--tiny) can."
        )
    if variant == "conv_preprocessing" and not allow_deviations:
        raise ValueError(
            f"transformers' {arch} pads its 7x7/2 conv (3, 3) and max-pools unpadded "
            "(55x55 features) where ours pads as TF SAME (56x56), so its outputs differ on "
            "every input (see perceiver.convert's docstring for how much); pass "
            "allow_deviations=True (perceiver convert --allow-deviations) to write it anyway."
        )
    config: Dict[str, Any] = {
        "architectures": [arch],
        "model_type": "perceiver",
        "hidden_act": _HF_TANH_GELU,
        "attention_probs_dropout_prob": 0.0,  # The reference trains these without dropout.
        "cross_attention_shape_for_attention": "kv",
        "cross_attention_widening_factor": 1,
        "self_attention_widening_factor": 1,
        "use_query_residual": True,
        "num_blocks": 1,
        "num_cross_attention_heads": 1,
        "qk_channels": None,
        "v_channels": None,
    }
    num_classes = None
    if factory in ("masked_language_model", "text_classifier"):
        # The text classifier is the MLM's encoder with a classification head.
        if factory == "text_classifier":
            num_classes = sizes["num_classes"]
        config.update(
            num_latents=sizes["num_latents"],
            d_latents=sizes["num_latent_channels"],
            d_model=sizes["d_model"],
            num_self_attends_per_block=sizes["num_self_attends"],
            num_self_attention_heads=sizes["num_heads"],
            num_cross_attention_heads=sizes["num_heads"],
            qk_channels=sizes["qk_channels"],
            v_channels=sizes["num_latent_channels"],
            vocab_size=262,
            max_position_embeddings=sizes["max_seq_len"],
        )
    elif factory == "imagenet_classifier":
        num_classes = sizes["num_classes"]
        config.update(
            num_latents=sizes["num_latents"],
            d_latents=sizes["num_latent_channels"],
            num_blocks=sizes["num_blocks"],
            num_self_attends_per_block=sizes["num_self_attends_per_block"],
            num_self_attention_heads=sizes["num_self_attend_heads"],
        )
        if variant == "learned_position_encoding":
            config["image_size"] = sizes["image_size"]
            if fold_query_residual:
                config[FOLDED_QUERY_FIELD] = True
    elif factory == "optical_flow":
        config.update(
            num_latents=sizes["num_latents"],
            d_latents=sizes["num_latent_channels"],
            num_self_attends_per_block=sizes["num_self_attends"],
            num_self_attention_heads=sizes["num_self_attend_heads"],
            train_size=list(sizes["image_shape"]),
        )
    else:
        num_classes = sizes["num_classes"]
        size = sizes["image_size"]
        config.update(
            num_latents=sizes["num_latents"],
            d_latents=sizes["num_latent_channels"],
            num_self_attends_per_block=sizes["num_self_attends"],
            num_self_attention_heads=sizes["num_heads"],
            num_frames=sizes["num_frames"],
            image_size=size // 4,  # transformers' is the side of the 4x4 patch grid.
            output_shape=[1, sizes["num_frames"], size, size],
            audio_samples_per_frame=sizes["audio_samples_per_frame"],
            samples_per_patch=sizes["samples_per_patch"],
            output_num_channels=sizes["decoder_channels"],
            _label_trainable_num_channels=sizes["label_query_channels"],
        )
    if num_classes is not None:
        names = [f"LABEL_{i}" for i in range(num_classes)] if labels is None else list(labels)
        if len(names) != num_classes or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"labels must be {num_classes} str, one per class; got {len(names)} values."
            )
        config["id2label"] = {str(i): n for i, n in enumerate(names)}
        config["label2id"] = {n: i for i, n in enumerate(names)}
    elif labels is not None:
        raise ValueError(f"labels: {factory} has no classes to name.")
    # The config must read back as this very model: whatever transformers
    # cannot hold has been refused above, so a difference here is a bug.
    back_factory, back = hf_factory(config)
    back = models.factory_sizes(back_factory, **back)
    unused = _UNUSED_SIZES.get(variant, ())
    lost = sorted(k for k in sizes if k not in unused and sizes[k] != back.get(k))
    if back_factory != factory or lost:  # pragma: no cover - a mapping bug.
        raise ValueError(f"transformers' {arch} cannot express sizes {', '.join(lost)}.")
    return config


def _placements(
    architecture: str, num_layers: int
) -> Dict[Tuple[str, str, str], Tuple[str, str, str]]:
    """`(tree, our module, our leaf) -> (transformers name, kind, its leaf)`, by the reading rules."""
    rules = _rules(architecture)
    placed: Dict[Tuple[str, str, str], Tuple[str, str, str]] = {}
    for name in _hf_names(rules, num_layers):
        target = _match(rules, name)
        if target is None:
            continue
        module, kind, leaf = target
        if kind == "pos":
            ours = ("params", module, "pos_embs")
        elif kind == "bn" and leaf in ("running_mean", "running_var"):
            ours = ("state", f"{module}/~/{leaf[len('running_'):]}_ema", "average")
        elif kind == "bn" and leaf == "num_batches_tracked":
            ours = ("state", f"{module}/~/mean_ema", "counter")
        else:
            ours = ("params", module, _LEAVES[kind][leaf])
        placed.setdefault(ours, (name, kind, leaf))
    return placed


_EMAS = ("/~/mean_ema", "/~/var_ema")
_DERIVED = ("hidden", "counter")


def to_hf_state_dict(
    architecture: str,
    params: Mapping,
    state: Optional[Mapping] = None,
    *,
    num_layers: int,
    conv_kernel_layout: str = "oihw",
) -> Dict[str, np.ndarray]:
    """`{transformers name: array}` of our trees: the inverse of `convert_state_dict`.

    Linear `w [in, out]` -> `weight [out, in]`, conv HWIO -> OIHW (or OIWH,
    see the module docstring), LayerNorm `scale/offset` -> `weight/bias`,
    BatchNorm `mean_ema`/`var_ema` averages -> `running_mean/var` and the
    counter -> `num_batches_tracked` (Haiku's `hidden` and the second counter
    are derived, and dropped).

    Args:
      architecture: a key of `ARCHITECTURES`.
      params, state: our trees `{module: {name: array}}`.
      num_layers: the self-attention layers per block (`{i}` in the names).
      conv_kernel_layout: 'oihw' or 'oiwh'.

    Raises:
      CheckpointError: listing every leaf with no place in transformers' model.
    """
    _validation.check_choice("architecture", architecture, ARCHITECTURES)
    _validation.check_choice("conv_kernel_layout", conv_kernel_layout, CONV_KERNEL_LAYOUTS)
    placed = _placements(architecture, num_layers)
    tensors: Dict[str, np.ndarray] = {}
    homeless = []
    for tree_name, tree in (("params", params), ("state", state or {})):
        for module, leaves in tree.items():
            for leaf, value in leaves.items():
                value = np.asarray(value)
                where = placed.get((tree_name, module, leaf))
                if where is None:
                    # Haiku's EMA `hidden`, and the second counter, follow from what is written.
                    if tree_name == "state" and module.endswith(_EMAS) and leaf in _DERIVED:
                        continue
                    homeless.append(
                        f"unexpected {tree_name}/{module}/{leaf} (found {list(value.shape)})"
                    )
                    continue
                name, kind, hf_leaf = where
                if kind == "linear" and hf_leaf == "weight":
                    value = value.T
                elif kind == "conv" and hf_leaf == "weight":
                    # HWIO -> OIHW undoes the reading's transpose; OIWH's reversal is its own.
                    value = np.transpose(
                        value, (3, 2, 1, 0) if conv_kernel_layout == "oiwh" else (3, 2, 0, 1)
                    )
                elif kind == "bn" and hf_leaf == "num_batches_tracked":
                    value = np.asarray(int(value.reshape(())), np.int64)
                elif kind == "bn":
                    value = value.reshape(-1)
                tensors[name] = np.asarray(value, order="C")  # Not ascontiguousarray: keeps 0-d.
    if homeless:
        raise checkpoint.differences_error(
            f"{len(homeless)} leaves have no place in transformers' {architecture}", homeless
        )
    return tensors


def _fold_decoder_query(tensors: Mapping[str, np.ndarray], sign: int) -> Dict[str, np.ndarray]:
    """The learned classifier's tensors, its decoder query added to (+1) or taken from (-1) a bias.

    transformers adds the decoder's query to its cross-attention output,
    which the reference does not. That query is one learned vector, the
    same for every input, so `bias - query` makes transformers compute the
    reference's function exactly, and `bias + query` the converse.
    """
    if _QUERY not in tensors or _QUERY_BIAS not in tensors:
        raise CheckpointError(f"a learned classifier needs {_QUERY} and {_QUERY_BIAS}.")
    out = dict(tensors)
    bias, query = tensors[_QUERY_BIAS], tensors[_QUERY]
    if query.shape != (1,) + bias.shape:
        raise CheckpointError(
            f"{_QUERY} has shape {list(query.shape)}; expected [1, {bias.shape[0]}] "
            f"(one query, as wide as {_QUERY_BIAS})."
        )
    folded = bias.astype(np.float32) + sign * query.astype(np.float32)[0]
    out[_QUERY_BIAS] = folded.astype(bias.dtype)
    return out


def _hf_dtype(dtype: str) -> np.dtype:
    _validation.check_choice("dtype", dtype, HF_DTYPES)
    if dtype == "bfloat16":
        if ml_dtypes is None:  # pragma: no cover - ships with jax.
            raise ImportError("dtype='bfloat16' needs ml_dtypes (pip install ml_dtypes).")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def to_hf(
    params: Mapping,
    state: Optional[Mapping],
    factory: Any,
    sizes: Optional[Mapping[str, Any]],
    out_dir: "os.PathLike[str] | str",
    *,
    labels: Optional[Sequence[str]] = None,
    dtype: Optional[str] = None,
    conv_kernel_layout: str = "oihw",
    allow_deviations: bool = False,
    fold_query_residual: bool = True,
    description: Optional[Mapping[str, Any]] = None,
) -> str:
    """Writes one of our models as a directory transformers' `from_pretrained` loads.

        model, params, state = models.pretrained("imagenet_fourier")
        to_hf(params, state, "imagenet_classifier",
              {"variant": "fourier_position_encoding"}, "hf_fourier")
        # transformers.PerceiverForImageClassificationFourier.from_pretrained("hf_fourier")

    Writes `config.json` (see `hf_config`), `model.safetensors` (with the
    safetensors package's numpy API: no torch) and what transformers'
    pipelines read beside them: an image classifier's
    `preprocessor_config.json` (see `hf_preprocessor_config`), a language
    model's tokenizer files (see `hf_tokenizer_files`); all or none of them.
    `pipeline("image-classification", model=out_dir)` and
    `pipeline("fill-mask", model=out_dir)` then load it. transformers
    then computes our function: the tanh GELU is named "gelu_new", and the
    learned classifier's decoder query, which transformers adds to its
    output, is taken from the output bias (`fold_query_residual`; the config
    says so and `from_hf` undoes it). What it still computes differently is
    in the module docstring.

    Args:
      params, state: our trees `{module: {name: array}}` (numpy or jax;
        state None or {} for models without BatchNorm).
      factory: a `perceiver.models` factory name or function.
      sizes: its keyword arguments, as in a checkpoint description's
        `sizes` (imagenet_classifier's include `variant`).
      out_dir: the directory (made if missing; files of these names in it
        are replaced; one holding another model's files is refused).
      labels: class names for `id2label` (see `hf_config`); default: the
        description's.
      dtype: the weights' dtype in the file: 'float32' (None), 'float16' or
        'bfloat16'.
      conv_kernel_layout: 'oihw' (default: torch applies the kernel as ours
        does) or 'oiwh' (transposed as transformers' conversion script wrote
        DeepMind's; see the module docstring).
      allow_deviations: write the conv-stem classifier, which transformers
        pads differently, anyway.
      fold_query_residual: for the learned classifier, fold the decoder
        query into the output bias (default); False writes the tensors as
        they are (transformers' outputs then differ, as for checkpoints its
        own script converted).
      description: the checkpoint's description (`checkpoint.read_description`):
        its `task` gives the image preprocessing, and config.json keeps it
        whole (`DESCRIPTION_FIELD`), so that `convert` back restores it
        while model.safetensors is unchanged.

    Returns:
      `out_dir`.

    Raises:
      ValueError: for a model transformers cannot express, naming the size
        and why, a deviation not allowed, or preprocessing an image
        processor cannot hold.
      FileExistsError: if out_dir is a file, or holds another model's files.
      CheckpointError: if the trees do not fit the model, listing the
        differences.
      ImportError: without the safetensors package (`pip install 'perceiver-io-jax[hf]'`).
      OSError: if the files cannot be written.
    """
    _validation.check_choice("conv_kernel_layout", conv_kernel_layout, CONV_KERNEL_LAYOUTS)
    cast = _hf_dtype("float32" if dtype is None else dtype)
    factory, sizes = _factory_and_sizes(factory, sizes)
    if labels is None and description and factory in _CLASSIFIERS:
        labels = description.get("labels")
    config = hf_config(
        factory,
        sizes,
        labels=labels,
        allow_deviations=allow_deviations,
        fold_query_residual=fold_query_residual,
    )
    arch = config["architectures"][0]
    # As the description file would hold it (JSON values, with its format).
    description = (
        json.loads(checkpoint._description_text(description, os.path.join(os.fspath(out_dir), "x")))
        if description
        else {}
    )
    if description.get("factory", factory) != factory:
        raise ValueError(
            f"description is of a {description['factory']} model; the factory given is {factory}."
        )
    pipeline_files = _pipeline_files(factory, sizes, description)
    out_dir = os.fspath(out_dir)
    _check_out_dir(out_dir, ("config.json", "model.safetensors", *pipeline_files))
    params, state = _numpy_tree(params, "params"), _numpy_tree(state or {}, "state")
    expected = models.parameter_shapes(factory, **sizes)
    params, state = _cast_like(expected[0], params), _cast_like(expected[1], state)
    described = loading.describe(factory, sizes)
    what = (f"the params given for {described}", f"the state given for {described}")
    loading.check_fits(factory, params, state, sizes, what=what, expected=expected)
    tensors = to_hf_state_dict(
        arch,
        params,
        state,
        num_layers=config["num_self_attends_per_block"],
        conv_kernel_layout=conv_kernel_layout,
    )
    if config.get(FOLDED_QUERY_FIELD):
        tensors = _fold_decoder_query(tensors, -1)
    tensors = {n: v.astype(cast) if _is_float(v.dtype) else v for n, v in tensors.items()}
    config["torch_dtype"] = cast.name
    st_numpy = checkpoint._safetensors_numpy(os.path.join(out_dir, "model.safetensors"))
    # transformers refuses safetensors files whose metadata has no "format" it knows.
    data = st_numpy.save(tensors, metadata={"format": "pt"})
    if description:
        # The labels are id2label's already (a 21k-class list twice would not fit).
        kept = {k: v for k, v in description.items() if k != "labels"}
        field = {"description": kept, "weights_sha256": hashlib.sha256(data).hexdigest()}
        if len(json.dumps(dict(config, **{DESCRIPTION_FIELD: field}))) < MAX_CONFIG_BYTES // 2:
            config[DESCRIPTION_FIELD] = field
    files = {"model.safetensors": data}
    for name, value in {"config.json": config, **pipeline_files}.items():
        files[name] = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
    _write_files(out_dir, files)
    return out_dir


def _numpy_tree(tree: Any, what: str) -> Tree:
    if not isinstance(tree, Mapping) or not all(isinstance(v, Mapping) for v in tree.values()):
        raise TypeError(
            f"{what} must be a mapping {{module: {{name: array}}}}; got {type(tree).__name__}."
        )
    return {
        str(m): {str(n): np.asarray(v) for n, v in leaves.items()} for m, leaves in tree.items()
    }


# ---------------------------------------------------------------------------
# What transformers' pipelines read beside the model, and our description
# ---------------------------------------------------------------------------

PREPROCESSOR_FILE = "preprocessor_config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# Our factories whose outputs are classes, named by id2label.
_CLASSIFIERS = ("imagenet_classifier", "video_autoencoder", "text_classifier")
# Files of a save_pretrained directory that describe one model: a folder
# holding one that a conversion does not write would mix two models.
_MODEL_FILES = (
    ("config.json",) + WEIGHTS_NAMES + (PREPROCESSOR_FILE,) + TOKENIZER_FILES
    + ("tokenizer.json", "added_tokens.json")
)
# config.json field holding our checkpoint's description and the sha256 of
# the model.safetensors it describes, so that converting back restores it.
DESCRIPTION_FIELD = "perceiver_io_jax_description"

_PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC: transformers' image processors' number for it.
_IMAGE_PROCESSORS = ("PerceiverImageProcessor", "PerceiverImageProcessorFast", "PerceiverFeatureExtractor")
# transformers' PerceiverImageProcessor defaults, for a file that omits a field.
_PROCESSOR_DEFAULTS: Dict[str, Any] = {
    "do_center_crop": True,
    "crop_size": {"height": 256, "width": 256},
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": _PIL_BICUBIC,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
# Token ids 0..5 of our BytesTokenizer, as PerceiverTokenizer names them (bytes follow from 6).
_SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]")
_SPECIAL_TOKEN_KEYS = ("pad_token", "bos_token", "eos_token", "mask_token", "cls_token", "sep_token")


def _imagenet():
    from perceiver.tasks import imagenet  # The task's preprocessing constants.

    return imagenet


def _imagenet_scales() -> Tuple[List[float], List[float]]:
    """ImageNet's mean and std on transformers' 0..1 scale (after its 1/255 rescale)."""
    imagenet = _imagenet()
    return (
        [round(m / 255, 10) for m in imagenet.MEAN_RGB],
        [round(s / 255, 10) for s in imagenet.STDDEV_RGB],
    )


def hf_preprocessor_config(
    sizes: Mapping[str, Any], task: Optional[Mapping[str, Any]] = None
) -> Dict[str, Any]:
    """transformers' `preprocessor_config.json` (PerceiverImageProcessor) for our image classifier.

    transformers centre-crops a square of `size / crop_size` of the shorter
    side (our `crop_fraction`), resizes it to `size` (our `image_size`) with
    PIL's bicubic filter, and normalises with ImageNet's mean and std, as
    `perceiver.tasks.imagenet` does. Its crop starts at most one pixel
    before ours, and PIL's bicubic is not TensorFlow's (ours): inputs differ
    slightly, top classes agree. It has no least crop (`min_crop_size`):
    photos whose shorter side is under `min_crop_size / crop_fraction` are
    cropped tighter there.

    Args:
      sizes: the classifier's sizes (`image_size`).
      task: the description's task options (`crop_fraction`, `resize`,
        `mean_rgb`, `stddev_rgb`, `image_size`); missing ones take
        `ImageClassifier`'s defaults.

    Raises:
      ValueError: for options an image processor cannot hold (a resize other
        than bicubic, another normalisation), naming them.
    """
    imagenet = _imagenet()
    task = dict(task or {})
    size = sizes["image_size"]
    fraction = task.get("crop_fraction", imagenet.CROP_FRACTION)
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 < fraction <= 1
    ):
        raise ValueError(f"task crop_fraction must be a number in (0, 1]; got {fraction!r}.")
    if task.get("image_size", size) != size:
        raise ValueError(
            f"task image_size={task['image_size']!r} is not the model's image_size={size}."
        )
    if task.get("resize", "bicubic") != "bicubic":
        raise ValueError(
            f"task resize={task['resize']!r} cannot be held by transformers' image processor: "
            "expected 'bicubic'."
        )
    for key, ours in (("mean_rgb", imagenet.MEAN_RGB), ("stddev_rgb", imagenet.STDDEV_RGB)):
        given = task.get(key, ours)
        try:
            same = np.shape(given) == (3,) and np.allclose(np.asarray(given, float), ours, rtol=1e-6)
        except (TypeError, ValueError):
            same = False
        if not same:
            raise ValueError(f"task {key}={given!r}: expected ImageNet's {list(ours)}.")
    crop: Any = size / fraction
    if size / round(crop) == fraction:  # A whole number when one gives the same fraction.
        crop = round(crop)
    mean, std = _imagenet_scales()
    return {
        "image_processor_type": "PerceiverImageProcessor",
        "do_center_crop": True,
        "crop_size": {"height": crop, "width": crop},
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": _PIL_BICUBIC,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
    }


def hf_tokenizer_files(max_seq_len: int) -> Dict[str, Dict[str, Any]]:
    """`{file name: JSON}` of transformers' PerceiverTokenizer, our BytesTokenizer's twin.

    Both map byte b to token b + 6 after the same six special tokens.
    PerceiverTokenizer adds [CLS] before a text and [SEP] after it, which
    ours does not: call transformers' pipelines with
    `tokenizer_kwargs={"add_special_tokens": False}` for our inputs.
    """
    spelled = dict(lstrip=False, normalized=True, rstrip=False, single_word=False)
    special = dict(zip(_SPECIAL_TOKEN_KEYS, _SPECIAL_TOKENS))
    config = {
        "tokenizer_class": "PerceiverTokenizer",
        "model_max_length": int(max_seq_len),
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): dict(content=token, special=True, **spelled)
            for i, token in enumerate(_SPECIAL_TOKENS)
        },
        **special,
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def _pipeline_files(
    factory: str, sizes: Mapping[str, Any], description: Mapping[str, Any]
) -> Dict[str, Dict[str, Any]]:
    """`{file name: JSON}` transformers' pipelines read beside the model (none for flow, video)."""
    if factory == "imagenet_classifier":
        return {PREPROCESSOR_FILE: hf_preprocessor_config(sizes, description.get("task"))}
    if factory in ("masked_language_model", "text_classifier"):
        return hf_tokenizer_files(sizes["max_seq_len"])
    return {}


def _read_json_file(file: str) -> Optional[Dict[str, Any]]:
    """A small JSON object file, or None when absent."""
    if not os.path.isfile(file):
        return None
    with open(file, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{file}: larger than {MAX_CONFIG_BYTES} bytes; not a transformers file.")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}).") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: must hold a JSON object; got {type(value).__name__}.")
    return value


def _square_side(processor: Mapping, name: str, file: str) -> float:
    value = processor.get(name, _PROCESSOR_DEFAULTS[name])
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        if value["height"] == value["width"]:
            value = value["height"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise CheckpointError(
            f"{file}: {name}={value!r} cannot be held by our image task: expected a square "
            '{"height": S, "width": S} with S > 0.'
        )
    return value


def _task_from_processor(processor: Mapping, image_size: int, file: str) -> Dict[str, Any]:
    """Our image task's options for a PerceiverImageProcessor's config.

    Raises:
      CheckpointError: naming the field, for preprocessing our task cannot do.
    """
    kind = processor.get("image_processor_type", processor.get("feature_extractor_type"))
    if kind is not None and kind not in _IMAGE_PROCESSORS:
        raise CheckpointError(
            f"{file}: image_processor_type={kind!r}: expected one of {', '.join(_IMAGE_PROCESSORS)}."
        )
    mean, std = _imagenet_scales()
    wanted = {
        "do_center_crop": True,
        "do_resize": True,
        "resample": _PIL_BICUBIC,
        "do_rescale": True,
        "do_normalize": True,
    }
    for key, value in wanted.items():
        got = processor.get(key, _PROCESSOR_DEFAULTS[key])
        if got != value or isinstance(got, bool) != isinstance(value, bool):
            raise CheckpointError(
                f"{file}: {key}={got!r} cannot be held by our image task (which centre-crops, "
                f"resizes bicubic and normalises as ImageNet's): expected {value!r}."
            )
    for key, value in (("rescale_factor", [1 / 255]), ("image_mean", mean), ("image_std", std)):
        got = processor.get(key, _PROCESSOR_DEFAULTS[key])
        try:
            values = np.ravel(np.asarray(got, float))
            same = values.size in (1, len(value)) and np.allclose(values, value, rtol=1e-6)
        except (TypeError, ValueError):
            same = False
        if not same:
            raise CheckpointError(
                f"{file}: {key}={got!r} cannot be held by our image task: expected "
                f"{value if len(value) > 1 else value[0]!r} (ImageNet's scaling)."
            )
    size = _square_side(processor, "size", file)
    crop = _square_side(processor, "crop_size", file)
    if size != image_size:
        raise CheckpointError(
            f"{file}: size={size!r} is not the model's input side {image_size} (config.json)."
        )
    if not crop >= size:
        raise CheckpointError(
            f"{file}: crop_size={crop!r} is smaller than size={size!r}; our crop keeps at most "
            "the whole shorter side (crop_fraction = size / crop_size <= 1)."
        )
    return {"crop_fraction": size / crop}


def _check_tokenizer(src: str) -> None:
    """Refuses a tokenizer other than PerceiverTokenizer, whose bytes our models read."""
    file = os.path.join(src, "tokenizer_config.json")
    tokenizer = _read_json_file(file)
    kind = None if tokenizer is None else tokenizer.get("tokenizer_class")
    if kind not in (None, "PerceiverTokenizer"):
        raise CheckpointError(
            f"{file}: tokenizer_class={kind!r}: our language models read UTF-8 bytes as "
            "PerceiverTokenizer does; expected 'PerceiverTokenizer'."
        )


def _sha256(file: str) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _same_model(factory: str, one: Mapping, other: Mapping) -> bool:
    """Whether two sizes mappings build the same model of `factory`."""
    try:
        _, a = _factory_and_sizes(factory, one)
        _, b = _factory_and_sizes(factory, other)
    except (TypeError, ValueError):
        return False
    unused = _UNUSED_SIZES.get(a.get("variant"), ())
    return {k: v for k, v in a.items() if k not in unused} == {
        k: v for k, v in b.items() if k not in unused
    }


def _restored_description(src: str, config: Mapping, derived: Mapping) -> Optional[Dict[str, Any]]:
    """The description `to_hf` kept in config.json, if the folder still holds that very model.

    It is restored only while model.safetensors is the file it was written
    with and what transformers' files say (sizes, labels, the crop) agrees
    with it; otherwise (a model fine-tuned in transformers, an edited
    config) the folder's own files describe the model.
    """
    kept = config.get(DESCRIPTION_FIELD)
    if not isinstance(kept, dict) or not isinstance(kept.get("description"), dict):
        return None
    stored = kept["description"]
    weights = os.path.join(src, "model.safetensors")
    if not os.path.isfile(weights) or kept.get("weights_sha256") != _sha256(weights):
        return None
    factory = derived["factory"]
    if stored.get("factory") != factory:
        return None
    if not _same_model(factory, stored.get("sizes", {}), derived["sizes"]):
        return None
    stored = dict(stored)
    if "labels" in derived:  # Kept in id2label alone (see `to_hf`).
        stored["labels"] = derived["labels"]
    if "task" in derived:
        task = stored.get("task") if isinstance(stored.get("task"), dict) else {}
        fraction = task.get("crop_fraction", _imagenet().CROP_FRACTION)
        if not np.isclose(fraction, derived["task"]["crop_fraction"], rtol=1e-9, atol=0):
            return None
    return stored


def _check_out_dir(out_dir: str, writing: Sequence[str]) -> None:
    """Refuses a folder holding another model's files that `writing` would not replace."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"out_dir {out_dir} exists and is not a directory.")
    if not os.path.isdir(out_dir):
        return
    foreign = [n for n in _MODEL_FILES if n not in writing and os.path.exists(os.path.join(out_dir, n))]
    if foreign:
        raise FileExistsError(
            f"out_dir {out_dir} holds {', '.join(foreign)} of another model, which this one would "
            "not replace; give a new or empty folder."
        )


def _write_files(out_dir: str, files: Mapping[str, bytes]) -> None:
    """Writes every file into `out_dir`, or none: all are complete before any is renamed in."""
    created = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    staged: List[Tuple[str, str]] = []
    try:
        for name, data in files.items():
            tmp = os.path.join(out_dir, f".{name}.{secrets.token_hex(6)}.tmp")
            staged.append((tmp, name))
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, name in staged:
            os.replace(tmp, os.path.join(out_dir, name))
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)
        if created and not os.listdir(out_dir):
            os.rmdir(out_dir)
        raise


# ---------------------------------------------------------------------------
# Files both ways: `perceiver convert SRC DST`
# ---------------------------------------------------------------------------

# Published checkpoint -> the class names of its outputs, as shipped with the package.
_PUBLISHED_LABELS = {
    "imagenet_learned": "imagenet_labels",
    "imagenet_fourier": "imagenet_labels",
    "imagenet_conv": "imagenet_labels",
    "video_autoencoding": "kinetics700_labels",
}


def _meaningful_labels(config: Mapping) -> Optional[List[str]]:
    """id2label in class order, or None when absent or transformers' placeholders (LABEL_<i>)."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        names = [id2label[k] for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return None
    if sorted(int(k) for k in id2label) != list(range(len(names))):
        return None
    if not all(isinstance(n, str) for n in names) or names == [
        f"LABEL_{i}" for i in range(len(names))
    ]:
        return None
    return names


def convert(
    src: "os.PathLike[str] | str",
    dst: "os.PathLike[str] | str",
    *,
    conv_kernel_layout: str = "oihw",
    dtype: Optional[str] = None,
    allow_deviations: bool = False,
    cache_dir: Optional[str] = None,
) -> str:
    """Converts a checkpoint between transformers' format and ours; the direction is what `src` is.

    - `src` a directory (transformers' `save_pretrained`): `dst` is our
      checkpoint file (`.pystate`, or `.safetensors`; see
      `checkpoint.save`), written with its description (`NAME.json`:
      factory, sizes, labels), so that every task and `--checkpoint` take it
      as they take our own.
    - `src` our checkpoint file with its description, or a published name
      (`perceiver.hub.CHECKPOINTS`, downloaded once): `dst` is a directory
      for transformers' `from_pretrained` (see `to_hf`).

    Args:
      src, dst: as above.
      conv_kernel_layout: see `from_hf` and `to_hf`.
      dtype: the transformers weights' dtype (see `to_hf`); only for that
        direction.
      allow_deviations: see `to_hf`.
      cache_dir: where published checkpoints are kept (see `perceiver.hub.fetch`).

    Returns:
      one line saying what was written.

    Raises:
      FileNotFoundError: if `src` is none of these.
      ValueError: for a model the other side cannot express, or a checkpoint
        file without a description naming its factory.
      CheckpointError: for unreadable or ill-fitting files.
      OSError: if `dst` cannot be written.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if src in hub.SHIPPED:  # A model shipped with the package: its file, with its description.
        src = str(hub.shipped_path(src))
    if os.path.isdir(src):
        if dtype is not None:
            raise ValueError(
                "dtype applies to writing transformers' format; our checkpoints keep float32."
            )
        return _convert_from_hf(src, dst, conv_kernel_layout)
    description: Dict[str, Any] = {}
    if os.path.isfile(src):
        checkpoint.check_file(src)  # A text, a description, an image... named as what it is.
        description = checkpoint.read_description(src)
        factory, sizes = description.get("factory"), description.get("sizes", {})
        if not factory:
            raise ValueError(
                f"{src} has no description naming its model ({checkpoint.description_path(src)} "
                'with "factory" and "sizes", as checkpoint.save(..., description=...) writes).'
            )
        labels = description.get("labels")
        what, path = src, src
    elif src in hub.CHECKPOINTS:
        entry = hub.get(src)
        factory, sizes = entry.factory, dict(entry.factory_kwargs)
        from perceiver import labels as labels_lib

        labels = getattr(labels_lib, _PUBLISHED_LABELS[src])() if src in _PUBLISHED_LABELS else None
        what, path = f"the published {src!r}", None
    else:
        raise FileNotFoundError(
            f"src {src} is not a transformers save_pretrained directory, a checkpoint file, or a "
            f"checkpoint name ({', '.join(hub.names())})."
        )
    if os.path.isfile(dst):
        raise FileExistsError(f"dst {dst} is a file; transformers' format is a directory.")
    # What transformers cannot hold is refused before anything is read, downloaded or written.
    config = hf_config(factory, sizes, labels=labels, allow_deviations=allow_deviations)
    _, full_sizes = _factory_and_sizes(factory, sizes)
    names = ["config.json", "model.safetensors", *_pipeline_files(factory, full_sizes, description)]
    _check_out_dir(dst, names)
    if path is not None:
        inputs = (path, checkpoint.description_path(path))
        clash = [n for n in names if any(_same_file(os.path.join(dst, n), i) for i in inputs)]
        if clash:
            raise FileExistsError(
                f"dst {dst}: writing {clash[0]} there would replace the input {path} or its "
                "description; give another folder."
            )
    params, state = checkpoint.load(path or loading.fetch(src, cache_dir=cache_dir))
    to_hf(
        params,
        state,
        factory,
        sizes,
        dst,
        labels=labels,
        dtype=dtype,
        conv_kernel_layout=conv_kernel_layout,
        allow_deviations=allow_deviations,
        description=description,
    )
    arch = config["architectures"][0]
    line = (
        f"wrote {', '.join(os.path.join(dst, n) for n in names)} from {what}: "
        f"transformers.{arch}.from_pretrained({dst!r}) loads it"
    )
    pipeline = {
        "imagenet_classifier": "image-classification",
        "masked_language_model": "fill-mask",
        "text_classifier": "text-classification",
    }.get(factory)
    if pipeline:
        line += f", and transformers.pipeline({pipeline!r}, model={dst!r})"
    least = (description.get("task") or {}).get("min_crop_size") or 0
    if factory == "imagenet_classifier" and least:
        line += (
            f" (transformers' image processor has no least crop: photos whose shorter side is "
            f"under {least} / crop_fraction pixels are cropped tighter there than min_crop_size="
            f"{least} crops them here)"
        )
    if factory == "masked_language_model":
        line += (
            ' (its tokenizer adds [CLS] and [SEP] around a text, ours does not: pass '
            'tokenizer_kwargs={"add_special_tokens": False} for our answers)'
        )
    if factory == "text_classifier":
        line += (
            " (its tokenizer adds [CLS] and [SEP] around a text, ours does not: pass "
            "add_special_tokens=False for our answers)"
        )
    return line


def _same_file(one: str, other: str) -> bool:
    return os.path.exists(one) and os.path.exists(other) and os.path.samefile(one, other)


def _convert_from_hf(src: str, dst: str, conv_kernel_layout: str) -> str:
    if not os.path.isfile(os.path.join(src, "config.json")):
        raise FileNotFoundError(
            f"src {src} is a directory without config.json; expected transformers' "
            "save_pretrained output."
        )
    if os.path.isdir(dst):
        raise IsADirectoryError(
            f"dst {dst} is a directory; give our checkpoint's file name (NAME.pystate or "
            "NAME.safetensors)."
        )
    for target in (dst, checkpoint.description_path(dst)):
        inside = os.path.realpath(os.path.dirname(os.path.abspath(target))) == os.path.realpath(src)
        if inside and os.path.exists(target):
            raise FileExistsError(
                f"dst {dst}: writing {target} would replace a file of the input folder {src}; "
                "give a name outside it, or a new one."
            )
    # The preprocessing and tokenizer are checked before the weights are read.
    factory, sizes = hf_factory(read_config(src))
    task = None
    if factory == "imagenet_classifier":
        processor_file = os.path.join(src, PREPROCESSOR_FILE)
        processor = _read_json_file(processor_file)
        if processor is not None:
            task = _task_from_processor(processor, sizes["image_size"], processor_file)
    if factory in ("masked_language_model", "text_classifier"):
        _check_tokenizer(src)
    config, factory, sizes, params, state = _read_hf(
        src, weights_name=None, conv_kernel_layout=conv_kernel_layout
    )
    arch = config["architectures"][0]
    description: Dict[str, Any] = {
        "factory": factory,
        "sizes": sizes,
        "description": f"transformers' {arch} converted from {os.path.abspath(src)}",
        "converted_from": {
            "format": "transformers",
            "architecture": arch,
            "hidden_act": _field(config, "hidden_act"),
            "conv_kernel_layout": conv_kernel_layout,
        },
    }
    labels = _meaningful_labels(config)
    if labels is not None and factory in _CLASSIFIERS:
        description["labels"] = labels
    if factory in ("masked_language_model", "text_classifier"):
        description["tokenizer"] = {"kind": "bytes"}
    if task is not None:
        description["task"] = task
    description = _restored_description(src, config, description) or description
    checkpoint.save(dst, params, state, description=description)
    return (
        f"wrote {dst} and {checkpoint.description_path(dst)} ({factory}"
        f"{', ' + sizes['variant'] if 'variant' in sizes else ''}) from transformers' {arch}"
    )


def command(args: Any) -> str:
    """`perceiver convert SRC DST`: the CLI's command (see `convert`); returns what it prints."""
    return convert(
        args.src,
        args.dst,
        conv_kernel_layout=args.conv_kernel_layout,
        dtype=args.dtype,
        allow_deviations=args.allow_deviations,
        cache_dir=args.cache_dir,
    )
