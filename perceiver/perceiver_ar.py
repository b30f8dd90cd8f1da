"""Perceiver AR: causal cross-attention from a long context to a few latents, then a causal latent stack.

Hawthorne, Jaegle et al., "General-purpose, long-context autoregressive
modeling with Perceiver AR" (ICML 2022, arXiv 2202.07765). Names,
signatures, defaults and parameter layouts follow its authors' Haiku code
(google-research/perceiver-ar, `perceiver_ar_model.py`), so its checkpoints
load and the same parameters compute the same logits. The attention math
runs through `perceiver.compute` (rotary heads, masks, the key/value
cache, tiled kernels).

Unlike the reference, inference needs no random key (dropout and the
training-only draws take one only when given), and the cache is a list of
`compute.KVCache` (keys stored after their rotary encoding).
"""

from typing import Any, List, NamedTuple, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import compute
from perceiver import perceiver as _perceiver
from perceiver import position_encoding as _position_encoding
from perceiver.compute import precision as _precision

MEMORY_TYPES = ("none", "kv", "fixed_size_kv")


class Masks(NamedTuple):
    """The block-causal masks: encoder `[B, 1, Z, T]`, processor `[B, 1, Z, Z]` (or None)."""

    encoder: Optional[jnp.ndarray]
    processor: Optional[jnp.ndarray]


class Output(NamedTuple):
    """What `PerceiverAR.__call__` returns.

    Attributes:
      input_events_logits: `[B, Z / num_latents_per_position, num_classes]`,
        the logits of the event after each latent's last input.
      encoder_mask: `[B, 1, Z, T]` or None.
      processor_mask: `[B, 1, Z, Z]` or None.
      latent_last_steps: `[B, Z / num_latents_per_position]` each latent's
        last input (-1: none).
      perceiver_state: per attention layer, its `compute.KVCache` after this
        call (None for `memory_type='none'`).
    """

    input_events_logits: jnp.ndarray
    encoder_mask: Optional[jnp.ndarray]
    processor_mask: Optional[jnp.ndarray]
    latent_last_steps: jnp.ndarray
    perceiver_state: Sequence[Any]


# ---------------------------------------------------------------------------
# Sequences, positions, masks
# ---------------------------------------------------------------------------


def get_sequence_length(sequence: jnp.ndarray) -> jnp.ndarray:
    """Length of `[T]` tokens before the first padding (0)."""
    length = jnp.argmax(sequence == 0)
    return jnp.where((length == 0) & (sequence[0] != 0), sequence.shape[0], length)


def terminal_relative_positions(inputs: jnp.ndarray) -> jnp.ndarray:
    """`[B, T]`: each input's distance from its row's last input (padding after it wraps round)."""

    def one(tokens):
        return jnp.roll(jnp.flip(jnp.arange(tokens.shape[0])), get_sequence_length(tokens))

    return jax.vmap(one)(inputs)


