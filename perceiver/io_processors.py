"""Input preprocessors and output postprocessors for Perceiver IO.

A preprocessor turns raw data (images, video, audio, labels, several
modalities at once) into the `[B, N, C]` array the encoder attends to, and
returns `(inputs, modality_sizes, inputs_without_pos)`. A postprocessor turns
decoder outputs `[B, M, C]` back into task outputs.

Names, signatures and parameter layouts follow DeepMind's reference
(`perceiver.io_processors`), so checkpoints written by it load here.
"""

import functools
import math
import types
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import einops
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import _validation
from perceiver import compute
from perceiver import position_encoding

ModalitySizeT = Mapping[str, int]
PreprocessorOutputT = Tuple[jnp.ndarray, Optional[jnp.ndarray], jnp.ndarray]
PreprocessorT = Callable[..., PreprocessorOutputT]
PostprocessorT = Callable[..., Any]

IMAGE_PREP_TYPES = ("conv", "patches", "pixels", "conv1x1")
IMAGE_POSTPROC_TYPES = ("conv", "patches", "pixels", "raft", "conv1x1")
_FRAMES_LAYOUT = "[B, H, W, C] images or [B, T, H, W, C] video"


# ---------------------------------------------------------------------------
# Array rearrangements
# ---------------------------------------------------------------------------


def _check_blocks(
    frames,
    temporal_block_size,
    spatial_block_size,
    name="frames",
    factor_names=("temporal_block_size", "spatial_block_size"),
):
    _validation.check_rank(name, frames, (4, 5), _FRAMES_LAYOUT)
    temporal_name, spatial_name = factor_names
    _validation.check_positive_int(temporal_name, temporal_block_size)
    _validation.check_positive_int(spatial_name, spatial_block_size)
    shape = frames.shape
    if frames.ndim == 5:
        _validation.check_divisible(f"{name} time size", shape[1], temporal_block_size, temporal_name)
    _validation.check_divisible(f"{name} height", shape[-3], spatial_block_size, spatial_name)
    _validation.check_divisible(f"{name} width", shape[-2], spatial_block_size, spatial_name)


def space_to_depth(
    frames: jnp.ndarray, temporal_block_size: int = 1, spatial_block_size: int = 1
) -> jnp.ndarray:
    """Moves non-overlapping space(-time) blocks into channels.

    Args:
      frames: `[B, H, W, C]` or `[B, T, H, W, C]`.
      temporal_block_size: block length in time (video only).
      spatial_block_size: block height and width.

    Returns:
      `[B, H/s, W/s, s*s*C]` or `[B, T/t, H/s, W/s, t*s*s*C]`; channels are
      ordered (dt, dh, dw, c).

    Raises:
      ValueError: for another rank, or sizes not divisible by the blocks.
    """
    _check_blocks(frames, temporal_block_size, spatial_block_size)
    s, t = spatial_block_size, temporal_block_size
    if frames.ndim == 4:
        return einops.rearrange(frames, "b (h dh) (w dw) c -> b h w (dh dw c)", dh=s, dw=s)
    return einops.rearrange(
        frames, "b (t dt) (h dh) (w dw) c -> b t h w (dt dh dw c)", dt=t, dh=s, dw=s
    )


def reverse_space_to_depth(
    frames: jnp.ndarray, temporal_block_size: int = 1, spatial_block_size: int = 1
) -> jnp.ndarray:
    """Inverse of `space_to_depth`: moves channel blocks back into space(-time).

    Args:
      frames: `[B, H, W, s*s*C]` or `[B, T, H, W, t*s*s*C]`.

    Returns:
      `[B, H*s, W*s, C]` or `[B, T*t, H*s, W*s, C]`.

    Raises:
      ValueError: for another rank, or channels not divisible by the block volume.
    """
    _validation.check_rank("frames", frames, (4, 5), _FRAMES_LAYOUT)
    _validation.check_positive_int("temporal_block_size", temporal_block_size)
    _validation.check_positive_int("spatial_block_size", spatial_block_size)
    s, t = spatial_block_size, temporal_block_size
    block = s * s * (t if frames.ndim == 5 else 1)
    _validation.check_divisible("frames channels", frames.shape[-1], block, "the block volume")
    if frames.ndim == 4:
        return einops.rearrange(frames, "b h w (dh dw c) -> b (h dh) (w dw) c", dh=s, dw=s)
    return einops.rearrange(
        frames, "b t h w (dt dh dw c) -> b (t dt) (h dh) (w dw) c", dt=t, dh=s, dw=s
    )


def _check_window_arg(name: str, value: Sequence[int]) -> None:
    value = list(value)
    well_formed = len(value) == 4 and value[0] == 1 and value[3] == 1
    if not well_formed or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in value):
        raise ValueError(f"{name} must be [1, rows, cols, 1] of positive ints; got {value}.")


