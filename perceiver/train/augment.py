"""Image augmentations of the reference's ImageNet recipe, on numpy and Pillow.

Random resized crop (Inception-style), horizontal flip, RandAugment (Cubuk
et al. 2020) with the reference's 16 operations and magnitude mappings, and
batch-level MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019). Every
function takes its randomness from a `np.random.Generator`, so a pipeline
seeded per example is deterministic.
"""

import math
from typing import Callable, Dict, Mapping, Tuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CENTER_CROP_PADDING = 32  # the reference's eval crop: image_size / (image_size + 32) of the short side

# RandAugment as in the reference: magnitudes run 0..10, grey fill.
_MAX_LEVEL = 10.0
_FILL = (128, 128, 128)
_TRANSLATE_CONST = 100
_CUTOUT_CONST = 40


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    area_range: Tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: Tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
    image_size: int = 224,
    crop_fraction: float = 0.0,
) -> Tuple[int, int, int, int]:
    """A crop `(top, left, crop_height, crop_width)` covering a random area and aspect.

    Tries `max_attempts` times to fit a crop with area in `area_range` of the
    image and aspect ratio in `aspect_ratio_range` (log-uniform); falls back
    to the evaluation centre crop (`eval_crop_box` with `crop_fraction`), as
    the reference does.
    """
    area = height * width
    log_ratio = (math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1]))
    for _ in range(max_attempts):
        target = area * rng.uniform(*area_range)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return eval_crop_box(height, width, image_size, crop_fraction)


def center_crop_box(height: int, width: int, image_size: int = 224) -> Tuple[int, int, int, int]:
    """The reference's evaluation crop: a centred square of `s / (s + 32)` of the short side."""
    size = max(1, int(image_size / (image_size + CENTER_CROP_PADDING) * min(height, width)))
    return (height - size + 1) // 2, (width - size + 1) // 2, size, size


def eval_crop_box(
    height: int, width: int, image_size: int = 224, fraction: float = 0.0
) -> Tuple[int, int, int, int]:
    """The evaluation crop: a centred square of `fraction` of the short side.

    `fraction` 0 (auto): the reference's `s / (s + 32)`, but never fewer than
    `image_size` pixels nor more than the short side. So images with a short
    side of at least `s + 32` get the reference's crop (224/256 at 224), and
    images no larger than the model's input are kept whole (a digit of 8 x 8
    pixels is not cut to 4 x 4).
    """
    short = min(height, width)
    if fraction > 0:
        size = int(fraction * short)
    else:
        reference = int(image_size / (image_size + CENTER_CROP_PADDING) * short)
        size = min(short, max(reference, image_size))
    size = max(1, size)
    return (height - size + 1) // 2, (width - size + 1) // 2, size, size


