"""Reading Hugging Face transformers' Perceiver checkpoints into our models.

    model, params, state = from_hf("path/to/save_pretrained/dir")
    logits, _ = model.apply(params, state, None, images)

`from_hf` reads a directory as transformers' `save_pretrained` writes it
(`config.json` plus `model.safetensors` or `pytorch_model.bin`, sharded or
not) for the six Perceiver IO heads transformers ships, and returns one of our
factories' models with the sizes the config implies:

- PerceiverForMaskedLM -> `masked_language_model`
- PerceiverForImageClassificationLearned, ...Fourier, ...ConvProcessing ->
  `imagenet_classifier` ('learned_position_encoding',
  'fourier_position_encoding', 'conv_preprocessing')
- PerceiverForOpticalFlow -> `optical_flow`
- PerceiverForMultimodalAutoencoding -> `video_autoencoder`

Neither torch nor transformers is needed: safetensors files are read with the
`safetensors` package's numpy API (`pip install perceiver[hf]`), and
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

Measured max |ours - transformers| / max |transformers| (float32; "undone":
transformers with the deviation patched out on the torch side):

| model   | vs undone | vs transformers' own            |
| ------- | --------- | ------------------------------- |
| mlm     | 2.8e-7    | 2.0e-4 (GELU; real positions)   |
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
"""

import json
import os
import re
import sys
import zipfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import haiku as hk
import numpy as np

from perceiver import _validation
from perceiver import checkpoint
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
_MODALITY = "(?P<m>audio|image|label)"

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

Rule = Tuple["re.Pattern[str]", Callable[["re.Match[str]"], Tuple[str, str]]]


def _layer_rule(hf_prefix: str, ours: Callable[["re.Match[str]"], str], cross: bool) -> Rule:
    """A PerceiverLayer under `hf_prefix` -> our CrossAttention/SelfAttention module."""

    def target(m):
        module = _LAYER_MODULES[m["layer"]][0 if cross else 1]
        if module is None:
            raise KeyError(m["layer"])
        kind = "norm" if "layer_norm" in module else "linear"
        return f"{ours(m)}/{module}", kind

    return re.compile(hf_prefix + r"\." + _LAYER + r"\.(?P<leaf>\w+)"), target


def _module_rule(hf_module: str, ours: Any, kind: str) -> Rule:
    """A whole transformers module (regex) -> our module (str, or a function of the match)."""
    name = ours if callable(ours) else (lambda m, ours=ours: ours)
    return re.compile(hf_module + r"\.(?P<leaf>\w+)"), lambda m: (name(m), kind)


def _pos_rule(hf_name: str, ours: Any) -> Rule:
    """One position table (a bare parameter) -> our `pos_embs`."""
    name = ours if callable(ours) else (lambda m, ours=ours: ours)
    return re.compile(hf_name + r"(?P<leaf>)"), lambda m: (name(m), "pos")


def _encoder_rules(ours: str) -> List[Rule]:
    return [
        _pos_rule(r"perceiver\.embeddings\.latents", f"{ours}/~/trainable_position_encoding"),
        _layer_rule(
            r"perceiver\.encoder\.cross_attention", lambda m: f"{ours}/~/cross_attention", True
        ),
        _layer_rule(
            r"perceiver\.encoder\.self_attends\.(?P<i>0|[1-9]\d*)",
            lambda m: f"{ours}/~/self_attention" + ("" if m["i"] == "0" else f"_{m['i']}"),
            False,
        ),
    ]


def _decoder_rules(hf: str, ours: str) -> List[Rule]:
    """A transformers PerceiverBasicDecoder at `hf` -> our BasicDecoder at `ours`."""
    return [
        _layer_rule(hf + r"\.decoding_cross_attention", lambda m: f"{ours}/cross_attention", True),
        _module_rule(hf + r"\.final_layer", f"{ours}/output", "linear"),
        _pos_rule(
            hf + r"\.output_position_encodings\.position_embeddings",
            f"{ours}/~/trainable_position_encoding",
        ),
    ]


