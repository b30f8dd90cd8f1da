"""What every recipe's tiny variant shares: an optimiser, a short run, frequent checkpoints."""

from perceiver.train.config import CheckpointConfig, OptimizerConfig, TrainConfig


def optimizer(**kwargs) -> OptimizerConfig:
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
    return OptimizerConfig(**base)


def train(**kwargs) -> TrainConfig:
    """120 steps of batch 16, logged every 20; `kwargs` change any field."""
    base = dict(batch_size=16, num_steps=120, log_every=20, eval_batch_size=16)
    base.update(kwargs)
    return TrainConfig(**base)


def checkpoint() -> CheckpointConfig:
    """Every 50 steps, the last 2 kept."""
    return CheckpointConfig(every_steps=50, keep=2)