def extract_patches(
    images: jnp.ndarray,
    sizes: Sequence[int],
    strides: Sequence[int],
    rates: Sequence[int],
    padding: str = "VALID",
) -> jnp.ndarray:
    """Patches of `images`, stacked in channels, like `tf.image.extract_patches`.

    Args:
      images: `[B, H, W, C]`.
      sizes: `[1, size_rows, size_cols, 1]`.
      strides: `[1, stride_rows, stride_cols, 1]`.
      rates: `[1, rate_rows, rate_cols, 1]` (dilation).
      padding: 'VALID' or 'SAME'.

    Returns:
      `[B, out_rows, out_cols, size_rows * size_cols * C]`, channels ordered
      (row, col, c).

    Raises:
      ValueError: for malformed `sizes`/`strides`/`rates`, an unknown
        `padding`, or `images` not of rank 4.
    """
    for name, value in (("sizes", sizes), ("strides", strides), ("rates", rates)):
        _check_window_arg(name, value)
    _validation.check_choice("padding", padding, ("VALID", "SAME"))
    _validation.check_rank("images", images, (4,), "[B, H, W, C]")
    channels = images.shape[-1]
    patches = jax.lax.conv_general_dilated_patches(
        einops.rearrange(images, "n h w c -> n c h w"),
        filter_shape=tuple(sizes[1:3]),
        window_strides=tuple(strides[1:3]),
        padding=padding,
        rhs_dilation=tuple(rates[1:3]),
    )
    # XLA stacks patch elements channel-major; TF's layout is channel-minor.
    return einops.rearrange(
        patches, "n (c ph pw) h w -> n h w (ph pw c)", c=channels, ph=sizes[1], pw=sizes[2]
    )


def patches_for_flow(inputs: jnp.ndarray) -> jnp.ndarray:
    """3x3 neighbourhoods of every pixel of every frame (zero padded).

    Args:
      inputs: `[B, T, H, W, C]` (T=2 for flow).

    Returns:
      `[B, T, H, W, 9*C]`.

    Raises:
      ValueError: if `inputs` is not of rank 5.
    """
    _validation.check_rank("inputs", inputs, (5,), "[B, T, H, W, C]")
    b, t, h, w, c = inputs.shape
    frames = jnp.pad(inputs.reshape(b * t, h, w, c), [(0, 0), (1, 1), (1, 1), (0, 0)])
    patches = extract_patches(frames, sizes=[1, 3, 3, 1], strides=[1, 1, 1, 1], rates=[1, 1, 1, 1])
    return patches.reshape(b, t, h, w, 9 * c)


# ---------------------------------------------------------------------------
# Up/down-sampling
# ---------------------------------------------------------------------------


class Conv2DDownsample(hk.Module):
    """Downsamples 4x per layer: 7x7 stride-2 conv, BatchNorm, ReLU, 3x3 stride-2 max pool."""

    def __init__(
        self,
        num_layers: int = 1,
        num_channels: int = 64,
        use_batchnorm: bool = True,
        bn_config: Optional[Mapping[str, float]] = None,
        name: Optional[str] = None,
    ):
        """Builds the layers.

        Args:
          num_layers: number of conv -> max-pool layers.
          num_channels: conv output channels.
          use_batchnorm: whether to normalise after each conv.
          bn_config: overrides for `hk.BatchNorm` (defaults: decay_rate=0.9,
            eps=1e-5, with scale and offset).
          name: module name.
        """
        super().__init__(name=name)
        self._num_layers = num_layers
        self._use_batchnorm = use_batchnorm
        bn_config = {
            "decay_rate": 0.9,
            "eps": 1e-5,
            "create_scale": True,
            "create_offset": True,
            **dict(bn_config or {}),
        }
        self.layers = []
        for _ in range(num_layers):
            conv = hk.Conv2D(
                output_channels=num_channels,
                kernel_shape=7,
                stride=2,
                with_bias=False,
                padding="SAME",
                name="conv",
            )
            batchnorm = hk.BatchNorm(name="batchnorm", **bn_config) if use_batchnorm else None
            self.layers.append(dict(conv=conv, batchnorm=batchnorm))

    def __call__(
        self, inputs: jnp.ndarray, *, is_training: bool, test_local_stats: bool = False
    ) -> jnp.ndarray:
        """`[B, H, W, C]` -> `[B, ceil(H/4^L), ceil(W/4^L), num_channels]`."""
        _validation.check_rank("inputs", inputs, (4,), "[B, H, W, C]")
        out = inputs
        for layer in self.layers:
            out = layer["conv"](out)
            if layer["batchnorm"] is not None:
                out = layer["batchnorm"](out, is_training, test_local_stats)
            out = jax.nn.relu(out)
            out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
        return out


