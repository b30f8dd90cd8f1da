"""Bounding boxes: formats, IoU and generalized IoU, and DETR's Hungarian matching.

Box functions take numpy arrays (computed in numpy) or JAX arrays and
tracers (computed in jax.numpy, differentiable). Boxes are `[..., 4]`:
`xyxy` is (x0, y0, x1, y1), `cxcywh` is (centre x, centre y, width,
height), `xywh` is COCO's (x0, y0, width, height). A box with x1 < x0 has
zero area. Divisions by zero (zero-area padding boxes) give 0, in values
and gradients alike, never NaN.

`hungarian` solves the minimum-cost assignment in numpy; `match` computes
DETR's matching cost (Carion et al. 2020) and assigns queries to targets;
`match_in_jit` calls it from jitted code through `jax.pure_callback`.
"""

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np


def _xp(x):
    """jax.numpy for JAX arrays and tracers, numpy otherwise."""
    return jnp if isinstance(x, jax.Array) else np


def _stack(xp, parts):
    return xp.stack(parts, axis=-1)


def xyxy_to_cxcywh(boxes):
    """`[..., 4]` (x0, y0, x1, y1) -> (cx, cy, w, h)."""
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    return _stack(_xp(boxes), [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])


def cxcywh_to_xyxy(boxes):
    """`[..., 4]` (cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return _stack(_xp(boxes), [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def xywh_to_xyxy(boxes):
    """`[..., 4]` COCO (x0, y0, w, h) -> (x0, y0, x1, y1)."""
    x0, y0, w, h = (boxes[..., i] for i in range(4))
    return _stack(_xp(boxes), [x0, y0, x0 + w, y0 + h])


def xyxy_to_xywh(boxes):
    """`[..., 4]` (x0, y0, x1, y1) -> COCO (x0, y0, w, h)."""
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    return _stack(_xp(boxes), [x0, y0, x1 - x0, y1 - y0])


def normalize(boxes, width, height):
    """Pixel boxes (any of the formats above) -> fractions of the image's `width` and `height`."""
    xp = _xp(boxes)
    return boxes / xp.asarray([width, height, width, height])


def to_pixels(boxes, width, height):
    """Boxes in fractions of the image (any format above) -> pixels; inverse of `normalize`."""
    xp = _xp(boxes)
    return boxes * xp.asarray([width, height, width, height])


def area(boxes):
    """`[..., 4]` xyxy -> `[...]` areas; inverted sides count as 0."""
    xp = _xp(boxes)
    w = xp.maximum(boxes[..., 2] - boxes[..., 0], 0)
    h = xp.maximum(boxes[..., 3] - boxes[..., 1], 0)
    return w * h


def _safe_divide(xp, num, den):
    """num / den where den > 0, else 0, with finite gradients (the double-where trick)."""
    ok = den > 0
    return xp.where(ok, num / xp.where(ok, den, 1), 0)


def _intersection_union(a, b):
    xp = _xp(a) if _xp(a) is jnp else _xp(b)
    low = xp.maximum(a[..., :2], b[..., :2])
    high = xp.minimum(a[..., 2:], b[..., 2:])
    wh = xp.maximum(high - low, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a) + area(b) - inter
    return xp, inter, union


def iou(a, b):
    """Intersection over union of xyxy boxes `a [..., 4]` and `b [..., 4]`, broadcast: `[...]`."""
    xp, inter, union = _intersection_union(a, b)
    return _safe_divide(xp, inter, union)


def giou(a, b):
    """Generalized IoU (Rezatofighi et al. 2019) of xyxy boxes, broadcast: `[...]` in [-1, 1].

    GIoU = IoU - (C - U) / C, with C the area of the smallest box enclosing
    both and U their union's area.
    """
    xp, inter, union = _intersection_union(a, b)
    low = xp.minimum(a[..., :2], b[..., :2])
    high = xp.maximum(a[..., 2:], b[..., 2:])
    wh = xp.maximum(high - low, 0)
    enclosing = wh[..., 0] * wh[..., 1]
    return _safe_divide(xp, inter, union) - _safe_divide(xp, enclosing - union, enclosing)


def pairwise_iou(a, b):
    """IoU of every xyxy box in `a [N, 4]` with every one in `b [M, 4]`: `[N, M]`."""
    return iou(a[:, None, :], b[None, :, :])


def pairwise_giou(a, b):
    """Generalized IoU of every xyxy box in `a [N, 4]` with every one in `b [M, 4]`: `[N, M]`."""
    return giou(a[:, None, :], b[None, :, :])


