"""Optical flow between two images of any size, and tools to look at flow.

The Perceiver IO flow model sees frames of one fixed size (368 x 496 for the
published checkpoint) and predicts, in one shot, motions within the range it
was trained on. `OpticalFlow` covers a larger image with overlapping tiles of
that size, runs the model on batches of tiles, and blends the tiles' flows
with weights that fall off towards each tile's border, as DeepMind's
notebook does; an image smaller than a tile is padded.

Larger motions are reached coarse to fine: an image pyramid (each level half
the size of the one below), the flow of the coarsest level, then at each
finer level the flow so far upsampled (twice the size and twice the values),
frame 2 warped by it towards frame 1, and the residual motion predicted and
added. The number of levels follows from the image size and the model's
trained range (`max_flow`); `levels=1` is the single-scale flow.

    estimator = OpticalFlow.from_pretrained('flow')
    flow = estimator(frame1, frame2)             # [H, W, 2] pixels (dx, dy)
    flows = estimator.sequence(frames)           # [T - 1, H, W, 2], pairs of a video
    media.write_image('flow.png', draw_flow(flow))  # colours, with a key drawn in
    write_flo('flow.flo', flow)

Also here: the pyramid's parts (`downsample`, `upsample_flow`, `warp`), the
Middlebury colour coding of flow (`flow_to_color`, on a fixed scale of
DEFAULT_MAX_FLOW px unless given one; `flow_key`, `draw_flow`, and
`flow_figure`, which puts frames, flows, error and key in one labelled
picture), the Middlebury `.flo` file format (`read_flo`, `write_flo`) and the
end-point error (`end_point_error`).
"""

import itertools
import os
import pathlib
import warnings
from typing import Callable, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from perceiver import _progress
from perceiver import media

PathLike = Union[str, "os.PathLike[str]"]
# tiles [N, 2, h, w, 3] float32 in [-1, 1] -> flow [N, h, w, 2] in pixels.
TileFunction = Callable[[np.ndarray], np.ndarray]

FLO_MAGIC = 202021.25  # Middlebury's check value; its float32 bytes read "PIEH".
_FLO_HEADER = np.dtype([("magic", "<f4"), ("width", "<i4"), ("height", "<i4")])
# A sanity bound on .flo sizes, so that a corrupt header fails cleanly.
_FLO_MAX_SIDE = 1 << 16

# Automatic levels: the pyramid reaches motions up to this fraction of the
# image's longer side (the stereo pairs and videos we measured move less) ...
EXPECTED_MOTION = 1 / 8
# ... but stops before a level's shorter side falls below this many pixels.
MIN_LEVEL_SIDE = 16
# The published model was trained on AutoFlow, with motions of up to ~100 px
# at 368 x 496: single-scale below ~800 px, coarse to fine above.
PUBLISHED_MAX_FLOW = 100.0


def _tile_shape_of(sizes: Mapping) -> Tuple[int, ...]:
    """The frame size of `perceiver.models.optical_flow(**sizes)`."""
    from perceiver import models

    default = models.factory_sizes("optical_flow")["image_shape"]
    return tuple(sizes.get("image_shape", default))


