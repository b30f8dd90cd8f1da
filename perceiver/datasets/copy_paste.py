"""A detection set of real objects pasted on real photos at known boxes (copy-paste).

Copy-paste augmentation (Ghiasi et al. 2021) used to build a whole set:
backgrounds are colour photos shipped with scikit-image and scikit-learn
(random crops resized to a square), objects are scikit-learn's handwritten
digits (`load_digits`, 8x8 scans upscaled; the object is its ink, thresholded
at half, pasted in one colour that stands out from the background). Each
image gets 1-4 digits at random sizes and places, overlapping earlier ones
by at most `max_overlap` of either's area; an earlier digit's box is
recomputed from the pixels still visible. Boxes are the exact extent of
each object's visible pixels. The caller holds photos out between train
and eval (and may split the digit scans by `digit_split`); a seed fixes all.

scikit-image and scikit-learn are imported when used (pip install
scikit-image scikit-learn); images are written with Pillow.
"""

import os
import pathlib
from typing import Dict, Optional, Sequence

import numpy as np

from perceiver import media
from perceiver.datasets import coco
from perceiver import _messages

# Colour photos: scikit-image's (bundled with it) and scikit-learn's sample images.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
SKLEARN_PHOTOS = ("china", "flower")
PHOTOS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS
CLASSES = tuple(str(d) for d in range(10))


def _need(module: str, package: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise ImportError(
            f"the copy-paste detection set needs {package}: {_messages.install_hint('datasets')}"
        ) from e


def load_photo(name: str) -> np.ndarray:
    """One of `PHOTOS` as uint8 `[H, W, 3]`.

    Raises:
      ValueError: for a name not in `PHOTOS`.
      ImportError: naming the pip package if scikit-image / scikit-learn is missing.
    """
    if name in SKIMAGE_PHOTOS:
        data = _need("skimage.data", "scikit-image")
        return np.asarray(getattr(data, name)())[..., :3]
    if name in SKLEARN_PHOTOS:
        datasets = _need("sklearn.datasets", "scikit-learn")
        sample = datasets.load_sample_images()
        index = [os.path.basename(f) for f in sample.filenames].index(f"{name}.jpg")
        return np.asarray(sample.images[index])
    raise ValueError(f"unknown photo {name!r}; expected one of {', '.join(PHOTOS)}.")


def _resize(image: np.ndarray, shape) -> np.ndarray:
    transform = _need("skimage.transform", "scikit-image")
    return transform.resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)


def _digits(split: Optional[str]):
    datasets = _need("sklearn.datasets", "scikit-learn")
    digits = datasets.load_digits()
    keep = np.arange(len(digits.target))
    if split is not None:
        if split not in ("train", "eval"):
            raise ValueError(f"digit_split must be 'train', 'eval' or None; got {split!r}.")
        keep = keep[keep % 2 == (0 if split == "train" else 1)]
    return digits.images[keep] / 16.0, digits.target[keep]


def _ink_mask(scan: np.ndarray, height: int, width: int) -> np.ndarray:
    """The digit's ink at `height x width`, bilinear upscaling thresholded at half."""
    mask = _resize(scan, (height, width)) >= 0.5
    rows, cols = np.nonzero(mask)
    return mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _colour(rng, patch: np.ndarray) -> np.ndarray:
    """A random colour at least 100 grey levels (Rec. 601 luma) away from `patch`'s mean."""
    luma = np.array([0.299, 0.587, 0.114])
    background = float(patch.reshape(-1, 3).mean(0) @ luma)
    for _ in range(50):
        colour = rng.integers(0, 256, 3)
        if abs(colour @ luma - background) >= 100:
            return colour.astype(np.uint8)
    return np.full(3, 0 if background > 127 else 255, np.uint8)


def _box(mask: np.ndarray):
    """xywh of `mask`'s pixels (a pixel (r, c) covers [c, c + 1] x [r, r + 1])."""
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1 - cols.min()),
            float(rows.max() + 1 - rows.min())]


