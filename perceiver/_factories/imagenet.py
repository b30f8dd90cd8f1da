"""The ImageNet classifier in its three published variants."""

from typing import Any, Dict

import haiku as hk
import numpy as np

from perceiver import _validation
from perceiver import io_processors
from perceiver import perceiver
from perceiver._factories.shared import _Built

IMAGENET_VARIANTS = ("learned_position_encoding", "fourier_position_encoding", "conv_preprocessing")


def imagenet_encoder_kwargs(
    *, num_latents: int, num_latent_channels: int, num_blocks: int,
    num_self_attends_per_block: int, num_self_attend_heads: int,
) -> Dict[str, Any]:
    """`PerceiverEncoder` arguments of the ImageNet classifiers (and of models built on them)."""
    return dict(
        cross_attend_widening_factor=1,
        cross_attention_shape_for_attn="kv",
        dropout_prob=0,
        num_blocks=num_blocks,
        num_cross_attend_heads=1,
        num_self_attend_heads=num_self_attend_heads,
        num_self_attends_per_block=num_self_attends_per_block,
        num_z_channels=num_latent_channels,
        self_attend_widening_factor=1,
        use_query_residual=True,
        z_index_dim=num_latents,
        z_pos_enc_init_scale=0.02,
    )


def imagenet_preprocessor_kwargs(
    variant: str, *, image_size: int, num_bands: int, learned_pos_channels: int
) -> Dict[str, Any]:
    """`ImagePreprocessor` arguments of one ImageNet variant (see `IMAGENET_VARIANTS`)."""

    def fourier(resolution):
        return dict(
            concat_pos=True,
            max_resolution=(resolution, resolution),
            num_bands=num_bands,
            sine_only=False,
        )

    if variant == "learned_position_encoding":
        return dict(
            position_encoding_type="trainable",
            trainable_position_encoding_kwargs=dict(
                init_scale=0.02, num_channels=learned_pos_channels
            ),
            prep_type="conv1x1",
            project_pos_dim=learned_pos_channels,
            num_channels=learned_pos_channels,
            spatial_downsample=1,
            concat_or_add_pos="concat",
        )
    if variant == "fourier_position_encoding":
        return dict(
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=fourier(image_size),
            prep_type="pixels",
            spatial_downsample=1,
        )
    return dict(
        position_encoding_type="fourier",
        fourier_position_encoding_kwargs=fourier(image_size // 4),
        prep_type="conv",
    )


def _check_square_images(images, image_size: int, hint: str) -> None:
    """Raises ValueError unless `images` is `[B, image_size, image_size, C]`, saying what to do (`hint`)."""
    _validation.check_rank("images", images, (4,), "[B, H, W, 3]")
    if tuple(images.shape[1:3]) != (image_size, image_size):
        raise ValueError(
            f"images must be [B, {image_size}, {image_size}, 3]; got shape "
            f"{tuple(images.shape)} ({hint})."
        )


def _training_mode(variant: str, is_training: bool) -> bool:
    """The mode to run the ImageNet encoder in: always training during `init` of the conv stem.

    The stem's BatchNorm creates its moving averages only in training mode
    (evaluation reads them), so `init` always runs as training. Nothing else
    differs between the modes (no dropout), so the parameters and state equal
    those of init(..., is_training=True).
    """
    return True if variant == "conv_preprocessing" and hk.running_init() else is_training


def _imagenet_classifier(
    variant: str,
    *,
    num_classes: int = 1000,
    image_size: int = 224,
    num_latents: int = 512,
    num_latent_channels: int = 1024,
    num_blocks: int = 8,
    num_self_attends_per_block: int = 6,
    num_self_attend_heads: int = 8,
    num_bands: int = 64,
    learned_pos_channels: int = 256,
) -> _Built:
    _validation.check_choice("variant", variant, IMAGENET_VARIANTS)
    encoder_kwargs = imagenet_encoder_kwargs(
        num_latents=num_latents,
        num_latent_channels=num_latent_channels,
        num_blocks=num_blocks,
        num_self_attends_per_block=num_self_attends_per_block,
        num_self_attend_heads=num_self_attend_heads,
    )
    decoder_kwargs = dict(
        num_z_channels=num_latent_channels,
        position_encoding_type="trainable",
        trainable_position_encoding_kwargs=dict(init_scale=0.02, num_channels=num_latent_channels),
        use_query_residual=variant != "learned_position_encoding",
    )
    prep_kwargs = imagenet_preprocessor_kwargs(
        variant, image_size=image_size, num_bands=num_bands, learned_pos_channels=learned_pos_channels
    )

    def forward(images, is_training=False):
        _check_square_images(images, image_size, "resize and centre-crop first")
        model = perceiver.Perceiver(
            encoder=perceiver.PerceiverEncoder(**encoder_kwargs),
            decoder=perceiver.ClassificationDecoder(num_classes, **decoder_kwargs),
            input_preprocessor=io_processors.ImagePreprocessor(**prep_kwargs),
        )
        return model(images, is_training=_training_mode(variant, is_training))

    images = np.zeros((1, image_size, image_size, 3), np.float32)
    return _Built(hk.transform_with_state(forward), (images,))


def imagenet_classifier(variant: str, **sizes) -> hk.TransformedWithState:
    """Perceiver IO ImageNet classifier (paper section 4.5).

    `apply(params, state, rng, images, is_training=False)`: normalised images
    `[B, 224, 224, 3]` (per-channel mean/std of ImageNet) -> logits `[B, 1000]`.

    Args:
      variant: 'learned_position_encoding' (1x1 conv, learned positions),
        'fourier_position_encoding' (raw pixels, Fourier features) or
        'conv_preprocessing' (conv + max-pool stem, Fourier features).
      **sizes: num_classes=1000, image_size=224, num_latents=512,
        num_latent_channels=1024, num_blocks=8, num_self_attends_per_block=6,
        num_self_attend_heads=8, num_bands=64, learned_pos_channels=256.

    Raises:
      ValueError: for an unknown variant.
    """
    return _imagenet_classifier(variant, **sizes).model