class OpticalFlow:
    """Estimates optical flow between two RGB images of any size.

    Each distinct tile is computed once, up to `batch_size` tiles per call of
    one jit-compiled function; a call's batch is `batch_size` or, for the
    last tiles of a level, the next power of two above their number (padded
    with zero tiles), so XLA compiles for at most a handful of batch shapes,
    whatever the image sizes and levels.

    Attributes:
      tile_shape: `(h, w)`, the size of the frames the model sees.
      min_overlap: the least number of pixels by which neighbouring tiles
        overlap.
      batch_size: the most tiles per model call.
      max_flow: the largest motion (pixels) the model resolves in one shot,
        its trained range; it sets the number of pyramid levels (None: one
        level unless `levels` is given).
      params, state: the model's parameters and state (None for
        `from_function`).
      sizes: the `perceiver.models.optical_flow` keywords of the model.
    """

    def __init__(
        self,
        params: Mapping,
        state: Optional[Mapping] = None,
        *,
        min_overlap: int = 20,
        batch_size: int = 1,
        max_flow: Optional[float] = None,
        **sizes,
    ):
        """Wraps a flow model's parameters.

        Args:
          params: parameters of `perceiver.models.optical_flow(**sizes)`.
          state: its state (the flow model has none; None means `{}`).
          min_overlap: the least overlap of neighbouring tiles, in pixels;
            must be smaller than both sides of a tile.
          batch_size: the most tiles per model call. One tile of the
            published model is already a large computation (its decoder
            attends from 182,528 queries), and memory grows with each tile
            in a call.
          max_flow: the model's trained range in pixels (see the attribute);
            None: single-scale unless `levels` is given.
          **sizes: the keyword arguments of `perceiver.models.optical_flow`
            (image_shape, num_latents, ...); default: the published model.

        Raises:
          perceiver.checkpoint.CheckpointError: if `params` do not fit the
            model, listing every difference.
          TypeError: for an unknown size keyword.
          ValueError: for a bad min_overlap, batch_size or max_flow.
        """
        from perceiver import models
        from perceiver.tasks import _loading

        self._setup(_tile_shape_of(sizes), min_overlap, batch_size, max_flow)
        state = {} if state is None else state
        _loading.check_fits("optical_flow", params, state, **sizes)
        self._init_model(models.optical_flow(**sizes), params, state, sizes)

    def _init_model(self, model, params, state, sizes) -> None:
        import jax

        self.params = jax.device_put(params)
        self.state = jax.device_put(state)
        self.sizes = dict(sizes)

        def apply(params, state, tiles):
            flow, _ = model.apply(params, state, None, tiles)
            return flow

        # One compiled function for every call, every level and every image;
        # XLA compiles it once per batch shape (see the class docstring).
        jitted = jax.jit(apply)
        self._tile_fn = lambda tiles: jitted(self.params, self.state, tiles)

    def _setup(self, tile_shape, min_overlap, batch_size, max_flow=None) -> None:
        from perceiver import _validation

        if len(tile_shape) != 2:
            raise ValueError(f"tile_shape must be (height, width); got {tile_shape!r}.")
        for side in tile_shape:
            _validation.check_positive_int("tile_shape", side)
        _validation.check_positive_int("batch_size", batch_size)
        if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, np.integer)):
            raise TypeError(f"min_overlap must be an int; got {type(min_overlap).__name__}.")
        if not 0 <= min_overlap < min(tile_shape):
            raise ValueError(
                f"min_overlap must be in [0, {min(tile_shape)}) for tiles of shape "
                f"{tuple(tile_shape)}; got {min_overlap}."
            )
        if max_flow is not None and (
            isinstance(max_flow, bool)
            or not isinstance(max_flow, (int, float, np.integer, np.floating))
            or not (np.isfinite(max_flow) and max_flow > 0)
        ):
            raise ValueError(f"max_flow must be a positive number of pixels or None; got {max_flow!r}.")
        self.tile_shape = (int(tile_shape[0]), int(tile_shape[1]))
        self.min_overlap = int(min_overlap)
        self.batch_size = int(batch_size)
        self.max_flow = None if max_flow is None else float(max_flow)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: Optional[PathLike] = None,
        *,
        cache_dir: Optional[PathLike] = None,
        progress: bool = True,
        min_overlap: Optional[int] = None,
        batch_size: Optional[int] = None,
        max_flow: Optional[float] = None,
        **sizes,
    ) -> "OpticalFlow":
        """The published flow model, the small one shipped with the package, or a file of a flow model.

        A file's description (`NAME.json` beside `NAME.pystate`, see
        `perceiver.checkpoint.save_description`) gives its sizes and task
        options (`min_overlap`, `batch_size`, `max_flow`); keywords given
        here override it.

        Args:
          name_or_path: None (default): 'flow' if it is in the cache, else
            'flow_small', saying so in one UserWarning, as `perceiver flow`
            does; nothing is downloaded. 'flow': DeepMind's published model
            (downloaded on first use); 'flow_small': the small model shipped
            with the package (32x32 tiles); or the path of a checkpoint file.
          cache_dir: where downloaded checkpoints are kept.
          progress: show a download progress bar (only when stderr is a
            terminal).
          min_overlap, batch_size: as for the constructor; None: the
            description's, else 20 and 1.
          max_flow: as for the constructor; None: the description's, else
            PUBLISHED_MAX_FLOW for a published model and None for a file.
          **sizes: the model's `perceiver.models.optical_flow` keywords (for a
            file of a model with other sizes than its description gives).

        Warns:
          UserWarning: with name_or_path None and 'flow' not in the cache:
            the shipped model is used.

        Raises:
          ValueError: for a registry name of another kind of model, or a name
            that is neither known nor a file.
          FileNotFoundError: for a path to nothing.
          perceiver.checkpoint.CheckpointError: for a folder or a file that
            is not a checkpoint (saying what it is), or one that does not
            fit, or whose description is of another kind of model (naming
            its task).
          perceiver.hub.FetchError: if the download fails.
        """
        from perceiver import checkpoint, hub, models
        from perceiver.tasks import _loading

        if name_or_path is None:
            name_or_path, note = _loading.default_source("flow", "flow_small", cache_dir)
            if note:
                warnings.warn(note, UserWarning, stacklevel=2)
        name_or_path = _loading.resolve(name_or_path)
        default_range = None
        if _loading.is_published(name_or_path):
            entry = hub.get(name_or_path)
            if entry.factory != "optical_flow":
                flow_names = [n for n, e in hub.CHECKPOINTS.items() if e.factory == "optical_flow"]
                flow_names += [n for n, e in hub.SHIPPED.items() if e.factory == "optical_flow"]
                raise ValueError(
                    f"name_or_path {name_or_path!r} is a {entry.factory} checkpoint, not an "
                    f"optical-flow one; use one of: {', '.join(flow_names)}."
                )
            sizes = {**dict(entry.factory_kwargs), **sizes}
            default_range = PUBLISHED_MAX_FLOW
        description = _loading.read_description(name_or_path, "optical_flow")
        sizes = description.sizes_with(sizes)
        estimator = cls.__new__(cls)
        estimator._setup(
            _tile_shape_of(sizes),
            description.option("min_overlap", min_overlap, 20),
            description.option("batch_size", batch_size, 1),
            description.option("max_flow", max_flow, default_range),
        )
        path = _loading.fetch(name_or_path, cache_dir=cache_dir, progress=progress)
        try:
            model, params, state = models.load_for("optical_flow", path, **sizes)
        except checkpoint.CheckpointError as e:
            raise _loading.mismatch(name_or_path, path, e, description) from None
        estimator._init_model(model, params, state, sizes)
        return estimator

    @classmethod
    def from_function(
        cls,
        tile_fn: TileFunction,
        tile_shape: Sequence[int],
        *,
        min_overlap: int = 20,
        batch_size: int = 1,
        max_flow: Optional[float] = None,
    ) -> "OpticalFlow":
        """An estimator whose model is any function of a batch of tiles.

        Args:
          tile_fn: maps tiles `[N, 2, h, w, 3]` float32 (both frames, scaled
            to [-1, 1]) to flow `[N, h, w, 2]`. Batches that are not full
            are padded with zero tiles.
          tile_shape: `(h, w)`.
          min_overlap, batch_size, max_flow: as for the constructor.
        """
        if not callable(tile_fn):
            raise TypeError(f"tile_fn must be callable; got {type(tile_fn).__name__}.")
        estimator = cls.__new__(cls)
        estimator.params = estimator.state = None
        estimator.sizes = {}
        estimator._tile_fn = tile_fn
        estimator._setup(tuple(tile_shape), min_overlap, batch_size, max_flow)
        return estimator

    def tile_origins(self, height: int, width: int) -> List[Tuple[int, int]]:
        """The distinct top-left corners `(y, x)` of the tiles for an image.

        An image smaller than a tile is first padded to the tile's size, so
        the corners refer to the padded image.
        """
        _check_image_size(height, width)
        ys = _starts(max(height, self.tile_shape[0]), self.tile_shape[0], self.min_overlap)
        xs = _starts(max(width, self.tile_shape[1]), self.tile_shape[1], self.min_overlap)
        return list(itertools.product(ys, xs))

    def levels_for(self, height: int, width: int) -> int:
        """The number of pyramid levels used for an image of this size.

        Enough levels that a motion of EXPECTED_MOTION times the longer side
        is within `max_flow` at the coarsest level, but no level with a
        side shorter than MIN_LEVEL_SIDE (the first always counts); 1 when
        `max_flow` is None. Never more than `max_levels(height, width)`.
        """
        _check_image_size(height, width)
        if self.max_flow is None:
            return 1
        reach = EXPECTED_MOTION * max(height, width)
        levels = 1
        while reach / 2 ** (levels - 1) > self.max_flow:
            height, width = (height + 1) // 2, (width + 1) // 2
            if min(height, width) < MIN_LEVEL_SIDE:
                break
            levels += 1
        return levels

    def least_level_side(self) -> int:
        """The shortest side, in pixels, that `max_levels` lets a pyramid level have."""
        return min(MIN_LEVEL_SIDE, *self.tile_shape)

    def max_levels(self, height: int, width: int) -> int:
        """The most pyramid levels an image of this size allows.

        Each level halves the image, and the coarsest must keep its shorter
        side at `least_level_side()` or more: MIN_LEVEL_SIDE, or the model's
        tile where that is smaller. Below it a level is mostly padding to the
        model, its flow there is noise, and every finer level doubles that
        noise (a 320 x 240 pair with 9 levels came out hundreds of pixels
        off). The first level always counts, however small the image.
        """
        _check_image_size(height, width)
        least = self.least_level_side()
        levels = 1
        while min((height + 1) // 2, (width + 1) // 2) >= least:
            height, width = (height + 1) // 2, (width + 1) // 2
            levels += 1
        return levels

    def __call__(
        self, image1, image2, *, levels: Optional[int] = None, progress: bool = False
    ) -> np.ndarray:
        """The optical flow from `image1` to `image2`.

        Args:
          image1, image2: RGB `[H, W, 3]`, uint8 or float in [0, 255], of the
            same shape.
          levels: pyramid levels (1: single-scale, the model's own range);
            None: `levels_for(H, W)`.
          progress: show a progress bar over batches of tiles (needs tqdm).

        Returns:
          float32 `[H, W, 2]`: for each pixel of `image1`, its displacement
          (dx, dy) in pixels to `image2`.

        Raises:
          ValueError: for images of bad or different shapes, or holding NaN
            or Inf (before any tile is computed), or a `levels` below 1 or
            above `max_levels(H, W)`.
          TypeError: for a non-numeric dtype.
        """
        first = _normalised("image1", image1)
        second = _normalised("image2", image2)
        if first.shape != second.shape:
            raise ValueError(
                f"image1 and image2 must have the same shape; got {first.shape} and "
                f"{second.shape}."
            )
        levels = self._check_levels(levels, first.shape[:2])
        return self._flows([(first, second)], levels, progress)[0]

    def sequence(
        self,
        frames,
        *,
        levels: Optional[int] = None,
        pairs_per_batch: int = 8,
        progress: bool = False,
    ) -> np.ndarray:
        """The flow between each pair of consecutive frames of a video.

        Args:
          frames: `[T, H, W, 3]` (T >= 2), uint8 or float in [0, 255]; or an
            iterable of such `[H, W, 3]` frames.
          levels: as for `__call__`.
          pairs_per_batch: how many pairs share one pass (their tiles are
            batched together); more pairs fill batches better and hold more
            memory.
          progress: show a progress bar over pairs (needs tqdm).

        Returns:
          float32 `[T - 1, H, W, 2]`: flow t is from frame t to frame t + 1.

        Raises:
          ValueError: for fewer than 2 frames, frames of different shapes or
            bad values, or a bad `levels` (as for `__call__`).
        """
        flows = list(
            self.iter_sequence(frames, levels=levels, pairs_per_batch=pairs_per_batch, progress=progress)
        )
        if not flows:
            raise ValueError("frames must hold at least 2 frames; got fewer.")
        return np.stack(flows)

    def iter_sequence(
        self,
        frames: Iterable,
        *,
        levels: Optional[int] = None,
        pairs_per_batch: int = 8,
        progress: bool = False,
        total: Optional[int] = None,
    ) -> Iterator[np.ndarray]:
        """`sequence`, one flow `[H, W, 2]` at a time, reading frames as it goes.

        Args:
          frames, levels, pairs_per_batch, progress: as for `sequence`.
          total: the number of frames, for the progress bar (default:
            `len(frames)` where it has one).
        """
        from perceiver import _validation

        _validation.check_positive_int("pairs_per_batch", pairs_per_batch)
        if total is not None and (
            isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 0
        ):
            raise ValueError(f"total must be a number of frames >= 0 or None; got {total!r}.")
        if total is None and hasattr(frames, "__len__"):
            total = len(frames)
        pairs = None if total is None else max(total - 1, 0)
        flows = self._iter_flows(frames, levels, pairs_per_batch)
        return iter(_progress.track(flows, pairs, "flow pairs", progress))

    def _iter_flows(self, frames, levels, pairs_per_batch) -> Iterator[np.ndarray]:
        previous, shape, pending = None, None, []
        for index, frame in enumerate(frames):
            current = _normalised(f"frames[{index}]", frame)
            if shape is None:
                shape = current.shape
                levels = self._check_levels(levels, shape[:2])
            elif current.shape != shape:
                raise ValueError(
                    f"frames must all have one shape; frames[0] is {shape}, frames[{index}] is "
                    f"{current.shape}."
                )
            if previous is not None:
                pending.append((previous, current))
            previous = current
            if len(pending) == pairs_per_batch:
                yield from self._flows(pending, levels, False)
                pending = []
        if pending:
            yield from self._flows(pending, levels, False)

    def _check_levels(self, levels, shape) -> int:
        if levels is None:
            return self.levels_for(*shape)
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
            raise ValueError(f"levels must be an int >= 1 or None; got {levels!r}.")
        limit = self.max_levels(*shape)
        if levels > limit:
            raise ValueError(
                f"levels must be at most {limit} for a {shape[1]}x{shape[0]} image (each level "
                f"halves it, and the coarsest must keep sides of {self.least_level_side()} px or "
                f"more); got {levels}."
            )
        return int(levels)

    def _flows(self, pairs, levels: int, progress: bool) -> List[np.ndarray]:
        """Coarse-to-fine flows of normalised pairs `[(first, second)]` of one shape."""
        # pyramids[i][k]: pair i at level k (0 the full size).
        pyramids = []
        for first, second in pairs:
            pyramid = [(first, second)]
            for _ in range(levels - 1):
                pyramid.append(tuple(downsample(image) for image in pyramid[-1]))
            pyramids.append(pyramid)
        flows = None
        tiles_per_level = [
            len(self.tile_origins(*pyramids[0][k][0].shape[:2])) * len(pairs) for k in range(levels)
        ]
        total = sum(-(-n // self.batch_size) for n in tiles_per_level)
        bar = _progress.track(range(total), total, "flow tiles", progress)
        ticks = iter(bar)
        for k in reversed(range(levels)):
            level_pairs = [pyramid[k] for pyramid in pyramids]
            if flows is None:
                inputs = level_pairs
            else:
                shape = level_pairs[0][0].shape[:2]
                flows = [upsample_flow(flow, shape) for flow in flows]
                inputs = [(a, warp(b, flow)) for (a, b), flow in zip(level_pairs, flows)]
            residuals = self._single_scale(inputs, ticks)
            flows = residuals if flows is None else [f + r for f, r in zip(flows, residuals)]
        for _ in ticks:  # close the bar
            pass
        return [flow.astype(np.float32) for flow in flows]

    def _single_scale(self, pairs, ticks) -> List[np.ndarray]:
        """The tiled flow of normalised pairs of one shape, their tiles batched together."""
        height, width = pairs[0][0].shape[:2]
        tile_h, tile_w = self.tile_shape
        pad_h, pad_w = max(tile_h - height, 0), max(tile_w - width, 0)
        frames = []
        for first, second in pairs:
            stacked = np.stack([first, second])  # [2, H, W, 3]
            if pad_h or pad_w:
                # Repeating the border keeps the padding free of new edges, which
                # the model would otherwise take for moving structure.
                stacked = np.pad(stacked, [(0, 0), (0, pad_h), (0, pad_w), (0, 0)], mode="edge")
            frames.append(stacked)
        origins = [(i, y, x) for i in range(len(pairs)) for y, x in self.tile_origins(height, width)]
        weights = _tile_weights(self.tile_shape)
        total = np.zeros((len(pairs),) + frames[0].shape[1:3] + (2,), np.float64)
        weight_sum = np.zeros(frames[0].shape[1:3], np.float64)
        for y, x in self.tile_origins(height, width):
            weight_sum[y : y + tile_h, x : x + tile_w] += weights
        for start in range(0, len(origins), self.batch_size):
            chunk = origins[start : start + self.batch_size]
            batch = _batch_shape(len(chunk), self.batch_size)
            tiles = np.zeros((batch, 2, tile_h, tile_w, 3), np.float32)
            for j, (i, y, x) in enumerate(chunk):
                tiles[j] = frames[i][:, y : y + tile_h, x : x + tile_w]
            flows = np.asarray(self._tile_fn(tiles))
            if flows.shape != (batch, tile_h, tile_w, 2):
                raise ValueError(
                    f"the flow model returned shape {flows.shape} for tiles of shape "
                    f"{tiles.shape}; expected {(batch, tile_h, tile_w, 2)}."
                )
            for (i, y, x), flow in zip(chunk, flows):
                total[i, y : y + tile_h, x : x + tile_w] += flow * weights[..., None]
            next(ticks, None)
        flow = total / weight_sum[..., None]
        return list(flow[:, :height, :width])


def _batch_shape(count: int, batch_size: int) -> int:
    """Tiles per call for `count` tiles: batch_size, or the next power of two (at most batch_size)."""
    if count >= batch_size:
        return batch_size
    return min(1 << (count - 1).bit_length(), batch_size)


# ---------------------------------------------------------------------------
# The pyramid's parts
# ---------------------------------------------------------------------------


def downsample(image) -> np.ndarray:
    """An image at half size: the 1-3-3-1 binomial filter, then every other pixel.

    Coarse pixel i is centred between fine pixels 2i and 2i + 1 (fine
    coordinate 2i + 0.5), on both axes; an odd side is first extended by
    repeating its last pixel, so `[H, W, C]` becomes
    `[ceil(H / 2), ceil(W / 2), C]`. A motion of d pixels becomes one of
    d / 2 coarse pixels.

    Args:
      image: `[H, W, C]` float.
    """
    image = np.asarray(image, np.float32)
    for axis in (0, 1):
        size = image.shape[axis]
        half = (size + 1) // 2
        # Fine pixels 2i - 1 .. 2i + 2 for every coarse i, the border repeated.
        pad = [(0, 0)] * image.ndim
        pad[axis] = (1, 2 * half + 1 - size)
        padded = np.pad(image, pad, mode="edge")

        def taps(offset):
            return np.take(padded, np.arange(half) * 2 + offset, axis=axis)

        image = (taps(0) + 3.0 * taps(1) + 3.0 * taps(2) + taps(3)) / 8.0
    return image


def _interpolate_axis(array: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """`array` linearly interpolated at `coords` along `axis`, the coordinates clamped to it."""
    size = array.shape[axis]
    coords = np.clip(coords, 0.0, size - 1.0)
    low = np.minimum(np.floor(coords).astype(np.int64), max(size - 2, 0))
    high = np.minimum(low + 1, size - 1)
    frac = (coords - low).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = len(coords)
    frac = frac.reshape(shape)
    return (1 - frac) * np.take(array, low, axis=axis) + frac * np.take(array, high, axis=axis)


def upsample_flow(flow, shape: Sequence[int]) -> np.ndarray:
    """The flow of an image halved by `downsample`, brought to the size below it.

    Fine pixel y reads the coarse flow at (y - 0.5) / 2, the inverse of
    `downsample`'s geometry, bilinearly (positions beyond the first or last
    coarse pixel take that pixel's flow), and the values are doubled.

    Args:
      flow: `[h, w, 2]` with `h = ceil(H / 2)`, `w = ceil(W / 2)`.
      shape: `(H, W)`.

    Returns:
      float32 `[H, W, 2]`.

    Raises:
      ValueError: if `flow` is not the size of `shape` halved.
    """
    flow = np.asarray(flow, np.float32)
    height, width = (int(s) for s in shape)
    if flow.ndim != 3 or flow.shape[-1] != 2 or flow.shape[:2] != ((height + 1) // 2, (width + 1) // 2):
        raise ValueError(
            f"flow must be [ceil(H / 2), ceil(W / 2), 2] = "
            f"[{(height + 1) // 2}, {(width + 1) // 2}, 2] for shape {(height, width)}; got "
            f"{flow.shape}."
        )
    out = _interpolate_axis(flow, (np.arange(height) - 0.5) / 2, 0)
    out = _interpolate_axis(out, (np.arange(width) - 0.5) / 2, 1)
    return 2.0 * out


def warp(image, flow) -> np.ndarray:
    """`image` sampled at each pixel plus its flow: `out[y, x] = image[y + v, x + u]`.

    Bilinear; points beyond the image take the colour of its nearest border
    pixel (the coordinates are clamped to the image).

    Args:
      image: `[H, W, C]`.
      flow: `[H, W, 2]`, (u, v) = (dx, dy) in pixels.

    Returns:
      float32 `[H, W, C]`.
    """
    image = np.asarray(image, np.float32)
    flow = np.asarray(flow, np.float32)
    height, width = image.shape[:2]
    if flow.shape != (height, width, 2):
        raise ValueError(f"flow must be [{height}, {width}, 2] for the image; got {flow.shape}.")
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    x = np.clip(xs + flow[..., 0], 0.0, width - 1.0)
    y = np.clip(ys + flow[..., 1], 0.0, height - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(width - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(height - 2, 0))
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
    bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
    return (1 - fy) * top + fy * bottom


def _check_image_size(height, width) -> None:
    from perceiver import _validation

    _validation.check_positive_int("height", height)
    _validation.check_positive_int("width", width)


def _starts(size: int, tile: int, min_overlap: int) -> List[int]:
    """Tile starts along one axis: every `tile - min_overlap` pixels, the last
    flush with the end, each start once."""
    last = size - tile
    starts = list(range(0, last, tile - min_overlap))
    return starts + [last]


def _tile_weights(tile_shape: Tuple[int, int]) -> np.ndarray:
    """`[h, w]` blending weights: 1 + the distance to the tile's nearest edge."""
    h, w = tile_shape
    along_y = np.minimum(np.arange(h) + 1, h - np.arange(h))
    along_x = np.minimum(np.arange(w) + 1, w - np.arange(w))
    return np.minimum(along_y[:, None], along_x[None, :]).astype(np.float64)


def _normalised(name: str, image) -> np.ndarray:
    """An RGB image `[H, W, 3]` in [0, 255] as float32 in [-1, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must be an RGB image [H, W, 3]; got shape {image.shape}.")
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise TypeError(f"{name} must be uint8 or float in [0, 255]; got dtype {image.dtype}.")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"{name} must not be empty; got shape {image.shape}.")
    # Checked in float32, which is what the model sees (1e39 is Inf there).
    with np.errstate(over="ignore"):
        image = image.astype(np.float32)
    media.check_finite(name, image)
    # The scaling of DeepMind's notebook: [0, 255] -> [-1, 1].
    return image / 255.0 * 2.0 - 1.0


# ---------------------------------------------------------------------------
# Visualisation: the Middlebury colour wheel (Baker et al., IJCV 2011)
# ---------------------------------------------------------------------------

# The wheel's segments, in order: (length, channel at 255, channel that ramps,
# whether it ramps up). From a primary colour a second channel rises to the
# next secondary colour; from a secondary one a channel falls to the next
# primary. R, G, B are channels 0, 1, 2.
_WHEEL_SEGMENTS = (
    (15, 0, 1, True),  # red -> yellow
    (6, 1, 0, False),  # yellow -> green
    (4, 1, 2, True),  # green -> cyan
    (11, 2, 1, False),  # cyan -> blue
    (13, 2, 0, True),  # blue -> magenta
    (6, 0, 2, False),  # magenta -> red
)


def color_wheel() -> np.ndarray:
    """The 55 colours of the Middlebury flow colour wheel, float `[55, 3]` in [0, 255]."""
    rows = []
    for length, full, ramped, rising in _WHEEL_SEGMENTS:
        ramp = np.floor(255.0 * np.arange(length) / length)
        segment = np.zeros((length, 3))
        segment[:, full] = 255.0
        segment[:, ramped] = ramp if rising else 255.0 - ramp
        rows.append(segment)
    return np.concatenate(rows)


# The colour scale of flow pictures unless one is given: a motion of this many
# pixels has the wheel's full colour. A fixed scale draws no motion near-white
# and lets pictures be compared; scaling by the largest vector instead would
# blow the noise of a still pair up to full colour.
DEFAULT_MAX_FLOW = 10.0


def _check_max_flow(max_flow) -> None:
    """Raises unless `max_flow` is None or a positive, finite number."""
    if max_flow is None:
        return
    if isinstance(max_flow, bool) or not isinstance(max_flow, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"max_flow must be a number of pixels or None; got {type(max_flow).__name__} {max_flow!r}."
        )
    if not (np.isfinite(max_flow) and max_flow > 0):
        raise ValueError(f"max_flow must be a positive number of pixels or None; got {max_flow!r}.")


def _flow_array(flow) -> np.ndarray:
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim < 1 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be [..., 2]; got shape {flow.shape}.")
    return flow


def _largest_length(flow: np.ndarray) -> float:
    """The longest finite vector of `flow` `[..., 2]` (0 for none)."""
    lengths = np.hypot(flow[..., 0], flow[..., 1])
    lengths = lengths[np.isfinite(lengths)]
    return float(lengths.max()) if lengths.size else 0.0


def flow_to_color(flow, max_flow: Optional[float] = DEFAULT_MAX_FLOW) -> np.ndarray:
    """Colours a flow field with the Middlebury colour wheel.

    Hue gives the direction (+x red, +y yellow-orange, -x cyan, -y blue-violet),
    saturation the length: zero flow is white, flow of length `max_flow` has
    the wheel's full colour, longer flow is that colour darkened to 75%.
    Non-finite vectors (unknown flow) are black. `draw_flow` adds a key.

    Args:
      flow: `[..., 2]`, (dx, dy) in pixels.
      max_flow: the length in pixels drawn at full colour (default
        DEFAULT_MAX_FLOW, a fixed scale); None: the largest length in
        `flow`, a scale that changes from picture to picture.

    Returns:
      uint8 `[..., 3]` RGB.

    Raises:
      ValueError: for a last axis other than 2, or a max_flow <= 0 or not
        finite.
      TypeError: for a max_flow that is not a number.
    """
    flow = _flow_array(flow)
    _check_max_flow(max_flow)
    known = np.all(np.isfinite(flow), axis=-1)
    # Adding 0.0 turns -0.0 into +0.0, so that a vector along +x always takes
    # the wheel's first colour whatever the sign of its zero y.
    u = np.where(known, flow[..., 0], 0.0) + 0.0
    v = np.where(known, flow[..., 1], 0.0) + 0.0
    radius = np.hypot(u, v)
    if max_flow is None:
        max_flow = float(radius.max()) if radius.size else 0.0
    scale = max(max_flow, np.finfo(np.float64).eps)
    u, v, radius = u / scale, v / scale, radius / scale

    wheel = color_wheel() / 255.0
    count = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    position = (angle + 1.0) / 2.0 * (count - 1)
    lower = np.floor(position).astype(int)
    upper = (lower + 1) % count
    frac = (position - lower)[..., None]
    color = (1.0 - frac) * wheel[lower] + frac * wheel[upper]
    inside = (radius <= 1.0)[..., None]
    color = np.where(inside, 1.0 - radius[..., None] * (1.0 - color), color * 0.75)
    color = np.where(known[..., None], color, 0.0)
    return np.floor(255.0 * color).astype(np.uint8)


def flow_key(diameter: int, max_flow: float = DEFAULT_MAX_FLOW) -> np.ndarray:
    """The colour key of `flow_to_color`: a disc, each point coloured as the motion from its centre to it.

    Its rim is a motion of `max_flow` pixels (full colour); outside the disc
    is white.

    Args:
      diameter: the disc's diameter in pixels.
      max_flow: the motion at the rim, in pixels.

    Returns:
      uint8 `[diameter, diameter, 3]`.
    """
    from perceiver import _validation

    _validation.check_positive_int("diameter", diameter)
    _check_max_flow(max_flow)
    radius = diameter / 2.0
    ys, xs = np.mgrid[:diameter, :diameter] + 0.5 - radius  # pixel centres from the disc's
    distance = np.hypot(xs, ys)
    # The outermost pixel centres are half a pixel inside the rim: full colour.
    vectors = np.stack([xs, ys], -1) / max(radius - 0.5, 0.5) * max_flow
    key = flow_to_color(vectors, max_flow)
    key[distance > radius] = 255
    return key


def _length_label(pixels: float) -> str:
    return f"{pixels:.3g} px"


def _key_inset(height: int, width: int, max_flow: float) -> Optional[np.ndarray]:
    """The key with its rim's length below it, on a framed white box; None where it would
    cover more than half of either side of a `height` x `width` picture."""
    from perceiver import _bitmap_text

    diameter = int(np.clip(min(height, width) // 5, 15, 64))
    label = _length_label(max_flow)
    scale = 2 if diameter >= 48 else 1
    text_h, text_w = _bitmap_text.text_size(label, scale)
    pad = 3
    inner_w = max(diameter, text_w)
    box_h, box_w = diameter + text_h + 3 * pad + 2, inner_w + 2 * pad + 2
    if box_h > height // 2 or box_w > width // 2:
        return None
    box = np.full((box_h, box_w, 3), 255, np.uint8)
    box[[0, -1]] = box[:, [0, -1]] = 96  # a grey frame parts the key from the flow
    left = 1 + pad + (inner_w - diameter) // 2
    box[1 + pad : 1 + pad + diameter, left : left + diameter] = flow_key(diameter, max_flow)
    _bitmap_text.draw_text(
        box, label, 1 + 2 * pad + diameter, 1 + pad + (inner_w - text_w) // 2, (0, 0, 0), scale
    )
    return box


def draw_flow(flow, *, max_flow: Optional[float] = DEFAULT_MAX_FLOW, key: bool = True) -> np.ndarray:
    """A flow field as a picture: `flow_to_color`, with its colour key drawn in.

    The key (`flow_key`, labelled with the motion at its rim) sits in the
    bottom-right corner, 2 px from the edges; it is left out of pictures too
    small to hold it in half of each side (under about 60 px).

    Args:
      flow: `[..., H, W, 2]`, (dx, dy) in pixels: one flow `[H, W, 2]`, or
        e.g. a video's `[T, H, W, 2]` (each frame gets the key).
      max_flow: the length in pixels drawn at full colour (default
        DEFAULT_MAX_FLOW); None: the largest finite length in `flow`.
      key: draw the key.

    Returns:
      uint8 `[..., H, W, 3]` RGB.

    Raises:
      ValueError: for a flow other than `[..., H, W, 2]`, or a bad max_flow
        (as for `flow_to_color`).
    """
    flow = _flow_array(flow)
    if flow.ndim < 3 or min(flow.shape[-3:-1]) < 1:
        raise ValueError(f"flow must be [..., H, W, 2] with H, W >= 1; got shape {flow.shape}.")
    _check_max_flow(max_flow)
    if max_flow is None:
        # A still flow has no largest length: any scale draws it white.
        max_flow = _largest_length(flow) or DEFAULT_MAX_FLOW
    picture = flow_to_color(flow, max_flow)
    inset = _key_inset(flow.shape[-3], flow.shape[-2], max_flow) if key else None
    if inset is not None:
        margin = 2
        box_h, box_w = inset.shape[:2]
        height, width = flow.shape[-3:-1]
        top, left = height - margin - box_h, width - margin - box_w
        picture[..., top : top + box_h, left : left + box_w, :] = inset
    return picture


# Enlarged panels of `flow_figure` reach about this many pixels on their longer side.
_FIGURE_PANEL = 384
_FIGURE_MARGIN = 12
_UNSCORED = (150, 190, 255)  # pale blue: pixels the error leaves out


def _as_picture(name: str, image, shape) -> np.ndarray:
    image = np.asarray(image)
    if image.shape != tuple(shape) + (3,):
        raise ValueError(
            f"{name} must be [H, W, 3] = {tuple(shape) + (3,)} like the flow; got {image.shape}."
        )
    return np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)


def _key_panel(height: int, width: int, max_flow: float, scale: int) -> np.ndarray:
    """The colour key on a `height` x `width` panel, with the directions written around it."""
    from perceiver import _bitmap_text

    panel = np.full((height, width, 3), 255, np.uint8)
    text_h, side_w = _bitmap_text.text_size("RIGHT", scale)
    gap = 2 * scale
    diameter = max(min(height - 2 * (text_h + gap), width - 2 * (side_w + gap)), 1)
    top, left = (height - diameter) // 2, (width - diameter) // 2
    panel[top : top + diameter, left : left + diameter] = flow_key(diameter, max_flow)
    middle = top + (diameter - text_h) // 2
    for word, y, x in (
        ("UP", top - gap - text_h, None),
        ("DOWN", top + diameter + gap, None),
        ("LEFT", middle, left - gap - _bitmap_text.text_size("LEFT", scale)[1]),
        ("RIGHT", middle, left + diameter + gap),
    ):
        if x is None:
            x = (width - _bitmap_text.text_size(word, scale)[1]) // 2
        _bitmap_text.draw_text(panel, word, y, x, (0, 0, 0), scale)
    return panel


def flow_figure(
    image1, image2, flow, truth=None, valid=None, *, max_flow: Optional[float] = DEFAULT_MAX_FLOW
) -> np.ndarray:
    """One labelled picture of a flow and the frames it came from, to read at a glance.

    Panels on a white page, three to a row, each titled: frame 1, frame 2,
    the colour key (its rim's length, the directions written around it);
    then the flow, and with `truth` the true flow, the flow titled with its
    end-point error and zero flow's, and the error map `|flow - truth|`
    (white 0 px, black `max_flow` px or more; pixels outside `valid` pale
    blue, as the error leaves them out). Pictures with a longer side under
    384 px are enlarged by a whole factor (nearest pixel) to about that.

    Args:
      image1, image2: RGB `[H, W, 3]`, uint8 or float in [0, 255].
      flow: `[H, W, 2]` predicted flow (dx, dy) in pixels.
      truth: optional true flow `[H, W, 2]`.
      valid: optional `[H, W]` mask of the pixels the error counts (with
        `truth`).
      max_flow: the colour scale, as for `flow_to_color`; None: the largest
        length of `truth`, else of `flow`.

    Returns:
      uint8 `[h, w, 3]` RGB.

    Raises:
      ValueError: for shapes that do not match, a `valid` without `truth`
        or selecting nothing, or a bad max_flow.
    """
    from perceiver import _bitmap_text

    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2 or min(flow.shape[:2]) < 1:
        raise ValueError(f"flow must be [H, W, 2] with H, W >= 1; got shape {flow.shape}.")
    shape = flow.shape[:2]
    frames = [_as_picture(name, image, shape) for name, image in (("image1", image1), ("image2", image2))]
    if truth is not None:
        truth = np.asarray(truth, np.float64)
        if truth.shape != flow.shape:
            raise ValueError(f"truth must have the flow's shape {flow.shape}; got {truth.shape}.")
    if valid is not None:
        if truth is None:
            raise ValueError("valid marks the pixels the error counts; give truth with it.")
        valid = np.asarray(valid)
        if valid.shape != shape:
            raise ValueError(f"valid must have shape {shape}; got {valid.shape}.")
        valid = valid.astype(bool)
    _check_max_flow(max_flow)
    if max_flow is None:
        max_flow = _largest_length(flow if truth is None else truth) or DEFAULT_MAX_FLOW
    scale_label = _length_label(max_flow)

    panels = [(["FRAME 1"], frames[0]), (["FRAME 2"], frames[1])]
    panels.append((["COLOUR KEY", f"RIM {scale_label}"], None))
    picture = flow_to_color(flow, max_flow)
    if truth is None:
        mean = np.nanmean(flow.reshape(-1, 2), axis=0)
        panels.append((["FLOW", f"MEAN DX {mean[0]:.2f}, DY {mean[1]:.2f} PX"], picture))
    else:
        error = end_point_error(flow, truth, valid)
        zero = end_point_error(np.zeros_like(truth), truth, valid)
        panels.append((["TRUE FLOW"], flow_to_color(truth, max_flow)))
        panels.append((["PREDICTED FLOW", f"ERROR {error:.2f} PX, ZERO FLOW {zero:.2f}"], picture))
        distance = np.linalg.norm(flow - truth, axis=-1)
        shade = np.round(255.0 * (1.0 - np.clip(distance / max_flow, 0.0, 1.0)))
        error_map = np.repeat(np.nan_to_num(shade, nan=0.0)[..., None], 3, axis=-1).astype(np.uint8)
        titles = ["END-POINT ERROR PER PIXEL", f"WHITE 0, BLACK {scale_label}+"]
        if valid is not None and not valid.all():
            error_map[~valid] = _UNSCORED
            titles.append("BLUE: NOT SCORED")
        panels.append((titles, error_map))

    zoom = max(1, _FIGURE_PANEL // max(shape))
    panel_h, panel_w = shape[0] * zoom, shape[1] * zoom
    lines = max(len(titles) for titles, _ in panels)
    widest = max(len(line) for titles, _ in panels for line in titles)
    scale = 2 if _bitmap_text.text_size("x" * widest, 2)[1] <= panel_w else 1
    line_h = (_bitmap_text.GLYPH_HEIGHT + 3) * scale
    title_h = lines * line_h + 2 * scale
    columns = 3
    rows = -(-len(panels) // columns)
    margin = _FIGURE_MARGIN
    figure = np.full(
        (rows * (title_h + panel_h) + (rows + 1) * margin, columns * panel_w + (columns + 1) * margin, 3),
        255,
        np.uint8,
    )
    for index, (titles, image) in enumerate(panels):
        row, column = divmod(index, columns)
        top = margin + row * (title_h + panel_h + margin)
        left = margin + column * (panel_w + margin)
        for i, line in enumerate(titles):
            _bitmap_text.draw_text(figure, line, top + i * line_h, left, (0, 0, 0), scale)
        top += title_h
        if image is None:
            figure[top : top + panel_h, left : left + panel_w] = _key_panel(panel_h, panel_w, max_flow, scale)
            continue
        figure[top - 1 : top + panel_h + 1, left - 1 : left + panel_w + 1] = 160  # a thin frame
        figure[top : top + panel_h, left : left + panel_w] = np.repeat(
            np.repeat(image, zoom, axis=0), zoom, axis=1
        )
    return figure


# ---------------------------------------------------------------------------
# Middlebury .flo files
# ---------------------------------------------------------------------------


def write_flo(path: PathLike, flow) -> None:
    """Writes a flow field as a Middlebury `.flo` file.

    The format: the float32 202021.25, int32 width, int32 height, then
    float32 (dx, dy) pairs row by row, all little-endian.

    Args:
      path: the output file.
      flow: `[H, W, 2]`.

    Raises:
      ValueError: for a shape other than `[H, W, 2]`.
    """
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[-1] != 2 or min(flow.shape[:2]) < 1:
        raise ValueError(f"flow must be [H, W, 2] with H, W >= 1; got shape {flow.shape}.")
    header = np.array([(FLO_MAGIC, flow.shape[1], flow.shape[0])], _FLO_HEADER)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(flow, dtype="<f4").tobytes())


def read_flo(path: PathLike) -> np.ndarray:
    """Reads a Middlebury `.flo` file.

    Returns:
      float32 `[H, W, 2]`.

    Raises:
      FileNotFoundError: if there is no file at `path`.
      ValueError: if the file is not a well-formed `.flo` file (wrong magic
        number, bad sizes, or too little or too much data).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    data = path.read_bytes()
    if len(data) < _FLO_HEADER.itemsize:
        raise ValueError(
            f"{path} is not a .flo file: {len(data)} bytes, fewer than its "
            f"{_FLO_HEADER.itemsize}-byte header."
        )
    header = np.frombuffer(data[: _FLO_HEADER.itemsize], _FLO_HEADER)[0]
    if header["magic"] != np.float32(FLO_MAGIC):
        raise ValueError(
            f"{path} is not a .flo file: it starts with {data[:4]!r}, not the magic "
            f"number {FLO_MAGIC} (b'PIEH')."
        )
    width, height = int(header["width"]), int(header["height"])
    if not (1 <= width <= _FLO_MAX_SIDE and 1 <= height <= _FLO_MAX_SIDE):
        raise ValueError(
            f"{path} has a bad .flo header: width {width} and height {height} must be "
            f"in [1, {_FLO_MAX_SIDE}]."
        )
    expected = height * width * 2 * 4
    body = data[_FLO_HEADER.itemsize :]
    if len(body) != expected:
        raise ValueError(
            f"{path} holds {len(body)} bytes of flow; a {width} x {height} flow needs "
            f"{expected}."
        )
    return np.frombuffer(body, "<f4").reshape(height, width, 2).astype(np.float32)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def end_point_error(pred, target, valid=None) -> float:
    """The mean end-point error: the average Euclidean distance between flows.

    Args:
      pred, target: flows `[..., 2]` of the same shape.
      valid: optional mask `[...]` (bool, or 0/1); only its true pixels count.

    Returns:
      the mean of `|pred - target|` over the (valid) pixels, in pixels.

    Raises:
      ValueError: for mismatched shapes, or a mask that selects nothing.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape or pred.ndim < 1 or pred.shape[-1] != 2:
        raise ValueError(
            f"pred and target must be flows [..., 2] of the same shape; got {pred.shape} "
            f"and {target.shape}."
        )
    errors = np.linalg.norm(pred - target, axis=-1)
    if valid is None:
        if errors.size == 0:
            raise ValueError("pred and target hold no flow vectors.")
        return float(errors.mean())
    valid = np.asarray(valid)
    if valid.shape != errors.shape:
        raise ValueError(f"valid must have shape {errors.shape}; got {valid.shape}.")
    valid = valid.astype(bool)
    if not valid.any():
        raise ValueError("valid selects no pixels.")
    return float(errors[valid].mean())
