"""perceiver_ar: a byte-level causal language model (Perceiver AR) on a text corpus."""

import os
import sysconfig

from perceiver.train.config import CheckpointSettings, ComputeSettings, Config, OptimizerSettings, TrainSettings
from perceiver.train.objectives.language_model import CAUSAL_LM, CausalLmSettings
from perceiver.train.objectives.masked_language import TextDataSettings
from perceiver.train.recipes import _tiny
from perceiver.train.recipes._registry import register

# A long context on one CPU: 8192 bytes read, the last 512 predicted at once.
AR_MODEL = dict(
    max_context_length=8192,
    num_latents=512,
    num_channels=512,
    num_layers=8,
    num_heads=8,
    num_cross_attend_heads=1,
    widening_factor=4,
    dropout_prob=0.0,
)
TINY_AR_MODEL = dict(
    max_context_length=256,
    num_latents=64,
    num_channels=64,
    num_layers=2,
    num_heads=4,
    num_cross_attend_heads=1,
    widening_factor=4,
    dropout_prob=0.0,
)
# Real text every Python has: the standard library's own source.
TINY_TRAIN_MODULES = ("argparse.py", "textwrap.py", "shlex.py", "calendar.py")
TINY_EVAL_MODULES = ("getopt.py",)


def stdlib_files(names):
    """Paths of the Python standard library's modules `names`."""
    root = sysconfig.get_paths()["stdlib"]
    return tuple(os.path.join(root, name) for name in names)


@register("perceiver_ar", CAUSAL_LM, order=45)
def perceiver_ar_config(tiny: bool = False) -> Config:
    """A Perceiver AR byte language model (Hawthorne et al. 2022) on `data.train_paths`.

    The reference's recipe for text, at a size one machine trains: rotary
    positions, one cross-attention to the latents, a causal latent stack,
    next-byte cross-entropy with its z-loss on the latents' positions, eval
    in bits per byte over every byte of `data.eval_paths`. Layers are
    recomputed in the backward pass and run in bfloat16 (float32 parameters
    and optimiser), so 8192-byte contexts fit. The tiny variant trains on a
    few modules of the Python standard library for about a minute.
    """
    if tiny:
        return Config(
            recipe="perceiver_ar",
            model=dict(TINY_AR_MODEL),
            data=TextDataSettings(
                train_paths=stdlib_files(TINY_TRAIN_MODULES),
                eval_paths=stdlib_files(TINY_EVAL_MODULES),
                seq_len=TINY_AR_MODEL["max_context_length"],
            ),
            task=CausalLmSettings(),
            optimizer=_tiny.optimizer(),
            train=_tiny.train(num_steps=300, batch_size=16, log_every=50, eval_batch_size=32),
            checkpoint=_tiny.checkpoint(),
        )
    return Config(
        recipe="perceiver_ar",
        model=dict(AR_MODEL),
        data=TextDataSettings(seq_len=AR_MODEL["max_context_length"]),
        task=CausalLmSettings(),
        optimizer=OptimizerSettings(
            optimizer="adamw", base_lr=3e-4, scale_by_batch=False, weight_decay=0.01, max_norm=1.0,
            schedule="cosine", warmup_steps=1000,
        ),
        train=TrainSettings(batch_size=16, num_steps=100_000, eval_every=5000, log_every=100),
        checkpoint=CheckpointSettings(every_steps=1000),
        # Every recipe's compute section (not the task's older remat/compute_dtype).
        compute=ComputeSettings(dtype="bfloat16", remat=True),
    )
