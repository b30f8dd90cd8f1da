"""finetune_detection: a DETR-style object detector on a published ImageNet model's encoder."""

from perceiver import models
from perceiver.train.config import CheckpointSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.detection import OBJECT_DETECTION, DetectionDataSettings, DetectionSettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register

# The published conv ImageNet model's sizes (imagenet_conv), 100 queries; classes from the data.
DETECTION_MODEL = models.factory_sizes("object_detector", num_classes=0)
TINY_DETECTION_MODEL = dict(
    num_classes=0,
    variant="conv_preprocessing",
    num_queries=10,
    image_size=64,
    num_latents=32,
    num_latent_channels=64,
    num_blocks=2,
    num_self_attends_per_block=1,
    num_self_attend_heads=4,
    num_bands=8,
    learned_pos_channels=256,
)


@register("finetune_detection", OBJECT_DETECTION, order=25)
def finetune_detection_config(tiny: bool = False) -> Config:
    """Object detection (DETR's set loss) from a published ImageNet model of the same variant.

    `data.train_paths` / `data.eval_paths`: one COCO annotation file each
    (image `file_name` entries relative to it). The preprocessor and encoder come
    from `task.pretrained` (default `imagenet_conv`; `none`: from scratch);
    the detection decoder and its class and box heads are new. Images are
    resized whole to model.image_size. Defaults (AdamW 1e-4, clipping at
    0.1 as DETR, 50 epochs of batch 32) are a starting point, not tuned.
    `--tiny` trains on digits pasted on photos (`datasets.copy_paste`, needs
    scikit-image and scikit-learn), evaluation photos held out, from a
    stand-in tiny ImageNet classifier.
    """
    if tiny:
        return Config(
            recipe="finetune_detection",
            model=dict(TINY_DETECTION_MODEL),
            data=DetectionDataSettings(generate=True, generated_size=64, generated_images=256),
            task=DetectionSettings(pretrained=""),
            optimizer=_tiny.optimizer(max_norm=0.1),
            train=_tiny.train(num_steps=150),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="finetune_detection",
        model=dict(DETECTION_MODEL),
        data=DetectionDataSettings(),
        task=DetectionSettings(pretrained="imagenet_conv"),
        optimizer=OptimizerSettings(
            optimizer="adamw", base_lr=1e-4, scale_by_batch=False, eps=1e-8, weight_decay=1e-4,
            max_norm=0.1, schedule="cosine", warmup_steps=500,
        ),
        train=TrainSettings(batch_size=32, epochs=50, log_every=50),
        checkpoint=CheckpointSettings(every_steps=1000),
    )
