"""The multimodal video + audio + label autoencoder, whole or as an encoder and a decoder."""

from typing import Any, Callable, Dict, Mapping, NamedTuple

import haiku as hk
import jax.numpy as jnp
import numpy as np

from perceiver import _validation
from perceiver import io_processors
from perceiver import perceiver
from perceiver._factories.shared import _Built, _bind_sizes


# ---------------------------------------------------------------------------
# Multimodal video + audio + label autoencoding
# ---------------------------------------------------------------------------


class _VideoSpec:
    """Builds the video autoencoder's modules, shared by the factory and its parts.

    Construction order and arguments are those of DeepMind's notebook, which
    fixes every module's name.
    """

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)
        c = self.config
        self.num_samples = c["num_frames"] * c["audio_samples_per_frame"]
        self.patch_grid = (c["num_frames"], c["image_size"] // 4, c["image_size"] // 4)
        self.num_pixels = c["num_frames"] * c["image_size"] ** 2
        self.num_audio_patches = self.num_samples // c["samples_per_patch"]
        # Preprocessed input positions per modality (the MultimodalPreprocessor's
        # modality_sizes), fixed by the sizes.
        self.input_sizes = {
            "audio": self.num_audio_patches,
            "image": int(np.prod(self.patch_grid)),
            "label": 1,
        }

    @staticmethod
    def _fourier(bands, resolution):
        return dict(num_bands=bands, max_resolution=resolution, sine_only=False, concat_pos=True)

    def check_inputs(self, images, audio) -> None:
        c = self.config
        _validation.check_rank("images", images, (5,), "[B, T, H, W, 3]")
        want = (c["num_frames"], c["image_size"], c["image_size"])
        if tuple(images.shape[1:4]) != want:
            raise ValueError(
                f"images must be [B, {want[0]}, {want[1]}, {want[2]}, 3]; got shape "
                f"{tuple(images.shape)}."
            )
        _validation.check_rank("audio", audio, (3,), "[B, samples, 1]")
        if audio.shape[1] != self.num_samples or audio.shape[0] != images.shape[0]:
            raise ValueError(
                f"audio must be [{images.shape[0]}, {self.num_samples}, 1]; got shape "
                f"{tuple(audio.shape)}."
            )

    def inputs(self, images, audio) -> Dict[str, jnp.ndarray]:
        # The label is always masked (probability 1), so its value is unused.
        labels = jnp.zeros((images.shape[0], self.config["num_classes"]), images.dtype)
        return {"image": images, "audio": audio, "label": labels}

    def points(self, subsampling) -> Dict[str, Any]:
        """Subsampling indices per modality; a missing or None entry means all."""
        subsampling = dict(subsampling or {})
        unknown = sorted(set(subsampling) - {"image", "audio", "label"})
        if unknown:
            raise ValueError(
                f"subsampling may only have the keys 'image', 'audio' and 'label'; got "
                f"{sorted(subsampling)}."
            )
        if subsampling.get("label") is not None:
            raise ValueError("subsampling['label'] must be None: the label is one query.")
        image, audio = subsampling.get("image"), subsampling.get("audio")
        for name, idx in (("image", image), ("audio", audio)):
            if idx is not None:
                _validation.check_rank(f"subsampling[{name!r}]", idx, (1,), "flat indices")
        return {
            "image": np.arange(self.num_pixels) if image is None else image,
            "audio": np.arange(self.num_audio_patches) if audio is None else audio,
            "label": None,
        }

    @staticmethod
    def output_sizes(subsampling) -> Dict[str, int]:
        """Decoded positions per modality for `points(...)`'s subsampling."""
        return {
            "audio": np.shape(subsampling["audio"])[0],
            "image": np.shape(subsampling["image"])[0],
            "label": 1,
        }

    def build(self):
        """`(preprocessor, postprocessor, encoder)`."""
        c, fourier = self.config, self._fourier
        preprocessor = io_processors.MultimodalPreprocessor(
            min_padding_size=4,
            modalities={
                "audio": io_processors.AudioPreprocessor(
                    position_encoding_type="fourier",
                    fourier_position_encoding_kwargs=fourier(c["audio_bands"], (self.num_samples,)),
                    n_extra_pos_mlp=0,
                    prep_type="patches",
                    samples_per_patch=c["samples_per_patch"],
                ),
                "image": io_processors.ImagePreprocessor(
                    position_encoding_type="fourier",
                    fourier_position_encoding_kwargs=fourier(c["image_bands"], self.patch_grid),
                    n_extra_pos_mlp=0,
                    prep_type="patches",
                    spatial_downsample=4,
                    temporal_downsample=1,
                ),
                "label": io_processors.OneHotPreprocessor(),
            },
            mask_probs={"image": 0.0, "audio": 0.0, "label": 1.0},
        )
        postprocessor = io_processors.MultimodalPostprocessor(
            modalities={
                "audio": io_processors.AudioPostprocessor(samples_per_patch=c["samples_per_patch"]),
                "image": io_processors.ProjectionPostprocessor(num_outputs=3),
                "label": io_processors.ClassificationPostprocessor(num_classes=c["num_classes"]),
            }
        )
        encoder = perceiver.PerceiverEncoder(
            num_self_attends_per_block=c["num_self_attends"],
            num_blocks=1,
            z_index_dim=c["num_latents"],
            num_z_channels=c["num_latent_channels"],
            num_cross_attend_heads=1,
            num_self_attend_heads=c["num_heads"],
            cross_attend_widening_factor=1,
            self_attend_widening_factor=1,
            dropout_prob=0.0,
            z_pos_enc_init_scale=0.02,
            cross_attention_shape_for_attn="kv",
            name="encoder",
        )
        return preprocessor, postprocessor, encoder

    def build_decoder(self, batch: int, subsampling) -> perceiver.MultimodalDecoder:
        """The decoder for `subsampling` (its sizes depend on how many points)."""
        c, fourier = self.config, self._fourier
        return perceiver.MultimodalDecoder(
            concat_preprocessed_input=False,
            subsampled_index_dims=self.output_sizes(subsampling),
            modalities={
                "audio": perceiver.BasicDecoder(
                    concat_preprocessed_input=False,
                    subsampled_index_dims=subsampling["audio"],
                    output_index_dims=(self.num_audio_patches,),
                    num_z_channels=1024,
                    output_num_channels=c["decoder_channels"],
                    use_query_residual=False,
                    position_encoding_type="fourier",
                    fourier_position_encoding_kwargs=fourier(c["audio_bands"], (self.num_samples,)),
                ),
                "image": perceiver.BasicVideoAutoencodingDecoder(
                    concat_preprocessed_input=False,
                    subsampled_index_dims=subsampling["image"],
                    output_shape=[batch, c["num_frames"], c["image_size"], c["image_size"]],
                    num_z_channels=1024,
                    output_num_channels=c["decoder_channels"],
                    use_query_residual=False,
                    position_encoding_type="fourier",
                    fourier_position_encoding_kwargs=fourier(c["image_bands"], self.patch_grid),
                ),
                "label": perceiver.ClassificationDecoder(
                    concat_preprocessed_input=False,
                    num_classes=c["num_classes"],
                    num_z_channels=1024,
                    use_query_residual=False,
                    position_encoding_type="trainable",
                    trainable_position_encoding_kwargs=dict(
                        num_channels=c["label_query_channels"], init_scale=0.02
                    ),
                ),
            },
            num_outputs=None,
            output_num_channels=c["decoder_channels"],
            use_query_residual=False,
        )


def _video_autoencoder(
    *,
    num_frames: int = 16,
    image_size: int = 224,
    audio_samples_per_frame: int = 1920,
    samples_per_patch: int = 16,
    num_latents: int = 784,
    num_latent_channels: int = 512,
    num_self_attends: int = 8,
    num_heads: int = 8,
    decoder_channels: int = 512,
    num_classes: int = 700,
    image_bands: int = 32,
    audio_bands: int = 192,
    label_query_channels: int = 1024,
) -> _Built:
    spec = _VideoSpec(dict(locals()))

    def forward(images, audio, subsampling=None, is_training=False):
        spec.check_inputs(images, audio)
        subsampling = spec.points(subsampling)
        preprocessor, postprocessor, encoder = spec.build()
        decoder = spec.build_decoder(images.shape[0], subsampling)
        model = perceiver.Perceiver(
            input_preprocessor=preprocessor,
            encoder=encoder,
            decoder=decoder,
            output_postprocessor=postprocessor,
        )
        return model(
            spec.inputs(images, audio), is_training=is_training, subsampled_output_points=subsampling
        )

    images = np.zeros((1, num_frames, image_size, image_size, 3), np.float32)
    audio = np.zeros((1, spec.num_samples, 1), np.float32)
    subsampling = {"image": np.arange(4), "audio": np.arange(4)}
    return _Built(hk.transform_with_state(forward), (images, audio, subsampling))


def video_autoencoder(**sizes) -> hk.TransformedWithState:
    """Perceiver IO multimodal autoencoder for Kinetics-700 (paper section 4.3).

    `apply(params, state, rng, images, audio, subsampling=None,
    is_training=False)`: video `[B, 16, 224, 224, 3]` in [0, 1], audio
    `[B, 30720, 1]` in [-1, 1], and `subsampling` `{'image': idx, 'audio':
    idx}` (flat indices of the outputs to decode; None decodes all) ->
    `{'image': [B, n_image, 3], 'audio': [B, n_audio * 16], 'label': [B, 700]}`.

    Args:
      **sizes: num_frames=16, image_size=224, audio_samples_per_frame=1920,
        samples_per_patch=16, num_latents=784, num_latent_channels=512,
        num_self_attends=8, num_heads=8, decoder_channels=512,
        num_classes=700, image_bands=32, audio_bands=192,
        label_query_channels=1024.
    """
    return _video_autoencoder(**sizes).model


# ---------------------------------------------------------------------------
# The video autoencoder split into an encoder and a decoder
# ---------------------------------------------------------------------------


class VideoAutoencoderParts(NamedTuple):
    """The two apply functions of `video_autoencoder_parts` (see there)."""

    encode: Callable
    decode: Callable


def video_autoencoder_parts(**sizes) -> hk.MultiTransformedWithState:
    """`video_autoencoder` as an encoder and a decoder, to encode once and decode often.

    The modules, their names and their parameters are those of
    `video_autoencoder(**sizes)` (same tree, same values from the same
    `init` key), so the published checkpoint applies to both parts; encoding
    then decoding equals `video_autoencoder`'s apply.

    `init(rng, images, audio, subsampling=None, is_training=False)` as
    `video_autoencoder`. `apply` is a `VideoAutoencoderParts`:

    - `apply.encode(params, state, rng, images, audio, is_training=False)`:
      video `[B, 16, 224, 224, 3]` in [0, 1] and audio `[B, 30720, 1]` in
      [-1, 1] -> latents `[B, 784, 512]`.
    - `apply.decode(params, state, rng, latents, subsampling=None,
      is_training=False)`: latents `[B, 784, 512]` and `{'image': idx,
      'audio': idx}` (flat indices into the `[16, 224, 224]` pixels and the
      1920 audio patches; a missing or None entry decodes all) ->
      `{'image': [B, n_image, 3], 'audio': [B, n_audio * 16], 'label':
      [B, 700]}`. Index arrays may be traced, so one compiled decode serves
      every chunk of the same size.

    Args:
      **sizes: as `video_autoencoder`.

    Raises:
      TypeError: for an unknown size keyword.
    """
    spec = _VideoSpec(_bind_sizes("video_autoencoder", _video_autoencoder, sizes))
    input_sizes = spec.input_sizes
    points, build, build_decoder = spec.points, spec.build, spec.build_decoder

    def f():
        preprocessor, postprocessor, encoder = build()

        def preprocess(images, audio, is_training):
            spec.check_inputs(images, audio)
            inputs, _, _ = preprocessor(
                spec.inputs(images, audio), is_training=is_training, network_input_is_1d=True
            )
            return inputs

        def postprocess(outputs, subsampling, is_training):
            sizes = spec.output_sizes(subsampling)
            return postprocessor(outputs, is_training=is_training, modality_sizes=sizes)

        def init(images, audio, subsampling=None, is_training=False):
            # Parameters are created in video_autoencoder's order (Perceiver's
            # __call__: preprocess, latents, queries, encode, decode,
            # postprocess), so one init key gives the same values.
            subsampling = points(subsampling)
            inputs = preprocess(images, audio, is_training)
            latents = encoder.latents(inputs)
            decoder = build_decoder(images.shape[0], subsampling)
            query = decoder.decoder_query(inputs, input_sizes, subsampled_points=subsampling)
            z = encoder(inputs, latents, is_training=is_training)
            outputs = decoder(query, z, is_training=is_training)
            return postprocess(outputs, subsampling, is_training)

        def encode(images, audio, is_training=False):
            inputs = preprocess(images, audio, is_training)
            return encoder(inputs, encoder.latents(inputs), is_training=is_training)

        def decode(latents, subsampling=None, is_training=False):
            _validation.check_rank("latents", latents, (3,), "[B, num_latents, channels]")
            subsampling = points(subsampling)
            batch = latents.shape[0]
            decoder = build_decoder(batch, subsampling)
            # The queries depend on the inputs only through their batch size
            # (concat_preprocessed_input=False): a zero-width stand-in with
            # the inputs' positions saves keeping the preprocessed inputs.
            stand_in = jnp.zeros((batch, sum(input_sizes.values()), 0), latents.dtype)
            query = decoder.decoder_query(stand_in, input_sizes, subsampled_points=subsampling)
            # Pixels are decoded with the RGB projection folded into the decoder.
            return decoder._decode_and_postprocess(
                query, latents, spec.output_sizes(subsampling), postprocessor,
                is_training=is_training,
            )

        return init, VideoAutoencoderParts(encode=encode, decode=decode)

    return hk.multi_transform_with_state(f)
