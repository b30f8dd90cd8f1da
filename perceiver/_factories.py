"""The models' factories: the six published Perceiver IO models, a text classifier, a byte LM.

Import them from `perceiver.models`, which adds loading checkpoints
(`pretrained`, `load_for`) on top; this module knows nothing of files, so
that the loading layer (`perceiver.loading`) can stand between the two.

Each factory assembles the model the way DeepMind's notebooks do and returns
an `hk.TransformedWithState`; defaults are the published sizes, so the
parameter trees equal the published checkpoints'. Keyword arguments shrink
the model (for tests, or new models of the same shape). `text_classifier`
is the byte MLM's embedding and encoder with a classification decoder: the
model the `finetune_text` training recipe trains; `byte_language_model` the
Perceiver AR the `perceiver_ar` recipe trains.
"""

import dataclasses
import inspect
from typing import Any, Callable, Dict, Mapping, NamedTuple, Sequence, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import _validation
from perceiver import bytes_tokenizer
from perceiver import io_processors
from perceiver import language_model
from perceiver import perceiver
from perceiver import perceiver_ar
from perceiver import position_encoding

IMAGENET_VARIANTS = ("learned_position_encoding", "fourier_position_encoding", "conv_preprocessing")

# Factor by which the reference notebook scales the flow network's output.
FLOW_OUTPUT_SCALE = 20.0


@dataclasses.dataclass(frozen=True)
class _Built:
    """A model and inputs of the right shapes, to trace its parameter tree."""

    model: hk.TransformedWithState
    example_inputs: Tuple


# ---------------------------------------------------------------------------
# Masked language model on UTF-8 bytes
# ---------------------------------------------------------------------------


def mlm_encoder_kwargs(
    *, num_latents: int, num_latent_channels: int, num_self_attends: int, num_heads: int,
    qk_channels: int,
) -> Dict[str, Any]:
    """`PerceiverEncoder` arguments of the masked language model (and of models built on it)."""
    return dict(
        num_self_attends_per_block=num_self_attends,
        num_blocks=1,
        z_index_dim=num_latents,
        num_z_channels=num_latent_channels,
        num_self_attend_heads=num_heads,
        num_cross_attend_heads=num_heads,
        qk_channels=qk_channels,
        v_channels=num_latent_channels,
        use_query_residual=True,
        cross_attend_widening_factor=1,
        self_attend_widening_factor=1,
    )


def embed_bytes(
    inputs: jnp.ndarray, input_mask: jnp.ndarray, *, max_seq_len: int, d_model: int
) -> Tuple[jnp.ndarray, hk.Embed]:
    """Byte embeddings plus trainable positions, as the masked language model's input.

    Args:
      inputs: `[B, T]` byte tokens, T <= max_seq_len.
      input_mask: `[B, T]`.

    Returns:
      `([B, T, d_model], the embedding module)`; shorter inputs use the first
      rows of the position table.

    Raises:
      ValueError: for a wrong rank, T > max_seq_len, or a mask of another shape.
    """
    _validation.check_rank("inputs", inputs, (2,), "[B, T] byte tokens")
    length = inputs.shape[1]
    if length > max_seq_len:
        raise ValueError(
            f"inputs has {length} tokens; this model reads at most max_seq_len={max_seq_len}."
        )
    _validation.check_mask_shape("input_mask", input_mask, inputs.shape)
    embed = hk.Embed(vocab_size=bytes_tokenizer.BytesTokenizer().vocab_size, embed_dim=d_model)
    x = embed(inputs)
    pos = position_encoding.TrainablePositionEncoding(index_dim=max_seq_len, num_channels=d_model)(
        x.shape[0]
    )
    return x + pos[:, :length], embed


def _masked_language_model(
    *,
    max_seq_len: int = 2048,
    d_model: int = 768,
    num_latents: int = 256,
    num_latent_channels: int = 1280,
    num_self_attends: int = 26,
    num_heads: int = 8,
    qk_channels: int = 256,
) -> _Built:
    encoder_kwargs = mlm_encoder_kwargs(
        num_latents=num_latents,
        num_latent_channels=num_latent_channels,
        num_self_attends=num_self_attends,
        num_heads=num_heads,
        qk_channels=qk_channels,
    )
    decoder_kwargs = dict(
        output_num_channels=num_latent_channels,
        position_encoding_type="trainable",
        output_index_dims=max_seq_len,
        num_z_channels=num_latent_channels,
        qk_channels=qk_channels,
        v_channels=d_model,
        num_heads=num_heads,
        final_project=False,
        use_query_residual=False,
        trainable_position_encoding_kwargs=dict(num_channels=d_model),
    )

    def forward(inputs, input_mask, is_training=False):
        x, embed = embed_bytes(inputs, input_mask, max_seq_len=max_seq_len, d_model=d_model)
        length = inputs.shape[1]
        model = perceiver.Perceiver(
            encoder=perceiver.PerceiverEncoder(**encoder_kwargs),
            decoder=perceiver.BasicDecoder(**decoder_kwargs),
        )
        # Shorter inputs use the first rows of the position tables; this equals
        # padding them to max_seq_len with the padding masked out.
        subsample = None if length == max_seq_len else np.arange(length)
        out = model(
            x,
            is_training=is_training,
            input_mask=input_mask,
            query_mask=input_mask,
            subsampled_output_points=subsample,
        )
        return io_processors.EmbeddingDecoder(embedding_matrix=embed.embeddings)(out)

    tokens = np.zeros((1, max_seq_len), np.int32)
    return _Built(hk.transform_with_state(forward), (tokens, np.ones_like(tokens)))


