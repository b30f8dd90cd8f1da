"""What transformers' pipelines read beside a model: image processor and tokenizer files.

An image classifier's `preprocessor_config.json` (PerceiverImageProcessor:
our crop as `size / crop_size`, bicubic resize, ImageNet's scaling) and a
language model's `tokenizer_config.json` and `special_tokens_map.json`
(PerceiverTokenizer, the same byte tokens as ours); transformers has no
processor for the flow and video models. Written by `hf_preprocessor_config`
and `hf_tokenizer_files`; read back, and refused where our tasks cannot do
the same, by `_task_from_processor` and `_check_tokenizer`.
"""

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from perceiver.checkpoint import CheckpointError
from perceiver.hf.reading import _read_json_file

PREPROCESSOR_FILE = "preprocessor_config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")
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