def crop_and_resize(image: Image.Image, box: Tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crops `box` and resizes it bicubically to `[size, size, 3]` float32 (0..255 scale)."""
    top, left, h, w = box
    cropped = image.crop((left, top, left + w, top + h))
    return np.asarray(cropped.resize((size, size), Image.BICUBIC), np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
    """Per-channel ImageNet mean/std normalisation of `[..., 3]` pixels in 0..255."""
    return ((image - np.array(MEAN_RGB, np.float32)) / np.array(STDDEV_RGB, np.float32)).astype(
        np.float32
    )


# ---------------------------------------------------------------------------
# RandAugment
# ---------------------------------------------------------------------------


def _signed(rng: np.random.Generator, value: float) -> float:
    return value if rng.uniform() < 0.5 else -value


def _affine(image: Image.Image, matrix) -> Image.Image:
    return image.transform(image.size, Image.AFFINE, tuple(matrix), Image.NEAREST, fillcolor=_FILL)


def _rotate(image, rng, level):
    return image.rotate(_signed(rng, level / _MAX_LEVEL * 30.0), Image.NEAREST, fillcolor=_FILL)


def _shear_x(image, rng, level):
    return _affine(image, (1, _signed(rng, level / _MAX_LEVEL * 0.3), 0, 0, 1, 0))


def _shear_y(image, rng, level):
    return _affine(image, (1, 0, 0, _signed(rng, level / _MAX_LEVEL * 0.3), 1, 0))


def _translate_x(image, rng, level):
    return _affine(image, (1, 0, _signed(rng, level / _MAX_LEVEL * _TRANSLATE_CONST), 0, 1, 0))


def _translate_y(image, rng, level):
    return _affine(image, (1, 0, 0, 0, 1, _signed(rng, level / _MAX_LEVEL * _TRANSLATE_CONST)))


def _enhance(cls):
    def op(image, rng, level):
        return cls(image).enhance(level / _MAX_LEVEL * 1.8 + 0.1)

    return op


def _posterize(image, rng, level):
    bits = int(level / _MAX_LEVEL * 4)
    # The reference keeps `bits` bits by shifting right then left by 8 - bits.
    shift = 8 - bits
    a = np.asarray(image)
    return Image.fromarray(((a >> shift) << shift).astype(np.uint8) if shift < 8 else np.zeros_like(a))


def _solarize(image, rng, level):
    threshold = int(level / _MAX_LEVEL * 256)
    a = np.asarray(image)
    return Image.fromarray(np.where(a < threshold, a, 255 - a).astype(np.uint8))


def _solarize_add(image, rng, level, threshold=128):
    addition = int(level / _MAX_LEVEL * 110)
    a = np.asarray(image).astype(np.int32)
    added = np.clip(a + addition, 0, 255)
    return Image.fromarray(np.where(a < threshold, added, a).astype(np.uint8))


def _cutout(image, rng, level):
    pad = int(level / _MAX_LEVEL * _CUTOUT_CONST)
    a = np.array(image)
    h, w = a.shape[:2]
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    a[max(cy - pad, 0) : min(cy + pad, h), max(cx - pad, 0) : min(cx + pad, w)] = _FILL
    return Image.fromarray(a)


RANDAUGMENT_OPS: Dict[str, Callable] = {
    "AutoContrast": lambda image, rng, level: ImageOps.autocontrast(image),
    "Equalize": lambda image, rng, level: ImageOps.equalize(image),
    "Invert": lambda image, rng, level: ImageOps.invert(image),
    "Rotate": _rotate,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Cutout": _cutout,
    "SolarizeAdd": _solarize_add,
}


def randaugment(
    image: Image.Image, rng: np.random.Generator, num_layers: int = 4, magnitude: float = 5
) -> Image.Image:
    """Applies `num_layers` operations drawn uniformly from `RANDAUGMENT_OPS`.

    Args:
      image: an RGB image (8 bits per channel).
      rng: source of randomness.
      num_layers: operations applied in sequence (N in the paper).
      magnitude: shared strength in [0, 10] (M in the paper).
    """
    names = list(RANDAUGMENT_OPS)
    for _ in range(num_layers):
        name = names[int(rng.integers(len(names)))]
        image = RANDAUGMENT_OPS[name](image, rng, float(magnitude))
    return image


# ---------------------------------------------------------------------------
# MixUp and CutMix
# ---------------------------------------------------------------------------


def cutmix_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A `[H, W, 1]` mask, 1 inside a random box and 0 outside.

    As in the reference, the box's sides are sqrt(1 - lambda) of the image's
    with lambda ~ U(0, 1) (Beta(1, 1)); it is centred anywhere and clipped
    to the image.
    """
    cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
    side = math.sqrt(1.0 - rng.uniform())
    rw, rh = int(side * width), int(side * height)
    x1, x2 = np.clip([cx - rw // 2, cx + rw // 2], 0, width)
    y1, y2 = np.clip([cy - rh // 2, cy + rh // 2], 0, height)
    mask = np.zeros((height, width, 1), np.float32)
    mask[y1:y2, x1:x2] = 1.0
    return mask


def mix_batch(
    batch: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    *,
    mixup_alpha: float = 0.2,
    cutmix: bool = True,
) -> Dict[str, np.ndarray]:
    """MixUp and/or CutMix, making a batch of B from one of 2B, as the reference.

    With both, the first half of the output is MixUp and the second CutMix.
    The i-th output mixes image i of the first half of the input with image
    i of the second half (CutMix pastes the first into the box of
    `cutmix_mask`); `ratio` is the share of `labels` (the first image's).

    Args:
      batch: `{'images': [2B, H, W, C], 'labels': [2B]}`.
      rng: source of randomness.
      mixup_alpha: Beta(alpha, alpha) for MixUp ratios; <= 0 disables MixUp.
      cutmix: whether to use CutMix.

    Returns:
      `{'images': [B, H, W, C], 'labels': [B], 'mix_labels': [B], 'ratio': [B]}`.
    """
    images, labels = np.asarray(batch["images"]), np.asarray(batch["labels"])
    if images.shape[0] % 2:
        raise ValueError(f"mix_batch needs an even batch; got {images.shape[0]} images.")
    half = images.shape[0] // 2
    a, b = images[:half], images[half:]
    la, lb = labels[:half], labels[half:]
    use_mixup = mixup_alpha is not None and mixup_alpha > 0
    if not use_mixup and not cutmix:
        return {"images": a, "labels": la, "mix_labels": lb, "ratio": np.ones(half, np.float32)}
    num_mixup = half if not cutmix else (0 if not use_mixup else half // 2)
    ratio = np.ones(half, np.float32)
    out = np.empty_like(a)
    if num_mixup:
        r = rng.beta(mixup_alpha, mixup_alpha, num_mixup).astype(np.float32)
        ratio[:num_mixup] = r
        r4 = r[:, None, None, None]
        out[:num_mixup] = r4 * a[:num_mixup] + (1 - r4) * b[:num_mixup]
    h, w = images.shape[1:3]
    for i in range(num_mixup, half):
        mask = cutmix_mask(rng, h, w)
        out[i] = mask * a[i] + (1 - mask) * b[i]
        ratio[i] = mask.mean()
    return {"images": out, "labels": la, "mix_labels": lb, "ratio": ratio}