class Conv2DUpsample(hk.Module):
    """Upsamples 4x with two stride-2 transposed convolutions."""

    def __init__(self, n_outputs: int, name: Optional[str] = None):
        """Builds the layers.

        Args:
          n_outputs: output channels (the first layer has twice as many).
          name: module name.
        """
        super().__init__(name=name)
        self.transp_conv1 = hk.Conv2DTranspose(
            output_channels=n_outputs * 2,
            kernel_shape=4,
            stride=2,
            with_bias=True,
            padding="SAME",
            name="transp_conv_1",
        )
        self.transp_conv2 = hk.Conv2DTranspose(
            output_channels=n_outputs,
            kernel_shape=4,
            stride=2,
            with_bias=True,
            padding="SAME",
            name="transp_conv_2",
        )

    def __call__(
        self, inputs: jnp.ndarray, *, is_training: bool, test_local_stats: bool = False
    ) -> jnp.ndarray:
        """`[B, H, W, C]` -> `[B, 4H, 4W, n_outputs]`."""
        del is_training, test_local_stats  # No BatchNorm here.
        return self.transp_conv2(jax.nn.relu(self.transp_conv1(inputs)))


class Conv3DUpsample(hk.Module):
    """Upsamples video with stride-2 3D transposed convolutions."""

    def __init__(
        self,
        n_outputs: int,
        n_time_upsamples: int = 2,
        n_space_upsamples: int = 4,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self._n_outputs = n_outputs
        self._n_time_upsamples = n_time_upsamples
        self._n_space_upsamples = n_space_upsamples

    def __call__(self, x: jnp.ndarray, *, is_training: bool) -> jnp.ndarray:
        """`[B, T, H, W, C]` -> `[B, T*2^nt, H*2^ns, W*2^ns, n_outputs]`."""
        del is_training
        n_upsamples = max(self._n_time_upsamples, self._n_space_upsamples)
        for i in range(n_upsamples):
            time_stride = 2 if i < self._n_time_upsamples else 1
            space_stride = 2 if i < self._n_space_upsamples else 1
            x = hk.Conv3DTranspose(
                output_channels=self._n_outputs * 2 ** (n_upsamples - 1 - i),
                stride=[time_stride, space_stride, space_stride],
                kernel_shape=[4, 4, 4],
                name=f"conv3d_transpose_{i}",
            )(x)
            if i != n_upsamples - 1:
                x = jax.nn.relu(x)
        return x


# ---------------------------------------------------------------------------
# Preprocessors
# ---------------------------------------------------------------------------


def _position_encoding_factory(position_encoding_type, position_encoding_kwargs):
    """Checks the encoding type now; the encoding is built once sizes are known."""
    _validation.check_choice(
        "position_encoding_type", position_encoding_type, position_encoding.POSITION_ENCODING_TYPES
    )
    return functools.partial(
        position_encoding.build_position_encoding,
        position_encoding_type=position_encoding_type,
        **position_encoding_kwargs,
    )


def _grid_encoding_parts(encoding, batch_size, pos, n_extra_pos_mlp, concat_or_add_pos):
    """`encoding.grid_parts(batch_size)` where the encoding is only concatenated, else None.

    Concatenating the parts straight into the network input never stores the
    `[B, N, C]` encoding itself.
    """
    if pos is None and n_extra_pos_mlp == 0 and concat_or_add_pos == "concat":
        return encoding.grid_parts(batch_size)
    return None


def _add_position_encoding(
    inputs, pos_enc, n_extra_pos_mlp, concat_or_add_pos
) -> jnp.ndarray:
    """Deepens `pos_enc` by residual MLP layers and concatenates or adds it."""
    for i in range(n_extra_pos_mlp):
        pos_enc = pos_enc + hk.Linear(pos_enc.shape[-1])(pos_enc)
        if i < n_extra_pos_mlp - 1:
            pos_enc = jax.nn.relu(pos_enc)
    if concat_or_add_pos == "concat":
        return jnp.concatenate([inputs, pos_enc], axis=-1)
    if inputs.shape[-1] != pos_enc.shape[-1]:
        raise ValueError(
            f"concat_or_add_pos='add' needs inputs and position encodings with equal "
            f"channels; got {inputs.shape[-1]} and {pos_enc.shape[-1]}."
        )
    return inputs + pos_enc


class ImagePreprocessor(hk.Module):
    """Image or video preprocessing: featurise, then attach position encodings.

    `prep_type` selects the featuriser: 'conv' (Conv2DDownsample, 4x per
    layer), 'conv1x1' (a strided 1x1 conv), 'patches' (space-to-depth, with an
    optional linear layer) or 'pixels' (strided subsampling).
    """

    def __init__(
        self,
        prep_type: str = "conv",
        spatial_downsample: int = 4,
        temporal_downsample: int = 1,
        position_encoding_type: str = "fourier",
        n_extra_pos_mlp: int = 0,
        num_channels: int = 64,
        conv_after_patching: bool = False,
        conv2d_use_batchnorm: bool = True,
        concat_or_add_pos: str = "concat",
        name: Optional[str] = None,
        **position_encoding_kwargs,
    ):
        """Builds the preprocessor.

        Raises:
          ValueError: for an unknown `prep_type`, `concat_or_add_pos` or
            `position_encoding_type`, or a down-sampling the featuriser cannot do.
        """
        super().__init__(name=name)
        _validation.check_choice("prep_type", prep_type, IMAGE_PREP_TYPES)
        _validation.check_choice("concat_or_add_pos", concat_or_add_pos, ("concat", "add"))
        _validation.check_positive_int("spatial_downsample", spatial_downsample)
        _validation.check_positive_int("temporal_downsample", temporal_downsample)
        self._prep_type = prep_type
        self._spatial_downsample = spatial_downsample
        self._temporal_downsample = temporal_downsample
        self._concat_or_add_pos = concat_or_add_pos
        self._conv_after_patching = conv_after_patching
        self._num_channels = num_channels
        self._n_extra_pos_mlp = n_extra_pos_mlp

        if prep_type == "conv":
            num_layers = math.log(spatial_downsample, 4)
            if num_layers != round(num_layers) or temporal_downsample != 1:
                raise ValueError(
                    "prep_type='conv' needs spatial_downsample a power of 4 and "
                    f"temporal_downsample 1; got {spatial_downsample} and {temporal_downsample}."
                )
            self.convnet = Conv2DDownsample(
                num_layers=int(round(num_layers)),
                num_channels=num_channels,
                use_batchnorm=conv2d_use_batchnorm,
            )
        elif prep_type == "conv1x1":
            if temporal_downsample != 1:
                raise ValueError(
                    "prep_type='conv1x1' does not downsample in time: temporal_downsample "
                    f"must be 1; got {temporal_downsample}."
                )
            self.convnet_1x1 = hk.Conv2D(
                num_channels,
                kernel_shape=[1, 1],
                stride=[spatial_downsample, spatial_downsample],
            )

        self._positional_encoding_ctor = _position_encoding_factory(
            position_encoding_type, position_encoding_kwargs
        )

    def _build_network_inputs(
        self, inputs: jnp.ndarray, pos: Optional[jnp.ndarray], network_input_is_1d: bool = True
    ) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """Flattens the index dimensions (if asked) and attaches position encodings."""
        batch_size = inputs.shape[0]
        index_dims = inputs.shape[1:-1]
        if inputs.ndim > 3 and network_input_is_1d:
            inputs = inputs.reshape(batch_size, int(np.prod(index_dims)), -1)
        encoding = self._positional_encoding_ctor(index_dims=index_dims)
        parts = None
        if network_input_is_1d:
            parts = _grid_encoding_parts(
                encoding, batch_size, pos, self._n_extra_pos_mlp, self._concat_or_add_pos
            )
        if parts is not None:
            # Written straight into the network input: no copy of the encoding.
            return position_encoding.concat_in_place([inputs] + parts), inputs
        pos_enc = encoding(batch_size=batch_size, pos=pos)
        if not network_input_is_1d:
            pos_enc = pos_enc.reshape(inputs.shape[:-1] + (-1,))
        # Deepening the encoding happens before reshaping in the reference;
        # both are per-position, so the order does not change the result.
        inputs_with_pos = _add_position_encoding(
            inputs, pos_enc, self._n_extra_pos_mlp, self._concat_or_add_pos
        )
        return inputs_with_pos, inputs

    def _check_inputs(self, inputs):
        _validation.check_rank("inputs", inputs, (4, 5), _FRAMES_LAYOUT)
        if self._prep_type == "patches":
            _check_blocks(
                inputs,
                self._temporal_downsample,
                self._spatial_downsample,
                "inputs",
                ("temporal_downsample", "spatial_downsample"),
            )

    def __call__(
        self,
        inputs: jnp.ndarray,
        *,
        is_training: bool,
        pos: Optional[jnp.ndarray] = None,
        network_input_is_1d: bool = True,
    ) -> PreprocessorOutputT:
        """Featurises images `[B, H, W, C]` or video `[B, T, H, W, C]`.

        Returns:
          `(inputs [B, N, C'], None, inputs_without_pos)`.

        Raises:
          ValueError: for inputs of another rank, or (for 'patches') sizes not
            divisible by the down-sampling factors.
        """
        self._check_inputs(inputs)
        if self._prep_type == "conv":
            conv = self.convnet
            if inputs.ndim == 5:
                conv = hk.BatchApply(conv)
            inputs = conv(inputs, is_training=is_training)
        elif self._prep_type == "conv1x1":
            conv = self.convnet_1x1
            if inputs.ndim == 5:
                conv = hk.BatchApply(conv)
            inputs = conv(inputs)
        elif self._prep_type == "patches":
            inputs = space_to_depth(
                inputs,
                temporal_block_size=self._temporal_downsample,
                spatial_block_size=self._spatial_downsample,
            )
            if inputs.ndim == 5 and inputs.shape[1] == 1:
                # Flow: both frames were folded into channels.
                inputs = jnp.squeeze(inputs, axis=1)
            if self._conv_after_patching:
                inputs = hk.Linear(self._num_channels, name="patches_linear")(inputs)
        else:  # pixels
            s, t = self._spatial_downsample, self._temporal_downsample
            inputs = inputs[:, ::s, ::s] if inputs.ndim == 4 else inputs[:, ::t, ::s, ::s]

        inputs, inputs_without_pos = self._build_network_inputs(inputs, pos, network_input_is_1d)
        return inputs, None, inputs_without_pos


class OneHotPreprocessor(hk.Module):
    """Turns one-hot labels `[B, C]` into a single input `[B, 1, C]`."""

    def __init__(self, name: Optional[str] = None):
        super().__init__(name=name)

    def __call__(
        self,
        inputs: jnp.ndarray,
        *,
        is_training: bool,
        pos: Optional[jnp.ndarray] = None,
        network_input_is_1d: bool = True,
    ) -> PreprocessorOutputT:
        _validation.check_rank("inputs", inputs, (2,), "[B, num_classes]")
        inputs = inputs[:, None, :]
        # No position encoding: inputs with and without it are the same.
        return inputs, None, inputs


class AudioPreprocessor(hk.Module):
    """Audio preprocessing: cut samples into patches, attach position encodings."""

    def __init__(
        self,
        prep_type: str = "patches",
        samples_per_patch: int = 96,
        position_encoding_type: str = "fourier",
        n_extra_pos_mlp: int = 0,
        concat_or_add_pos: str = "concat",
        name: Optional[str] = None,
        **position_encoding_kwargs,
    ):
        """Builds the preprocessor.

        Raises:
          ValueError: for an unknown `prep_type`, `concat_or_add_pos` or
            `position_encoding_type`.
        """
        super().__init__(name=name)
        _validation.check_choice("prep_type", prep_type, ("patches",))
        _validation.check_choice("concat_or_add_pos", concat_or_add_pos, ("concat", "add"))
        _validation.check_positive_int("samples_per_patch", samples_per_patch)
        self._samples_per_patch = samples_per_patch
        self._concat_or_add_pos = concat_or_add_pos
        self._n_extra_pos_mlp = n_extra_pos_mlp
        self._positional_encoding_ctor = _position_encoding_factory(
            position_encoding_type, position_encoding_kwargs
        )

    def _build_network_inputs(
        self, inputs: jnp.ndarray, pos: Optional[jnp.ndarray]
    ) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """Attaches position encodings to patches `[B, N, samples_per_patch]`."""
        encoding = self._positional_encoding_ctor(index_dims=inputs.shape[1:-1])
        parts = _grid_encoding_parts(
            encoding, inputs.shape[0], pos, self._n_extra_pos_mlp, self._concat_or_add_pos
        )
        if parts is not None:
            return position_encoding.concat_in_place([inputs] + parts), inputs
        pos_enc = encoding(batch_size=inputs.shape[0], pos=pos)
        inputs_with_pos = _add_position_encoding(
            inputs, pos_enc, self._n_extra_pos_mlp, self._concat_or_add_pos
        )
        return inputs_with_pos, inputs

    def __call__(
        self,
        inputs: jnp.ndarray,
        *,
        is_training: bool,
        pos: Optional[jnp.ndarray] = None,
        network_input_is_1d: bool = True,
    ) -> PreprocessorOutputT:
        """Patches audio `[B, S]` or `[B, S, C]` into `[B, S*C/spp, spp + pos]`.

        Raises:
          ValueError: if the number of samples is not divisible by
            `samples_per_patch`.
        """
        if inputs.ndim < 2:
            raise ValueError(f"inputs must be [B, samples] or [B, samples, C]; got shape {inputs.shape}.")
        _validation.check_divisible(
            "inputs samples", int(np.prod(inputs.shape[1:])), self._samples_per_patch, "samples_per_patch"
        )
        inputs = inputs.reshape(inputs.shape[0], -1, self._samples_per_patch)
        inputs, inputs_without_pos = self._build_network_inputs(inputs, pos)
        return inputs, None, inputs_without_pos


def restructure(modality_sizes: ModalitySizeT, inputs: jnp.ndarray) -> Mapping[str, jnp.ndarray]:
    """Splits `[B, N, C]` into one `[B, N_m, C]` per modality, in sorted name order.

    Raises:
      ValueError: if the sizes add up to more than N.
    """
    total = sum(modality_sizes.values())
    if total > inputs.shape[1]:
        raise ValueError(
            f"modality_sizes {dict(modality_sizes)} add up to {total}, more than the "
            f"{inputs.shape[1]} positions of inputs {tuple(inputs.shape)}."
        )
    outputs = {}
    start = 0
    for modality in sorted(modality_sizes):
        size = modality_sizes[modality]
        outputs[modality] = inputs[:, start : start + size]
        start += size
    return outputs


def _check_modalities(name: str, given, expected) -> None:
    given, expected = set(given), set(expected)
    if given != expected:
        raise ValueError(
            f"{name} must have exactly the modalities {sorted(expected)}; got "
            f"{sorted(given)} (missing {sorted(expected - given)}, unexpected "
            f"{sorted(given - expected)})."
        )


class MultimodalPreprocessor(hk.Module):
    """Preprocesses each modality, pads all to one channel size, concatenates.

    Padding channels are learned per modality (`{modality}_padding`). With
    `mask_probs`, each position of a modality is replaced by a learned mask
    token (`{modality}_mask_token`) with that probability, in training and
    inference alike (as the reference does). A probability of exactly 0 or 1
    needs no random key.
    """

    def __init__(
        self,
        modalities: Mapping[str, PreprocessorT],
        mask_probs: Optional[Mapping[str, float]] = None,
        min_padding_size: int = 2,
        name: Optional[str] = None,
    ):
        """Builds the preprocessor.

        Args:
          modalities: modality name -> preprocessor.
          mask_probs: modality name -> probability of masking each position.
          min_padding_size: padding channels given even to the widest modality.
          name: module name.

        Raises:
          ValueError: if `mask_probs` names other modalities, or a probability
            is outside [0, 1].
        """
        super().__init__(name=name)
        if mask_probs is not None:
            _check_modalities("mask_probs", mask_probs, modalities)
            for modality, prob in mask_probs.items():
                _validation.check_probability(f"mask_probs[{modality!r}]", prob)
        self._modalities = modalities
        self._min_padding_size = min_padding_size
        self._mask_probs = mask_probs

    def __call__(
        self,
        inputs: Mapping[str, jnp.ndarray],
        *,
        is_training: bool,
        pos: Optional[jnp.ndarray] = None,
        network_input_is_1d: bool = True,
    ) -> PreprocessorOutputT:
        """Returns `([B, sum N_m, C], modality_sizes, inputs_without_pos)`.

        Raises:
          ValueError: if `inputs` keys differ from the configured modalities,
            or a probability in (0, 1) must be sampled without a random key.
        """
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"inputs must be a dict keyed by modality {sorted(self._modalities)}; "
                f"got {type(inputs).__name__}."
            )
        _check_modalities("inputs", inputs, self._modalities)
        outputs, inputs_without_pos = {}, {}
        for modality, preprocessor in self._modalities.items():
            outputs[modality], _, inputs_without_pos[modality] = preprocessor(
                inputs[modality],
                is_training=is_training,
                pos=pos,
                network_input_is_1d=network_input_is_1d,
            )

        channels = max(o.shape[2] for o in outputs.values()) + self._min_padding_size
        padded, modality_sizes = {}, {}
        for modality, output in outputs.items():
            batch, length, width = output.shape
            padding = position_encoding.TrainablePositionEncoding(
                1, num_channels=channels - width, init_scale=0.02, name=f"{modality}_padding"
            )(batch_size=batch)
            padding = jnp.broadcast_to(padding, (batch, length, channels - width))
            output = position_encoding.concat_in_place([output, padding])
            if self._mask_probs is not None:
                mask_token = position_encoding.TrainablePositionEncoding(
                    1, num_channels=channels, init_scale=0.02, name=f"{modality}_mask_token"
                )(batch)
                mask = _bernoulli_mask(self._mask_probs[modality], (batch, length), modality)
                output = jnp.where(mask[..., None], mask_token, output)
            padded[modality] = output
            modality_sizes[modality] = length

        joined = jnp.concatenate([padded[m] for m in sorted(padded)], axis=1)
        return joined, modality_sizes, inputs_without_pos


