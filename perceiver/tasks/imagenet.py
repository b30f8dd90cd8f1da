"""ImageNet classification with the published Perceiver IO classifiers (section 4.5).

    classifier = ImageClassifier.from_pretrained("imagenet_conv")
    classifier.classify(image)        # [(label, probability), ...] x 5

Images are prepared as for the published evaluation: a centred square of
224/256 of the shorter side is cropped, resized to 224x224 with bicubic
interpolation, and normalised per channel with ImageNet's mean and standard
deviation.

Resizing: DeepMind's training and evaluation pipeline resized the crop with
`tf.image.resize(..., BICUBIC)` in float32 without clamping; their notebook
used OpenCV's `INTER_CUBIC` on uint8. We compute TensorFlow's resize: the
Keys cubic kernel (a = -0.5) sampled at half-pixel centres, without
antialiasing, taps outside the image dropped and the others renormalised, in
float and unclamped (equal to `jax.image.resize(method='cubic',
antialias=False)`, in numpy so that new image sizes compile nothing).
OpenCV's cubic uses a = -0.75 and rounds to uint8: on a 600x512 photograph
its kernel gives inputs 0.7 grey levels from ours on average, up to 21 at
sharp edges.
"""

from typing import List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from perceiver import _validation
from perceiver import checkpoint
from perceiver import labels as labels_lib
from perceiver import loading
from perceiver import media
from perceiver import models
from perceiver.tasks import _loading

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# The crop keeps 224 / (224 + 32) of the shorter side.
CROP_FRACTION = 224 / (224 + 32)

_CHECKPOINT_VARIANTS = {
    "imagenet_learned": "learned_position_encoding",
    "imagenet_fourier": "fourier_position_encoding",
    "imagenet_conv": "conv_preprocessing",
}


def center_crop(
    image: np.ndarray, crop_fraction: float = CROP_FRACTION, min_side: int = 0
) -> np.ndarray:
    """The centred square of side `int(crop_fraction * min(H, W))` of `[H, W, C]`.

    Offsets round up, as in DeepMind's pipeline: `(H - side + 1) // 2`. With
    `min_side`, the side is at least that many pixels (at most the shorter
    side), as the trainer's automatic evaluation crop keeps small images whole.
    """
    height, width = image.shape[:2]
    side = max(1, int(np.float32(crop_fraction) * np.float32(min(height, width))))
    if min_side:
        side = min(min(height, width), max(side, int(min_side)))
    top = (height - side + 1) // 2
    left = (width - side + 1) // 2
    return image[top : top + side, left : left + side]


def _keys_cubic_weights(size_in: int, size_out: int) -> np.ndarray:
    """`[size_out, size_in]` resampling matrix of TensorFlow's bicubic resize."""
    centres = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    x = np.abs(centres[:, None] - np.arange(size_in)[None, :])
    near = (1.5 * x - 2.5) * x * x + 1
    far = ((-0.5 * x + 2.5) * x - 4) * x + 2
    weights = np.where(x < 1, near, np.where(x < 2, far, 0.0))
    return weights / weights.sum(axis=1, keepdims=True)


