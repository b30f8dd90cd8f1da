"""finetune_audio: an audio classifier on raw waveforms, on folders of clips named by class."""

from perceiver.train.config import CheckpointSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.audio_classification import AUDIO_CLASSIFICATION, AudioDataSettings
from perceiver.train.objectives.classification import ClassificationSettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register

# models.audio_classifier's defaults: one second at 16 kHz in patches of 16 samples.
AUDIO_MODEL = dict(
    num_samples=16000,
    samples_per_patch=16,
    num_bands=64,
    num_latents=256,
    num_latent_channels=512,
    num_blocks=1,
    num_self_attends_per_block=6,
    num_self_attend_heads=8,
    num_cross_attend_heads=1,
)
# One second at 8 kHz in 200 patches of 40 samples, a small latent array.
TINY_AUDIO_MODEL = dict(
    num_samples=8000,
    samples_per_patch=40,
    num_bands=16,
    num_latents=32,
    num_latent_channels=64,
    num_blocks=1,
    num_self_attends_per_block=2,
    num_self_attend_heads=4,
    num_cross_attend_heads=1,
)
# The output layer: rebuilt for the data's classes when starting from task.pretrained.
HEAD = ("classification_decoder/~/basic_decoder/output",)


@register("finetune_audio", AUDIO_CLASSIFICATION, order=36)
def finetune_audio_config(tiny: bool = False) -> Config:
    """An audio classifier on raw waveforms, trained on folders of WAV/FLAC/MP3 clips named by class.

    From scratch by default (no audio encoder is published); `task.pretrained=PATH`
    starts from an earlier export of this recipe, its output layer
    (`task.new_modules`) rebuilt for the classes of `data.train_dir`.
    Defaults (AdamW 5e-4, warm-up and cosine decay, 50 epochs of batch 32,
    random shifts and gains) are a starting point, not tuned. `--tiny`
    generates spoken words with espeak-ng, two voices held out to evaluate.
    """
    if tiny:
        return Config(
            recipe="finetune_audio",
            model=dict(TINY_AUDIO_MODEL, num_classes=0),
            data=AudioDataSettings(generate=True, sample_rate=8000),
            task=ClassificationSettings(label_smoothing=0.0, new_modules=HEAD),
            optimizer=_tiny.optimizer(),
            train=_tiny.train(num_steps=120),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="finetune_audio",
        model=dict(AUDIO_MODEL, num_classes=0),
        data=AudioDataSettings(),
        task=ClassificationSettings(label_smoothing=0.1, new_modules=HEAD),
        optimizer=OptimizerSettings(
            optimizer="adamw", base_lr=5e-4, scale_by_batch=False, eps=1e-8, weight_decay=0.01,
            max_norm=1.0, schedule="cosine", warmup_steps=200,
        ),
        train=TrainSettings(batch_size=32, epochs=50, log_every=50),
        checkpoint=CheckpointSettings(every_steps=1000),
    )