def _bernoulli_mask(prob: float, shape, modality: str) -> jnp.ndarray:
    """Bernoulli(prob) booleans; 0 and 1 are exact and need no key.

    A key is still drawn when one is available, so that the random stream seen
    by later modules matches the reference's.
    """
    key = hk.maybe_next_rng_key()
    if prob == 0 or prob == 1:
        return jnp.full(shape, prob == 1)
    if key is None:
        raise ValueError(
            f"mask_probs[{modality!r}]={prob} masks at random and needs a random key: "
            "pass an rng to apply()."
        )
    return jax.random.bernoulli(key, prob, shape=shape)


# ---------------------------------------------------------------------------
# Postprocessors
# ---------------------------------------------------------------------------


class AbstractPostprocessor(hk.Module):
    """Maps decoder outputs `[B, M, C]` to task outputs.

    Called as `postprocessor(inputs, *, is_training, pos=None,
    modality_sizes=None)`.
    """

    def linear_head(self) -> Optional[compute.Linear]:
        """The one linear layer this postprocessor applies to every output, else None.

        A decoder can fold a returned layer into its own output projection
        (`[B, M, C] -> [B, M, n]`, the same parameters) instead of calling
        the postprocessor. None: the postprocessor does more, call it.
        """
        return None


class ImagePostprocessor(AbstractPostprocessor):
    """Turns decoder outputs back into images or video."""

    def __init__(
        self,
        postproc_type: str = "pixels",
        spatial_upsample: int = 1,
        temporal_upsample: int = 1,
        n_outputs: int = -1,
        input_reshape_size: Optional[Sequence[int]] = None,
        name: Optional[str] = None,
    ):
        """Builds the postprocessor.

        Args:
          postproc_type: 'pixels', 'patches', 'conv' or 'conv1x1' ('raft' is
            accepted by name, as in the reference, but has no implementation).
          spatial_upsample: up-sampling factor in space.
          temporal_upsample: up-sampling factor in time.
          n_outputs: output channels, for 'conv' and 'conv1x1'.
          input_reshape_size: index shape to unflatten `[B, N, C]` into.
          name: module name.

        Raises:
          ValueError: for an unknown `postproc_type`, an up-sampling it cannot
            do, or a missing `n_outputs`.
        """
        super().__init__(name=name)
        _validation.check_choice("postproc_type", postproc_type, IMAGE_POSTPROC_TYPES)
        self._postproc_type = postproc_type
        self._temporal_upsample = temporal_upsample
        self._spatial_upsample = spatial_upsample
        self._input_reshape_size = input_reshape_size

        if postproc_type in ("conv", "conv1x1") and n_outputs == -1:
            raise ValueError(f"postproc_type={postproc_type!r} needs n_outputs; got -1.")
        if postproc_type == "pixels":
            if temporal_upsample != 1 or spatial_upsample != 1:
                raise ValueError(
                    "postproc_type='pixels' cannot upsample: spatial_upsample and "
                    f"temporal_upsample must be 1; got {spatial_upsample} and {temporal_upsample}."
                )
        elif postproc_type == "conv1x1":
            if temporal_upsample != 1:
                raise ValueError(
                    "postproc_type='conv1x1' does not upsample in time: temporal_upsample "
                    f"must be 1; got {temporal_upsample}."
                )
            self.conv1x1 = hk.Conv2D(
                n_outputs, kernel_shape=[1, 1], stride=[spatial_upsample, spatial_upsample]
            )
        elif postproc_type == "conv":
            if temporal_upsample != 1:
                self.convnet = Conv3DUpsample(
                    n_outputs, _int_log2(temporal_upsample), _int_log2(spatial_upsample)
                )
            else:
                self.convnet = Conv2DUpsample(n_outputs)

    def __call__(
        self,
        inputs: jnp.ndarray,
        *,
        is_training: bool,
        pos: Optional[jnp.ndarray] = None,
        modality_sizes: Optional[ModalitySizeT] = None,
    ) -> jnp.ndarray:
        if self._input_reshape_size is not None:
            inputs = inputs.reshape(
                (inputs.shape[0],) + tuple(self._input_reshape_size) + (inputs.shape[-1],)
            )
        if self._postproc_type == "raft":
            raise NotImplementedError(
                "postproc_type='raft' has no implementation (nor has the reference)."
            )
        if self._postproc_type == "conv":
            conv = self.convnet
            if inputs.ndim == 5 and self._temporal_upsample == 1:
                conv = hk.BatchApply(conv)
            inputs = conv(inputs, is_training=is_training)
        elif self._postproc_type == "conv1x1":
            inputs = self.conv1x1(inputs)
        elif self._postproc_type == "patches":
            inputs = reverse_space_to_depth(inputs, self._temporal_upsample, self._spatial_upsample)
        return inputs