def hungarian(cost) -> Tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of rows to columns of `cost [N, M]` (Kuhn-Munkres, O(n^3)).

    Shortest augmenting paths with dual potentials (Jonker-Volgenant): each
    row in turn is added and the cheapest path in reduced costs to a free
    column flips the assignment along it.

    Returns:
      `(rows, cols)`: int64 `[min(N, M)]` each, rows ascending; row `rows[k]`
      goes to column `cols[k]`, and the sum of those costs is least.

    Raises:
      ValueError: if `cost` is not 2-D or holds NaN or infinity.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be [N, M]; got shape {cost.shape}.")
    if not np.isfinite(cost).all():
        raise ValueError("cost must be finite; it holds NaN or infinity.")
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    n, m = cost.shape
    if n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    # 1-based: column 0 is a virtual column holding the row being added.
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    owner = np.zeros(m + 1, np.int64)  # owner[j]: the row assigned to column j (0: none).
    way = np.zeros(m + 1, np.int64)  # way[j]: the column before j on the shortest path.
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        min_to = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (reduced < min_to[1:])
            min_to[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free, min_to[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[owner[used]] += delta
            v[used] -= delta
            min_to[~used] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:  # Flip the assignment along the path back to the virtual column.
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    cols = np.nonzero(owner[1:])[0]
    rows = owner[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def matching_cost(
    logits, pred_boxes, labels, target_boxes, class_weight=1.0, l1_weight=5.0, giou_weight=2.0
) -> np.ndarray:
    """DETR's matching cost of one example, numpy: `[Q, T]`.

    cost = -p(target class) * class_weight + L1 * l1_weight - GIoU * giou_weight,
    with p the softmax of `logits` and boxes compared as cxcywh (L1) and xyxy (GIoU).

    Args:
      logits: `[Q, C + 1]` class logits of the queries (the last: no object).
      pred_boxes: `[Q, 4]` predicted boxes, cxcywh in fractions of the image.
      labels: `[T]` int target classes in [0, C).
      target_boxes: `[T, 4]` target boxes, cxcywh in fractions of the image.
    """
    probs = _softmax(np.asarray(logits, np.float64))
    pred = np.asarray(pred_boxes, np.float64)
    target = np.asarray(target_boxes, np.float64)
    class_cost = -probs[:, np.asarray(labels, np.int64)]
    l1 = np.abs(pred[:, None, :] - target[None, :, :]).sum(-1)
    g = pairwise_giou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target))
    return class_weight * class_cost + l1_weight * l1 - giou_weight * g


def match(
    logits, pred_boxes, labels, target_boxes, target_mask,
    class_weight=1.0, l1_weight=5.0, giou_weight=2.0,
) -> np.ndarray:
    """The query matched to each target of each example, by least total `matching_cost`.

    Args:
      logits: `[B, Q, C + 1]` class logits (the last class: no object).
      pred_boxes: `[B, Q, 4]` cxcywh in fractions of the image.
      labels: `[B, T]` int target classes (any value where masked out).
      target_boxes: `[B, T, 4]` cxcywh in fractions of the image.
      target_mask: `[B, T]` bool, True for real targets (padding: False).
      class_weight, l1_weight, giou_weight: the cost's weights (DETR's 1, 5, 2).

    Returns:
      int32 `[B, T]`: the query index for each real target, distinct within an
      example; -1 for padding and for targets left over when T > Q.
    """
    logits, pred_boxes = np.asarray(logits), np.asarray(pred_boxes)
    labels, target_boxes = np.asarray(labels), np.asarray(target_boxes)
    target_mask = np.asarray(target_mask, bool)
    out = np.full(labels.shape, -1, np.int32)
    for b in range(labels.shape[0]):
        real = np.nonzero(target_mask[b])[0]
        if not len(real):
            continue
        cost = matching_cost(
            logits[b], pred_boxes[b], labels[b, real], target_boxes[b, real],
            class_weight, l1_weight, giou_weight,
        )
        queries, targets = hungarian(cost)
        out[b, real[targets]] = queries
    return out


def match_in_jit(
    logits, pred_boxes, labels, target_boxes, target_mask,
    class_weight=1.0, l1_weight=5.0, giou_weight=2.0,
):
    """`match` callable inside `jax.jit` (through `jax.pure_callback`; no gradient flows).

    Same arguments and result as `match`, as JAX arrays; shapes are static
    (targets padded to T with `target_mask`). The weights are Python floats.
    """
    args = [jax.lax.stop_gradient(x) for x in (logits, pred_boxes, labels, target_boxes, target_mask)]

    def host(*arrays):
        return match(*arrays, class_weight, l1_weight, giou_weight)

    result = jax.ShapeDtypeStruct(jnp.shape(labels), jnp.int32)
    return jax.pure_callback(host, result, *args, vmap_method="sequential")


def query_targets(matched, num_queries: int):
    """Inverts `match`'s result: the target index each query was matched to, -1 if none.

    Args:
      matched: int `[B, T]` from `match` / `match_in_jit` (-1: unmatched).
      num_queries: Q.

    Returns:
      int32 `[B, Q]` (jax.numpy).
    """
    matched = jnp.asarray(matched)
    batch, targets = matched.shape
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], matched.shape)
    index = jnp.broadcast_to(jnp.arange(targets, dtype=jnp.int32)[None, :], matched.shape)
    # Unmatched targets write out of bounds and are dropped.
    cols = jnp.where(matched >= 0, matched, num_queries)
    out = jnp.full((batch, num_queries), -1, jnp.int32)
    return out.at[rows, cols].set(index, mode="drop")
