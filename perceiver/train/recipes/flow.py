"""flow: optical flow from scratch on synthetic pairs, at the published size."""

from perceiver import models
from perceiver.train.config import CheckpointSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.flow import OPTICAL_FLOW, FlowDataSettings, FlowSettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register

# The published sizes, from the factory itself.
FLOW_MODEL = models.factory_sizes("optical_flow")
TINY_FLOW_MODEL = dict(
    image_shape=(16, 16),
    num_latents=16,
    num_latent_channels=32,
    num_self_attends=1,
    num_self_attend_heads=2,
    num_bands=4,
)


@register("flow", OPTICAL_FLOW, order=50)
def flow_config(tiny: bool = False) -> Config:
    """Optical flow from scratch on synthetic layered scenes with exact flow.

    The published architecture at 368 x 496 by default (trained on
    AutoFlow in the paper; here on `synthetic_flow` pairs). LAMB at 4e-4 with
    warm-up and cosine decay; loss: mean end-point error.
    """
    if tiny:
        return Config(
            recipe="flow",
            model=dict(TINY_FLOW_MODEL),
            # 64 scenes seen over and over: within a minute the loss visibly falls
            # (learning flow that generalises takes the ~35 minutes of flow_small).
            data=FlowDataSettings(
                max_translation=2.0, max_background_translation=1.5, train_examples=64, eval_examples=32
            ),
            task=FlowSettings(),
            optimizer=_tiny.optimizer(),
            train=_tiny.train(batch_size=8, eval_batch_size=8, num_steps=150),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="flow",
        model=dict(FLOW_MODEL),
        data=FlowDataSettings(),
        task=FlowSettings(),
        optimizer=OptimizerSettings(
            base_lr=4e-4, scale_by_batch=False, weight_decay=1e-4, max_norm=1.0,
            schedule="cosine", warmup_steps=5000, eps=1e-6,
        ),
        train=TrainSettings(batch_size=64, num_steps=200_000, eval_every=5000, log_every=100),
        checkpoint=CheckpointSettings(every_steps=2000),
    )
