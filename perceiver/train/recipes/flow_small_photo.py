"""flow_small_photo: flow_small continued on photo-like scenes, the shipped flow_small.pystate."""

import dataclasses

from perceiver.train.config import Config
from perceiver.train.objectives.flow import OPTICAL_FLOW, FlowSettings
from perceiver.train.recipes._registry import register
from perceiver.train.recipes.flow_small import PHOTO_SCENES, flow_small_config

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
    It is flow_small's config with these scenes, 4000 steps (of 16 pairs),
    AdamW at 5e-4 after 100 warm-up steps, cosine. The tiny variant is
    flow_small's tiny one with these scenes, from a random start: it only
    shows the workflow.
    """
    config = flow_small_config(tiny)
    config.recipe = "flow_small_photo"
    config.data = dataclasses.replace(config.data, **PHOTO_SCENES)
    if tiny:
        return config
    config.data.eval_examples = 128
    config.task = FlowSettings(pretrained=BASE_MODEL)
    config.optimizer = dataclasses.replace(config.optimizer, base_lr=5e-4, warmup_steps=100)
    config.train.num_steps = 4000
    return config
