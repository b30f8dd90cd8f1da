"""Pictures of optical flow: the Middlebury colour coding, its key, and labelled figures.

`flow_to_color` colours flow on a fixed scale of DEFAULT_MAX_FLOW px unless
given one; `flow_key` is its colour key, `draw_flow` a flow with the key
drawn in, and `flow_figure` puts frames, flows, error and key in one
labelled picture.
"""

from typing import Optional

import numpy as np

from perceiver.tasks.flow_metrics import end_point_error


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
