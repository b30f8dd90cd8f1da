"""Writing our models as transformers' `save_pretrained` directories: `to_hf`.

`to_hf` writes `config.json` (`perceiver.hf.config.hf_config`),
`model.safetensors` (the tensors named by `perceiver.hf.names`, with the
safetensors package's numpy API: no torch) and what transformers' pipelines
read beside them (`perceiver.hf.pipeline_files`); every file, or none.
transformers then computes our function, except where its classes differ
(docs/guides/hf_measurements.md): the tanh GELU is named "gelu_new", and the
learned classifier's decoder query, which transformers adds to its output,
is taken from the output bias (`FOLDED_QUERY_FIELD`).
"""

import hashlib
import json
import os
import secrets
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from perceiver import _validation
from perceiver.checkpoint import description as checkpoint_description
from perceiver.checkpoint import safetensors_format
from perceiver import loading
from perceiver import models
from perceiver.hf.config import FOLDED_QUERY_FIELD, _factory_and_sizes, hf_config
from perceiver.hf.names import (
    CONV_KERNEL_LAYOUTS,
    Tree,
    _cast_like,
    _fold_decoder_query,
    _is_float,
    to_hf_state_dict,
)
from perceiver.hf.pipeline_files import PREPROCESSOR_FILE, TOKENIZER_FILES, _pipeline_files
from perceiver.hf.reading import MAX_CONFIG_BYTES, WEIGHTS_NAMES

try:  # Ships with jax; lets bfloat16 tensors be written.
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

HF_DTYPES = ("float32", "float16", "bfloat16")

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
    in docs/guides/hf_measurements.md.

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
        DeepMind's; see `perceiver.hf.names`).
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
        json.loads(checkpoint_description.description_text(description, os.path.join(os.fspath(out_dir), "x")))
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
    st_numpy = safetensors_format.safetensors_numpy(os.path.join(out_dir, "model.safetensors"))
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


