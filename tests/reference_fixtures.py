"""Recorded facts from DeepMind's reference implementation, as test fixtures.

tests/data/reference/ holds, copied from the project's shared reference
material: the parameter trees of the six published models (full and small
sizes), the small variants' weights in the 2021 checkpoint format, their
inputs and the reference's outputs, and `colab_models.py`, the script that
assembled them against the reference's modules.
"""

import importlib.util
import json
import pathlib
import types

import numpy as np

DATA = pathlib.Path(__file__).parent / "data" / "reference"
MODELS = (
    "mlm",
    "imagenet_learned",
    "imagenet_fourier",
    "imagenet_conv",
    "flow",
    "video_autoencoding",
)

# The small variants, expressed through our `perceiver.models` factories.
SMALL_FACTORIES = {
    "mlm": (
        "masked_language_model",
        dict(
            max_seq_len=48,
            d_model=32,
            num_latents=16,
            num_latent_channels=64,
            num_self_attends=2,
            num_heads=4,
            qk_channels=16,
        ),
    ),
    **{
        f"imagenet_{short}": (
            "imagenet_classifier",
            dict(
                variant=variant,
                num_classes=10,
                image_size=16,
                num_latents=16,
                num_latent_channels=64,
                num_blocks=2,
                num_self_attends_per_block=2,
                num_self_attend_heads=4,
                num_bands=4,
                learned_pos_channels=16,
            ),
        )
        for short, variant in (
            ("learned", "learned_position_encoding"),
            ("fourier", "fourier_position_encoding"),
            ("conv", "conv_preprocessing"),
        )
    },
    "flow": (
        "optical_flow",
        dict(
            image_shape=(12, 16),
            num_latents=32,
            num_latent_channels=64,
            num_self_attends=2,
            num_self_attend_heads=4,
            num_bands=6,
        ),
    ),
    "video_autoencoding": (
        "video_autoencoder",
        dict(
            num_frames=4,
            image_size=16,
            audio_samples_per_frame=64,
            samples_per_patch=8,
            num_latents=24,
            num_latent_channels=64,
            num_self_attends=2,
            num_heads=4,
            decoder_channels=48,
            num_classes=7,
            image_bands=3,
            audio_bands=5,
            label_query_channels=24,
        ),
    ),
}

FULL_FACTORIES = {
    "mlm": ("masked_language_model", {}),
    "imagenet_learned": ("imagenet_classifier", dict(variant="learned_position_encoding")),
    "imagenet_fourier": ("imagenet_classifier", dict(variant="fourier_position_encoding")),
    "imagenet_conv": ("imagenet_classifier", dict(variant="conv_preprocessing")),
    "flow": ("optical_flow", {}),
    "video_autoencoding": ("video_autoencoder", {}),
}


def param_trees():
    return json.loads((DATA / "param_trees.json").read_text())


def colab_models():
    """The reference-notebook construction script, imported from tests/data."""
    spec = importlib.util.spec_from_file_location("colab_models", DATA / "colab_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def package():
    """Our package in the shape `colab_models` expects (pkg.perceiver, ...)."""
    from perceiver import bytes_tokenizer, io_processors, perceiver

    return types.SimpleNamespace(
        perceiver=perceiver, io_processors=io_processors, bytes_tokenizer=bytes_tokenizer
    )


def checkpoint_path(model: str) -> pathlib.Path:
    return DATA / f"{model}.pystate"


def recorded(model: str):
    """`(inputs, outputs)`: the recorded inputs by name and the reference's outputs."""
    with np.load(DATA / f"{model}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    inputs = {k[3:]: v for k, v in arrays.items() if k.startswith("in/")}
    if "out" in arrays:
        outputs = arrays["out"]
    else:
        outputs = {k[4:]: v for k, v in arrays.items() if k.startswith("out/")}
    return inputs, outputs


def factory_inputs(model: str, inputs):
    """The recorded inputs as positional arguments of our factory's apply."""
    if model == "mlm":
        return (inputs["inputs"], inputs["input_mask"])
    if model == "video_autoencoding":
        subsampling = {
            "image": inputs["subsampling/image"],
            "audio": inputs["subsampling/audio"],
        }
        return (inputs["images"], inputs["audio"], subsampling)
    return (inputs["images"],)


def tree_spec(tree):
    """`{module: {name: shape}}` as lists, the layout of param_trees.json."""
    return {m: {n: list(np.shape(v)) for n, v in p.items()} for m, p in tree.items()}
