"""Synthetic optical-flow pairs whose ground truth is exact by construction.

A scene is a stack of layers: a background that fills the plane and a few
foreground objects (ellipses, diamonds, rounded squares), each with its own
random smooth texture and its own affine motion. Textures and shapes are
analytic functions of a layer's own coordinates (sums of sinusoids; implicit
shapes), so a frame is rendered by *backward warping*: pixel q of frame t
shows, of the layers whose shape covers `M_t^-1(q)`, the topmost one, with
its texture at that point. Frame 1 uses the identity for every layer, frame 2
the layer's motion `M(p) = A p + t`.

Ground-truth forward flow at pixel p of frame 1 is `M_L(p) - p`, where L is
the layer visible at p: exact per pixel, with no interpolation anywhere.

Occlusions: the flow is defined at every pixel of frame 1, including points
that are covered by a nearer layer in frame 2 or leave the image (as in
FlyingChairs and Sintel, the motion of the surface point). `valid` marks the
pixels whose point is still visible in frame 2: inside the image and not
covered by a nearer layer at `M_L(p)` (tested on the continuous shapes, not
on pixels). There, frame 2 at `p + flow(p)` shows exactly frame 1's colour
at p, because the layer's texture is the same function of its own
coordinates in both frames. Training uses the flow at every pixel;
`valid` is returned for masked losses and for tests.

Photo-like scenes (in the spirit of AutoFlow): with `photo_texture_prob` a
layer's texture is instead a raster of flat-coloured regions with sharp
edges plus fractal (1/f) detail, as real surfaces look; it is defined
between texels by bilinear interpolation, a continuous function of the
layer's coordinates, so the ground truth stays exact. `translation_power`
> 1 makes small (sub-pixel) motions more frequent, and the photometric
options change frame 2's brightness and blur and add noise to both frames
after rendering (the flow is unchanged by them; `valid` then means the
point is visible, not that its colour is the same).
"""

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

SHAPES = ("ellipse", "diamond", "rounded_square")


@dataclasses.dataclass(frozen=True)
class FlowSceneSpec:
    """How random scenes are drawn.

    Distances are in pixels, angles in degrees, frequencies in cycles/pixel.
    """

    image_shape: Tuple[int, int] = (64, 64)
    min_objects: int = 1
    max_objects: int = 4
    max_translation: float = 6.0  # per axis, foreground objects
    max_background_translation: float = 3.0
    max_rotation: float = 10.0
    max_background_rotation: float = 3.0
    max_log_scale: float = 0.1  # scale factor in [exp(-s), exp(s)]
    max_background_log_scale: float = 0.03
    min_object_size: float = 0.12  # radius as a fraction of min(H, W)
    max_object_size: float = 0.35
    num_waves: int = 12
    min_frequency: float = 0.02
    max_frequency: float = 0.2
    # Photo-like scenes; the defaults (all off) give the wave scenes above.
    photo_texture_prob: float = 0.0  # chance that a layer has a raster (photo-like) texture
    translation_power: float = 1.0  # translation = max * sign(u) |u|^power, u ~ U(-1, 1)
    max_brightness_change: float = 0.0  # frame 2: gain 1 + U(-b, b), offset U(-b, b) per channel
    max_blur: float = 0.0  # Gaussian blur of both frames, sigma ~ U(0, max_blur) pixels
    max_noise: float = 0.0  # Gaussian noise on each frame, std ~ U(0, max_noise)