def _rules(architecture: str) -> List[Rule]:
    factory, variant = ARCHITECTURES[architecture]
    pre = r"perceiver\.input_preprocessor"
    if factory == "masked_language_model":
        return (
            _encoder_rules("perceiver_encoder")
            + _decoder_rules(r"perceiver\.decoder", "basic_decoder")
            + [
                _module_rule(pre + r"\.embeddings", "embed", "embed"),
                _pos_rule(pre + r"\.position_embeddings\.weight", "trainable_position_encoding"),
                _module_rule(r"embedding_decoder", "embedding_decoder", "bias"),
            ]
        )
    if factory == "imagenet_classifier":
        rules = _encoder_rules("perceiver_encoder") + _decoder_rules(
            r"perceiver\.decoder\.decoder", "classification_decoder/~/basic_decoder"
        )
        if variant == "learned_position_encoding":
            net = "image_preprocessor/~_build_network_inputs"
            rules += [
                _module_rule(pre + r"\.convnet_1x1", "image_preprocessor/~/conv2_d", "conv"),
                _pos_rule(
                    pre + r"\.position_embeddings\.position_embeddings",
                    f"{net}/trainable_position_encoding",
                ),
                _module_rule(
                    pre + r"\.positions_projection",
                    f"{net}/position_encoding_projector/linear",
                    "linear",
                ),
            ]
        elif variant == "conv_preprocessing":
            down = "image_preprocessor/~/conv2_d_downsample/~"
            rules += [
                _module_rule(pre + r"\.convnet\.conv", f"{down}/conv", "conv"),
                _module_rule(pre + r"\.convnet\.batchnorm", f"{down}/batchnorm", "bn"),
            ]
        return rules
    if factory == "optical_flow":
        return (
            _encoder_rules("perceiver_encoder")
            + _decoder_rules(r"perceiver\.decoder\.decoder", "flow_decoder/~/basic_decoder")
            + [
                _module_rule(
                    pre + r"\.conv_after_patches", "image_preprocessor/patches_linear", "linear"
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
        + _decoder_rules(r"perceiver\.decoder\.decoder", "multimodal_decoder/~/basic_decoder")
        + [
            _pos_rule(
                pre + r"\.padding\." + _MODALITY,
                lambda m: f"multimodal_preprocessor/{m['m']}_padding",
            ),
            _pos_rule(
                pre + r"\.mask\." + _MODALITY,
                lambda m: f"multimodal_preprocessor/{m['m']}_mask_token",
            ),
            _module_rule(
                r"perceiver\.output_postprocessor\.modalities\." + _MODALITY + r"\.classifier",
                lambda m: f"{post[m['m']]}/linear",
                "linear",
            ),
            _pos_rule(
                r"perceiver\.decoder\.modalities\.label\.decoder"
                r"\.output_position_encodings\.position_embeddings",
                "classification_decoder/~/basic_decoder/~/trainable_position_encoding",
            ),
            _pos_rule(
                r"perceiver\.decoder\.padding\." + _MODALITY,
                lambda m: f"multimodal_decoder/~decoder_query/{m['m']}_padding",
            ),
        ]
    )


def _match(rules: List[Rule], name: str) -> Optional[Tuple[str, str, str]]:
    """`(our module, kind, transformers leaf)` for one tensor name, or None."""
    for pattern, target in rules:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        try:
            module, kind = target(m)
        except KeyError:
            return None
        leaf = m["leaf"]
        if kind != "pos" and leaf not in _LEAVES[kind]:
            return None
        return module, kind, leaf
    return None


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

    Raises:
      ImportError: without the `safetensors` package (`pip install perceiver[hf]`).
      CheckpointError: for a file safetensors cannot read.
    """
    try:
        from safetensors import numpy as st_numpy
    except ImportError:
        raise ImportError(
            "reading model.safetensors needs the safetensors package: pip install 'perceiver[hf]'."
        ) from None
    file = os.fspath(file)
    try:
        tensors = st_numpy.load_file(file)
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError and others.
        raise CheckpointError(
            f"{file}: not a readable safetensors file ({type(e).__name__}: {e})."
        ) from None
    return {name: np.array(value) for name, value in tensors.items()}


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
    if args == ():
        return {}
    if (
        len(args) == 1
        and type(args[0]) in (list, tuple)
        and all(type(p) in (list, tuple) and len(p) == 2 and type(p[0]) is str for p in args[0])
    ):
        return dict(args[0])
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
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"path must be a save_pretrained directory; {path} is not a directory."
        )
    _validation.check_choice("conv_kernel_layout", conv_kernel_layout, CONV_KERNEL_LAYOUTS)
    config = read_config(path)
    factory, kwargs = hf_factory(config)
    tensors = read_weights(path, weights_name)
    params, state, unused = convert_state_dict(
        config["architectures"][0], tensors, conv_kernel_layout=conv_kernel_layout
    )
    described = f"{factory}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    if unused:
        raise checkpoint.differences_error(
            f"{path}: {len(unused)} checkpoint tensors have no place in {described}", unused
        )
    want_params, want_state = models.parameter_shapes(factory, **kwargs)
    params, state = _cast_like(want_params, params), _cast_like(want_state, state)
    checkpoint.check_tree(want_params, params, what=f"{path}: the params converted for {described}")
    checkpoint.check_tree(want_state, state, what=f"{path}: the state converted for {described}")
    return build(factory, kwargs), params, state