def resize_bicubic(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes `[H, W, C]` to `[size, size, C]` float32 as `tf.image.resize` BICUBIC."""
    height, width, channels = image.shape
    rows = _keys_cubic_weights(height, size)
    cols = _keys_cubic_weights(width, size)
    out = rows @ image.astype(np.float64).reshape(height, width * channels)
    return (cols @ out.reshape(size, width, channels)).astype(np.float32)


def preprocess(
    image, image_size: int = 224, crop_fraction: float = CROP_FRACTION, min_crop_size: int = 0
) -> np.ndarray:
    """Centre-crops, resizes and normalises one image for the classifier.

    Args:
      image: `[H, W, 3]` RGB with values in 0..255 (uint8, or any real dtype
        on that scale), e.g. `perceiver.media.read_image(path)` (upright, as EXIF says).
      image_size: side of the output (the model's, 224).
      crop_fraction: fraction of the shorter side kept by the centre crop.
      min_crop_size: the least side of the crop in pixels (0: none; never
        more than the shorter side).

    Returns:
      `[image_size, image_size, 3]` float32, `(pixel - MEAN_RGB) / STDDEV_RGB`.

    Raises:
      ValueError: if image is not `[H, W, 3]` with H, W >= 1, or holds NaN
        or Inf.
      TypeError: if image is not numeric.
    """
    _validation.check_rank("image", image, (3,), "[H, W, 3] RGB")
    image = np.asarray(image)
    if image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be [H, W, 3] RGB; got shape {image.shape}.")
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise TypeError(f"image must hold numbers in 0..255; got dtype {image.dtype}.")
    # The whole image, not just the crop: NaN anywhere means a broken input.
    media.check_finite("image", image)
    _validation.check_positive_int("image_size", image_size)
    crop = center_crop(image, crop_fraction, min_crop_size).astype(np.float32)
    if crop.shape[:2] != (image_size, image_size):
        crop = resize_bicubic(crop, image_size)
    return ((crop - np.float32(MEAN_RGB)) / np.float32(STDDEV_RGB)).astype(np.float32)


class ImageClassifier:
    """Classifies images with a Perceiver IO ImageNet model.

    Attributes:
      variant: the model variant.
      image_size: the side of the model's input (224).
      class_names: the name of each class (the labels given, else
        ImageNet's for 1000 classes, else the indices as str).
      batch_size: most images per call.
      crop_fraction: the share of the shorter side the centre crop keeps.
      min_crop_size: the least side of the centre crop (0: none).
      params, state: the model's parameters and state.
      sizes: the `perceiver.models.imagenet_classifier` keywords besides the
        variant (the model is `imagenet_classifier(variant, **sizes)`).
    """

    def __init__(
        self,
        params: Mapping,
        state: Optional[Mapping] = None,
        *,
        variant: str,
        batch_size: int = 8,
        labels: Optional[Sequence[str]] = None,
        crop_fraction: float = CROP_FRACTION,
        min_crop_size: int = 0,
        **sizes,
    ):
        """Wraps parameters of `perceiver.models.imagenet_classifier(variant, **sizes)`.

        Args:
          params: the model's parameters.
          state: its state (BatchNorm statistics for 'conv_preprocessing').
          variant: 'learned_position_encoding', 'fourier_position_encoding'
            or 'conv_preprocessing'.
          batch_size: most images per call.
          labels: the name of each class, in the order of the logits (e.g.
            the folder names a model was trained on); None: ImageNet's for
            1000 classes, else the indices as str.
          crop_fraction: the share of the shorter side kept by the centre
            crop, in (0, 1].
          min_crop_size: the least side of the centre crop in pixels (0:
            none), e.g. the model's image size to keep small images whole.
          **sizes: `imagenet_classifier`'s size keywords.

        Raises:
          ValueError: for an unknown variant, labels that do not name each
            class, or a crop_fraction outside (0, 1].
          TypeError: for an unknown size keyword or a non-int batch_size.
          perceiver.checkpoint.CheckpointError: if params or state do not fit
            the model, listing every difference.
        """
        config = models.factory_sizes("imagenet_classifier", variant=variant, **sizes)
        _validation.check_choice("variant", variant, models.IMAGENET_VARIANTS)
        _validation.check_positive_int("batch_size", batch_size)
        if isinstance(crop_fraction, bool) or not isinstance(crop_fraction, (int, float)) or not (
            0 < crop_fraction <= 1
        ):
            raise ValueError(f"crop_fraction must be a number in (0, 1]; got {crop_fraction!r}.")
        if isinstance(min_crop_size, bool) or not isinstance(min_crop_size, (int, np.integer)) or (
            min_crop_size < 0
        ):
            raise ValueError(f"min_crop_size must be an int >= 0; got {min_crop_size!r}.")
        named = _loading.Description().class_names(labels, config["num_classes"])
        state = {} if state is None else state
        _loading.check_fits("imagenet_classifier", params, state, variant=variant, **sizes)
        self.variant = variant
        self.image_size: int = config["image_size"]
        self.batch_size = batch_size
        self.crop_fraction = float(crop_fraction)
        self.min_crop_size = int(min_crop_size)
        num_classes = config["num_classes"]
        if named is not None:
            self.class_names: Tuple[str, ...] = named
        elif num_classes == 1000:
            self.class_names = labels_lib.imagenet_labels()
        else:  # Another model: name classes by index.
            self.class_names = tuple(str(i) for i in range(num_classes))
        self.params = jax.device_put(params)
        self.state = jax.device_put(state)
        self.sizes = dict(sizes)
        model = models.imagenet_classifier(variant, **sizes)

        def probabilities(params, state, images):
            logits, _ = model.apply(params, state, None, images)
            return jax.nn.softmax(logits, axis=-1)

        self._probabilities = jax.jit(probabilities)

    @classmethod
    def from_pretrained(
        cls,
        name: str = "imagenet_conv",
        *,
        variant: Optional[str] = None,
        cache_dir: Optional[str] = None,
        progress: bool = True,
        batch_size: Optional[int] = None,
        labels: Optional[Sequence[str]] = None,
        crop_fraction: Optional[float] = None,
        min_crop_size: Optional[int] = None,
        **sizes,
    ) -> "ImageClassifier":
        """A published classifier (downloaded once), or a checkpoint file of one.

        A file's description (`NAME.json` beside it, see
        `perceiver.checkpoint.save_description`) gives its sizes (the variant
        among them), class names (`labels`, e.g. the training folders') and
        `task.batch_size`, `task.crop_fraction`, `task.min_crop_size` (the
        evaluation crop of training); keywords given here override it.

        Args:
          name: 'imagenet_conv' (the most accurate), 'imagenet_fourier',
            'imagenet_learned', or the path of a checkpoint.
          variant: the model variant; for a path, None takes the
            description's, else tries each variant and takes the one whose
            parameter tree fits.
          cache_dir: where downloads are kept (see `perceiver.hub.fetch`).
          progress: show a download progress bar (only when stderr is a
            terminal).
          batch_size, labels, crop_fraction, min_crop_size: as in the
            constructor; None: the description's, else the constructor's
            defaults.
          **sizes: the sizes the checkpoint was made for (default: its
            description's, else the published ones).

        Raises:
          ValueError: if variant contradicts a published name, or for a word
            that is neither a file nor a checkpoint name.
          FileNotFoundError: for a path to nothing.
          perceiver.checkpoint.CheckpointError: for a folder or a file that is
            not a checkpoint, saying what it is (a description, an image...);
            if the file fits no variant (or not the one given), showing the
            differences of the closest; or its description is of another
            model or names another number of classes.
        """
        name = _loading.resolve_for(name, "imagenet_classifier")
        description = _loading.read_description(name, "imagenet_classifier")
        sizes = description.sizes_with(sizes)
        # The variant is a factory argument (sizes); older sidecars put it in task.
        described_variant = sizes.pop("variant", None) or description.task.get("variant")
        if _loading.is_published(name) and name in _CHECKPOINT_VARIANTS:
            if variant is not None and variant != _CHECKPOINT_VARIANTS[name]:
                raise ValueError(
                    f"checkpoint {name!r} is variant {_CHECKPOINT_VARIANTS[name]!r}; got "
                    f"variant={variant!r}."
                )
            variant = _CHECKPOINT_VARIANTS[name]
        variant = variant or described_variant
        options = dict(
            batch_size=description.option("batch_size", batch_size, 8),
            crop_fraction=description.option("crop_fraction", crop_fraction, CROP_FRACTION),
            min_crop_size=description.option("min_crop_size", min_crop_size, 0),
        )
        _check_normalisation(description)
        num_classes = models.factory_sizes(
            "imagenet_classifier", variant=variant or models.IMAGENET_VARIANTS[0], **sizes
        )["num_classes"]
        options["labels"] = description.class_names(labels, num_classes)
        path = _loading.fetch(name, cache_dir=cache_dir, progress=progress)
        try:
            params, state = checkpoint.load(path)
        except checkpoint.CheckpointError as e:
            raise _loading.mismatch(name, path, e) from None
        candidates = models.IMAGENET_VARIANTS if variant is None else (variant,)
        for candidate in candidates:
            try:
                return cls(params, state, variant=candidate, **options, **sizes)
            except checkpoint.CheckpointError:
                pass
        error = _misfit_error(path, candidates, params, state, sizes)
        raise _loading.mismatch(name, path, error, description) from None

    def preprocess(self, image) -> np.ndarray:
        """`preprocess` (module function) at this model's image size and crop: `[S, S, 3]` float32."""
        return preprocess(image, self.image_size, self.crop_fraction, self.min_crop_size)

    def probabilities(self, images) -> np.ndarray:
        """Class probabilities `[N, num_classes]` of one image or a list of them.

        Args:
          images: one `[H, W, 3]` image (0..255), a sequence of them (any
            sizes), or an already preprocessed batch `[N, S, S, 3]` float32.

        Raises:
          ValueError: for images of a bad shape, or holding NaN or Inf
            (before the model runs).
          TypeError: for non-numeric images.
        """
        want = (self.image_size, self.image_size, 3)
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if images.shape[1:] != want:
                raise ValueError(
                    f"a batch of images must be preprocessed [N, {want[0]}, {want[1]}, 3]; "
                    f"got shape {images.shape} (pass a list of raw images instead)."
                )
            batch = images.astype(np.float32)
            media.check_finite("images", batch)
        else:
            if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
                images = [images]  # One image (an array, or e.g. a PIL image).
            batch = np.zeros((len(images),) + want, np.float32)
            for i, image in enumerate(images):
                try:
                    batch[i] = self.preprocess(image)
                except ValueError as e:
                    if len(images) == 1:
                        raise
                    raise ValueError(f"images[{i}]: {e}") from e
        out = []
        for first in range(0, len(batch), self.batch_size):
            chunk = batch[first : first + self.batch_size]
            # Batches are padded to a power of two (at most batch_size), so
            # that few shapes are compiled.
            rows = min(1 << (len(chunk) - 1).bit_length(), self.batch_size)
            padded = np.zeros((rows,) + chunk.shape[1:], np.float32)
            padded[: len(chunk)] = chunk
            probabilities = self._probabilities(self.params, self.state, padded)
            out.append(np.asarray(probabilities)[: len(chunk)])
        if not out:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.concatenate(out)

    def classify(self, images, top_k: int = 5) -> List[List[Tuple[str, float]]]:
        """The top-k `(class name, probability)` of each image, most probable first.

        Args:
          images: as `probabilities`.
          top_k: classes per image.

        Returns:
          One list per image (a list of one for a single image).

        Raises:
          ValueError, TypeError: as `probabilities`, and for top_k < 1.
        """
        _validation.check_positive_int("top_k", top_k)
        results = []
        for probs in self.probabilities(images):
            order = np.argsort(-probs, kind="stable")[:top_k]
            results.append([(self.class_names[i], float(probs[i])) for i in order])
        return results


def _misfit_error(
    path, variants: Sequence[str], params: Mapping, state: Mapping, sizes: Mapping
) -> checkpoint.CheckpointError:
    """Why `params, state` fit none of `variants`: the closest variant's differences, counted.

    The message stays short whatever the number of variants (the closest
    one's first differences, and each other's count); `.differences` lists
    all of the closest one's.
    """
    found = []
    for variant in variants:
        lines = loading.tree_differences(
            "imagenet_classifier", params, state, dict(variant=variant, **sizes)
        )
        found.append((len(lines), variant, lines))
    _, closest, lines = min(found)
    model = loading.describe("imagenet_classifier", dict(variant=closest, **sizes))
    if len(variants) == 1:
        header = f"{path} does not fit {model}"
    else:
        others = "; ".join(f"as {v}: {n} differences" for n, v, _ in sorted(found)[1:])
        header = f"{path} fits no ImageNet classifier ({others}); the closest is {model}"
    return checkpoint.differences_error(header, lines, shown=loading.SHOWN)


def _check_normalisation(description: "_loading.Description") -> None:
    """Refuses a description whose input scaling is not this task's (ImageNet's mean and std)."""
    for key, ours in (("mean_rgb", MEAN_RGB), ("stddev_rgb", STDDEV_RGB)):
        given = description.task.get(key)
        if given is None:
            continue
        try:
            same = np.shape(given) == (3,) and np.allclose(np.asarray(given, np.float64), ours, rtol=1e-6)
        except (TypeError, ValueError):  # not numbers
            same = False
        if not same:
            raise checkpoint.CheckpointError(
                f"{description.source}: task.{key} must be ImageNet's {list(ours)}, which this "
                f"task normalises with; got {given!r}."
            )