def compose(rng, photo: np.ndarray, scans, labels, size: int, objects=(1, 4),
            object_size=(0.15, 0.35), max_overlap: float = 0.1, min_crop: float = 0.5):
    """One image: a random crop of `photo` resized to `size`, with digits pasted on it.

    Args:
      rng: a `numpy.random.Generator`.
      photo: uint8 `[H, W, 3]`.
      scans, labels: digit scans `[N, 8, 8]` in [0, 1] and their classes `[N]`.
      size: the square image's side, pixels.
      objects: (fewest, most) digits per image.
      object_size: a digit's height as a fraction of `size`, (least, most).
      max_overlap: the most of either digit's box area another may cover.
      min_crop: the crop's side as a fraction of the photo's shorter side, least.

    Returns:
      `(image uint8 [size, size, 3], boxes [K, 4] xywh pixels, labels [K])`.
    """
    h, w = photo.shape[:2]
    side = int(rng.uniform(min_crop, 1.0) * min(h, w))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    image = _resize(photo[top:top + side, left:left + side], (size, size)).round().astype(np.uint8)
    owner = np.full((size, size), -1)
    placed, kept = [], []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        for _attempt in range(20):
            k = int(rng.integers(len(labels)))
            height = max(6, int(rng.uniform(*object_size) * size))
            mask = _ink_mask(scans[k], height, max(5, int(height * rng.uniform(0.7, 1.0))))
            mh, mw = mask.shape
            y, x = int(rng.integers(0, size - mh + 1)), int(rng.integers(0, size - mw + 1))
            box = np.array([x, y, x + mw, y + mh])
            if all(_overlap_ok(box, other, max_overlap) for other in placed):
                break
        else:
            continue
        region = image[y:y + mh, x:x + mw]
        region[mask] = _colour(rng, region)
        owner[y:y + mh, x:x + mw][mask] = len(placed)
        placed.append(box)
        kept.append(int(labels[k]))
    visible = [owner == i for i in range(len(placed))]
    ok = [i for i, m in enumerate(visible) if m.any()]
    boxes = np.array([_box(visible[i]) for i in ok], np.float64).reshape(-1, 4)
    return image, boxes, np.array([kept[i] for i in ok], np.int64)


def _overlap_ok(a, b, limit: float) -> bool:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter <= limit * smaller


def make_copy_paste_set(
    out_dir,
    photos: Sequence[str],
    num_images: int,
    size: int = 128,
    seed: int = 0,
    digit_split: Optional[str] = None,
    **compose_options,
) -> pathlib.Path:
    """Writes `num_images` PNG images and a COCO file `annotations.json` in `out_dir`.

    Args:
      out_dir: the folder (created); images go to `out_dir/images/`.
      photos: names from `PHOTOS` to draw backgrounds from (cycled in order).
      num_images: how many images.
      size: their side in pixels.
      seed: fixes everything drawn.
      digit_split: 'train' (even-numbered scans), 'eval' (odd) or None (all).
      compose_options: passed to `compose` (objects, object_size, max_overlap, min_crop).

    Returns:
      the annotation file's path. Categories: id d + 1 is digit d (named "d").

    Raises:
      ValueError: for an unknown photo or no photos.
      ImportError: naming the pip package if scikit-image / scikit-learn is missing.
    """
    if not photos:
        raise ValueError("photos must name at least one photo.")
    loaded: Dict[str, np.ndarray] = {name: load_photo(name) for name in dict.fromkeys(photos)}
    scans, labels = _digits(digit_split)
    rng = np.random.default_rng(seed)
    out_dir = pathlib.Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image, boxes, classes = compose(rng, loaded[photos[i % len(photos)]], scans, labels, size, **compose_options)
        path = out_dir / "images" / f"{i:06d}.png"
        media.write_image(path, image)
        images.append(coco.CocoImage(str(path), size, size, i + 1))
        annotations.append(coco.ImageAnnotations(boxes, classes + 1))
    categories = [(d + 1, name) for d, name in enumerate(CLASSES)]
    path = out_dir / "annotations.json"
    coco.write_coco(path, coco.CocoSet(images, annotations, categories))
    return path