def masked_language_model(**sizes) -> hk.TransformedWithState:
    """Perceiver IO masked language model on UTF-8 bytes (paper section 4.1).

    `apply(params, state, rng, inputs, input_mask, is_training=False)`:
    tokens `[B, T]` int (see `BytesTokenizer`; T <= max_seq_len) and mask
    `[B, T]` (1 for real tokens, 0 for padding) -> logits `[B, T, 262]`.

    Args:
      **sizes: max_seq_len=2048, d_model=768, num_latents=256,
        num_latent_channels=1280, num_self_attends=26, num_heads=8,
        qk_channels=256.
    """
    return _masked_language_model(**sizes).model


def _text_classifier(
    num_classes: int,
    *,
    max_seq_len: int = 2048,
    d_model: int = 768,
    num_latents: int = 256,
    num_latent_channels: int = 1280,
    num_self_attends: int = 26,
    num_heads: int = 8,
    qk_channels: int = 256,
) -> _Built:
    _validation.check_positive_int("num_classes", num_classes)
    encoder_kwargs = mlm_encoder_kwargs(
        num_latents=num_latents,
        num_latent_channels=num_latent_channels,
        num_self_attends=num_self_attends,
        num_heads=num_heads,
        qk_channels=qk_channels,
    )

    def forward(inputs, input_mask, is_training=False):
        # The MLM's modules in the MLM's order, so that its checkpoint fills
        # everything but the new decoder ('classification_decoder').
        x, _ = embed_bytes(inputs, input_mask, max_seq_len=max_seq_len, d_model=d_model)
        decoder = perceiver.ClassificationDecoder(
            num_classes,
            num_z_channels=num_latent_channels,
            position_encoding_type="trainable",
            trainable_position_encoding_kwargs=dict(
                num_channels=num_latent_channels, init_scale=0.02
            ),
            use_query_residual=True,
        )
        model = perceiver.Perceiver(
            encoder=perceiver.PerceiverEncoder(**encoder_kwargs), decoder=decoder
        )
        return model(x, is_training=is_training, input_mask=input_mask)

    tokens = np.zeros((1, max_seq_len), np.int32)
    return _Built(hk.transform_with_state(forward), (tokens, np.ones_like(tokens)))


def text_classifier(num_classes: int, **sizes) -> hk.TransformedWithState:
    """The byte MLM's embedding and encoder with a classification decoder.

    What the `finetune_text` recipe trains: embedding ('embed'), input
    positions ('trainable_position_encoding') and encoder
    ('perceiver_encoder') have the MLM's names and shapes; one learned query
    ('classification_decoder') cross-attends to the latents.

    `apply(params, state, rng, inputs, input_mask, is_training=False)`: tokens
    `[B, T]` int (`BytesTokenizer`, T <= max_seq_len) and mask `[B, T]` (1 for
    real tokens, 0 for padding) -> logits `[B, num_classes]`.

    Args:
      num_classes: the number of classes.
      **sizes: as `masked_language_model` (max_seq_len=2048, d_model=768, ...).

    Raises:
      ValueError: for num_classes < 1.
    """
    return _text_classifier(num_classes, **sizes).model