def _int_log2(x: int) -> int:
    return int(np.round(np.log(x) / np.log(2)))


class AudioPostprocessor(AbstractPostprocessor):
    """Projects each output to `samples_per_patch` samples: `[B, N, C]` -> `[B, N*spp]`."""

    def __init__(
        self, postproc_type: str = "patches", samples_per_patch: int = 96, name: Optional[str] = None
    ):
        super().__init__(name=name)
        _validation.check_choice("postproc_type", postproc_type, ("patches",))
        self._postproc_type = postproc_type
        self._samples_per_patch = samples_per_patch

    def __call__(
        self,
        inputs: jnp.ndarray,
        *,
        is_training: bool,
        pos: Optional[jnp.ndarray] = None,
        modality_sizes: Optional[ModalitySizeT] = None,
    ) -> jnp.ndarray:
        out = hk.Linear(self._samples_per_patch)(inputs)
        return out.reshape(inputs.shape[0], -1)


class IdentityPostprocessor(AbstractPostprocessor):
    """Returns its inputs unchanged."""

    def __init__(self, name: Optional[str] = None):
        super().__init__(name=name)

    def __call__(
        self,
        inputs: jnp.ndarray,
        *,
        is_training: bool,
        pos: Optional[jnp.ndarray] = None,
        modality_sizes: Optional[ModalitySizeT] = None,
    ) -> jnp.ndarray:
        return inputs


