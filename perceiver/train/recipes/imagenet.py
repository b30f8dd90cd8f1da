"""imagenet: ImageNet classification with the reference's hyper-parameters."""

from perceiver import models
from perceiver.train.config import CheckpointSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.classification import ClassificationSettings
from perceiver.train.objectives.image import IMAGE_CLASSIFICATION, ImageDataSettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register

# The published sizes, from the factory itself.
IMAGENET_MODEL = models.factory_sizes("imagenet_classifier", variant="fourier_position_encoding")
TINY_IMAGE_MODEL = dict(
    variant="fourier_position_encoding",
    num_classes=1000,
    image_size=32,
    num_latents=32,
    num_latent_channels=64,
    num_blocks=2,
    num_self_attends_per_block=1,
    num_self_attend_heads=4,
    num_bands=8,
)


@register("imagenet", IMAGE_CLASSIFICATION, order=10)
def imagenet_config(tiny: bool = False) -> Config:
    """ImageNet from scratch: the reference's recipe (Perceiver IO paper, sec. 4.5).

    LAMB, base learning rate 5e-4 x batch/256, weight decay 0.1 (not on
    biases and norms), clip at global norm 10, constant for half the run then
    cosine to 0, 110 epochs of batch 1024, label smoothing 0.1, RandAugment
    (4 layers, magnitude 5), CutMix and MixUp (alpha 0.2); the Fourier-feature
    model at 224 x 224. Set data.train_dir and data.eval_dir to ImageNet's
    train/ and val/ folders.
    """
    if tiny:
        return Config(
            recipe="imagenet",
            model=dict(TINY_IMAGE_MODEL, num_classes=0),
            data=ImageDataSettings(generate=True, randaugment_layers=1, randaugment_magnitude=2.0),
            task=ClassificationSettings(label_smoothing=0.1),
            optimizer=_tiny.optimizer(optimizer="lamb", eps=1e-6),
            train=_tiny.train(),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="imagenet",
        model=dict(IMAGENET_MODEL),
        data=ImageDataSettings(),
        task=ClassificationSettings(label_smoothing=0.1),
        optimizer=OptimizerSettings(),
        train=TrainSettings(batch_size=1024, epochs=110, eval_every=10_000, log_every=100),
        checkpoint=CheckpointSettings(every_steps=1000),
    )
