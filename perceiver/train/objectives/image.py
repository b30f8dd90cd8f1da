"""Image classification: the image-folder section, the classifier's objective and its description."""

import dataclasses
import functools
import os
from typing import Any, Dict, Tuple

import jax.numpy as jnp

from perceiver import models
from perceiver.train import augment
from perceiver.train import data as data_lib
from perceiver.train import finetune
from perceiver.train import images as images_lib
from perceiver.train.config import Config, Interval, ranged
from perceiver.train.objectives import classification, evaluation, generated
from perceiver.train.objectives import pretrained as pretrained_lib
from perceiver.train.objectives.kind import ObjectiveKind, size_rules
from perceiver.train.trainer import Objective


@dataclasses.dataclass
class ImageDataSettings:
    """The `data` section: an image folder per split (ImageNet layout), cropping and augmentation.

    Crops (a centred square to evaluate, a random box to train) are resized
    (bicubic) to model.image_size. Evaluation takes a centred square of `eval_crop_fraction` of the short
    side; 0 (the default) is the reference's image_size / (image_size + 32)
    (224/256 at 224) but never fewer than image_size pixels, so images no
    larger than the model's input are seen whole (8 x 8 digits stay 8 x 8,
    then are resized). Training takes a random crop covering `crop_area` of
    the image (the reference's Inception crop, 8% to 100%), except that with
    `keep_small_images` an image whose short side is at most image_size gets
    the evaluation crop instead (flips and RandAugment still apply).
    """

    train_dir: str = ""
    eval_dir: str = ""  # '' : no evaluation
    generate: bool = False  # write a small generated folder under WORKDIR/generated
    crop_area: Tuple[float, float] = ranged((0.08, 1.0), Interval("(0, 1]", length=2))
    keep_small_images: bool = True
    eval_crop_fraction: float = ranged(0.0, "[0, 1]")  # 0: auto (see above)
    randaugment_layers: int = ranged(4, "[0, inf)")  # 0 disables RandAugment
    randaugment_magnitude: float = ranged(5.0, "[0, 10]")  # the reference's scale: 10 is the strongest
    flip: bool = True
    mixup_alpha: float = ranged(0.2, "[0, inf)")  # 0 disables MixUp
    cutmix: bool = True
    workers: int = ranged(0, "[0, inf)")  # grain worker processes (0: a reader thread in this process)


# The sizes of models.imagenet_classifier: its signature's, but the variant
# (a string whose words the signature does not list) and num_classes (0 is
# training's own value: one per class folder of data.train_dir).
MODEL_RULES = size_rules(
    "imagenet_classifier", variant=models.IMAGENET_VARIANTS, num_classes="int [0, inf)"
)


def check(config: Config) -> None:
    """Raises ValueError for a crop_area whose bounds are reversed."""
    d = config.data
    if d.crop_area[1] < d.crop_area[0]:
        raise ValueError(
            f"data.crop_area must be (min, max) with min <= max; got {tuple(d.crop_area)}."
        )