class MultimodalPostprocessor(AbstractPostprocessor):
    """Splits outputs by modality and postprocesses each."""

    def __init__(
        self,
        modalities: Mapping[str, PostprocessorT],
        input_is_dict: bool = False,
        name: Optional[str] = None,
    ):
        """Builds the postprocessor.

        Args:
          modalities: modality name -> postprocessor.
          input_is_dict: inputs are already a dict by modality; otherwise a
            `[B, N, C]` array split by `modality_sizes`.
          name: module name.
        """
        super().__init__(name=name)
        self._modalities = modalities
        self._input_is_dict = input_is_dict

    @property
    def modalities(self) -> Mapping[str, PostprocessorT]:
        """modality name -> postprocessor, as given (read-only)."""
        return types.MappingProxyType(self._modalities)

    def __call__(
        self,
        inputs: jnp.ndarray,
        *,
        is_training: bool,
        pos: Optional[jnp.ndarray] = None,
        modality_sizes: Optional[ModalitySizeT] = None,
    ) -> Mapping[str, jnp.ndarray]:
        if not self._input_is_dict:
            if modality_sizes is None:
                raise ValueError(
                    "modality_sizes is required to split a [B, N, C] array by modality; got None."
                )
            inputs = restructure(modality_sizes=modality_sizes, inputs=inputs)
        missing = sorted(set(self._modalities) - set(inputs))
        if missing:
            raise ValueError(
                f"inputs lack the modalities {missing}; got {sorted(inputs)}."
            )
        return {
            modality: postprocessor(
                inputs[modality], is_training=is_training, pos=pos, modality_sizes=None
            )
            for modality, postprocessor in self._modalities.items()
        }


