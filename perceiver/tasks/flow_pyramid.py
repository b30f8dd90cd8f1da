"""The image pyramid of coarse-to-fine optical flow: halving images, doubling flows, warping.

`perceiver.tasks.flow.OpticalFlow` uses these for motions beyond the model's
trained range; they are numpy only.
"""

from typing import Sequence

import numpy as np


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