@dataclasses.dataclass
class Layer:
    """One textured layer and its motion (frame 1 -> frame 2)."""

    # Motion p2 = matrix @ p1 + offset, in (x, y) pixel coordinates.
    matrix: np.ndarray  # [2, 2]
    offset: np.ndarray  # [2]
    # Texture: colour(u) = tanh(bias + sum_j colors[j] sin(2 pi freqs[j].u + phases[j]))
    freqs: np.ndarray  # [J, 2]
    phases: np.ndarray  # [J]
    colors: np.ndarray  # [J, 3]
    bias: np.ndarray  # [3]
    # Shape ('plane' for the background, which covers everything): the set
    # |R (u - center) / radii|_p <= 1 for an ellipse, diamond or rounded square.
    shape: str = "plane"
    center: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))
    radii: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(2))
    angle: float = 0.0
    # A raster texture `[h, w, 3]` in [-1, 1] replaces the waves when given:
    # layer point u shows the bilinear interpolant at texel u - raster_origin
    # (clamped to the raster's border).
    raster: Optional[np.ndarray] = None
    raster_origin: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))

    def texture(self, u: np.ndarray) -> np.ndarray:
        """Colours `[N, 3]` in [-1, 1] at layer coordinates `u` `[N, 2]`."""
        if self.raster is not None:
            return bilinear(self.raster, u - self.raster_origin)
        waves = np.sin(2 * np.pi * (u @ self.freqs.T) + self.phases)  # [N, J]
        return np.tanh(self.bias + waves @ self.colors)

    def covers(self, u: np.ndarray) -> np.ndarray:
        """Whether the layer's shape covers layer coordinates `u` `[N, 2]`; `[N]` bool."""
        if self.shape == "plane":
            return np.ones(u.shape[0], bool)
        c, s = np.cos(self.angle), np.sin(self.angle)
        d = u - self.center
        x = (c * d[:, 0] + s * d[:, 1]) / self.radii[0]
        y = (-s * d[:, 0] + c * d[:, 1]) / self.radii[1]
        if self.shape == "ellipse":
            return x * x + y * y <= 1
        if self.shape == "diamond":
            return np.abs(x) + np.abs(y) <= 1
        return x**4 + y**4 <= 1  # rounded square

    def forward(self, p: np.ndarray) -> np.ndarray:
        """Frame-1 points `[N, 2]` moved to frame 2."""
        return p @ self.matrix.T + self.offset

    def backward(self, q: np.ndarray) -> np.ndarray:
        """Frame-2 points `[N, 2]` mapped back to layer (frame-1) coordinates."""
        return (q - self.offset) @ np.linalg.inv(self.matrix).T


def bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`image` `[h, w, C]` at points `[N, 2]` (x, y), bilinear, clamped to its border; `[N, C]`."""
    h, w = image.shape[:2]
    x = np.clip(points[:, 0], 0.0, w - 1.0)
    y = np.clip(points[:, 1], 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
    bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
    return (1 - fy) * top + fy * bottom


def _affine_about(center, rng, max_translation, max_rotation, max_log_scale, power=1.0):
    angle = np.deg2rad(rng.uniform(-max_rotation, max_rotation))
    sx, sy = np.exp(rng.uniform(-max_log_scale, max_log_scale, 2))
    shear = rng.uniform(-0.5, 0.5) * max_log_scale
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.array([[c, -s], [s, c]]) @ np.array([[sx, shear], [0.0, sy]])
    if power == 1.0:
        translation = rng.uniform(-max_translation, max_translation, 2)
    else:
        u = rng.uniform(-1.0, 1.0, 2)
        translation = max_translation * np.sign(u) * np.abs(u) ** power
    # p -> matrix (p - center) + center + translation
    return matrix, center - matrix @ center + translation


def _texture_params(rng, spec: FlowSceneSpec):
    j = spec.num_waves
    # Log-uniform frequencies with amplitude ~ 1/f^0.5: content at every scale.
    mags = np.exp(rng.uniform(np.log(spec.min_frequency), np.log(spec.max_frequency), j))
    angles = rng.uniform(0, 2 * np.pi, j)
    freqs = np.stack([mags * np.cos(angles), mags * np.sin(angles)], axis=1)
    amps = (mags / spec.max_frequency) ** -0.5
    colors = rng.normal(size=(j, 3)) * amps[:, None]
    colors *= 1.5 / np.sqrt(np.sum(colors**2, axis=0, keepdims=True))  # std ~1 per channel
    return freqs, rng.uniform(0, 2 * np.pi, j), colors, rng.uniform(-0.8, 0.8, 3)


def fractal_noise(shape: Sequence[int], exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise `shape` (2-D) with amplitude spectrum 1/f^exponent, unit std."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = np.inf  # no mean
    spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) * radius**-exponent
    field = np.fft.irfft2(spectrum, s=tuple(shape))
    return field / max(field.std(), 1e-12)


def photo_texture(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A raster `[h, w, 3]` in [-1, 1] that looks like a surface in a photograph.

    Flat-coloured regions with sharp edges (a smooth random field cut at
    random levels), shading across them and fractal detail, its colours
    correlated across channels as in real images.
    """
    shape = tuple(int(s) for s in shape)
    # Regions: 2-6 bands of a low-frequency field, each its own colour.
    cut = fractal_noise(shape, rng.uniform(1.6, 2.6), rng)
    levels = np.sort(rng.normal(size=int(rng.integers(1, 6))))
    region = np.searchsorted(levels, cut)
    # Mostly brightness, some colour: real surfaces are rarely saturated.
    count = len(levels) + 1
    palette = rng.uniform(-0.9, 0.9, (count, 1)) + rng.uniform(-0.4, 0.4, (count, 3))
    image = palette[region]
    # Shading and detail: a grey-ish fractal field tinted by one random colour.
    tint = 0.6 + 0.4 * rng.uniform(0, 1, 3)
    shading = fractal_noise(shape, rng.uniform(1.5, 2.2), rng)[..., None] * tint
    detail = fractal_noise(shape, rng.uniform(0.6, 1.3), rng)[..., None] * tint
    image = image + rng.uniform(0.05, 0.35) * shading + rng.uniform(0.02, 0.25) * detail
    return np.clip(image, -1.0, 1.0)


