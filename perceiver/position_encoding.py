"""Position encodings: trainable, Fourier, and a learned projection of either.

Names, signatures and parameter layouts follow DeepMind's reference
(`perceiver.position_encoding`), so checkpoints written by it load here.
"""

import abc
from typing import List, Optional, Sequence, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import _validation

POSITION_ENCODING_TYPES = ("trainable", "fourier")


def generate_fourier_features(
    pos: jnp.ndarray,
    num_bands: int,
    max_resolution: Sequence[int] = (224, 224),
    concat_pos: bool = True,
    sine_only: bool = False,
) -> jnp.ndarray:
    """Fourier features of positions, with bands spaced linearly up to Nyquist.

    Jaegle et al. 2021 (Perceiver), section 3.2: band k of dimension i has
    frequency f_k in linspace(1, max_resolution[i] / 2, num_bands).

    Args:
      pos: positions `[N, D]`, usually in [-1, 1].
      num_bands: number of frequency bands K per dimension.
      max_resolution: `D` resolutions; each sets its dimension's top frequency.
      concat_pos: prepend the raw positions to the features.
      sine_only: use sin only, instead of sin then cos.

    Returns:
      `[N, C]` with C = D * K * (1 if sine_only else 2) + (D if concat_pos else
      0), ordered [pos_1..pos_D, sin(pi f_1 pos_1)..sin(pi f_K pos_1), ...,
      sin(.. pos_D), then the cos block in the same order].

    Raises:
      ValueError: if `pos` is not `[N, D]` with D == len(max_resolution).
    """
    _validation.check_rank("pos", pos, (2,), "[N, D]")
    if pos.shape[-1] != len(max_resolution):
        raise ValueError(
            f"pos has {pos.shape[-1]} dimensions but max_resolution has "
            f"{len(max_resolution)} entries ({tuple(max_resolution)})."
        )
    freqs = jnp.stack(
        [jnp.linspace(1.0, res / 2, num=num_bands, endpoint=True) for res in max_resolution]
    )  # [D, K]
    scaled = (pos[:, :, None] * freqs[None]).reshape(pos.shape[0], -1)  # [N, D*K]
    angles = jnp.pi * scaled
    parts = [jnp.sin(angles)] if sine_only else [jnp.sin(angles), jnp.cos(angles)]
    if concat_pos:
        parts.insert(0, pos)
    return jnp.concatenate(parts, axis=-1)


def build_linear_positions(
    index_dims: Sequence[int], output_range: Tuple[float, float] = (-1.0, 1.0)
) -> jnp.ndarray:
    """A grid of coordinates spanning `output_range` along every index dimension.

    Args:
      index_dims: the grid's shape `(d_1, ..., d_N)`.
      output_range: first and last coordinate along each dimension.

    Returns:
      float32 `[d_1, ..., d_N, N]`; entry `[i_1, ..., i_N, j]` is the i_j-th of
      d_j evenly spaced points from output_range[0] to output_range[1].
    """
    axes = [
        jnp.linspace(output_range[0], output_range[1], num=int(n), endpoint=True, dtype=jnp.float32)
        for n in index_dims
    ]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


