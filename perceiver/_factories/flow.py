"""The optical flow model."""

from typing import Sequence

import haiku as hk
import jax.numpy as jnp
import numpy as np

from perceiver import _validation
from perceiver import io_processors
from perceiver import perceiver
from perceiver._factories.shared import _Built

# Factor by which the reference notebook scales the flow network's output.
FLOW_OUTPUT_SCALE = 20.0


def _optical_flow(
    *,
    image_shape: Sequence[int] = (368, 496),
    num_latents: int = 2048,
    num_latent_channels: int = 512,
    num_self_attends: int = 24,
    num_self_attend_heads: int = 16,
    num_bands: int = 64,
) -> _Built:
    image_shape = tuple(image_shape)

    def fourier():
        return dict(
            num_bands=num_bands, max_resolution=image_shape, sine_only=False, concat_pos=True
        )

    def forward(images, is_training=False):
        _validation.check_rank("images", images, (5,), "[B, 2, H, W, 3]")
        if images.shape[1] != 2 or tuple(images.shape[2:4]) != image_shape:
            raise ValueError(
                f"images must be two frames [B, 2, {image_shape[0]}, {image_shape[1]}, C]; "
                f"got shape {tuple(images.shape)}."
            )
        preprocessor = io_processors.ImagePreprocessor(
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=fourier(),
            n_extra_pos_mlp=0,
            prep_type="patches",
            spatial_downsample=1,
            conv_after_patching=True,
            temporal_downsample=2,
        )
        encoder = perceiver.PerceiverEncoder(
            num_self_attends_per_block=num_self_attends,
            num_blocks=1,
            z_index_dim=num_latents,
            num_cross_attend_heads=1,
            num_z_channels=num_latent_channels,
            num_self_attend_heads=num_self_attend_heads,
            cross_attend_widening_factor=1,
            self_attend_widening_factor=1,
            dropout_prob=0.0,
            z_pos_enc_init_scale=0.02,
            cross_attention_shape_for_attn="kv",
            name="perceiver_encoder",
        )
        decoder = perceiver.FlowDecoder(
            image_shape,
            rescale_factor=100.0,
            use_query_residual=False,
            output_num_channels=2,
            output_w_init=jnp.zeros,
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=fourier(),
        )
        model = perceiver.Perceiver(
            input_preprocessor=preprocessor, encoder=encoder, decoder=decoder
        )
        flow = model(io_processors.patches_for_flow(images), is_training=is_training)
        return flow * FLOW_OUTPUT_SCALE

    frames = np.zeros((1, 2) + image_shape + (3,), np.float32)
    return _Built(hk.transform_with_state(forward), (frames,))


def optical_flow(**sizes) -> hk.TransformedWithState:
    """Perceiver IO optical flow (paper section 4.2).

    `apply(params, state, rng, images, is_training=False)`: two frames
    `[B, 2, 368, 496, 3]` scaled to [-1, 1] -> flow `[B, 368, 496, 2]` in
    pixels (x then y displacement from frame 1 to frame 2).

    Args:
      **sizes: image_shape=(368, 496), num_latents=2048,
        num_latent_channels=512, num_self_attends=24,
        num_self_attend_heads=16, num_bands=64.
    """
    return _optical_flow(**sizes).model
