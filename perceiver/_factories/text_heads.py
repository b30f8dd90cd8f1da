"""Heads on the byte MLM's encoder that answer per byte: token classification and extractive QA.

Both keep the masked language model's embedding ('embed'), input positions
('trainable_position_encoding') and encoder ('perceiver_encoder'), names and
shapes, so the published MLM fills everything but the new decoder. The
decoder's queries are one trainable position per byte, concatenated (as the
paper allows, section 3.3) with that byte's embedding, so each output knows
which byte it is about and not only where it is.
"""

import haiku as hk
import numpy as np

from perceiver import _validation
from perceiver import perceiver
from perceiver._factories.language import embed_bytes, mlm_encoder_kwargs
from perceiver._factories.shared import _Built


def _per_byte_model(
    num_outputs: int, decoder_name: str, *, max_seq_len: int, d_model: int, num_latents: int,
    num_latent_channels: int, num_self_attends: int, num_heads: int, qk_channels: int,
    query_inputs: bool,
) -> _Built:
    """The MLM's embedding and encoder, and a decoder with `num_outputs` channels per byte."""
    encoder_kwargs = mlm_encoder_kwargs(
        num_latents=num_latents,
        num_latent_channels=num_latent_channels,
        num_self_attends=num_self_attends,
        num_heads=num_heads,
        qk_channels=qk_channels,
    )

    def forward(inputs, input_mask, is_training=False):
        x, embed = embed_bytes(inputs, input_mask, max_seq_len=max_seq_len, d_model=d_model)
        length = inputs.shape[1]
        decoder = perceiver.BasicDecoder(
            output_num_channels=num_outputs,
            position_encoding_type="trainable",
            output_index_dims=max_seq_len,
            num_z_channels=num_latent_channels,
            qk_channels=qk_channels,
            v_channels=d_model,
            num_heads=num_heads,
            use_query_residual=False,
            concat_preprocessed_input=query_inputs,
            trainable_position_encoding_kwargs=dict(num_channels=d_model),
            name=decoder_name,
        )
        token_embeddings = embed(inputs)

        def bytes_in(inputs, *, is_training, pos=None, network_input_is_1d=True):
            # A plain function, not a module: the embedding stays where the MLM
            # has it; the decoder reads the embeddings without positions.
            del inputs, is_training, pos, network_input_is_1d
            return x, None, token_embeddings

        model = perceiver.Perceiver(
            encoder=perceiver.PerceiverEncoder(**encoder_kwargs),
            decoder=decoder,
            input_preprocessor=bytes_in,
        )
        subsample = None if length == max_seq_len else np.arange(length)
        return model(
            x,
            is_training=is_training,
            input_mask=input_mask,
            query_mask=input_mask,
            subsampled_output_points=subsample,
        )

    tokens = np.zeros((1, max_seq_len), np.int32)
    return _Built(hk.transform_with_state(forward), (tokens, np.ones_like(tokens)))


def _token_classifier(
    num_labels: int,
    *,
    max_seq_len: int = 2048,
    d_model: int = 768,
    num_latents: int = 256,
    num_latent_channels: int = 1280,
    num_self_attends: int = 26,
    num_heads: int = 8,
    qk_channels: int = 256,
    query_inputs: bool = True,
) -> _Built:
    _validation.check_positive_int("num_labels", num_labels)
    return _per_byte_model(
        num_labels, "token_classification_decoder", max_seq_len=max_seq_len, d_model=d_model,
        num_latents=num_latents, num_latent_channels=num_latent_channels,
        num_self_attends=num_self_attends, num_heads=num_heads, qk_channels=qk_channels,
        query_inputs=query_inputs,
    )


def token_classifier(num_labels: int, **sizes) -> hk.TransformedWithState:
    """Tags every byte: the byte MLM's encoder with a per-byte classification decoder.

    What the `finetune_tokens` recipe trains (named entities, code tokens as
    BIO tags). `apply(params, state, rng, inputs, input_mask,
    is_training=False)`: tokens `[B, T]` int (`BytesTokenizer`, T <=
    max_seq_len) and mask `[B, T]` -> logits `[B, T, num_labels]`.

    Args:
      num_labels: the number of tags (BIO: 1 + 2 x entity labels).
      **sizes: as `masked_language_model` (max_seq_len=2048, d_model=768,
        num_latents=256, num_latent_channels=1280, num_self_attends=26,
        num_heads=8, qk_channels=256), and query_inputs=True (the decoder's
        queries carry each byte's embedding as well as its position).

    Raises:
      ValueError: for num_labels < 1.
    """
    return _token_classifier(num_labels, **sizes).model


def _question_answerer(
    *,
    max_seq_len: int = 2048,
    d_model: int = 768,
    num_latents: int = 256,
    num_latent_channels: int = 1280,
    num_self_attends: int = 26,
    num_heads: int = 8,
    qk_channels: int = 256,
    query_inputs: bool = True,
) -> _Built:
    built = _per_byte_model(
        2, "question_answering_decoder", max_seq_len=max_seq_len, d_model=d_model,
        num_latents=num_latents, num_latent_channels=num_latent_channels,
        num_self_attends=num_self_attends, num_heads=num_heads, qk_channels=qk_channels,
        query_inputs=query_inputs,
    )

    def split(params, state, rng, inputs, input_mask, is_training=False):
        logits, state = built.model.apply(params, state, rng, inputs, input_mask, is_training)
        return (logits[..., 0], logits[..., 1]), state

    return _Built(hk.TransformedWithState(built.model.init, split), built.example_inputs)


def question_answerer(**sizes) -> hk.TransformedWithState:
    """Start and end logits per byte: the byte MLM's encoder with a two-channel decoder.

    What the `finetune_qa` recipe trains. The input is one byte sequence,
    `[CLS] question [SEP] context [PAD]...` (see
    `perceiver.datasets.squad.encode_qa`). `apply(params, state, rng, inputs,
    input_mask, is_training=False)`: tokens `[B, T]` and mask `[B, T]` ->
    `(start_logits [B, T], end_logits [B, T])`.

    Args:
      **sizes: as `token_classifier`.
    """
    return _question_answerer(**sizes).model
