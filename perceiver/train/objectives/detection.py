"""Object detection (DETR-style set prediction): COCO data, the Hungarian-matched set loss, the description.

Each image's boxes are matched one to one with the model's queries by
least DETR cost (`perceiver.boxes.match_in_jit`, inside the jitted loss);
matched queries learn their target's class and box (L1 and generalized IoU),
the others the "no object" class, down-weighted by `task.eos_coef`
(Carion et al. 2020). Targets are padded to `model.num_queries` with a mask.
"""

import dataclasses
import os
from typing import Any, Dict, List, Sequence, Tuple

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import boxes as box_ops
from perceiver import media
from perceiver import models
from perceiver.datasets import coco
from perceiver.tasks import detection as detection_task
from perceiver.train import data as data_lib
from perceiver.train import finetune
from perceiver.train.config import Config, ranged
from perceiver.train.objectives import classification, evaluation, generated
from perceiver.train.objectives import pretrained as pretrained_lib
from perceiver.train.objectives.kind import ObjectiveKind, size_rules
from perceiver.train.trainer import Objective

# The new modules of a detector made from an ImageNet classifier.
NEW_MODULES = ("detection_decoder", "class_head", "box_head")
# The tiny variant's generated sets: digits pasted on photos, photos held out.
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
EVAL_PHOTOS = ("china", "flower")


@dataclasses.dataclass
class DetectionDataSettings:
    """The `data` section: COCO annotation files (image `file_name` entries relative to each file)."""

    train_paths: Tuple[str, ...] = ()  # one COCO JSON file
    eval_paths: Tuple[str, ...] = ()  # at most one; its categories must be the training file's
    generate: bool = False  # write the copy-paste digits-on-photos sets under WORKDIR/generated
    generated_size: int = ranged(64, "[16, inf)")  # the generated images' side
    generated_images: int = ranged(256, "[1, inf)")  # generated training images (eval: a quarter)
    flip: bool = False  # random horizontal flips (off: flipping changes digits and text)
    workers: int = ranged(0, "[0, inf)")


@dataclasses.dataclass
class DetectionSettings:
    """The `task` section: where the encoder comes from, and the set loss's weights (DETR's)."""

    # A checkpoint file or a published ImageNet name ('imagenet_conv') of the
    # same variant and sizes, or 'none' (every module from a random start).
    pretrained: str = ""
    new_modules: Tuple[str, ...] = NEW_MODULES  # initialised afresh instead of loaded
    class_weight: float = ranged(1.0, "[0, inf)")  # cross-entropy, in the loss and the matching cost
    l1_weight: float = ranged(5.0, "[0, inf)")  # L1 of cxcywh fractions
    giou_weight: float = ranged(2.0, "[0, inf)")  # 1 - generalized IoU
    eos_coef: float = ranged(0.1, "[0, 1]")  # the "no object" class's weight in the cross-entropy


# The sizes of models.object_detector; num_classes 0: one per category of the training file.
MODEL_RULES = size_rules("object_detector", variant=models.IMAGENET_VARIANTS, num_classes="int [0, inf)")


class CocoBoxes:
    """A random-access source of `{'path', 'boxes' [Q, 4] cxcywh fractions, 'labels' [Q], 'mask' [Q]}`.

    Crowd annotations are left out (as DETR's training does); category ids
    become class indices in `category_ids`' order; targets are padded to
    `max_objects` rows with `mask` False.

    Raises:
      ValueError: naming the file and image, for an image with more objects than `max_objects`.
    """

    def __init__(self, dataset: coco.CocoSet, source: str, category_ids: Sequence[int], max_objects: int):
        self.source = source
        self.max_objects = max_objects
        index = {cid: i for i, cid in enumerate(category_ids)}
        self.items = []
        for image, ann in zip(dataset.images, dataset.annotations):
            keep = ~ann.crowd
            if keep.sum() > max_objects:
                raise ValueError(
                    f"{source}: image {image.id} ({image.path}) has {int(keep.sum())} objects; the "
                    f"model finds at most model.num_queries={max_objects}."
                )
            boxes = box_ops.normalize(box_ops.xyxy_to_cxcywh(box_ops.xywh_to_xyxy(ann.boxes[keep])),
                                      image.width, image.height)
            labels = np.array([index[c] for c in ann.category_ids[keep]], np.int32)
            self.items.append((image.path, np.clip(boxes, 0, 1).astype(np.float32), labels))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        path, boxes, labels = self.items[int(i)]
        n, q = len(labels), self.max_objects
        padded = np.zeros((q, 4), np.float32)
        padded[:n] = boxes
        classes = np.zeros(q, np.int32)
        classes[:n] = labels
        return {"path": path, "boxes": padded, "labels": classes, "mask": np.arange(q) < n}

    def __repr__(self) -> str:  # grain checks it when restoring an iterator
        return f"CocoBoxes({self.source!r}, images={len(self.items)}, max_objects={self.max_objects})"


