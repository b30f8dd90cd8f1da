"""finetune_tokens: a BIO tag per byte (named entities, code tokens) from the published byte MLM."""

from perceiver.train.config import CheckpointSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.classification import ClassificationSettings
from perceiver.train.objectives.token_classification import TOKEN_CLASSIFICATION, TokenDataSettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register
from perceiver.train.recipes.mlm import MLM_MODEL, TINY_MLM_MODEL

NEW_MODULES = ("token_classification_decoder",)


@register("finetune_tokens", TOKEN_CLASSIFICATION, order=32)
def finetune_tokens_config(tiny: bool = False) -> Config:
    """Token classification from the published byte MLM, with a new per-byte decoder.

    `data.train_paths` / `data.eval_paths`: JSON lines `{"text": ..., "spans":
    [[start, end, "LABEL"], ...]}` (character offsets, end exclusive). The
    MLM's embedding and encoder are loaded from `task.pretrained` ('none':
    from scratch); its decoder is dropped. Tiny: stdlib source tagged by
    `tokenize` (held-out files for evaluation) and a stand-in tiny MLM.
    Defaults (AdamW 3e-5, warm-up, 3 epochs of batch 32) are a starting point.
    """
    if tiny:
        return Config(
            recipe="finetune_tokens",
            model=dict(TINY_MLM_MODEL, num_labels=0),
            data=TokenDataSettings(generate=True, seq_len=64),
            task=ClassificationSettings(label_smoothing=0.0, new_modules=NEW_MODULES),
            optimizer=_tiny.optimizer(),
            train=_tiny.train(num_steps=120),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="finetune_tokens",
        model=dict(MLM_MODEL, num_labels=0),
        data=TokenDataSettings(seq_len=MLM_MODEL["max_seq_len"]),  # the whole published window
        task=ClassificationSettings(label_smoothing=0.0, pretrained="mlm", new_modules=NEW_MODULES),
        optimizer=OptimizerSettings(
            optimizer="adamw", base_lr=3e-5, scale_by_batch=False, eps=1e-8, weight_decay=0.01,
            max_norm=1.0, schedule="cosine", warmup_steps=300,
        ),
        train=TrainSettings(batch_size=32, epochs=3, log_every=50),
        checkpoint=CheckpointSettings(every_steps=1000),
    )