# ---------------------------------------------------------------------------
# ImageNet classification
# ---------------------------------------------------------------------------


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
    encoder_kwargs = dict(
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
    decoder_kwargs = dict(
        num_z_channels=num_latent_channels,
        position_encoding_type="trainable",
        trainable_position_encoding_kwargs=dict(init_scale=0.02, num_channels=num_latent_channels),
        use_query_residual=variant != "learned_position_encoding",
    )

    def fourier(resolution):
        return dict(
            concat_pos=True,
            max_resolution=(resolution, resolution),
            num_bands=num_bands,
            sine_only=False,
        )

    if variant == "learned_position_encoding":
        prep_kwargs = dict(
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
    elif variant == "fourier_position_encoding":
        prep_kwargs = dict(
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=fourier(image_size),
            prep_type="pixels",
            spatial_downsample=1,
        )
    else:
        prep_kwargs = dict(
            position_encoding_type="fourier",
            fourier_position_encoding_kwargs=fourier(image_size // 4),
            prep_type="conv",
        )

    def forward(images, is_training=False):
        _validation.check_rank("images", images, (4,), "[B, H, W, 3]")
        if tuple(images.shape[1:3]) != (image_size, image_size):
            raise ValueError(
                f"images must be [B, {image_size}, {image_size}, 3]; got shape "
                f"{tuple(images.shape)} (resize and centre-crop first)."
            )
        model = perceiver.Perceiver(
            encoder=perceiver.PerceiverEncoder(**encoder_kwargs),
            decoder=perceiver.ClassificationDecoder(num_classes, **decoder_kwargs),
            input_preprocessor=io_processors.ImagePreprocessor(**prep_kwargs),
        )
        if variant == "conv_preprocessing" and hk.running_init():
            # The stem's BatchNorm creates its moving averages only in training
            # mode (evaluation reads them), so `init` always runs as training.
            # Nothing else here differs between the modes (no dropout), so the
            # parameters and state equal those of init(..., is_training=True).
            is_training = True
        return model(images, is_training=is_training)

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


# ---------------------------------------------------------------------------
# Optical flow
# ---------------------------------------------------------------------------


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
# Perceiver AR byte language model
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Factories by name
# ---------------------------------------------------------------------------

_BUILDERS: Dict[str, Callable[..., _Built]] = {
    "masked_language_model": _masked_language_model,
    "imagenet_classifier": _imagenet_classifier,
    "optical_flow": _optical_flow,
    "video_autoencoder": _video_autoencoder,
    "text_classifier": _text_classifier,
    "byte_language_model": _byte_language_model,
}
FACTORIES: Tuple[str, ...] = tuple(_BUILDERS)
# The public factory functions, so that callers may pass one instead of its name.
_FACTORY_FUNCTIONS: Dict[Callable, str] = {
    masked_language_model: "masked_language_model",
    imagenet_classifier: "imagenet_classifier",
    optical_flow: "optical_flow",
    video_autoencoder: "video_autoencoder",
    text_classifier: "text_classifier",
    byte_language_model: "byte_language_model",
}


def factory_name(factory: "str | Callable") -> str:
    """The name of a factory given by name ('optical_flow') or as the function (`optical_flow`).

    Raises:
      ValueError: for an unknown name.
      TypeError: for anything else than a name or one of this module's factories.
    """
    if isinstance(factory, str):
        _validation.check_choice("factory", factory, FACTORIES)
        return factory
    try:
        return _FACTORY_FUNCTIONS[factory]
    except (KeyError, TypeError):  # TypeError: an unhashable value
        raise TypeError(
            f"factory must be a factory name ({', '.join(FACTORIES)}) or one of those "
            f"functions of perceiver.models; got {factory!r}."
        ) from None


def parameter_shapes(factory: "str | Callable", **kwargs) -> Tuple[Mapping, Mapping]:
    """`(params, state)` of a factory's model as `jax.ShapeDtypeStruct` leaves (no compute).

    Args:
      factory: a factory, by name ('masked_language_model',
        'imagenet_classifier', 'optical_flow', 'video_autoencoder',
        'text_classifier') or as the function (`models.optical_flow`).
      **kwargs: the factory's arguments.

    Raises:
      ValueError, TypeError: for an unknown factory (see `factory_name`) or
        arguments the factory does not take.
    """
    built = _BUILDERS[factory_name(factory)](**kwargs)
    return jax.eval_shape(
        lambda: built.model.init(jax.random.PRNGKey(0), *built.example_inputs, is_training=True)
    )


# ---------------------------------------------------------------------------
# The video autoencoder split into an encoder and a decoder
# ---------------------------------------------------------------------------


class VideoAutoencoderParts(NamedTuple):
    """The two apply functions of `video_autoencoder_parts` (see there)."""

    encode: Callable
    decode: Callable


def factory_arguments(factory: "str | Callable") -> Tuple[str, ...]:
    """The names of a factory's arguments (by name or function, see `parameter_shapes`)."""
    return tuple(inspect.signature(_BUILDERS[factory_name(factory)]).parameters)


def factory_sizes(factory: "str | Callable", **kwargs) -> Dict[str, Any]:
    """A factory's arguments with its defaults filled in.

    `factory_sizes('video_autoencoder', num_frames=4)` gives every size of
    that model, e.g. its image_size (224) and num_classes (700).

    Args:
      factory: a factory, by name ('masked_language_model',
        'imagenet_classifier', 'optical_flow', 'video_autoencoder',
        'text_classifier') or as the function.
      **kwargs: some of the factory's arguments.

    Raises:
      ValueError: for an unknown factory.
      TypeError: for an argument the factory does not take, or a missing one
        (imagenet_classifier's variant, text_classifier's num_classes).
    """
    factory = factory_name(factory)
    signature = inspect.signature(_BUILDERS[factory])
    try:
        bound = signature.bind(**kwargs)
    except TypeError as e:
        raise TypeError(
            f"{factory}: {e}; it takes {', '.join(signature.parameters)}."
        ) from None
    bound.apply_defaults()
    return dict(bound.arguments)


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
    spec = _VideoSpec(factory_sizes("video_autoencoder", **sizes))
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
