"""Image-folder data sets (ImageNet layout) and their grain transforms.

    root/
      class_a/ img0.jpg img1.png ...
      class_b/ ...

Classes are the sub-folder names in sorted order (label i is the i-th);
images are read with Pillow.
"""

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import grain.python as grain
import numpy as np
from PIL import Image

from perceiver import media
from perceiver.train import augment

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFolder:
    """A random-access source of `{'path': str, 'label': int}` from an image folder.

    Args:
      root: the folder, with one sub-folder per class.
      classes: class names in label order (default: the sorted sub-folders).
        Pass the training set's to an evaluation set so labels agree.

    Raises:
      FileNotFoundError: if `root` is not a folder.
      ValueError: if a class folder is missing or no image is found.
    """

    def __init__(self, root: str, classes: Optional[Sequence[str]] = None):
        root = os.path.expanduser(os.fspath(root))
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"image folder {root!r} does not exist (expected one sub-folder per class)."
            )
        if classes is None:
            classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.root = root
        self.classes: List[str] = list(classes)
        self.samples: List[Tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                raise ValueError(f"class folder {folder!r} is missing.")
            for dirpath, _, files in sorted(os.walk(folder)):
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        self.samples.append((os.path.relpath(os.path.join(dirpath, f), root), label))
        if not self.samples:
            raise ValueError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}; expected "
                "root/CLASS/IMAGE files."
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Mapping[str, object]:
        path, label = self.samples[int(index)]
        return {"path": os.path.join(self.root, path), "label": label}

    def __repr__(self) -> str:  # grain checks it when restoring an iterator
        return f"ImageFolder(root={self.root!r}, images={len(self.samples)}, classes={len(self.classes)})"


def load_rgb(path: str) -> Image.Image:
    """An image file as RGB, upright and 16-bit grey scaled, as `perceiver.media.read_image` reads it."""
    # The same reading as at inference: a model trained on sideways portrait
    # photos would meet them upright in `perceiver classify`.
    return Image.fromarray(media.read_image(path))


class TrainImageTransform(grain.RandomMapTransform):
    """Decode, random resized crop, flip, RandAugment, resize, normalise.

    The reference's order: RandAugment acts on the 8-bit crop at its own
    resolution, before the bicubic resize to `image_size`.

    Args:
      image_size: the model's input side.
      randaugment_layers, randaugment_magnitude: RandAugment (0 layers: off).
      flip: random horizontal flips.
      crop_area: the share of the image's area a random crop covers, (min, max).
      keep_small: images whose short side is at most `image_size` get the
        evaluation crop instead of a random one (cropping them further would
        leave a few pixels).
      crop_fraction: the evaluation crop's fraction (see `augment.eval_crop_box`).
    """

    def __init__(
        self,
        image_size: int,
        randaugment_layers: int = 4,
        randaugment_magnitude: float = 5,
        flip: bool = True,
        crop_area: Tuple[float, float] = (0.08, 1.0),
        keep_small: bool = True,
        crop_fraction: float = 0.0,
    ):
        self.image_size = image_size
        self.randaugment_layers = randaugment_layers
        self.randaugment_magnitude = randaugment_magnitude
        self.flip = flip
        self.crop_area = tuple(crop_area)
        self.keep_small = keep_small
        self.crop_fraction = crop_fraction

    def random_map(self, element, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        image = load_rgb(element["path"])
        if self.keep_small and min(image.height, image.width) <= self.image_size:
            box = augment.eval_crop_box(
                image.height, image.width, self.image_size, self.crop_fraction
            )
        else:
            box = augment.random_resized_crop_box(
                rng, image.height, image.width, area_range=self.crop_area,
                image_size=self.image_size, crop_fraction=self.crop_fraction,
            )
        top, left, h, w = box
        image = image.crop((left, top, left + w, top + h))
        if self.flip and rng.uniform() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if self.randaugment_layers > 0:
            image = augment.randaugment(
                image, rng, self.randaugment_layers, self.randaugment_magnitude
            )
        pixels = np.asarray(image.resize((self.image_size,) * 2, Image.BICUBIC), np.float32)
        return {"images": augment.normalize(pixels), "labels": np.int32(element["label"])}


class EvalImageTransform(grain.MapTransform):
    """Decode, centre crop, resize (bicubic), normalise.

    The crop is `augment.eval_crop_box`: by default (`crop_fraction` 0) the
    reference's 224/256 of the short side for large images, and the whole
    short side for images no larger than `image_size`.
    """

    def __init__(self, image_size: int, crop_fraction: float = 0.0):
        self.image_size = image_size
        self.crop_fraction = crop_fraction

    def map(self, element) -> Dict[str, np.ndarray]:
        image = load_rgb(element["path"])
        box = augment.eval_crop_box(image.height, image.width, self.image_size, self.crop_fraction)
        pixels = augment.crop_and_resize(image, box, self.image_size)
        return {"images": augment.normalize(pixels), "labels": np.int32(element["label"])}


class MixTransform(grain.RandomMapTransform):
    """MixUp/CutMix on a batch of 2B (see `augment.mix_batch`), giving B."""

    def __init__(self, mixup_alpha: float, cutmix: bool):
        self.mixup_alpha = mixup_alpha
        self.cutmix = cutmix

    def random_map(self, element, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        return augment.mix_batch(element, rng, mixup_alpha=self.mixup_alpha, cutmix=self.cutmix)


def write_generated_folder(
    root: str,
    *,
    num_classes: int = 3,
    images_per_class: int = 24,
    size: int = 40,
    seed: int = 0,
) -> str:
    """Writes a small labelled image folder (PNG) whose classes are learnable.

    Class k has its own base colour and stripe orientation; every image adds
    random shifts, noise and a random disc, so a model must look at the
    image. Nothing is written if `root` already holds the expected files.

    Returns:
      `root`.
    """
    rng = np.random.default_rng(seed)
    hues = np.linspace(0, 1, num_classes, endpoint=False)
    ys, xs = np.mgrid[0:size, 0:size] / size
    marker = os.path.join(root, f".complete-{num_classes}-{images_per_class}-{size}-{seed}")
    if os.path.exists(marker):
        return root
    for k in range(num_classes):
        folder = os.path.join(root, f"class_{k:02d}")
        os.makedirs(folder, exist_ok=True)
        base = np.array([np.cos(2 * np.pi * (hues[k] + o)) for o in (0, 1 / 3, 2 / 3)]) * 0.35 + 0.5
        angle = np.pi * k / num_classes
        for i in range(images_per_class):
            phase = rng.uniform(0, 2 * np.pi)
            stripes = np.sin(2 * np.pi * 4 * (xs * np.cos(angle) + ys * np.sin(angle)) + phase)
            img = base[None, None, :] + 0.2 * stripes[..., None]
            cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.1, 0.25)]
            disc = (ys - cy) ** 2 + (xs - cx) ** 2 < r * r
            img[disc] = rng.uniform(0, 1, 3)
            img += rng.normal(0, 0.05, img.shape)
            pixels = (np.clip(img, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"img_{i:03d}.png"))
    open(marker, "w").close()
    return root