class ClassificationPostprocessor(AbstractPostprocessor):
    """Projects the first output to class logits: `[B, N, C]` -> `[B, num_classes]`."""

    def __init__(self, num_classes: int, name: Optional[str] = None):
        super().__init__(name=name)
        self._num_classes = num_classes

    def __call__(
        self,
        inputs: jnp.ndarray,
        *,
        is_training: bool,
        pos: Optional[jnp.ndarray] = None,
        modality_sizes: Optional[ModalitySizeT] = None,
    ) -> jnp.ndarray:
        return hk.Linear(self._num_classes)(inputs)[:, 0, :]


class ProjectionPostprocessor(AbstractPostprocessor):
    """Projects every output: `[B, N, C]` -> `[B, N, num_outputs]`."""

    def __init__(self, num_outputs: int, name: Optional[str] = None):
        super().__init__(name=name)
        self._num_outputs = num_outputs

    def __call__(
        self,
        inputs: jnp.ndarray,
        *,
        is_training: bool,
        pos: Optional[jnp.ndarray] = None,
        modality_sizes: Optional[ModalitySizeT] = None,
    ) -> jnp.ndarray:
        return self.linear_head()(inputs)

    @hk.name_like("__call__")
    def linear_head(self) -> compute.Linear:
        """The projection layer, `[B, M, C] -> [B, M, num_outputs]`, for a decoder to fold in.

        Named as `__call__` names it (`linear`: parameters `linear/w`
        `[C, num_outputs]` and `linear/b` `[num_outputs]`), so folding it in
        or calling the postprocessor reads the same parameters.
        """
        return compute.Linear(self._num_outputs, name="linear")