def sinusoidal_features(size: int, max_len: int = 2048, min_scale: float = 1.0,
                        max_scale: float = 10000.0) -> jnp.ndarray:
    """`[max_len, size]`: sines in the first half of the channels, cosines in the second."""
    table = np.zeros((max_len, size), dtype=np.float32)
    position = np.arange(0, max_len)[:, None]
    scale_factor = -np.log(max_scale / min_scale) / (size // 2 - 1)
    div_term = min_scale * np.exp(np.arange(0, size // 2) * scale_factor)
    table[:, : size // 2] = np.sin(position * div_term)
    table[:, size // 2 : 2 * (size // 2)] = np.cos(position * div_term)
    return jnp.array(table)


def linear_features(size: int, max_len: int = 2048) -> jnp.ndarray:
    """`[max_len, size]`: each row its position (for debugging)."""
    return jnp.broadcast_to(np.arange(max_len)[:, None], (max_len, size)).astype(jnp.float32)


def _pairwise(queries, keys, fn=jnp.multiply):
    """`[B, 1, Q, K]` float mask of `fn(queries[:, q], keys[:, k])`."""
    return fn(queries[:, None, :, None], keys[:, None, None, :]).astype(jnp.float32)


def make_block_causal_masks(inputs, latent_index_dim: int, latents_per_position: int,
                            mask_style: str, rng_key, latent_dropout_prob: float,
                            is_training: bool):
    """`(Masks, latent_last_steps)` for latents on the last positions of each row ('final_block').

    Latent j of U = latent_index_dim / latents_per_position sits on input
    `length - U + j` (-1 when that is before the start): it sees the inputs
    up to there that are not padding, and the latents on the same or
    earlier inputs.

    Raises:
      ValueError: for another mask_style, or latents not divisible by latents_per_position.
    """
    if mask_style != "final_block":
        raise ValueError(f"Unknown mask_style: {mask_style}.")
    if latent_index_dim % latents_per_position:
        raise ValueError(
            f"z_index_dim ({latent_index_dim}) must be divisible by num_latents_per_position "
            f"({latents_per_position})."
        )
    batch, length = inputs.shape
    unique = latent_index_dim // latents_per_position
    lengths = jax.vmap(get_sequence_length)(inputs)
    last_steps = jnp.maximum(lengths[:, None] + jnp.arange(-unique, 0)[None], -1)
    positions = jnp.repeat(last_steps, latents_per_position, axis=1)
    input_id = jnp.broadcast_to(jnp.arange(length, dtype=jnp.float32), (batch, length))
    encoder = _pairwise(positions, input_id, jnp.greater_equal)
    encoder = encoder * _pairwise(jnp.ones((batch, latent_index_dim)), inputs > 0)
    processor = _pairwise(positions, positions, jnp.greater_equal)
    processor = processor * _pairwise(jnp.ones((batch, latent_index_dim)), positions >= 0)
    if is_training and latent_dropout_prob > 0:
        if rng_key is None:
            raise ValueError("latent_dropout_prob > 0 in training needs a random key.")
        _, key = jax.random.split(rng_key)
        kept = jax.random.bernoulli(key, 1.0 - latent_dropout_prob, (batch, latent_index_dim))
        processor = processor * _pairwise(jnp.ones((batch, latent_index_dim)), kept)
    index = jnp.arange(latent_index_dim)
    processor = processor.at[..., index, index].set(1.0)  # each latent sees itself
    return Masks(encoder=encoder, processor=processor), last_steps


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------


def conv_1d(output_channels: int, init_scale: float = 1.0, with_bias: bool = True,
            name: Optional[str] = None) -> compute.Linear:
    """A position-wise linear layer, initialised as the reference's."""
    return compute.Linear(output_channels, with_bias=with_bias,
                          w_init=hk.initializers.VarianceScaling(init_scale), name=name)


def layer_norm(x: jnp.ndarray) -> jnp.ndarray:
    """The reference's layer norm (last axis, fast variance), computed in float32, returned in x's dtype."""
    norm = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, use_fast_variance=True)
    return norm(x.astype(jnp.promote_types(x.dtype, jnp.float32))).astype(x.dtype)


def get_activation(activation_name: str):
    """'sq_relu' (relu squared) or a `jax.nn` function by name."""
    if activation_name == "sq_relu":
        return lambda x: jax.nn.relu(x) ** 2
    return getattr(jax.nn, activation_name)


def _dropout(x, rate):
    key = hk.maybe_next_rng_key()
    if rate == 0:
        return x
    if key is None:
        raise ValueError(f"dropout with rate {rate} needs a random key: pass an rng to apply().")
    return hk.dropout(key, rate, x)


class Attention(_perceiver.Attention):
    """Multi-headed {cross, self}-attention with rotary or absolute positions and a memory.

    Perceiver IO's `Attention` (the same parameters and channel defaults)
    with the reference's Perceiver AR keywords and call, which returns a memory.
    """

    def __init__(self, dropout_prob, position_encoding_type, fraction_to_rotate, max_wavelength,
                 num_heads=8, init_scale=1.0, with_final_bias=True, final_init_scale_multiplier=1.0,
                 channels_per_head=None, qkv_multi_head=False, qk_channels=None, v_channels=None,
                 output_channels=None, fraction_heads_to_rotate=1.0, name=None):
        super().__init__(
            num_heads=num_heads, init_scale=init_scale, with_final_bias=with_final_bias,
            final_init_scale_multiplier=final_init_scale_multiplier, dropout_prob=dropout_prob,
            qk_channels=qk_channels, v_channels=v_channels, output_channels=output_channels,
            name=name,
        )
        self._position_encoding_type = position_encoding_type
        self._rotary = None
        if position_encoding_type == "rotary":
            self._rotary = compute.Rotary(max_wavelength, fraction_to_rotate, fraction_heads_to_rotate)

    def __call__(self, inputs_q, inputs_kv, is_cross_attend: bool, is_training: bool,
                 memory_type: str, mask=None, memory=None, q_positions=None, kv_positions=None,
                 head_group_size: int = 0, use_chunked_attention: bool = False,
                 query_chunk_size: int = 1024, key_chunk_size: int = 4096):
        """`(outputs [B, T, C], memory)`: attention from `inputs_q` to `inputs_kv` (and a memory).

        Args:
          mask: `[B, 1, T, S]` (1: may attend) or None.
          memory: a `compute.KVCache` holding earlier keys, or None.
          q_positions, kv_positions: `[B, T]`, `[B, S]` for rotary encodings.
          head_group_size, use_chunked_attention, query_chunk_size, key_chunk_size:
            the reference's memory-saving schedules; here the compute options
            choose the kernel, and these change nothing.

        Raises:
          ValueError: for rotary attention without positions, or a memory with memory_type 'none'.
        """
        qk_channels, v_channels, output_channels = self._channels(inputs_q.shape[-1])
        q_proj = conv_1d(qk_channels, init_scale=self._init_scale).params(inputs_q.shape[-1], inputs_q.dtype)
        k_proj = conv_1d(qk_channels, init_scale=self._init_scale).params(inputs_kv.shape[-1], inputs_kv.dtype)
        v_proj = conv_1d(v_channels, init_scale=self._init_scale).params(inputs_kv.shape[-1], inputs_kv.dtype)
        rotary = self._rotary
        if rotary is not None and (q_positions is None or kv_positions is None):
            raise ValueError("Both q_positions and kv_positions must be specified for rotary attention.")
        if memory is not None and memory_type == "none":
            raise ValueError("Memory input not expected when memory_type is `none`.")
        if memory_type not in MEMORY_TYPES:
            raise ValueError(f"Unknown memory_type: {memory_type}")
        dropout = None
        rate = self._dropout_prob if is_training else 0.0
        if rate:
            dropout = compute.Dropout(rate, hk.next_rng_key())
        out_proj = conv_1d(output_channels, with_bias=self._with_final_bias,
                           init_scale=self._final_init_scale).params(v_channels, inputs_q.dtype)
        projections = compute.Projections(q_proj, k_proj, v_proj, out_proj, self._num_heads)
        num_new = inputs_kv.shape[1]
        cache = memory
        if memory_type != "none" and memory is None:
            # The state of this call's keys alone, as the reference returns it.
            cache = compute.KVCache.empty(
                inputs_kv.shape[0], num_new, self._num_heads, qk_channels // self._num_heads,
                v_channels // self._num_heads, inputs_kv.dtype,
            )
        elif memory_type == "kv" and memory is not None:
            cache = memory.grown(num_new)  # 'kv' memories grow; 'fixed_size_kv' ones roll
        elif memory is not None and num_new > memory.capacity:
            raise ValueError(
                f"a fixed_size_kv memory of {memory.capacity} slots cannot take {num_new} new "
                "inputs in one call; size it for the longest call (initialize_memory)."
            )
        if rotary is None:
            q_positions = None
            if cache is None:
                kv_positions = None
        keys = compute.prepare_keys(
            inputs_kv, projections, num_queries=inputs_q.shape[1], heads=rotary,
            kv_positions=kv_positions, cache=cache, unfolded=dropout is not None,
        )
        attention_mask = None if mask is None else mask[:, 0]
        if attention_mask is not None and keys.k.shape[1] > attention_mask.shape[-1]:
            # The mask covers this call's keys; the memory's older keys are all visible.
            pad = keys.k.shape[1] - attention_mask.shape[-1]
            attention_mask = jnp.pad(attention_mask, ((0, 0), (0, 0), (pad, 0)), constant_values=1)
        attended = compute.attend_keys(
            inputs_q, keys, mask=attention_mask, q_positions=q_positions, dropout=dropout,
            zero_empty_rows=False,
        )
        return attended.output, keys.cache


class Dense(hk.Module):
    """The Transformer MLP after attention: widen, activation, narrow, dropout."""

    def __init__(self, dropout_prob, activation_name, widening_factor=4, init_scale=1.0, name=None):
        super().__init__(name=name)
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._init_scale = init_scale
        self._activation_name = activation_name

    def __call__(self, x, is_training=True):
        """`[B, N, C]` -> `[B, N, C]`."""
        channels = x.shape[-1]
        x = conv_1d(self._widening_factor * channels, init_scale=self._init_scale)(x)
        x = get_activation(self._activation_name)(x)
        x = conv_1d(channels, init_scale=self._init_scale)(x)
        return _dropout(x, self._dropout_prob if is_training else 0.0)


class SelfAttention(hk.Module):
    """Pre-norm self-attention and a `Dense` block, both residual."""

    def __init__(self, dropout_prob, position_encoding_type, fraction_to_rotate, max_wavelength,
                 widening_factor=4, dropout_attn_prob=0.0, num_heads=8, att_init_scale=1.0,
                 dense_init_scale=1.0, activation_name="gelu", fraction_heads_to_rotate=1.0,
                 name=None):
        super().__init__(name=name)
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._dropout_attn_prob = dropout_attn_prob
        self._num_heads = num_heads
        self._att_init_scale = att_init_scale
        self._dense_init_scale = dense_init_scale
        self._activation_name = activation_name
        self._attention_kwargs = dict(
            position_encoding_type=position_encoding_type, fraction_to_rotate=fraction_to_rotate,
            fraction_heads_to_rotate=fraction_heads_to_rotate, max_wavelength=max_wavelength,
        )

    def __call__(self, inputs, memory_type: str, mask=None, memory=None, is_training=True,
                 q_positions=None, kv_positions=None):
        """`(outputs [B, N, C], memory)`."""
        dropout_prob = self._dropout_prob if is_training else 0.0
        normed = layer_norm(inputs)
        attention, state = Attention(
            num_heads=self._num_heads, init_scale=self._att_init_scale,
            dropout_prob=self._dropout_attn_prob if is_training else 0.0, **self._attention_kwargs,
        )(normed, normed, is_cross_attend=False, is_training=is_training, mask=mask,
          memory_type=memory_type, memory=memory, q_positions=q_positions,
          kv_positions=kv_positions)
        x = inputs + _dropout(attention, dropout_prob)
        dense = Dense(widening_factor=self._widening_factor, dropout_prob=dropout_prob,
                      init_scale=self._dense_init_scale, activation_name=self._activation_name)
        return x + dense(layer_norm(x), is_training=is_training), state


class CrossAttention(hk.Module):
    """Pre-norm cross-attention (query residual optional) and a `Dense` block."""

    def __init__(self, dropout_prob, position_encoding_type, fraction_to_rotate, max_wavelength,
                 head_group_size: Optional[int], use_chunked_attention: bool,
                 query_chunk_size: int = 1024, key_chunk_size: int = 4096, widening_factor=1,
                 dropout_attn_prob=0.0, num_heads=8, att_init_scale=1.0, dense_init_scale=1.0,
                 shape_for_attn="kv", use_query_residual=False, activation_name="gelu",
                 fraction_heads_to_rotate=1.0, name=None):
        super().__init__(name=name)
        if shape_for_attn not in ("q", "kv"):
            raise ValueError(f"Unknown value {shape_for_attn} for shape_for_attention.")
        self._widening_factor = widening_factor
        self._dropout_prob = dropout_prob
        self._dropout_attn_prob = dropout_attn_prob
        self._num_heads = num_heads
        self._att_init_scale = att_init_scale
        self._dense_init_scale = dense_init_scale
        self._shape_for_attn = shape_for_attn
        self._use_query_residual = use_query_residual
        self._activation_name = activation_name
        self._attention_kwargs = dict(
            position_encoding_type=position_encoding_type, fraction_to_rotate=fraction_to_rotate,
            fraction_heads_to_rotate=fraction_heads_to_rotate, max_wavelength=max_wavelength,
        )

    def __call__(self, inputs_q, inputs_kv, mask, memory_type: str, memory=None, is_training=True,
                 q_positions=None, kv_positions=None):
        """`(outputs [B, Z, Cq], memory)`: latents `[B, Z, Cq]` attend to inputs `[B, T, Ckv]`."""
        dropout_prob = self._dropout_prob if is_training else 0.0
        qk_channels = inputs_q.shape[-1] if self._shape_for_attn == "q" else inputs_kv.shape[-1]
        attention = Attention(
            num_heads=self._num_heads, init_scale=self._att_init_scale,
            dropout_prob=self._dropout_attn_prob if is_training else 0.0,
            qk_channels=qk_channels, output_channels=inputs_q.shape[-1], **self._attention_kwargs,
        )
        attended, state = attention(
            layer_norm(inputs_q), layer_norm(inputs_kv), is_cross_attend=True,
            is_training=is_training, mask=mask, memory_type=memory_type, memory=memory,
            q_positions=q_positions, kv_positions=kv_positions,
        )
        attended = _dropout(attended, dropout_prob)
        x = inputs_q + attended if self._use_query_residual else attended
        dense = Dense(widening_factor=self._widening_factor, dropout_prob=dropout_prob,
                      init_scale=self._dense_init_scale, activation_name=self._activation_name)
        return x + dense(layer_norm(x), is_training=is_training), state


class PerceiverAR(hk.Module):
    """Perceiver AR: embed the context, cross-attend latents on its last positions, process causally.

    Constructor keywords and defaults are the reference's; see its paper and
    code for each. `input_idx_size` lists the size of each position
    dimension (-1: `max_context_length`), used by absolute encodings.

    Raises:
      ValueError: for an unknown option, a rotary `max_wavelength` shorter
        than the context, or channels not divisible by the head counts.
    """

    def __init__(self, num_classes, input_idx_size, max_context_length, position_encoding_type,
                 input_embed_dim=1024, position_encoding="sinusoidal",
                 learnable_position_embeddings=False, num_transformers_per_block=12,
                 z_index_dim=1024, num_z_channels=1024, num_cross_attend_heads=1,
                 num_transformer_heads=8, cross_attend_widening_factor=1,
                 transformer_widening_factor=1, initial_query_offsetting=False,
                 initial_query_embed_style="none", share_learned_initial_query=False,
                 initial_query_embed_activation_name="sq_relu", initial_query_embed_num_layers=2,
                 include_initial_cross_attention=True, additional_cross_attend_after_layers=None,
                 dropout_prob=0.0, z_pos_enc_init_scale=0.02, concat_pos=True,
                 cross_attention_shape_for_attn="kv", encoder_use_query_residual=True,
                 mask_style="final_block", latent_dropout_prob=0.0, encoder_dropout_prob=0.0,
                 num_latents_per_position=1, activation_name="sq_relu", fraction_to_rotate=0.25,
                 fraction_heads_to_rotate=1.0, max_wavelength=8192,
                 cross_attention_head_group_size=0, chunked_cross_attention=False,
                 chunked_cross_query_size=1024, chunked_cross_key_size=4096,
                 use_positions_from_data=False, train_input_positions=0,
                 final_layer_init_zeros=True, use_negative_rotary_positions=False,
                 name="perceiver_ar"):
        super().__init__(name=name)
        if position_encoding_type not in ("absolute", "rotary"):
            raise ValueError(f"Unknown position_encoding_type: {position_encoding_type}")
        self._learnable_position_embeddings = learnable_position_embeddings
        self._position_encoding_type = position_encoding_type
        self._use_negative_rotary_positions = use_negative_rotary_positions
        self._use_positions_from_data = use_positions_from_data
        self._train_input_positions = train_input_positions
        if train_input_positions and train_input_positions >= max_context_length:
            raise ValueError(
                f"train_input_positions ({train_input_positions}) must be below "
                f"max_context_length ({max_context_length})."
            )
        self._initial_query_offsetting = initial_query_offsetting
        if initial_query_offsetting and position_encoding_type != "rotary":
            raise ValueError("initial_query_offsetting moves rotary query positions; it needs "
                             "position_encoding_type='rotary'.")
        if initial_query_offsetting:
            # Query positions move up by one; so does the longest wavelength,
            # so that positions do not clash in the rotary encoding.
            max_wavelength += 1
        self._initial_query_embed_style = initial_query_embed_style
        if initial_query_embed_style == "mlp":
            activation = get_activation(initial_query_embed_activation_name)
            layers = []
            for _ in range(initial_query_embed_num_layers):
                layers += [conv_1d(num_z_channels), activation]
            self.q_embed_z_linear = hk.Sequential(layers)
        elif initial_query_embed_style == "learned":
            self._share_learned_initial_query = share_learned_initial_query
            self.q_embed_learned = hk.get_parameter(
                "q_embed_learned", [1 if share_learned_initial_query else z_index_dim, num_z_channels],
                init=hk.initializers.TruncatedNormal(stddev=0.02),
            )
        elif initial_query_embed_style != "none":
            raise ValueError(f"Unknown initial_query_embed_style: {initial_query_embed_style}")
        if position_encoding_type == "rotary" and max_wavelength < max_context_length:
            raise ValueError(
                f"max_wavelength ({max_wavelength}) must not be smaller than max_context_length "
                f"({max_context_length}) for rotary encodings."
            )
        for arg, heads in (("num_transformer_heads", num_transformer_heads),
                           ("num_cross_attend_heads", num_cross_attend_heads)):
            if num_z_channels % heads:
                raise ValueError(f"num_z_channels ({num_z_channels}) must be divisible by {arg} ({heads}).")
        self._num_latents_per_position = num_latents_per_position
        self._num_classes = num_classes
        self._input_embed_dim = input_embed_dim
        self._z_index_dim = z_index_dim
        self._mask_style = mask_style
        self._latent_dropout_prob = latent_dropout_prob
        self._encoder_dropout_prob = encoder_dropout_prob
        after = sorted(additional_cross_attend_after_layers or [])
        if after and (len(set(after)) != len(after) or after[0] < 0
                      or after[-1] >= num_transformers_per_block):
            raise ValueError(
                f"additional_cross_attend_after_layers must be distinct layers in "
                f"[0, {num_transformers_per_block}); got {additional_cross_attend_after_layers}."
            )
        self._additional_cross_attend_after_layers = after

        self.input_embed = hk.Embed(vocab_size=num_classes, embed_dim=input_embed_dim)
        if position_encoding_type == "absolute":
            self.position_embeddings = []
            for idx_size in input_idx_size:
                if idx_size == -1:
                    if use_positions_from_data:
                        raise ValueError(
                            f"Cannot use unknown input_idx_size ({input_idx_size}) with "
                            "use_positions_from_data: the embedding size is unknown."
                        )
                    idx_size = max_context_length
                self.position_embeddings.append(hk.Embed(
                    vocab_size=idx_size, embed_dim=input_embed_dim,
                    embedding_matrix=_position_table(position_encoding, input_embed_dim, idx_size),
                ))
        cross_kwargs = dict(
            dropout_prob=dropout_prob, position_encoding_type=position_encoding_type,
            fraction_to_rotate=fraction_to_rotate, fraction_heads_to_rotate=fraction_heads_to_rotate,
            max_wavelength=max_wavelength, widening_factor=cross_attend_widening_factor,
            num_heads=num_cross_attend_heads, shape_for_attn=cross_attention_shape_for_attn,
            use_query_residual=encoder_use_query_residual, activation_name=activation_name,
            head_group_size=cross_attention_head_group_size,
            use_chunked_attention=chunked_cross_attention,
            query_chunk_size=chunked_cross_query_size, key_chunk_size=chunked_cross_key_size,
        )
        self._include_initial_cross_attention = include_initial_cross_attention
        if include_initial_cross_attention:
            self.initial_cross_attn = CrossAttention(**cross_kwargs)
        elif mask_style != "final_block":
            raise ValueError(
                "If omitting the initial cross-attention, mask_style must be final_block. "
                f"Instead, got {mask_style}."
            )
        self.z_linear = conv_1d(num_z_channels)
        if num_latents_per_position > 1:
            self.z_pos_enc = _position_encoding.TrainablePositionEncoding(
                index_dim=num_latents_per_position, num_channels=num_z_channels,
                init_scale=z_pos_enc_init_scale, name="z_pos_enc",
            )
        self.latent_transformer = []
        for i in range(num_transformers_per_block):
            self.latent_transformer.append(SelfAttention(
                dropout_prob=dropout_prob, position_encoding_type=position_encoding_type,
                fraction_to_rotate=fraction_to_rotate,
                fraction_heads_to_rotate=fraction_heads_to_rotate, max_wavelength=max_wavelength,
                widening_factor=transformer_widening_factor, num_heads=num_transformer_heads,
                activation_name=activation_name,
            ))
            if i in after:
                self.latent_transformer.append(CrossAttention(**cross_kwargs))
        w_init = jnp.zeros if final_layer_init_zeros else hk.initializers.VarianceScaling(1.0)
        self.final_layer = hk.Linear(num_classes, w_init=w_init, name="logits")

    def _positions(self, inputs):
        return terminal_relative_positions(inputs)

    def _build_network_inputs(self, inputs, input_idxs):
        """`(embedded inputs [B, T, E], rotary positions [B, T] or None)`."""
        if inputs.ndim != 2:
            raise ValueError(f"inputs must be [batch, length] tokens; got shape {inputs.shape}.")
        if self._position_encoding_type == "rotary":
            if input_idxs is not None:
                if input_idxs.shape[2] != 1:
                    raise ValueError(
                        "input_idxs must have one-dimensional event indices for rotary "
                        f"encoding, but got {input_idxs.shape}"
                    )
                positions = input_idxs[:, :, 0]
            else:
                positions = self._positions(inputs)
                if self._use_negative_rotary_positions:
                    positions = -positions
            return self.input_embed(inputs), positions
        # The position tables are read (and created) before the token embedding.
        if input_idxs is None:
            input_idxs = self._positions(inputs)[..., None]
        table = sum(embed(input_idxs[..., i]) for i, embed in enumerate(self.position_embeddings))
        if not self._learnable_position_embeddings:
            table = jax.lax.stop_gradient(table)
        return self.input_embed(inputs) + table, None

    def __call__(self, inputs, input_idxs, is_training, memory_type="none", memory=None,
                 z_index_dim=None, use_remat=False) -> Output:
        """Logits of the next event after each latent's position.

        Args:
          inputs: `[B, T]` int tokens, 0 = padding (at the end).
          input_idxs: `[B, T, D]` positions (with `use_positions_from_data`), else ignored.
          is_training: dropout and the training-only input selection.
          memory_type: 'none', 'kv' (memories grow) or 'fixed_size_kv' (they roll).
          memory: one `compute.KVCache` per attention layer (see
            `initialize_memory`), or None.
          z_index_dim: latents for this call (default: the constructor's).
          use_remat: recompute each layer in the backward pass (the
            cross-attention too, unlike the reference: the same function).

        Returns:
          `Output`.

        Raises:
          ValueError: for a memory without positions from data, a context
            shorter than the latents, or an unknown memory_type.
        """
        if memory_type not in MEMORY_TYPES:
            raise ValueError(f"Unknown memory_type: {memory_type}")
        batch_size = inputs.shape[0]
        if z_index_dim is None:
            z_index_dim = self._z_index_dim
        if self._use_positions_from_data:
            if input_idxs is None:
                raise ValueError("use_positions_from_data needs input_idxs; got None.")
        else:
            if memory is not None:
                raise ValueError("use_positions_from_data must be used for caching.")
            input_idxs = None

        if z_index_dim == 1:
            masks = Masks(encoder=None, processor=None)
            latent_last_steps = jnp.full([batch_size, 1], inputs.shape[1] - 1)
        else:
            rng = hk.maybe_next_rng_key()  # drawn where the reference draws it, for the masks
            if inputs.shape[1] < z_index_dim:
                raise ValueError(
                    f"inputs of length {inputs.shape[1]} are shorter than z_index_dim ({z_index_dim})."
                )
            masks, latent_last_steps = make_block_causal_masks(
                inputs, z_index_dim, self._num_latents_per_position, self._mask_style, rng,
                self._latent_dropout_prob, is_training,
            )
        embedded, positions = self._build_network_inputs(inputs, input_idxs)
        # Under a half-precision compute dtype (`compute.options`) the layers
        # run in it, reading their parameters cast; logits return in float32.
        dtype = _precision.compute_dtype(embedded.dtype)
        half = dtype != embedded.dtype
        def cast():
            return _precision.parameter_dtype(dtype if half else None)

        embedded = embedded.astype(dtype)

        take = jax.vmap(lambda x, idx: jnp.take(x, idx, axis=0))
        latent_positions = None
        if self._position_encoding_type == "rotary":
            # Latents without a last step (-1) take the last position; they are masked in the loss.
            latent_positions = take(positions, latent_last_steps)
        if self._initial_query_embed_style == "learned":
            if not self._share_learned_initial_query and memory is not None:
                raise ValueError("Learned, unshared query embeddings not yet supported for caching.")
            repeat = z_index_dim if self._share_learned_initial_query else 1
            query = jnp.tile(self.q_embed_learned, (batch_size, repeat, 1))
        else:
            with cast():
                query = self.z_linear(take(embedded, latent_last_steps))
        if self._num_latents_per_position > 1:
            if memory is not None:
                raise ValueError("Caching not yet supported for num_latents_per_position > 1.")
            query = jnp.repeat(query, self._num_latents_per_position, axis=1)
            z_pos_enc = self.z_pos_enc(batch_size=batch_size)
            query = query + jnp.tile(z_pos_enc, [1, z_index_dim // self._num_latents_per_position, 1])
        if self._initial_query_embed_style == "mlp":
            with cast():
                query = self.q_embed_z_linear(query)
        if self._initial_query_offsetting:
            latent_positions = latent_positions + jnp.ones_like(latent_positions)

        if is_training:
            if memory is not None:
                raise ValueError("Caching not supported at train.")
            if self._train_input_positions:
                inputs, embedded, encoder_mask, positions = self._select_input_positions(
                    inputs, embedded, masks.encoder, positions
                )
                masks = Masks(encoder=encoder_mask, processor=masks.processor)
            if self._encoder_dropout_prob > 0:
                kept = jax.random.bernoulli(
                    hk.next_rng_key(), 1.0 - self._encoder_dropout_prob, embedded.shape[:2]
                )
                keep = _pairwise(jnp.ones((batch_size, z_index_dim)), kept)
                masks = Masks(encoder=keep if masks.encoder is None else masks.encoder * keep,
                              processor=masks.processor)

        num_layers = len(self.latent_transformer) + int(self._include_initial_cross_attention)
        if memory is not None and len(memory) != num_layers:
            raise ValueError(
                f"memory must hold one cache per attention layer ({num_layers}); got {len(memory)}."
            )
        state: List[Any] = []
        layers = iter(memory) if memory is not None else None

        def next_memory():
            return None if layers is None else next(layers)

        with cast():
            query = query.astype(dtype)
            z = query
            if self._include_initial_cross_attention:
                def cross(z, memory=next_memory()):
                    return self.initial_cross_attn(
                        z, embedded, mask=masks.encoder, memory_type=memory_type,
                        memory=memory, is_training=is_training,
                        # The inputs' positions belong to the keys, the latents' to the queries.
                        q_positions=latent_positions, kv_positions=positions,
                    )
                # The reference recomputes the latent layers only; the cross-attention's
                # activations are the ones that grow with the context.
                z, layer_state = (hk.remat(cross) if use_remat else cross)(z)
                state.append(layer_state)
            for block in self.latent_transformer:
                block_memory = next_memory()
                if isinstance(block, CrossAttention):
                    def run(z, block=block, block_memory=block_memory):
                        return block(z, embedded, memory_type=memory_type, memory=block_memory,
                                     is_training=is_training, mask=masks.encoder,
                                     q_positions=latent_positions, kv_positions=positions)
                else:
                    def run(z, block=block, block_memory=block_memory):
                        return block(z, memory_type=memory_type, memory=block_memory,
                                     is_training=is_training, mask=masks.processor,
                                     q_positions=latent_positions, kv_positions=latent_positions)
                if use_remat:
                    run = hk.remat(run)
                # The residual stream's gradient stored once per layer on XLA:CPU (see compute.stacks).
                z, layer_state = run(compute.gradient_boundary(z))
                state.append(layer_state)

            z = layer_norm(z)
            if self._num_latents_per_position > 1:
                window = (1, self._num_latents_per_position, 1)
                z = hk.AvgPool(window_shape=window, strides=window, padding="VALID")(z)
            logits = self.final_layer(z)
        if half:
            logits = logits.astype(jnp.float32)
        return Output(logits, masks.encoder, masks.processor, latent_last_steps,
                      state if memory_type != "none" else [None] * len(state))

    def _select_input_positions(self, inputs, embedded, encoder_mask, positions):
        """A random subset of `train_input_positions` inputs per row, padding last (training)."""

        def select(inputs, embedded, encoder_mask, positions):
            order = jax.random.permutation(hk.next_rng_key(), jnp.arange(inputs.shape[0]))
            order = order[: self._train_input_positions]
            order = order[jnp.argsort(inputs[order] == 0, kind="stable")]
            positions = None if positions is None else positions[order]
            return inputs[order], embedded[order], encoder_mask[:, :, order], positions

        return hk.vmap(select, split_rng=not hk.running_init())(inputs, embedded, encoder_mask, positions)


def _position_table(kind: str, size: int, length: int):
    """The initial table of absolute position embeddings (None: `hk.Embed`'s random one)."""
    if kind == "sinusoidal":
        return sinusoidal_features(size, max_len=length)
    if kind == "linear":
        return linear_features(size, max_len=length)
    if kind == "random":
        return None
    if kind == "fourier":
        # The reference's Fourier table is Perceiver IO's features on a line of `length` points.
        return _position_encoding.generate_fourier_features(
            _position_encoding.build_linear_positions((length,)), num_bands=size // 2,
            max_resolution=(length,), concat_pos=False,
        )
    raise ValueError(f"Unknown position_encoding: {kind}")


def initialize_memory(batch_size, num_transformers_per_block, num_cross_attend_heads,
                      num_transformer_heads, num_z_channels, max_context_length_memory,
                      z_index_dim_memory, position_encoding_type="rotary",
                      memory_type="fixed_size_kv") -> List[compute.KVCache]:
    """Empty memories for cached decoding: the cross-attention's, then one per latent layer.

    As the reference's `sample_utils.initialize_memory` sizes them: the
    cross-attention holds `max_context_length_memory` inputs, each latent
    layer `z_index_dim_memory` latents.

    Raises:
      ValueError: for an unknown memory_type or position_encoding_type.
    """
    if memory_type not in ("kv", "fixed_size_kv"):
        raise ValueError(f"Unknown memory_type: {memory_type}")
    if position_encoding_type not in ("absolute", "rotary"):
        raise ValueError(f"Unknown position_encoding_type: {position_encoding_type}")
    memory = []
    for i in range(num_transformers_per_block + 1):
        heads = num_cross_attend_heads if i == 0 else num_transformer_heads
        slots = max_context_length_memory if i == 0 else z_index_dim_memory
        memory.append(compute.KVCache.empty(batch_size, slots, heads, num_z_channels // heads))
    return memory
