"""flow_small: the small flow model, first stage of the shipped perceiver/data/flow_small.pystate."""

from perceiver.train.config import CheckpointSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.flow import OPTICAL_FLOW, FlowDataSettings, FlowSettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register

# The sizes of the model shipped as perceiver/data/flow_small.pystate.
FLOW_SMALL_MODEL = dict(
    image_shape=(32, 32),
    num_latents=64,
    num_latent_channels=128,
    num_self_attends=4,
    num_self_attend_heads=4,
    num_bands=16,
)
# flow_small at half its size per dimension: its tiny variant.
TINY_FLOW_SMALL_MODEL = dict(
    image_shape=(16, 16),
    num_latents=32,
    num_latent_channels=64,
    num_self_attends=2,
    num_self_attend_heads=4,
    num_bands=8,
)


# Photo-like layered scenes (see `synthetic_flow`), for a stronger small model
# under coarse-to-fine inference: most layers carry a raster of flat-coloured
# regions with fractal detail, the rest sums of waves; motions are those one
# pyramid level leaves, mostly below a pixel (translation_power 2), up to 3 px
# for the background and 4 px for objects, with rotation and scaling; and
# brightness changes, blur and noise. From a random start a CPU run with them
# stayed at zero flow's held-out error through step 2000 of 5000; short runs
# (500 steps) showed that either half alone (the photo textures and
# photometric changes, or the larger motions) keeps it there. Continued from
# the flow_small model they train: the `flow_small_photo` recipe, 4000 steps,
# gives the shipped file (benchmarks/flow_quality.py on real photos: EPE
# ratio to zero flow 0.19 -> 0.13 for 3-8 px translations, 0.22 -> 0.17 on
# the quarter-size stereo pair).
PHOTO_SCENES = dict(
    max_objects=5,
    max_translation=4.0,
    max_background_translation=3.0,
    translation_power=2.0,
    photo_texture_prob=0.7,
    num_waves=24,
    min_frequency=0.03,
    max_frequency=0.3,
    max_brightness_change=0.08,
    max_blur=1.0,
    max_noise=0.02,
)


@register("flow_small", OPTICAL_FLOW, order=60)
def flow_small_config(tiny: bool = False) -> Config:
    """The small flow model (32 x 32 frames), from a random start.

    `perceiver train --config flow_small --workdir runs/flow_small` trains
    it: 5000 steps of 16 synthetic pairs with motions of a few pixels and
    richly textured layers (AdamW, 2e-3 peak, cosine); under an hour on two
    CPU cores. It was the shipped model until 2026-12; `flow_small_photo`
    continues it into today's perceiver/data/flow_small.pystate.
    The tiny variant is the same design at half the size per dimension
    (16 x 16 frames, TINY_FLOW_SMALL_MODEL), the same scenes and optimiser,
    on 64 scenes for 150 steps.
    """
    scenes = dict(
        max_translation=2.5,
        max_background_translation=2.0,
        num_waves=24,
        min_frequency=0.03,
        max_frequency=0.3,
    )
    optimizer = dict(
        optimizer="adamw", base_lr=2e-3, scale_by_batch=False, eps=1e-8, weight_decay=1e-4,
        max_norm=1.0, schedule="cosine", end_lr=1e-5,
    )
    if tiny:
        return Config(
            recipe="flow_small",
            model=dict(TINY_FLOW_SMALL_MODEL),
            data=FlowDataSettings(train_examples=64, eval_examples=32, **scenes),
            task=FlowSettings(),
            # The full recipe warms up for 4% of its steps; so does this one.
            optimizer=OptimizerSettings(warmup_steps=6, **optimizer),
            train=_tiny.train(batch_size=8, eval_batch_size=8, num_steps=150),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="flow_small",
        model=dict(FLOW_SMALL_MODEL),
        data=FlowDataSettings(eval_examples=512, **scenes),
        task=FlowSettings(),
        optimizer=OptimizerSettings(warmup_steps=200, **optimizer),
        train=TrainSettings(
            batch_size=16, num_steps=5000, eval_every=1000, log_every=100, eval_batch_size=64
        ),
        checkpoint=CheckpointSettings(every_steps=250, keep=2),
    )
