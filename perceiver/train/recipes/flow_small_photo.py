"""flow_small_photo: flow_small continued on photo-like scenes, the shipped flow_small.pystate."""

from perceiver.train.config import CheckpointConfig, Config, OptimizerConfig, TrainConfig
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register
from perceiver.train.recipes.flow_small import FLOW_SMALL_MODEL, PHOTO_SCENES, TINY_FLOW_SMALL_MODEL
from perceiver.train.recipes.tasks.flow import OPTICAL_FLOW, FlowData, FlowTask

# Where the first of the two commands below leaves the flow_small model.
BASE_MODEL = "runs/flow_small/model.pystate"


@register("flow_small_photo", OPTICAL_FLOW, order=61)
def flow_small_photo_config(tiny: bool = False) -> Config:
    """The shipped small flow model: flow_small, then photo-like scenes.

    Trained from a random start the photo-like scenes (`PHOTO_SCENES`: raster
    textures, larger motions, brightness changes, blur, noise) stay at zero
    flow's error on two CPU cores; continued from the flow_small model they
    train. Two commands reproduce perceiver/data/flow_small.pystate (as
    runs/flow_small_photo/model.pystate), about 35 + 30 minutes here:

        perceiver train --config flow_small --workdir runs/flow_small
        perceiver train --config flow_small_photo --workdir runs/flow_small_photo

    (`task.pretrained=FILE` starts from another flow_small-sized model.)
    4000 steps of 16 pairs, AdamW at 5e-4 after 100 warm-up steps, cosine.
    The tiny variant starts afresh (no pretrained model): it only shows the
    workflow, on TINY_FLOW_SMALL_MODEL for 150 steps.
    """
    optimizer = dict(
        optimizer="adamw", scale_by_batch=False, eps=1e-8, weight_decay=1e-4,
        max_norm=1.0, schedule="cosine", end_lr=1e-5,
    )
    if tiny:
        return Config(
            recipe="flow_small_photo",
            model=dict(TINY_FLOW_SMALL_MODEL),
            data=FlowData(train_examples=64, eval_examples=32, **PHOTO_SCENES),
            task=FlowTask(),
            optimizer=OptimizerConfig(base_lr=2e-3, warmup_steps=6, **optimizer),
            train=_tiny.train(batch_size=8, eval_batch_size=8, num_steps=150),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="flow_small_photo",
        model=dict(FLOW_SMALL_MODEL),
        data=FlowData(eval_examples=128, **PHOTO_SCENES),
        task=FlowTask(pretrained=BASE_MODEL),
        optimizer=OptimizerConfig(base_lr=5e-4, warmup_steps=100, **optimizer),
        train=TrainConfig(
            batch_size=16, num_steps=4000, eval_every=1000, log_every=100, eval_batch_size=64
        ),
        checkpoint=CheckpointConfig(every_steps=250, keep=2),
    )