class PrepareImage(grain.RandomMapTransform):
    """Reads the image, resizes and normalises it (`tasks.detection.prepare_image`), flips at random."""

    def __init__(self, image_size: int, flip: bool = False):
        self.image_size = image_size
        self.flip = flip

    def random_map(self, element, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        image = detection_task.prepare_image(media.read_image(element["path"]), self.image_size)
        boxes = element["boxes"]
        if self.flip and rng.uniform() < 0.5:
            image = image[:, ::-1]
            boxes = boxes.copy()
            boxes[:, 0] = np.where(element["mask"], 1 - boxes[:, 0], 0)
        out = {k: v for k, v in element.items() if k != "path"}
        return dict(out, images=np.ascontiguousarray(image), boxes=boxes)


def set_loss(logits, pred_boxes, labels, target_boxes, mask, task: DetectionSettings):
    """DETR's Hungarian-matched set loss, per example, and what it matched.

    Args:
      logits: `[B, Q, C + 1]` (the last class: no object); pred_boxes `[B, Q, 4]` cxcywh fractions.
      labels: int `[B, T]`; target_boxes `[B, T, 4]` cxcywh fractions; mask bool `[B, T]` (real targets).
      task: the weights.

    Returns:
      dict of `[B]` arrays: 'loss' (class_weight x weighted cross-entropy +
      l1_weight x L1 + giou_weight x (1 - GIoU), box terms averaged over
      the example's targets), 'ce', 'l1', 'giou', 'targets' (count),
      'correct' (matched queries whose most probable class is their
      target's), 'no_object_correct', 'no_object' (count of unmatched queries).
    """
    logits = logits.astype(jnp.float32)
    pred_boxes = pred_boxes.astype(jnp.float32)
    num_queries, no_object = logits.shape[1], logits.shape[2] - 1
    matched = box_ops.match_in_jit(
        logits, pred_boxes, labels, target_boxes, mask, task.class_weight, task.l1_weight, task.giou_weight
    )
    owner = box_ops.query_targets(matched, num_queries)  # [B, Q]: the target of each query, or -1
    has = owner >= 0
    index = jnp.maximum(owner, 0)
    query_labels = jnp.where(has, jnp.take_along_axis(labels, index, axis=1), no_object)
    query_boxes = jnp.take_along_axis(target_boxes, index[..., None], axis=1)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), query_labels[..., None], axis=-1)[..., 0]
    weight = jnp.where(has, 1.0, task.eos_coef)
    ce = jnp.sum(nll * weight, 1) / jnp.maximum(jnp.sum(weight, 1), 1e-9)
    hasf = has.astype(jnp.float32)
    targets = jnp.sum(hasf, 1)
    per_target = jnp.maximum(targets, 1.0)
    l1 = jnp.sum(jnp.abs(pred_boxes - query_boxes).sum(-1) * hasf, 1) / per_target
    g = box_ops.giou(box_ops.cxcywh_to_xyxy(pred_boxes), box_ops.cxcywh_to_xyxy(query_boxes))
    giou_loss = jnp.sum((1 - g) * hasf, 1) / per_target
    predicted = jnp.argmax(logits, -1)
    hit = (predicted == query_labels).astype(jnp.float32)
    return {
        "loss": task.class_weight * ce + task.l1_weight * l1 + task.giou_weight * giou_loss,
        "ce": ce, "l1": l1, "giou": jnp.sum(g * hasf, 1) / per_target, "targets": targets,
        "correct": jnp.sum(hit * hasf, 1), "no_object_correct": jnp.sum(hit * (1 - hasf), 1),
        "no_object": jnp.sum(1 - hasf, 1),
    }