def concat_in_place(parts: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """`jnp.concatenate(parts, axis=-1)`, written part by part into one buffer.

    XLA:CPU materialises each operand of a concatenation; writing into a
    preallocated result lets it compute broadcast or elementwise parts in
    place, so only the result is stored.
    """
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    dtype = jnp.result_type(*parts)
    shape = parts[0].shape[:-1] + (sum(p.shape[-1] for p in parts),)
    out = jnp.zeros(shape, dtype)
    offset = 0
    for part in parts:
        out = jax.lax.dynamic_update_slice_in_dim(out, part.astype(dtype), offset, axis=-1)
        offset += part.shape[-1]
    return out


class AbstractPositionEncoding(hk.Module, metaclass=abc.ABCMeta):
    """A module mapping a batch size (and optional positions) to encodings."""

    @abc.abstractmethod
    def __call__(self, batch_size: Optional[int], pos: Optional[jnp.ndarray]) -> jnp.ndarray:
        raise NotImplementedError

    def grid_parts(self, batch_size: int) -> Optional[List[jnp.ndarray]]:
        """The default grid's encoding as channel blocks, or None if it has none.

        An encoding whose channels are cheaper to build block by block (see
        `FourierPositionEncoding`) returns `[B, N, c_i]` arrays whose
        concatenation, e.g. by `concat_in_place`, is `self(batch_size)`; a
        caller can then write them straight into a larger array and never
        store the encoding itself. This default has no such form: use
        `self(batch_size)`. A subclass that changes `__call__` must keep this
        consistent with it.

        Args:
          batch_size: B.
        """
        del batch_size
        return None


class TrainablePositionEncoding(AbstractPositionEncoding):
    """A learned `[index_dim, num_channels]` table (`pos_embs`)."""

    def __init__(
        self,
        index_dim: int,
        num_channels: int = 128,
        init_scale: float = 0.02,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self._index_dim = index_dim
        self._num_channels = num_channels
        self._init_scale = init_scale

    def __call__(self, batch_size: Optional[int], pos: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        """Returns `[batch_size, index_dim, C]`, or `[index_dim, C]` if batch_size is None."""
        del pos  # A learned table ignores coordinates.
        table = hk.get_parameter(
            "pos_embs",
            [self._index_dim, self._num_channels],
            init=hk.initializers.TruncatedNormal(stddev=self._init_scale),
        )
        if batch_size is None:
            return table
        return jnp.broadcast_to(table[None], (batch_size,) + table.shape)


def _check_or_build_spatial_positions(
    pos: Optional[jnp.ndarray], index_dims: Sequence[int], batch_size: int
) -> jnp.ndarray:
    """The given positions, or a flattened [-1, 1] grid `[B, prod(index_dims), D]`."""
    if pos is None:
        grid = build_linear_positions(index_dims)
        grid = grid.reshape(-1, grid.shape[-1])
        return jnp.broadcast_to(grid[None], (batch_size,) + grid.shape)
    if np.shape(pos)[-1] != len(index_dims):
        raise ValueError(
            f"pos must have {len(index_dims)} coordinates per point (one per index "
            f"dimension of {tuple(index_dims)}); got shape {tuple(np.shape(pos))}."
        )
    return pos


class FourierPositionEncoding(AbstractPositionEncoding):
    """Fixed sinusoidal features of grid positions (no parameters)."""

    def __init__(
        self,
        index_dims: Sequence[int],
        num_bands: int,
        concat_pos: bool = True,
        max_resolution: Optional[Sequence[int]] = None,
        sine_only: bool = False,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self._num_bands = num_bands
        self._concat_pos = concat_pos
        self._sine_only = sine_only
        self._index_dims = index_dims
        # Without an explicit resolution the grid itself sets the top frequency.
        if max_resolution is None or len(max_resolution) == 0:
            max_resolution = index_dims
        self._max_resolution = max_resolution if max_resolution is None else tuple(max_resolution)

    def __call__(self, batch_size: int, pos: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        """Fourier features of `pos` (default: the `[-1, 1]` grid over `index_dims`).

        Args:
          batch_size: B.
          pos: positions `[B, N, D]`, D = len(index_dims); None for the grid,
            N = prod(index_dims).

        Returns:
          `[B, N, C]`, laid out as by `generate_fourier_features`.

        Raises:
          ValueError: if `pos` or `max_resolution` has other than D coordinates.
        """
        if pos is None:
            parts = self.grid_parts(batch_size)
            if parts is not None:
                return concat_in_place(parts)
        pos = _check_or_build_spatial_positions(pos, self._index_dims, batch_size)
        if len(self._max_resolution) != pos.shape[-1]:
            raise ValueError(
                f"max_resolution {tuple(self._max_resolution)} must have one entry per "
                f"index dimension ({pos.shape[-1]})."
            )

        def features(p):
            return generate_fourier_features(
                p,
                num_bands=self._num_bands,
                max_resolution=self._max_resolution,
                concat_pos=self._concat_pos,
                sine_only=self._sine_only,
            )

        return jax.vmap(features)(pos)

    def grid_parts(self, batch_size: int) -> Optional[List[jnp.ndarray]]:
        """The default grid's features as `[B, N, c]` blocks, in channel order.

        Each feature depends on one coordinate only, so `generate_fourier_features`
        runs once per axis, on that axis's `n_i` coordinates, and each block is
        broadcast over the grid. Joined by `concat_in_place`, the blocks equal
        `self(batch_size)` bit for bit, and no `[N, D * num_bands]` intermediate
        is ever stored.

        Args:
          batch_size: B.

        Returns:
          `[B, N, c]` arrays, N = prod(index_dims): the D coordinates (if
          concat_pos), then sin of each axis's `num_bands` frequencies, then cos
          (unless sine_only); None when `max_resolution` has other than D
          entries (`self(batch_size)` then raises the error), or for a
          subclass that computes `__call__` otherwise.
        """
        if type(self).__call__ is not FourierPositionEncoding.__call__:
            return None  # the blocks would bypass the subclass's own encoding
        dims = tuple(int(d) for d in self._index_dims)
        if len(self._max_resolution) != len(dims):
            return None
        size = int(np.prod(dims))

        def spread(table, axis):
            # [n_axis, c] -> [B, N, c], constant along the grid's other axes.
            shape = [1] * len(dims) + [table.shape[-1]]
            shape[axis] = dims[axis]
            grid = jnp.broadcast_to(table.reshape(shape), dims + (table.shape[-1],))
            return jnp.broadcast_to(
                grid.reshape(1, size, table.shape[-1]), (batch_size, size, table.shape[-1])
            )

        coords, sines, cosines = [], [], []
        for axis, res in enumerate(self._max_resolution):
            # The grid's column `axis`, [n_axis, 1], and its [n_axis, K] sin, then cos.
            c = build_linear_positions(dims[axis : axis + 1])
            table = generate_fourier_features(
                c, self._num_bands, (res,), concat_pos=False, sine_only=self._sine_only
            )
            coords.append(spread(c, axis))
            sines.append(spread(table[:, : self._num_bands], axis))
            if not self._sine_only:
                cosines.append(spread(table[:, self._num_bands :], axis))
        return (coords if self._concat_pos else []) + sines + cosines


class PositionEncodingProjector(AbstractPositionEncoding):
    """Projects another position encoding to `output_size` channels."""

    def __init__(
        self,
        output_size: int,
        base_position_encoding: AbstractPositionEncoding,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        self._output_size = output_size
        self._base_position_encoding = base_position_encoding

    def __call__(self, batch_size: Optional[int], pos: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        base = self._base_position_encoding(batch_size, pos)
        return hk.Linear(output_size=self._output_size)(base)


def build_position_encoding(
    position_encoding_type: str,
    index_dims: Sequence[int],
    project_pos_dim: int = -1,
    trainable_position_encoding_kwargs: Optional[dict] = None,
    fourier_position_encoding_kwargs: Optional[dict] = None,
    name: Optional[str] = None,
) -> AbstractPositionEncoding:
    """Builds a 'trainable' or 'fourier' encoding, projected if project_pos_dim > 0.

    Raises:
      ValueError: for an unknown `position_encoding_type`, or when the kwargs
        for the chosen type are missing.
    """
    _validation.check_choice("position_encoding_type", position_encoding_type, POSITION_ENCODING_TYPES)
    if position_encoding_type == "trainable":
        if trainable_position_encoding_kwargs is None:
            raise ValueError(
                "position_encoding_type='trainable' needs trainable_position_encoding_kwargs "
                "(e.g. dict(num_channels=...)); got None."
            )
        encoding = TrainablePositionEncoding(
            index_dim=int(np.prod(index_dims)), name=name, **trainable_position_encoding_kwargs
        )
    else:
        if fourier_position_encoding_kwargs is None:
            raise ValueError(
                "position_encoding_type='fourier' needs fourier_position_encoding_kwargs "
                "(e.g. dict(num_bands=...)); got None."
            )
        encoding = FourierPositionEncoding(
            index_dims=index_dims, name=name, **fourier_position_encoding_kwargs
        )
    if project_pos_dim > 0:
        encoding = PositionEncodingProjector(
            output_size=project_pos_dim, base_position_encoding=encoding
        )
    return encoding