def image_objective(
    config: Config, workdir: str, pretrained: bool = True, finetune_from: bool = False
) -> Objective:
    """The classifier's `Objective` on `data.train_dir`'s class folders (generated ones for tiny runs).

    Args:
      config: an image recipe's config; `model.num_classes` 0 is set to the number of classes.
      workdir: the run's folder (generated data go under WORKDIR/generated).
      pretrained: load `task.pretrained` when `finetune_from`.
      finetune_from: the recipe starts from a pretrained model (`task.pretrained`,
        or a stand-in for generated data).
    """
    d, t = config.data, config.task
    kwargs = dict(config.model)
    variant = kwargs.pop("variant")
    image_size = int(kwargs["image_size"])
    load_pretrained = None
    # First: a missing checkpoint fails before any data is made.
    if finetune_from and pretrained:
        path = t.pretrained
        if d.generate and not path:
            path = _tiny_pretrained_image(workdir, variant, kwargs)
        if not path:
            raise ValueError(f"{config.recipe} needs task.pretrained=PATH or a published name.")
        load_pretrained = pretrained_lib.load_pretrained_fn(finetune.resolve_pretrained(path), t.new_modules)
    if d.generate:
        root = generated.generated_dir(workdir, "images")
        d.train_dir = images_lib.write_generated_folder(os.path.join(root, "train"), seed=0)
        d.eval_dir = images_lib.write_generated_folder(
            os.path.join(root, "eval"), images_per_class=8, seed=1
        )
    if not d.train_dir:
        raise ValueError(
            f"recipe {config.recipe!r} needs data.train_dir=PATH (an image folder with one "
            "sub-folder per class), or --tiny for generated data."
        )
    train_source = images_lib.ImageFolder(d.train_dir)
    eval_source = images_lib.ImageFolder(d.eval_dir, train_source.classes) if d.eval_dir else None
    if not kwargs.get("num_classes"):
        kwargs["num_classes"] = len(train_source.classes)
        config.model["num_classes"] = kwargs["num_classes"]
    if kwargs["num_classes"] < len(train_source.classes):
        raise ValueError(
            f"model.num_classes ({kwargs['num_classes']}) is smaller than the "
            f"{len(train_source.classes)} classes of {d.train_dir}."
        )
    model = models.imagenet_classifier(variant, **kwargs)

    def apply_logits(params, state, key, batch, is_training):
        return model.apply(params, state, key, batch["images"], is_training=is_training)

    loss, evaluate = classification.classification_fns(apply_logits, t.label_smoothing)

    def init(key):
        return model.init(key, jnp.zeros((1, image_size, image_size, 3)), is_training=True)

    mixing = d.cutmix or d.mixup_alpha > 0

    def train_loader(batch_size, seed):
        return data_lib.make_loader(
            train_source,
            [
                images_lib.TrainImageTransform(
                    image_size, d.randaugment_layers, d.randaugment_magnitude, d.flip,
                    crop_area=d.crop_area, keep_small=d.keep_small_images,
                    crop_fraction=d.eval_crop_fraction,
                )
            ],
            batch_size=batch_size,
            seed=seed,
            worker_count=d.workers,
            batch_operations=[images_lib.MixTransform(d.mixup_alpha, d.cutmix)] if mixing else [],
            pre_batch=2 * batch_size if mixing else 0,
        )

    eval_loader = evaluation.eval_loader_fn(
        eval_source, [images_lib.EvalImageTransform(image_size, d.eval_crop_fraction)], d.workers
    )

    return Objective(
        init=init,
        loss=loss,
        evaluate=evaluate,
        train_loader=train_loader,
        eval_loader=eval_loader if eval_source is not None else None,
        num_train_examples=len(train_source),
        load_pretrained=load_pretrained,
        export_info=dict(
            factory="imagenet_classifier", variant=variant, classes=train_source.classes, **kwargs
        ),
    )


def _tiny_pretrained_image(workdir: str, variant: str, kwargs: Dict[str, Any]) -> str:
    """A stand-in for a published ImageNet model: the tiny model with a 1000-class head."""
    sizes = dict(kwargs, num_classes=1000)
    size = sizes["image_size"]
    return generated.stand_in_checkpoint(
        os.path.join(generated.generated_dir(workdir), "pretrained_image.pystate"),
        models.imagenet_classifier(variant, **sizes),
        jnp.zeros((1, size, size, 3)),
    )


def describe(config: Config, objective: Objective) -> Dict[str, Any]:
    """The classifier, its input preparation and class names."""
    sizes = dict(config.model)  # with the variant and the number of classes
    size = int(sizes["image_size"])
    fraction = config.data.eval_crop_fraction
    return {
        "factory": "imagenet_classifier",
        "sizes": sizes,
        "task": {
            "image_size": size,
            # A centred square of crop_fraction of the short side, but (auto
            # crop) never fewer than min_crop_size pixels nor more than the
            # short side; resized to image_size.
            "crop_fraction": fraction or size / (size + augment.CENTER_CROP_PADDING),
            "min_crop_size": 0 if fraction else size,
            "resize": "bicubic",
            "mean_rgb": list(augment.MEAN_RGB),
            "stddev_rgb": list(augment.STDDEV_RGB),
        },
        "labels": classification.labels(objective, sizes["num_classes"]),
    }


# An image classifier trained from scratch.
IMAGE_CLASSIFICATION = ObjectiveKind(
    factory="imagenet_classifier", model_rules=MODEL_RULES, build=image_objective, describe=describe,
    check=check,
)
# The same, starting from `task.pretrained` with modules `task.new_modules` initialised afresh.
IMAGE_FINETUNING = dataclasses.replace(
    IMAGE_CLASSIFICATION, build=functools.partial(image_objective, finetune_from=True)
)
