"""Converting checkpoint files either way: `perceiver convert SRC DST`.

`convert(src, dst)` chooses the direction by what `src` is: a transformers
directory becomes our checkpoint file (`.pystate`, or `.safetensors`, see
`perceiver.checkpoint`) with its description (factory, sizes, labels)
beside it, which every task and `--checkpoint` read; our file with its
description, or a published name, becomes a transformers directory
(`perceiver.hf.writing.to_hf`). config.json keeps our description
(`DESCRIPTION_FIELD`, with the sha256 of model.safetensors): converting
back gives the same description and the same model, as long as the weights
file is unchanged and transformers' files still agree with it; otherwise
the description is made from those files (the crop from
`preprocessor_config.json`). A folder holding another model's files, or a
destination that would replace an input, is refused before anything is read.
"""

import hashlib
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from perceiver import checkpoint
from perceiver import hub
from perceiver import loading
from perceiver.hf.config import _UNUSED_SIZES, _factory_and_sizes, _field, hf_config, hf_factory
from perceiver.hf.pipeline_files import (
    PREPROCESSOR_FILE,
    _check_tokenizer,
    _imagenet,
    _pipeline_files,
    _task_from_processor,
)
from perceiver.hf.reading import _read_hf, _read_json_file, read_config
from perceiver.hf.writing import DESCRIPTION_FIELD, _CLASSIFIERS, _check_out_dir, to_hf

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
