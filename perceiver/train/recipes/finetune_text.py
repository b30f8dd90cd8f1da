"""finetune_text: text classification from the published byte MLM, with a new decoder."""

from perceiver.train.config import CheckpointSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.classification import ClassificationSettings
from perceiver.train.objectives.masked_language import TEXT_CLASSIFICATION, TextDataSettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register
from perceiver.train.recipes.mlm import MLM_MODEL, TINY_MLM_MODEL


@register("finetune_text", TEXT_CLASSIFICATION, order=30)
def finetune_text_config(tiny: bool = False) -> Config:
    """Text classification from the published byte MLM, with a new classification decoder.

    `data.train_paths` / `data.eval_paths`: JSON lines with 'text' and 'label'
    (or a folder of class folders of .txt files). The MLM's embedding and
    encoder are loaded from `task.pretrained`; its decoder is dropped.
    Defaults (AdamW 3e-5, warm-up, 3 epochs of batch 64) are a starting point.
    """
    if tiny:
        return Config(
            recipe="finetune_text",
            model=dict(TINY_MLM_MODEL, num_classes=0),
            data=TextDataSettings(generate=True, seq_len=64),
            task=ClassificationSettings(label_smoothing=0.0, new_modules=("classification_decoder",)),
            optimizer=_tiny.optimizer(),
            train=_tiny.train(num_steps=120),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="finetune_text",
        model=dict(MLM_MODEL, num_classes=0),
        data=TextDataSettings(seq_len=MLM_MODEL["max_seq_len"]),  # the whole published window
        task=ClassificationSettings(
            label_smoothing=0.0, pretrained="mlm", new_modules=("classification_decoder",)
        ),
        optimizer=OptimizerSettings(
            optimizer="adamw", base_lr=3e-5, scale_by_batch=False, eps=1e-8, weight_decay=0.01,
            max_norm=1.0, schedule="cosine", warmup_steps=300,
        ),
        train=TrainSettings(batch_size=64, epochs=3, log_every=50),
        checkpoint=CheckpointSettings(every_steps=1000),
    )
