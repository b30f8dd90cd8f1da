"""The masked language model on UTF-8 bytes, and the text classifier built on its encoder."""

from typing import Any, Dict, Tuple

import haiku as hk
import jax.numpy as jnp
import numpy as np

from perceiver import _validation
from perceiver import bytes_tokenizer
from perceiver import io_processors
from perceiver import perceiver
from perceiver import position_encoding
from perceiver._factories.shared import _Built


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