def _read_set(paths: Sequence[str], what: str) -> Tuple[str, coco.CocoSet]:
    if len(paths) != 1:
        raise ValueError(f"data.{what} must name one COCO annotation file; got {list(paths)}.")
    path = os.path.expanduser(paths[0])
    return path, coco.read_coco(path)


def _eval_categories(path: str, dataset: coco.CocoSet, train: coco.CocoSet) -> None:
    known = dict(train.categories)
    for cid, name in dataset.categories:
        if known.get(cid, name) != name:
            raise ValueError(f"{path}: category {cid} is {name!r}; in the training file it is {known[cid]!r}.")
    for image, ann in zip(dataset.images, dataset.annotations):
        unknown = sorted({int(c) for c in ann.category_ids} - set(known))
        if unknown:
            raise ValueError(
                f"{path}: image {image.id} has category {unknown[0]}, which the training file has not."
            )


def _generate(workdir: str, d: DetectionDataSettings) -> None:
    from perceiver.datasets import copy_paste

    root = generated.generated_dir(workdir, "detection")
    made = []
    for name, photos, count, seed, digits in (
        ("train", TRAIN_PHOTOS, d.generated_images, 0, "train"),
        ("eval", EVAL_PHOTOS, max(1, d.generated_images // 4), 1, "eval"),
    ):
        folder = os.path.join(root, f"{name}-{d.generated_size}-{count}")
        path = os.path.join(folder, "annotations.json")
        if not os.path.exists(path):
            copy_paste.make_copy_paste_set(folder, photos, count, size=d.generated_size, seed=seed,
                                           digit_split=digits)
        made.append(path)
    d.train_paths, d.eval_paths = (made[0],), (made[1],)


def _stand_in_pretrained(workdir: str, sizes: Dict[str, Any]) -> str:
    """A stand-in for a published ImageNet model: a tiny classifier of the same variant and sizes."""
    kwargs = {k: v for k, v in sizes.items() if k not in ("num_classes", "num_queries", "variant")}
    size = kwargs["image_size"]
    return generated.stand_in_checkpoint(
        os.path.join(generated.generated_dir(workdir), f"pretrained_image_{sizes['variant']}.pystate"),
        models.imagenet_classifier(sizes["variant"], num_classes=1000, **kwargs),
        jnp.zeros((1, size, size, 3)),
    )


def detection_objective(config: Config, workdir: str, pretrained: bool = True) -> Objective:
    """The detector's `Objective` on `data.train_paths`' COCO file (generated sets for tiny runs).

    `model.num_classes` 0 is set to the training file's number of categories.
    """
    d, t = config.data, config.task
    sizes = dict(config.model)
    image_size, num_queries = int(sizes["image_size"]), int(sizes["num_queries"])
    load_pretrained = None
    # First: a missing checkpoint fails before any data is made.
    if pretrained:
        path = t.pretrained
        if d.generate and not path:
            path = _stand_in_pretrained(workdir, sizes)
        if not path:
            raise ValueError(
                f"{config.recipe} needs task.pretrained=PATH, a published ImageNet name "
                "(imagenet_conv), or 'none' (from scratch)."
            )
        if path != "none":
            load_pretrained = pretrained_lib.load_pretrained_fn(finetune.resolve_pretrained(path), t.new_modules)
    if d.generate:
        _generate(workdir, d)
    if not d.train_paths:
        raise ValueError(
            f"recipe {config.recipe!r} needs data.train_paths=FILE (a COCO annotation file), or --tiny."
        )
    train_path, train_set = _read_set(d.train_paths, "train_paths")
    category_ids = [cid for cid, _ in train_set.categories]
    names = [name for _, name in train_set.categories]
    train_source = CocoBoxes(train_set, train_path, category_ids, num_queries)
    eval_source = None
    if d.eval_paths:
        eval_path, eval_set = _read_set(d.eval_paths, "eval_paths")
        _eval_categories(eval_path, eval_set, train_set)
        eval_source = CocoBoxes(eval_set, eval_path, category_ids, num_queries)
    if not sizes.get("num_classes"):
        sizes["num_classes"] = config.model["num_classes"] = len(category_ids)
    if sizes["num_classes"] < len(category_ids):
        raise ValueError(
            f"model.num_classes ({sizes['num_classes']}) is smaller than the {len(category_ids)} "
            f"categories of {train_path}."
        )
    model = models.object_detector(**sizes)

    def outputs(params, state, key, batch, is_training):
        out, state = model.apply(params, state, key, batch["images"], is_training=is_training)
        terms = set_loss(out["logits"], out["boxes"], batch["labels"], batch["boxes"], batch["mask"], t)
        return terms, state

    def loss(params, state, key, batch):
        terms, state = outputs(params, state, key, batch, True)
        matched = jnp.maximum(jnp.sum(terms["targets"]), 1.0)
        metrics = {
            "class_acc": jnp.sum(terms["correct"]) / matched,
            "box_l1": jnp.mean(terms["l1"]),
            "giou": jnp.sum(terms["giou"] * terms["targets"]) / matched,
        }
        return jnp.mean(terms["loss"]), (metrics, state)

    def evaluate(params, state, batch):
        terms, _ = outputs(params, state, None, batch, False)
        w = batch["example_weights"]
        per_target = terms["targets"] * w
        return {
            "loss": evaluation.sums(terms["loss"], w),
            # Of the matched queries: the class right; the box's L1 and GIoU.
            "class_acc": (jnp.sum(terms["correct"] * w), jnp.sum(per_target)),
            "box_l1": evaluation.sums(terms["l1"], per_target),
            "giou": evaluation.sums(terms["giou"], per_target),
            # Of the other queries: "no object" predicted.
            "no_object_acc": (jnp.sum(terms["no_object_correct"] * w), jnp.sum(terms["no_object"] * w)),
        }

    def init(key):
        return model.init(key, jnp.zeros((1, image_size, image_size, 3)), is_training=True)

    def train_loader(batch_size, seed):
        return data_lib.make_loader(
            train_source, [PrepareImage(image_size, d.flip)], batch_size=batch_size, seed=seed,
            worker_count=d.workers,
        )

    eval_loader = evaluation.eval_loader_fn(eval_source, [PrepareImage(image_size)], d.workers)
    return Objective(
        init=init,
        loss=loss,
        evaluate=evaluate,
        train_loader=train_loader,
        eval_loader=eval_loader,
        num_train_examples=len(train_source),
        load_pretrained=load_pretrained,
        export_info=dict(factory="object_detector", classes=names, category_ids=category_ids, **sizes),
    )


def describe(config: Config, objective: Objective) -> Dict[str, Any]:
    """The detector, its input preparation, class names and COCO category ids."""
    sizes = dict(config.model)
    names: List[str] = classification.labels(objective, sizes["num_classes"])
    ids = list(objective.export_info.get("category_ids", []))[: len(names)]
    # Classes beyond the data's: ids after the largest.
    ids += list(range(max(ids, default=0) + 1, max(ids, default=0) + 1 + len(names) - len(ids)))
    return {
        "factory": "object_detector",
        "sizes": sizes,
        "task": {
            "image_size": int(sizes["image_size"]),
            "resize": "bicubic, whole image (aspect not kept)",
            "mean_rgb": list(detection_task.MEAN_RGB),
            "stddev_rgb": list(detection_task.STDDEV_RGB),
            "category_ids": [int(i) for i in ids],
        },
        "labels": names,
    }


# A DETR-style detector on the ImageNet classifier's encoder (from `task.pretrained`, or 'none').
OBJECT_DETECTION = ObjectiveKind(
    factory="object_detector", model_rules=MODEL_RULES, build=detection_objective, describe=describe,
)