def _raster_for(spec: FlowSceneSpec, rng: np.random.Generator):
    """A photo texture covering every layer point a frame can show, and its origin."""
    height, width = spec.image_shape
    # Frame 2 shows layer points M^-1(q) for q in the image: within the image
    # grown by the translation and by rotation and scaling about points inside.
    turn = np.deg2rad(max(spec.max_rotation, spec.max_background_rotation))
    scale = max(spec.max_log_scale, spec.max_background_log_scale)
    reach = max(spec.max_translation, spec.max_background_translation)
    margin = int(np.ceil(reach + max(height, width) * (turn + 1.5 * scale))) + 2
    raster = photo_texture((height + 2 * margin, width + 2 * margin), rng)
    # A sub-texel offset, so that frame 1, too, shows interpolated texels.
    return raster, rng.uniform(0, 1, 2) - margin


def _texture_fields(rng: np.random.Generator, spec: FlowSceneSpec) -> Dict:
    fields = dict(zip(("freqs", "phases", "colors", "bias"), _texture_params(rng, spec)))
    if spec.photo_texture_prob > 0 and rng.uniform() < spec.photo_texture_prob:
        fields["raster"], fields["raster_origin"] = _raster_for(spec, rng)
    return fields


def random_scene(spec: FlowSceneSpec, rng: np.random.Generator) -> List[Layer]:
    """Background first, then foreground layers from back to front."""
    height, width = spec.image_shape
    center = np.array([(width - 1) / 2, (height - 1) / 2])
    m, t = _affine_about(
        center,
        rng,
        spec.max_background_translation,
        spec.max_background_rotation,
        spec.max_background_log_scale,
        spec.translation_power,
    )
    layers = [Layer(m, t, **_texture_fields(rng, spec))]
    size = min(height, width)
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        obj_center = rng.uniform([0, 0], [width - 1, height - 1])
        m, t = _affine_about(
            obj_center,
            rng,
            spec.max_translation,
            spec.max_rotation,
            spec.max_log_scale,
            spec.translation_power,
        )
        layers.append(
            Layer(
                m,
                t,
                **_texture_fields(rng, spec),
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                center=obj_center,
                radii=rng.uniform(spec.min_object_size, spec.max_object_size, 2) * size,
                angle=float(rng.uniform(0, np.pi)),
            )
        )
    return layers


def pixel_grid(image_shape: Sequence[int]) -> np.ndarray:
    """Pixel centres `[H * W, 2]` as (x, y), row-major."""
    height, width = image_shape
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)


def visible_layer(layers: Sequence[Layer], points: np.ndarray, frame: int) -> np.ndarray:
    """Index of the topmost layer covering each point `[N, 2]` of frame 1 or 2; `[N]`."""
    top = np.zeros(points.shape[0], np.int64)
    for i, layer in enumerate(layers[1:], start=1):
        u = points if frame == 1 else layer.backward(points)
        top = np.where(layer.covers(u), i, top)
    return top


