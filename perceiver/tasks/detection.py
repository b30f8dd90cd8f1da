"""Object detection with a DETR-style Perceiver IO model (`perceiver.models.object_detector`).

Such a model is what `perceiver train --config finetune_detection` trains:
the ImageNet classifier's encoder read by N learned queries, each giving
class logits (the last class: no object) and one box. Exported with
`--export model.pystate`, its description (`model.json`) gives its sizes,
class names and COCO category ids, so

    detector = ObjectDetector.from_pretrained("model.pystate")
    (found,) = detector.detect(image, threshold=0.5)
    found.boxes, found.labels, found.scores      # xyxy pixels of `image`

Images of any size are resized (without keeping the aspect) to the model's
square input, as in training (`prepare_image`), and boxes scaled back to
the image's pixels. Each query gives at most one detection: its most
probable object class, scored by that class's probability.
"""

import dataclasses
from typing import List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from perceiver import _validation
from perceiver import boxes as box_ops
from perceiver import checkpoint
from perceiver import media
from perceiver import models
from perceiver.tasks import _loading

# ImageNet's normalisation: the encoder is the ImageNet classifier's.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
DEFAULT_THRESHOLD = 0.5


def _cubic_weights(size_in: int, size_out: int) -> np.ndarray:
    """`[size_out, size_in]` bicubic (Keys, a = -0.5) resampling, widened when shrinking (antialiased)."""
    scale = max(size_in / size_out, 1.0)
    centres = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    x = np.abs(centres[:, None] - np.arange(size_in)[None, :]) / scale
    near = (1.5 * x - 2.5) * x * x + 1
    far = ((-0.5 * x + 2.5) * x - 4) * x + 2
    weights = np.where(x < 1, near, np.where(x < 2, far, 0.0))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def prepare_image(image, image_size: int) -> np.ndarray:
    """Resizes one image to `[image_size, image_size, 3]` and normalises it as the ImageNet classifier.

    The whole image is resized (bicubic, antialiased when shrinking), so a
    box in fractions of the image is the same box in the model's input.
    Training (`perceiver.train.objectives.detection`) prepares its images here too.

    Args:
      image: `[H, W, 3]` RGB in 0..255 (uint8 or a real dtype on that scale).
      image_size: the model's input side.

    Returns:
      float32 `[image_size, image_size, 3]`, `(pixel - MEAN_RGB) / STDDEV_RGB`.

    Raises:
      ValueError: for a shape other than `[H, W, 3]` with H, W >= 1, or NaN / Inf.
      TypeError: for a non-numeric image.
    """
    _validation.check_rank("image", image, (3,), "[H, W, 3] RGB")
    image = np.asarray(image)
    if image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be [H, W, 3] RGB; got shape {image.shape}.")
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise TypeError(f"image must hold numbers in 0..255; got dtype {image.dtype}.")
    media.check_finite("image", image)
    pixels = image.astype(np.float32)
    height, width = pixels.shape[:2]
    if (height, width) != (image_size, image_size):
        rows = _cubic_weights(height, image_size) @ pixels.reshape(height, width * 3)
        pixels = np.einsum("ow,hwc->hoc", _cubic_weights(width, image_size), rows.reshape(image_size, width, 3))
    return ((pixels - np.float32(MEAN_RGB)) / np.float32(STDDEV_RGB)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Detections:
    """What was found in one image, most confident first.

    Attributes:
      boxes: float32 `[D, 4]` (x0, y0, x1, y1) in pixels of the image given.
      scores: float32 `[D]`: the probability of the class found.
      classes: int `[D]`: class indices (the model's outputs' order).
      labels: the class names, `D` of them.
      category_ids: int `[D]`: the COCO category ids of the classes.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    labels: Tuple[str, ...]
    category_ids: np.ndarray

    def to_json(self) -> List[dict]:
        """One `{'label', 'category_id', 'score', 'box': [x0, y0, x1, y1]}` per detection."""
        return [
            {"label": label, "category_id": int(cid), "score": float(score), "box": [float(v) for v in box]}
            for label, cid, score, box in zip(self.labels, self.category_ids, self.scores, self.boxes)
        ]


class ObjectDetector:
    """Finds objects with a `perceiver.models.object_detector` model.

    Attributes:
      image_size: the side of the model's square input.
      num_classes: object classes (without "no object").
      num_queries: the most objects found per image.
      class_names: the name of each class.
      category_ids: the COCO category id of each class.
      batch_size: most images per model call.
      sizes: the `object_detector` keywords of the model.
    """

    def __init__(
        self,
        params: Mapping,
        state: Optional[Mapping] = None,
        *,
        labels: Optional[Sequence[str]] = None,
        category_ids: Optional[Sequence[int]] = None,
        batch_size: int = 8,
        **sizes,
    ):
        """Wraps parameters of `perceiver.models.object_detector(**sizes)`.

        Args:
          params, state: the model's parameters and state.
          labels: the name of each class (default: the indices as str).
          category_ids: the COCO category id of each class (default 1..C).
          batch_size: most images per model call.
          **sizes: `object_detector`'s keywords: num_classes (required), variant, ...

        Raises:
          TypeError: for a missing num_classes, an unknown keyword or a non-int batch_size.
          ValueError: for labels or category ids that are not one per class.
          perceiver.checkpoint.CheckpointError: if params or state do not fit the model.
        """
        config = models.factory_sizes("object_detector", **sizes)
        _validation.check_positive_int("batch_size", batch_size)
        state = {} if state is None else state
        _loading.check_fits("object_detector", params, state, **sizes)
        self.num_classes: int = config["num_classes"]
        self.num_queries: int = config["num_queries"]
        self.image_size: int = config["image_size"]
        named = _loading.Description().class_names(labels, self.num_classes)
        self.class_names: Tuple[str, ...] = named or tuple(str(i) for i in range(self.num_classes))
        ids = list(range(1, self.num_classes + 1)) if category_ids is None else list(category_ids)
        if len(ids) != self.num_classes or not all(isinstance(i, (int, np.integer)) for i in ids):
            raise ValueError(f"category_ids must be {self.num_classes} ints, one per class; got {ids!r:.100}.")
        self.category_ids = np.asarray(ids, np.int64)
        self.batch_size = batch_size
        self.sizes = dict(sizes)
        self._params = jax.device_put(params)
        self._state = jax.device_put(state)
        model = models.object_detector(**sizes)

        def predict(params, state, images):
            out, _ = model.apply(params, state, None, images)
            return jax.nn.softmax(out["logits"].astype(np.float32), axis=-1), out["boxes"]

        self._predict = jax.jit(predict)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        cache_dir: Optional[str] = None,
        progress: bool = True,
        labels: Optional[Sequence[str]] = None,
        batch_size: Optional[int] = None,
        **sizes,
    ) -> "ObjectDetector":
        """A detector from a checkpoint file that `perceiver train --config finetune_detection --export` wrote.

        Its description (`NAME.json` beside it) gives the sizes, class names
        and `task.category_ids`; keywords given here override it.

        Raises:
          ValueError: for a published name (none is a detector), or a word
            that is neither a file nor a checkpoint name.
          FileNotFoundError: for a path to nothing.
          perceiver.checkpoint.CheckpointError: for a file that is not a
            checkpoint, does not fit, or whose description is of another
            model, or when nothing gives the number of classes.
        """
        from perceiver import hub

        if _loading.is_published(path):
            raise ValueError(
                f"{path!r} is a published {hub.get(path).factory} checkpoint, not an object "
                "detector; fine-tune one from it (perceiver train --config finetune_detection "
                f"task.pretrained={path} ... --export model.pystate) and give that file."
            )
        path = _loading.resolve_for(path, "object_detector")
        description = _loading.read_description(path, "object_detector")
        sizes = description.sizes_with(sizes)
        named = labels if labels is not None else description.labels
        if "num_classes" not in sizes:
            if named is None:
                raise checkpoint.CheckpointError(
                    f"{path}: the number of classes is unknown: no description gives "
                    "sizes.num_classes or labels; pass num_classes= and the sizes."
                )
            sizes["num_classes"] = len(named)
        for key, ours in (("mean_rgb", MEAN_RGB), ("stddev_rgb", STDDEV_RGB)):
            given = description.task.get(key)
            if given is not None and not np.allclose(np.asarray(given, np.float64), ours):
                raise checkpoint.CheckpointError(
                    f"{description.source}: task.{key} must be ImageNet's {list(ours)}; got {given!r}."
                )
        labels = description.class_names(labels, sizes["num_classes"])
        category_ids = description.task.get("category_ids")
        batch_size = description.option("batch_size", batch_size, 8)
        return _loading.build_from_checkpoint(
            lambda params, state: cls(
                params, state, labels=labels, category_ids=category_ids, batch_size=batch_size, **sizes
            ),
            path,
            cache_dir=cache_dir,
            progress=progress,
            description=description,
        )

    def predict(self, images) -> Tuple[np.ndarray, np.ndarray]:
        """Every query's class probabilities `[N, Q, C + 1]` and box `[N, Q, 4]` (cxcywh fractions).

        Args:
          images: one `[H, W, 3]` image (0..255) or a sequence of them, any sizes.

        Raises:
          ValueError, TypeError: as `prepare_image` (naming the image's index).
        """
        if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
            images = [images]
        batch = np.zeros((len(images), self.image_size, self.image_size, 3), np.float32)
        for i, image in enumerate(images):
            try:
                batch[i] = prepare_image(image, self.image_size)
            except ValueError as e:
                if len(images) == 1:
                    raise
                raise ValueError(f"images[{i}]: {e}") from e
        probs, boxes = [], []
        for first in range(0, len(batch), self.batch_size):
            chunk = batch[first : first + self.batch_size]
            # Padded to a power of two (at most batch_size): few shapes compile.
            rows = min(1 << (len(chunk) - 1).bit_length(), self.batch_size)
            padded = np.zeros((rows,) + chunk.shape[1:], np.float32)
            padded[: len(chunk)] = chunk
            p, b = self._predict(self._params, self._state, padded)
            probs.append(np.asarray(p, np.float32)[: len(chunk)])
            boxes.append(np.asarray(b, np.float32)[: len(chunk)])
        if not probs:
            return np.zeros((0, self.num_queries, self.num_classes + 1), np.float32), np.zeros(
                (0, self.num_queries, 4), np.float32
            )
        return np.concatenate(probs), np.concatenate(boxes)

    def detect(self, images, threshold: float = DEFAULT_THRESHOLD) -> List[Detections]:
        """The objects in each image scored above `threshold`, boxes in its own pixels.

        Args:
          images: one `[H, W, 3]` image (0..255) or a sequence of them, any sizes.
          threshold: the least score kept, in [0, 1) (0 keeps every query).

        Returns:
          One `Detections` per image (a list of one for a single image).

        Raises:
          ValueError: for a threshold outside [0, 1), or as `predict`.
          TypeError: as `predict`.
        """
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
            raise ValueError(f"threshold must be a number in [0, 1); got {threshold!r}.")
        single = isinstance(images, np.ndarray) or not isinstance(images, Sequence)
        images = [images] if single else list(images)
        probs, boxes = self.predict(images)
        out = []
        for image, p, b in zip(images, probs, boxes):
            height, width = np.shape(image)[:2]
            classes = p[:, :-1].argmax(-1)
            scores = p[np.arange(len(p)), classes]
            keep = np.nonzero(scores > threshold if threshold > 0 else np.ones(len(p), bool))[0]
            keep = keep[np.argsort(-scores[keep], kind="stable")]
            xyxy = box_ops.to_pixels(box_ops.cxcywh_to_xyxy(b[keep].astype(np.float64)), width, height)
            xyxy = np.clip(xyxy, 0, [width, height, width, height]).astype(np.float32)
            out.append(
                Detections(
                    boxes=xyxy.reshape(-1, 4),
                    scores=scores[keep].astype(np.float32),
                    classes=classes[keep].astype(np.int64),
                    labels=tuple(self.class_names[c] for c in classes[keep]),
                    category_ids=self.category_ids[classes[keep]],
                )
            )
        return out

    def evaluate(self, annotation_file, max_detections: int = 100):
        """COCO box mAP on an annotation file (`perceiver.evaluation.detection.coco_map`).

        Every query's detection is scored (no threshold), matched to the
        file's boxes by category id.

        Args:
          annotation_file: a COCO JSON file (image paths relative to it).
          max_detections: detections kept per image and category.

        Returns:
          `perceiver.evaluation.detection.DetectionScores` (map, map_50, map_75, ...).

        Raises:
          ValueError: naming the file and the annotation, for a bad file (`read_coco`).
        """
        from perceiver.datasets import coco
        from perceiver.evaluation import detection as detection_eval

        dataset = coco.read_coco(annotation_file)
        found = []
        for first in range(0, len(dataset.images), self.batch_size):
            chunk = dataset.images[first : first + self.batch_size]
            for d in self.detect([media.read_image(image.path) for image in chunk], threshold=0.0):
                found.append(detection_eval.ImageDetections(box_ops.xyxy_to_xywh(d.boxes), d.scores, d.category_ids))
        return detection_eval.coco_map(dataset.annotations, found, max_detections=max_detections)
