"""The Perceiver AR causal language model on UTF-8 bytes."""

import haiku as hk
import numpy as np

from perceiver import language_model
from perceiver import perceiver_ar
from perceiver._factories.shared import _Built


def _byte_language_model(
    *,
    max_context_length: int = 4096,
    num_latents: int = 256,
    num_channels: int = 512,
    num_layers: int = 6,
    num_heads: int = 8,
    num_cross_attend_heads: int = 1,
    widening_factor: int = 4,
    dropout_prob: float = 0.0,
) -> _Built:
    config = language_model.perceiver_ar_config(
        max_context_length=max_context_length, num_latents=num_latents,
        num_channels=num_channels, num_layers=num_layers, num_heads=num_heads,
        num_cross_attend_heads=num_cross_attend_heads, widening_factor=widening_factor,
        dropout_prob=dropout_prob,
    )

    def forward(inputs, is_training=False, z_index_dim=None, use_remat=False):
        if inputs.ndim != 2 or inputs.shape[1] > max_context_length:
            raise ValueError(
                f"inputs must be [batch, length <= {max_context_length}] tokens; got shape "
                f"{inputs.shape}."
            )
        idxs = language_model.positions(inputs.shape[0], inputs.shape[1])
        model = perceiver_ar.PerceiverAR(**config)
        return model(inputs, idxs, is_training=is_training, z_index_dim=z_index_dim,
                     use_remat=use_remat)

    tokens = np.full((1, max_context_length), language_model.SOS, np.int32)
    return _Built(hk.transform_with_state(forward), (tokens,))


def byte_language_model(**sizes) -> hk.TransformedWithState:
    """A Perceiver AR causal language model on UTF-8 bytes (Hawthorne et al., 2022).

    `apply(params, state, rng, inputs, is_training=False, z_index_dim=None,
    use_remat=False)`: tokens `[B, T]` int (`perceiver.language_model.encode`;
    num_latents <= T <= max_context_length, 0-padded at the end) ->
    `perceiver_ar.Output`, whose `input_events_logits` `[B, Z, 259]` predict
    the token after each of the last Z = num_latents positions
    (`latent_last_steps`). Positions are 1..T. The cached sampler
    (`perceiver.tasks.generation`) runs the same parameters.

    Args:
      **sizes: max_context_length=4096, num_latents=256, num_channels=512,
        num_layers=6, num_heads=8, num_cross_attend_heads=1,
        widening_factor=4, dropout_prob=0.0 (see
        `language_model.perceiver_ar_config`).
    """
    return _byte_language_model(**sizes).model
