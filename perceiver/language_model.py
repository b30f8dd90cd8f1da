"""A byte-level causal language model: Perceiver AR over UTF-8 bytes.

Tokens follow google-research/perceiver-ar's byte datasets: 0 is padding,
1 ends a document (EOS), 2 starts one (SOS), and byte b is token b + 3, so
there are 259 classes. Positions come from the data, 1-based, as the
reference's datasets and sampler number them; rotary encodings only see
their differences, so a window may start anywhere in a document.

`perceiver_ar_config(**sizes)` gives `perceiver_ar.PerceiverAR`'s keywords
for the sizes a recipe or a checkpoint's description names; the factory
`perceiver.models.byte_language_model(**sizes)` builds the model from them.
"""

from typing import Any, Dict, Sequence, Union

import jax.numpy as jnp
import numpy as np

PAD = 0
EOS = 1
SOS = 2
NUM_RESERVED = 3
VOCAB_SIZE = 256 + NUM_RESERVED

# Tokens a sampler never draws: padding would end the context, and a
# document does not start in the middle of another.
NEVER_DRAWN = (PAD, SOS)


def encode(text: Union[str, bytes], *, start: bool = True) -> np.ndarray:
    """`[T]` int32 tokens of `text` (UTF-8), after SOS when `start`.

    Raises:
      TypeError: for anything but str or bytes.
    """
    if isinstance(text, str):
        text = text.encode("utf-8")
    if not isinstance(text, (bytes, bytearray, memoryview)):
        raise TypeError(f"text must be str or bytes; got {type(text).__name__}.")
    tokens = np.frombuffer(bytes(text), np.uint8).astype(np.int32) + NUM_RESERVED
    if start:
        tokens = np.concatenate([np.array([SOS], np.int32), tokens])
    return tokens


def to_bytes(tokens: Sequence[int]) -> bytes:
    """The bytes of `tokens`, reserved tokens dropped."""
    tokens = np.asarray(tokens)
    return (tokens[tokens >= NUM_RESERVED] - NUM_RESERVED).astype(np.uint8).tobytes()


def decode(tokens: Sequence[int]) -> str:
    """Text of `tokens` (reserved tokens dropped; invalid UTF-8 becomes U+FFFD)."""
    return to_bytes(tokens).decode("utf-8", errors="replace")


def positions(batch: int, length: int) -> np.ndarray:
    """`[B, T, 1]` 1-based positions, as the model reads them."""
    idxs = np.arange(1, length + 1, dtype=np.int32)[None, :, None]
    if not isinstance(batch, (int, np.integer)):  # a symbolic batch (jax.export)
        return jnp.broadcast_to(idxs, (batch, length, 1))
    return np.broadcast_to(idxs, (batch, length, 1))


def perceiver_ar_config(
    *,
    max_context_length: int = 4096,
    num_latents: int = 256,
    num_channels: int = 512,
    num_layers: int = 6,
    num_heads: int = 8,
    num_cross_attend_heads: int = 1,
    widening_factor: int = 4,
    dropout_prob: float = 0.0,
) -> Dict[str, Any]:
    """`PerceiverAR` keywords of a byte language model of these sizes.

    Args:
      max_context_length: the longest context (bytes) it reads.
      num_latents: latents, the last positions it predicts from at once.
      num_channels: the width of embeddings and latents.
      num_layers: latent self-attention layers.
      num_heads: heads of the latent self-attentions.
      num_cross_attend_heads: heads of the cross-attention.
      widening_factor: of the MLPs after each attention.
      dropout_prob: of attention weights and residual branches (training).

    Raises:
      ValueError: for latents outside [1, max_context_length], or channels
        not divisible by either head count.
    """
    for name, value in (("max_context_length", max_context_length), ("num_latents", num_latents),
                        ("num_channels", num_channels), ("num_layers", num_layers),
                        ("num_heads", num_heads),
                        ("num_cross_attend_heads", num_cross_attend_heads),
                        ("widening_factor", widening_factor)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; got {value!r}.")
    if num_latents > max_context_length:
        raise ValueError(
            f"num_latents ({num_latents}) must not exceed max_context_length ({max_context_length})."
        )
    for name, heads in (("num_heads", num_heads), ("num_cross_attend_heads", num_cross_attend_heads)):
        if num_channels % heads:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by {name} ({heads}).")
    return dict(
        num_classes=VOCAB_SIZE,
        # Room for SOS and for 1-based positions, as the reference sizes it.
        input_idx_size=[max_context_length + 2],
        max_context_length=max_context_length,
        position_encoding_type="rotary",
        input_embed_dim=num_channels,
        num_z_channels=num_channels,
        z_index_dim=num_latents,
        num_transformers_per_block=num_layers,
        num_transformer_heads=num_heads,
        num_cross_attend_heads=num_cross_attend_heads,
        cross_attend_widening_factor=widening_factor,
        transformer_widening_factor=widening_factor,
        dropout_prob=float(dropout_prob),
        max_wavelength=max(8192, max_context_length),
        use_positions_from_data=True,
    )
