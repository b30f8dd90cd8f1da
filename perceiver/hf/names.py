"""transformers' Perceiver parameter names <-> our Haiku trees, by rule.

Tensors are mapped by rule (module paths by pattern, leaves by kind): torch
Linear `weight [out, in]` -> `w [in, out]`, conv `weight` OIHW -> `w` HWIO
(or OIWH: see below), LayerNorm `weight/bias` ->
`scale/offset`, BatchNorm `running_mean/var` -> the `average` of our
state's `mean_ema`/`var_ema`. torch's running statistics are an un-debiased
EMA, i.e. a warm Haiku one: `counter` is `num_batches_tracked` but at least
1000, where Haiku's debiasing factor `1 - 0.9**counter` is 1 in float32,
and `hidden` equals `average`.

Conv kernels: transformers' conversion script wrote DeepMind's HWIO 7x7
kernel as `np.transpose(w)`, i.e. OIWH, which torch applies as OIHW.
'oihw' (the default) reads a kernel as torch applies it, so a model trained
in transformers keeps its function; 'oiwh' undoes the script's transpose
and recovers DeepMind's kernel. 1x1 kernels are the same either way.

The same rules, read backwards, list the names to write
(`to_hf_state_dict`), so the two directions cannot disagree.
"""

import re
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from perceiver import _validation
from perceiver import checkpoint
from perceiver.checkpoint import CheckpointError
from perceiver.hf.config import ARCHITECTURES

try:  # Ships with jax; lets bfloat16 tensors load.
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

Tree = Dict[str, Dict[str, np.ndarray]]

CONV_KERNEL_LAYOUTS = ("oihw", "oiwh")
_BN_DECAY = 0.9  # Our Conv2DDownsample's BatchNorm decay_rate.
_BN_WARM_COUNTER = 1000  # 0.9**1000 underflows float32: debiasing is then the identity.

# The learned classifier's decoder query, and the bias `_fold_decoder_query` folds it into.
_QUERY = "perceiver.decoder.decoder.output_position_encodings.position_embeddings"
_QUERY_BIAS = "perceiver.decoder.decoder.decoding_cross_attention.attention.output.dense.bias"

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