class EmbeddingDecoder(hk.Module):
    """Logits from a tied input embedding: `x @ E^T + bias`."""

    def __init__(self, embedding_matrix: jnp.ndarray, name: str = "embedding_decoder"):
        """Builds the decoder.

        Args:
          embedding_matrix: `[vocab_size, d_model]`, usually `hk.Embed.embeddings`.
          name: module name.
        """
        super().__init__(name=name)
        _validation.check_rank("embedding_matrix", embedding_matrix, (2,), "[vocab_size, d_model]")
        self._embedding_matrix = embedding_matrix
        self._vocab_size, self._d_model = embedding_matrix.shape

    def __call__(self, embeddings: jnp.ndarray) -> jnp.ndarray:
        """`[B, T, d_model]` -> `[B, T, vocab_size]`.

        Raises:
          ValueError: if `embeddings` is not `[B, T, d_model]`.
        """
        _validation.check_rank("embeddings", embeddings, (3,), "[B, T, d_model]")
        if embeddings.shape[-1] != self._d_model:
            raise ValueError(
                f"embeddings must have d_model={self._d_model} channels; got shape "
                f"{tuple(embeddings.shape)}."
            )
        batch, length, _ = embeddings.shape
        logits = embeddings.reshape(-1, self._d_model) @ self._embedding_matrix.T
        bias = hk.get_parameter("bias", shape=[self._vocab_size], init=jnp.zeros)
        return (logits + bias).reshape(batch, length, self._vocab_size)
