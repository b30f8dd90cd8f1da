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

Also offered here, written in their own modules: the pyramid's parts
(`downsample`, `upsample_flow`, `warp`; `perceiver.tasks.flow_pyramid`), the
Middlebury colour coding of flow (`flow_to_color`, `flow_key`, `draw_flow`,
`flow_figure`; `perceiver.tasks.flow_drawing`), the Middlebury `.flo` file
format (`read_flo`, `write_flo`; `perceiver.tasks.flow_files`) and the
end-point error (`end_point_error`; `perceiver.tasks.flow_metrics`).
"""

import itertools
import warnings
from typing import Callable, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from perceiver import _progress
from perceiver import media
from perceiver.tasks.flow_drawing import (  # noqa: F401
    DEFAULT_MAX_FLOW,
    color_wheel,
    draw_flow,
    flow_figure,
    flow_key,
    flow_to_color,
)
from perceiver.tasks.flow_files import FLO_MAGIC, PathLike, read_flo, write_flo  # noqa: F401
from perceiver.tasks.flow_metrics import end_point_error  # noqa: F401
from perceiver.tasks.flow_pyramid import downsample, upsample_flow, warp

# tiles [N, 2, h, w, 3] float32 in [-1, 1] -> flow [N, h, w, 2] in pixels.
TileFunction = Callable[[np.ndarray], np.ndarray]

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
