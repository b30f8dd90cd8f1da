"""mlm: masked byte language-model pre-training on a text corpus."""

from perceiver import models
from perceiver.train.config import CheckpointSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.masked_language import MASKED_LM, MlmSettings, TextDataSettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register

# The published sizes, from the factory itself.
MLM_MODEL = models.factory_sizes("masked_language_model")
TINY_MLM_MODEL = dict(
    max_seq_len=64,
    d_model=32,
    num_latents=16,
    num_latent_channels=64,
    num_self_attends=2,
    num_heads=4,
    qk_channels=16,
)


@register("mlm", MASKED_LM, order=40)
def mlm_config(tiny: bool = False) -> Config:
    """Masked byte language-model pre-training (Perceiver IO paper, sec. 4.1).

    The published architecture on a corpus of plain text or JSON lines
    (`data.train_paths`); 15% of the bytes masked in spans. The paper's full
    pre-training schedule was not released; defaults are a starting point:
    LAMB at 1e-3, 1000 warm-up steps then cosine, batch 512 of 2048 bytes.
    """
    if tiny:
        return Config(
            recipe="mlm",
            model=dict(TINY_MLM_MODEL),
            data=TextDataSettings(generate=True, seq_len=64),
            task=MlmSettings(),
            optimizer=_tiny.optimizer(),
            train=_tiny.train(num_steps=150),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="mlm",
        model=dict(MLM_MODEL),
        data=TextDataSettings(seq_len=MLM_MODEL["max_seq_len"]),  # the whole published window
        task=MlmSettings(),
        optimizer=OptimizerSettings(
            base_lr=1e-3, scale_by_batch=False, weight_decay=0.01, max_norm=1.0,
            schedule="cosine", warmup_steps=1000,
        ),
        train=TrainSettings(batch_size=512, num_steps=500_000, eval_every=10_000, log_every=100),
        checkpoint=CheckpointSettings(every_steps=2000),
    )