def render(layers: Sequence[Layer], points: np.ndarray, frame: int) -> np.ndarray:
    """Colours `[N, 3]` of frame 1 or 2 at any points `[N, 2]` (x, y), by backward warping."""
    top = visible_layer(layers, points, frame)
    out = np.zeros((points.shape[0], 3))
    for i, layer in enumerate(layers):
        sel = top == i
        if np.any(sel):
            u = points[sel] if frame == 1 else layer.backward(points[sel])
            out[sel] = layer.texture(u)
    return out


def scene_flow(layers: Sequence[Layer], image_shape: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Exact forward flow `[H, W, 2]` (dx, dy) of frame 1 and its `valid` mask `[H, W]`."""
    height, width = image_shape
    p = pixel_grid(image_shape)
    top = visible_layer(layers, p, 1)
    moved = np.zeros_like(p)
    for i, layer in enumerate(layers):
        sel = top == i
        moved[sel] = layer.forward(p[sel])
    inside = (
        (moved[:, 0] >= 0) & (moved[:, 0] <= width - 1) & (moved[:, 1] >= 0) & (moved[:, 1] <= height - 1)
    )
    valid = inside & (visible_layer(layers, moved, 2) == top)
    flow = (moved - p).reshape(height, width, 2)
    return flow, valid.reshape(height, width)


def make_pair(spec: FlowSceneSpec, seed: int, index: int) -> Dict[str, np.ndarray]:
    """The example `index` of the stream `seed`, the same on every call.

    Returns:
      `{'frames': [2, H, W, 3] float32 in (-1, 1), 'flow': [H, W, 2] float32
      (dx, dy) in pixels, 'valid': [H, W] bool}`.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    layers = random_scene(spec, rng)
    p = pixel_grid(spec.image_shape)
    shape = tuple(spec.image_shape) + (3,)
    frames = np.stack([render(layers, p, 1).reshape(shape), render(layers, p, 2).reshape(shape)])
    frames = _photometric(frames, spec, rng)
    flow, valid = scene_flow(layers, spec.image_shape)
    return {"frames": frames.astype(np.float32), "flow": flow.astype(np.float32), "valid": valid}


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """`image` `[H, W, C]` blurred separably, the border repeated."""
    if sigma < 0.05:
        return image
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(image, pad, mode="edge")
        n = image.shape[axis]
        image = sum(
            t * np.take(padded, np.arange(i, i + n), axis=axis) for i, t in enumerate(taps)
        )
    return image


def _photometric(frames: np.ndarray, spec: FlowSceneSpec, rng: np.random.Generator) -> np.ndarray:
    """Brightness change of frame 2, blur of both frames, noise on each (all off by default)."""
    if not (spec.max_brightness_change or spec.max_blur or spec.max_noise):
        return frames
    frames = frames.copy()
    b = spec.max_brightness_change
    if b:
        gain = 1.0 + rng.uniform(-b, b, 3)
        offset = rng.uniform(-b, b, 3)
        frames[1] = frames[1] * gain + offset
    if spec.max_blur:
        sigma = rng.uniform(0, spec.max_blur)
        # Nearly the same blur in both frames, as for a camera's focus.
        for i in (0, 1):
            frames[i] = _gaussian_blur(frames[i], sigma * rng.uniform(0.85, 1.15))
    if spec.max_noise:
        std = rng.uniform(0, spec.max_noise)
        frames = frames + rng.normal(0, std, frames.shape)
    return np.clip(frames, -1.0, 1.0)


class SyntheticFlowSource:
    """A random-access source of `num_records` synthetic pairs (for grain).

    Record i is `make_pair(spec, seed, i)`: generated on the fly, identical
    whenever it is read, so shuffling, sharding and resuming work as for a
    stored data set. Use different seeds for training and held-out sets.
    """

    def __init__(self, spec: FlowSceneSpec, num_records: int = 1_000_000, seed: int = 0):
        if num_records < 1:
            raise ValueError(f"num_records must be >= 1; got {num_records}.")
        self.spec = spec
        self.num_records = int(num_records)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> Mapping[str, np.ndarray]:
        return make_pair(self.spec, self.seed, int(index))

    def __repr__(self) -> str:  # grain checks it when restoring an iterator
        return f"SyntheticFlowSource(spec={self.spec!r}, num_records={self.num_records}, seed={self.seed})"
