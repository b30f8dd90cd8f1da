"""What every recipe's tiny variant shares: an optimiser, a short run, frequent checkpoints."""

from perceiver.train.config import CheckpointSettings, OptimizerSettings, TrainSettings


def optimizer(**kwargs) -> OptimizerSettings:
    """AdamW at 2e-3, 10 warm-up steps then cosine to 2e-4; `kwargs` change any field."""
    base = dict(
        optimizer="adamw",
        base_lr=2e-3,
        scale_by_batch=False,
        eps=1e-8,
        weight_decay=1e-4,
        max_norm=1.0,
        schedule="cosine",
        warmup_steps=10,
        end_lr=2e-4,
    )
    base.update(kwargs)
    return OptimizerSettings(**base)


def train(**kwargs) -> TrainSettings:
    """120 steps of batch 16, logged every 20; `kwargs` change any field."""
    base = dict(batch_size=16, num_steps=120, log_every=20, eval_batch_size=16)
    base.update(kwargs)
    return TrainSettings(**base)


def checkpoint() -> CheckpointSettings:
    """Every 50 steps, the last 2 kept."""
    return CheckpointSettings(every_steps=50, keep=2)
