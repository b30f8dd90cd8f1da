"""finetune_image: a published ImageNet model on a new image folder, with a new head."""

from perceiver.train.config import CheckpointSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.classification import ClassificationSettings
from perceiver.train.objectives.image import IMAGE_FINETUNING, ImageDataSettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register
from perceiver.train.recipes.imagenet import IMAGENET_MODEL, TINY_IMAGE_MODEL


@register("finetune_image", IMAGE_FINETUNING, order=20)
def finetune_image_config(tiny: bool = False) -> Config:
    """A published ImageNet model fine-tuned on a new image folder with a new head.

    Loads every parameter of `task.pretrained` but the classification
    decoder's output layer (`task.new_modules`), which is rebuilt for the
    folder's classes (`model.num_classes=0`: one per sub-folder). Defaults
    are a starting point, not tuned: LAMB at 2e-4 with warm-up and cosine
    decay, 30 epochs of batch 256, lighter augmentation.
    """
    head = ("classification_decoder/~/basic_decoder/output",)
    if tiny:
        return Config(
            recipe="finetune_image",
            model=dict(TINY_IMAGE_MODEL, num_classes=0),
            data=ImageDataSettings(
                generate=True,
                randaugment_layers=1,
                randaugment_magnitude=2.0,
                mixup_alpha=0.0,
                cutmix=False,
            ),
            task=ClassificationSettings(label_smoothing=0.0, pretrained="", new_modules=head),
            optimizer=_tiny.optimizer(),
            train=_tiny.train(num_steps=80),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="finetune_image",
        model=dict(IMAGENET_MODEL, num_classes=0),
        data=ImageDataSettings(randaugment_layers=2, mixup_alpha=0.0, cutmix=False),
        task=ClassificationSettings(label_smoothing=0.1, pretrained="imagenet_fourier", new_modules=head),
        optimizer=OptimizerSettings(
            base_lr=2e-4, scale_by_batch=False, weight_decay=0.05, max_norm=1.0,
            schedule="cosine", warmup_steps=500,
        ),
        train=TrainSettings(batch_size=256, epochs=30, log_every=50),
        checkpoint=CheckpointSettings(every_steps=1000),
    )
