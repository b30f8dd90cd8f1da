"""Audio classification on raw waveforms, read as the multimodal model reads audio.

The waveform is cut into patches of `samples_per_patch` samples, each with
Fourier features of its position (the reference's `AudioPreprocessor`, as in
the video+audio autoencoder); a latent array cross-attends to the patches and
one learned query reads the class.
"""

import haiku as hk
import numpy as np

from perceiver import _validation
from perceiver import io_processors
from perceiver import perceiver
from perceiver._factories.shared import _Built


def _audio_classifier(
    num_classes: int,
    *,
    num_samples: int = 16000,
    samples_per_patch: int = 16,
    num_bands: int = 64,
    num_latents: int = 256,
    num_latent_channels: int = 512,
    num_blocks: int = 1,
    num_self_attends_per_block: int = 6,
    num_self_attend_heads: int = 8,
    num_cross_attend_heads: int = 1,
) -> _Built:
    _validation.check_positive_int("num_classes", num_classes)
    _validation.check_positive_int("num_samples", num_samples)
    _validation.check_divisible("num_samples", num_samples, samples_per_patch, "samples_per_patch")
    encoder_kwargs = dict(
        num_blocks=num_blocks,
        num_self_attends_per_block=num_self_attends_per_block,
        z_index_dim=num_latents,
        num_z_channels=num_latent_channels,
        num_self_attend_heads=num_self_attend_heads,
        num_cross_attend_heads=num_cross_attend_heads,
        cross_attend_widening_factor=1,
        self_attend_widening_factor=1,
        use_query_residual=True,
        z_pos_enc_init_scale=0.02,
        dropout_prob=0.0,
    )

    def forward(audio, is_training=False):
        _validation.check_rank("audio", audio, (2,), "[B, samples]")
        if audio.shape[1] != num_samples:
            raise ValueError(
                f"audio must be [B, {num_samples}] samples; got shape {tuple(audio.shape)} "
                "(resample, then pad or cut to the model's length first)."
            )
        preprocessor = io_processors.AudioPreprocessor(
            prep_type="patches",
            samples_per_patch=samples_per_patch,
            position_encoding_type="fourier",
            # As the video+audio autoencoder: the resolution is the sample count.
            fourier_position_encoding_kwargs=dict(
                num_bands=num_bands, max_resolution=(num_samples,), sine_only=False, concat_pos=True
            ),
            n_extra_pos_mlp=0,
        )
        decoder = perceiver.ClassificationDecoder(
            num_classes,
            num_z_channels=num_latent_channels,
            position_encoding_type="trainable",
            trainable_position_encoding_kwargs=dict(init_scale=0.02, num_channels=num_latent_channels),
            use_query_residual=True,
        )
        model = perceiver.Perceiver(
            encoder=perceiver.PerceiverEncoder(**encoder_kwargs),
            decoder=decoder,
            input_preprocessor=preprocessor,
        )
        return model(audio, is_training=is_training)

    audio = np.zeros((1, num_samples), np.float32)
    return _Built(hk.transform_with_state(forward), (audio,))


def audio_classifier(num_classes: int, **sizes) -> hk.TransformedWithState:
    """Classifies raw waveforms: audio patches with Fourier positions, a Perceiver IO encoder.

    What the `finetune_audio` recipe trains. `apply(params, state, rng, audio,
    is_training=False)`: mono waveforms `[B, num_samples]` in [-1, 1] ->
    logits `[B, num_classes]`.

    Args:
      num_classes: the number of classes.
      **sizes: num_samples=16000 (one second at 16 kHz), samples_per_patch=16,
        num_bands=64, num_latents=256, num_latent_channels=512, num_blocks=1,
        num_self_attends_per_block=6, num_self_attend_heads=8,
        num_cross_attend_heads=1.

    Raises:
      ValueError: for num_classes < 1, or num_samples not a multiple of
        samples_per_patch.
    """
    return _audio_classifier(num_classes, **sizes).model
