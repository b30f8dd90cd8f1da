"""Pictures of attention maps (needs matplotlib, the `notebook` extra).

    outputs, maps = inspect.attention_maps(model, params, state, images)
    latent_grid(maps[inspect.ENCODER_CROSS_ATTENTION], (224, 224), image=photo)

Each function takes the weights `inspect.attention_maps` returns (`[B,
heads, queries, keys]`) and returns a matplotlib `Figure`, made without
pyplot (no global figure is opened; in a notebook, `display(fig)` shows it
and `fig.savefig(path)` writes it). What each picture draws is stated in its
docstring, so that tests can compare it with the weights.
"""

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from perceiver import _messages

INSTALL_HINT = _messages.install_hint("notebook")

# Photos are drawn at most this many pixels on their longer side: a panel
# is 160 pixels wide at the default size, and 32 maps of a 4000-pixel photo
# would not fit in memory.
MAX_DRAWN_SIDE = 256
# The opacity of the heat at a map's peak: the photo still shows through.
PEAK_ALPHA = 0.8
# ITU-R BT.601 luma, the photo's grey under the heat.
_LUMA = (0.299, 0.587, 0.114)


def _figure(rows: int, columns: int, panel: Tuple[float, float] = (1.6, 1.6)):
    """A Figure of `rows x columns` panels (axes off), and the axes `[rows, columns]`."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"perceiver.inspect_plots draws with matplotlib: {INSTALL_HINT}") from e
    fig = Figure(figsize=(panel[0] * columns, panel[1] * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _heads(weights, name: str, example: int, head: Optional[int]) -> np.ndarray:
    """`weights[example, head]`, or the mean over heads for head None: `[queries, keys]`.

    Raises:
      ValueError: if weights are not `[B, heads, queries, keys]` or the
        example or head is out of range.
    """
    weights = np.asarray(weights, np.float32)
    if weights.ndim != 4:
        raise ValueError(f"{name} must be [B, heads, queries, keys]; got shape {weights.shape}.")
    if not 0 <= example < weights.shape[0]:
        raise ValueError(f"example must be in [0, {weights.shape[0]}); got {example}.")
    if head is None:
        return weights[example].mean(0)
    if not 0 <= head < weights.shape[1]:
        raise ValueError(f"head must be in [0, {weights.shape[1]}) or None; got {head}.")
    return weights[example, head]


def _resample_matrix(size_in: int, size_out: int) -> np.ndarray:
    """`[size_out, size_in]` weights: linear interpolation up, area average down (pixel centres)."""
    if size_out >= size_in:
        x = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
        low = np.floor(x).astype(int)
        high = np.minimum(low + 1, size_in - 1)
        matrix = np.zeros((size_out, size_in))
        rows = np.arange(size_out)
        np.add.at(matrix, (rows, low), 1 - (x - low))
        np.add.at(matrix, (rows, high), x - low)
        return matrix
    edges = np.arange(size_out + 1) * (size_in / size_out)
    pixels = np.arange(size_in)
    overlap = np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)
    matrix = np.clip(overlap, 0, None)
    return matrix / matrix.sum(axis=1, keepdims=True)


def resize(values, shape: Sequence[int]) -> np.ndarray:
    """`[H, W, ...]` resampled to `[shape[0], shape[1], ...]` float64.

    Each axis is interpolated linearly when enlarged (so a map's largest
    value stays at its cell's centre) and averaged over each output pixel's
    area when reduced (so a photo does not alias).
    """
    out = np.asarray(values, np.float64)
    for axis, size in enumerate(shape[:2]):
        matrix = _resample_matrix(out.shape[axis], int(size))
        out = np.moveaxis(np.tensordot(matrix, out, axes=([1], [axis])), 0, axis)
    return out


def _drawn_photo(image) -> np.ndarray:
    """`image` `[H, W, 3]` in [0, 1], reduced to at most MAX_DRAWN_SIDE on its longer side."""
    image = np.clip(np.asarray(image, np.float64), 0, 1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] RGB in [0, 1]; got shape {image.shape}.")
    longer = max(image.shape[:2])
    if longer > MAX_DRAWN_SIDE:
        scale = MAX_DRAWN_SIDE / longer
        shape = [max(1, round(d * scale)) for d in image.shape[:2]]
        image = resize(image, shape)
    return image


def attention_overlay(image, attention, *, alpha: float = PEAK_ALPHA) -> np.ndarray:
    """One attention map drawn over a photo: `[H, W, 3]` RGB in [0, 1].

    The photo is shown in grey (BT.601 luma); the map, resized to it
    (`resize`) and divided by its largest value, is laid over it in heat
    colours, red (weak) to yellow (strongest), whose opacity is `alpha`
    times that level: where the map is near zero the photo shows unchanged.
    Pixel colour: `(1 - a) * grey + a * (1, level, 0)` with `a = alpha * level`.

    Args:
      image: `[H, W, 3]` RGB in [0, 1].
      attention: `[h, w]`, the weights over the grid the image covers.
      alpha: the opacity at the map's peak, in [0, 1].

    Raises:
      ValueError: for shapes other than these, or alpha outside [0, 1].
    """
    image = np.clip(np.asarray(image, np.float64), 0, 1)
    attention = np.asarray(attention, np.float64)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] RGB in [0, 1]; got shape {image.shape}.")
    if attention.ndim != 2:
        raise ValueError(f"attention must be a map [h, w]; got shape {attention.shape}.")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}.")
    level = np.clip(resize(attention, image.shape[:2]), 0, None)
    peak = level.max()
    level = level / peak if peak > 0 else np.zeros_like(level)
    grey = image @ np.array(_LUMA)
    heat = np.stack([np.ones_like(level), level, np.zeros_like(level)], axis=-1)
    a = (alpha * level)[..., None]
    return (1 - a) * grey[..., None] + a * heat


def top_latents(
    decoder_weights, query: int = 0, *, example: int = 0, head: Optional[int] = None, top: int = 4
):
    """The latents a decoder query reads most, most weight first.

    Args:
      decoder_weights: `[B, heads, queries, latents]`, a decoder's
        cross-attention (e.g. for `decoder_queries=[...]`).
      query: which of its queries.
      example, head: which example; which head (None: the mean of the heads).
      top: how many latents.

    Returns:
      `[top]` int latent indices (ties: the lower index first).
    """
    weights = _heads(decoder_weights, "decoder_weights", example, head)
    if not 0 <= query < weights.shape[0]:
        raise ValueError(f"query must be in [0, {weights.shape[0]}); got {query}.")
    return np.argsort(-weights[query], kind="stable")[:top]


def latent_grid(
    weights,
    image_shape: Sequence[int],
    *,
    example: int = 0,
    head: Optional[int] = 0,
    latents: Optional[Sequence[int]] = None,
    columns: int = 8,
    image=None,
    title: Optional[str] = None,
    overlay: bool = True,
):
    """Each latent's cross-attention over an image, as a grid of maps (the paper's Fig. 3).

    With `image`, the first panel is the image and panel `i + 1` is
    `attention_overlay(image, weights[example, head, latents[i]].reshape(H,
    W))`: the map resized to the image and laid over it in grey, labelled
    with its latent (an image longer than MAX_DRAWN_SIDE pixels is drawn
    reduced to it). Without `image`, or with `overlay=False`, panel `i` is
    the raw map `weights[example, head, latents[i]].reshape(H, W)` (its
    colours span that map's own minimum to maximum).

    Args:
      weights: `[B, heads, latents, H * W]`, e.g. the encoder's cross-attention
        from `inspect.attention_maps`.
      image_shape: `(H, W)` the keys were flattened from.
      example, head: which example; which head (None: the mean of the heads).
      latents: indices of the latents to draw (default: the first 32).
      columns: most panels per row (the image, if given, is the first).
      image: optional `[H', W', 3]` image in [0, 1] that the keys cover
        (e.g. the photo's centre crop the model was given, at any
        resolution), drawn first and under each map.
      title: optional title above the grid.
      overlay: False draws the raw maps beside the image instead.

    Returns:
      A matplotlib `Figure`.

    Raises:
      ValueError: if the keys are not `H * W`, or a latent is out of range.
      ImportError: without matplotlib.
    """
    height, width = (int(d) for d in image_shape)
    shape = np.shape(weights)
    if len(shape) != 4 or shape[-1] != height * width:
        raise ValueError(
            f"weights must be [B, heads, latents, H * W] with H * W = {height * width}; "
            f"got shape {shape}."
        )
    maps = _heads(weights, "weights", example, head)
    latents = list(range(min(32, maps.shape[0])) if latents is None else latents)
    bad = [i for i in latents if not 0 <= i < maps.shape[0]]
    if bad:
        raise ValueError(f"latents must be in [0, {maps.shape[0]}); got {bad}.")
    photo = None if image is None else _drawn_photo(image)
    panels = len(latents) + (photo is not None)
    columns = max(1, min(columns, panels))
    fig, axes = _figure(-(-panels // columns), columns)
    flat = list(axes.flat)
    if photo is not None:
        first = flat.pop(0)
        first.imshow(photo)
        first.set_title("image", fontsize=7)
    for ax, latent in zip(flat, latents):
        grid = maps[latent].reshape(height, width)
        if photo is not None and overlay:
            ax.imshow(attention_overlay(photo, grid))
        else:
            ax.imshow(grid, cmap="viridis")
        ax.set_title(f"latent {latent}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def decoder_reads(
    decoder_weights,
    encoder_weights,
    frame_shape: Sequence[int],
    pixels: Sequence[Tuple[int, int]],
    *,
    example: int = 0,
    head: Optional[int] = None,
    top: int = 3,
    image=None,
    overlay: bool = True,
):
    """For chosen output pixels, which latents the decoder reads, and where those latents look.

    One row per pixel: the frame with the pixel marked (if `image` is
    given); a bar per latent whose height is the decoder's weight on it
    (`decoder_weights[example, :, row]`, the mean over heads for head None;
    the `top` largest in orange); then the encoder cross-attention maps of
    those `top` latents over the frame, as `latent_grid` draws them (head 0
    or `head`; over the frame when `image` is given and `overlay`), with
    the pixel marked.

    Args:
      decoder_weights: `[B, heads, len(pixels), latents]`: the decoder's
        cross-attention for `decoder_queries=pixel_queries(pixels, frame_shape)`.
      encoder_weights: `[B, heads, latents, H * W]`, the encoder's cross-attention.
      frame_shape: `(H, W)` of the frame the keys and outputs cover.
      pixels: `(y, x)` of each chosen output, in the order of the queries.
      example, head, top: which example, head (None: the mean of the
        heads) and how many of the latents read most to draw.
      image: optional `[H', W', 3]` frame in [0, 1] (any resolution; the
        keys and pixels are of the `frame_shape` grid over it).
      overlay: False draws the raw maps instead of over the frame.

    Returns:
      A matplotlib `Figure`.

    Raises:
      ValueError: if the shapes do not agree.
    """
    height, width = (int(d) for d in frame_shape)
    reads = _heads(decoder_weights, "decoder_weights", example, head)  # [pixels, latents]
    if reads.shape[0] != len(pixels) or not len(pixels):
        raise ValueError(
            f"decoder_weights must hold one query per pixel ({len(pixels)}, at least one); got shape "
            f"{np.shape(decoder_weights)}."
        )
    maps = _heads(encoder_weights, "encoder_weights", example, 0 if head is None else head)
    if maps.shape != (reads.shape[1], height * width):
        raise ValueError(
            f"encoder_weights must be [B, heads, {reads.shape[1]} latents, {height * width} "
            f"= H * W keys]; got shape {np.shape(encoder_weights)}."
        )
    photo = None if image is None else _drawn_photo(image)
    first = 2 if photo is not None else 1
    fig, axes = _figure(len(pixels), first + top, panel=(1.8, 1.6))
    # Where a pixel's centre falls on the drawn frame (maps are drawn at its size when over it).
    scale_y, scale_x = (1.0, 1.0) if photo is None else (photo.shape[0] / height, photo.shape[1] / width)
    for row, (y, x) in enumerate(pixels):
        chosen = top_latents(decoder_weights, row, example=example, head=head, top=top)
        at_y, at_x = (y + 0.5) * scale_y - 0.5, (x + 0.5) * scale_x - 0.5
        if photo is not None:
            axes[row, 0].imshow(photo)
            axes[row, 0].plot([at_x], [at_y], "c+", markersize=8)
            axes[row, 0].set_title(f"pixel ({y}, {x})", fontsize=7)
        bars = axes[row, first - 1]
        bars.axis("on")
        colours = np.where(np.isin(np.arange(reads.shape[1]), chosen), "tab:orange", "tab:blue")
        bars.bar(np.arange(reads.shape[1]), reads[row], width=1.0, color=list(colours))
        bars.set_title("decoder weight per latent", fontsize=7)
        bars.tick_params(labelsize=6)
        for column, latent in enumerate(chosen):
            ax = axes[row, first + column]
            grid = maps[latent].reshape(height, width)
            if photo is not None and overlay:
                ax.imshow(attention_overlay(photo, grid))
                ax.plot([at_x], [at_y], "c+", markersize=8)
            else:
                ax.imshow(grid, cmap="viridis")
                ax.plot([x], [y], "r+", markersize=8)
            ax.set_title(f"latent {latent}", fontsize=7)
    fig.tight_layout()
    return fig


def pixel_queries(pixels: Sequence[Tuple[int, int]], frame_shape: Sequence[int]) -> list:
    """The decoder query of each `(y, x)` output pixel of a frame `(H, W)`: `y * W + x`.

    Raises:
      ValueError: for a pixel outside the frame.
    """
    height, width = (int(d) for d in frame_shape)
    outside = [p for p in pixels if not (0 <= p[0] < height and 0 <= p[1] < width)]
    if outside:
        raise ValueError(f"pixels must lie in the {height}x{width} frame; got {outside}.")
    return [int(y) * width + int(x) for y, x in pixels]


def _byte_labels(data: bytes) -> list:
    """A label per byte: its character at the first byte of each UTF-8 character, else ''."""
    labels = []
    for i in range(len(data)):
        if data[i] & 0xC0 == 0x80:  # a continuation byte
            labels.append("")
            continue
        end = i + 1
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end += 1
        char = data[i:end].decode("utf-8", errors="replace")
        labels.append("␣" if char == " " else char)
    return labels


def text_attention(
    weights,
    text: Union[str, bytes],
    rows: Sequence[int],
    *,
    example: int = 0,
    head: Optional[int] = None,
    label: str = "latent",
):
    """Attention over a text's bytes, one row per chosen query, drawn under the characters.

    The image is `weights[example, head][rows, :len(bytes)]` (the mean over
    heads for head None), each row divided by its largest value (a row of
    zeros stays zero), so that every row's strongest byte is full colour.
    For the bytes an output byte `i` of a byte MLM is made from, draw the
    encoder's cross-attention of the latents it reads:
    `rows=top_latents(decoder_weights, i)`.

    Args:
      weights: `[B, heads, queries, S]` with S >= the text's bytes, e.g.
        the encoder's cross-attention (queries are latents).
      text: the text the keys are the UTF-8 bytes of (padding after it is
        not drawn).
      rows: which queries to draw.
      example, head: which example; which head (None: the mean of the heads).
      label: what a query is called in the row labels.

    Returns:
      A matplotlib `Figure`.

    Raises:
      ValueError: for a text longer than the keys or rows out of range.
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    weights = _heads(weights, "weights", example, head)
    if len(data) > weights.shape[1]:
        raise ValueError(f"the text has {len(data)} bytes, more than the {weights.shape[1]} keys.")
    rows = list(rows)
    bad = [r for r in rows if not 0 <= r < weights.shape[0]]
    if bad or not rows:
        raise ValueError(f"rows must be a non-empty list of queries in [0, {weights.shape[0]}); got {rows}.")
    drawn = weights[rows, : len(data)]
    peak = drawn.max(axis=1, keepdims=True)
    drawn = np.divide(drawn, peak, out=np.zeros_like(drawn), where=peak > 0)
    fig, axes = _figure(1, 1, panel=(max(3.0, 0.18 * len(data)), 0.35 * len(rows) + 0.8))
    ax = axes[0, 0]
    ax.axis("on")
    ax.imshow(drawn, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(len(data)), _byte_labels(data), fontsize=7)
    ax.set_yticks(np.arange(len(rows)), [f"{label} {r}" for r in rows], fontsize=7)
    ax.tick_params(length=0)
    fig.tight_layout()
    return fig
