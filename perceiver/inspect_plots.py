"""Pictures of attention maps (needs matplotlib, the `notebook` extra)."""

from typing import Optional, Sequence

import numpy as np


def latent_grid(
    weights,
    image_shape: Sequence[int],
    *,
    example: int = 0,
    head: int = 0,
    latents: Optional[Sequence[int]] = None,
    columns: int = 8,
    image=None,
):
    """Each latent's cross-attention over an image, as a grid of maps (the paper's Fig. 3).

    Args:
      weights: `[B, heads, latents, H * W]`, e.g. the encoder's cross-attention
        from `inspect.attention_maps`.
      image_shape: `(H, W)` the keys were flattened from.
      example, head: which example and head to draw.
      latents: indices of the latents to draw (default: the first 32).
      columns: maps per row.
      image: optional `[H', W', 3]` image in [0, 1] drawn first.

    Returns:
      A matplotlib `Figure`.

    Raises:
      ValueError: if the keys are not `H * W`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = np.asarray(weights)
    height, width = (int(d) for d in image_shape)
    if weights.ndim != 4 or weights.shape[-1] != height * width:
        raise ValueError(
            f"weights must be [B, heads, latents, H * W] with H * W = {height * width}; "
            f"got shape {weights.shape}."
        )
    if latents is None:
        latents = range(min(32, weights.shape[2]))
    latents = list(latents)
    panels = len(latents) + (image is not None)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    flat = list(axes.flat)
    if image is not None:
        flat.pop(0).imshow(np.clip(np.asarray(image), 0, 1))
    for ax, latent in zip(flat, latents):
        ax.imshow(weights[example, head, latent].reshape(height, width), cmap="viridis")
        ax.set_title(f"latent {latent}", fontsize=7)
    fig.tight_layout()
    return fig
