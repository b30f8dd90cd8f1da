"""COCO box mAP: mAP@0.5, mAP@0.75 and mAP@[.5:.95] by pycocotools' definitions.

For each category and IoU threshold: each image's detections of the
category, sorted by score and cut to `max_detections`, are matched greedily
(highest score first) each to the unmatched ground truth it overlaps most
at IoU >= threshold; crowd ground truths are ignored (a detection on one is
neither a hit nor a false positive; their IoU is intersection over the
detection's area, and several detections may match one). Over all images,
precision along the score order is made monotone (the best precision at
equal or higher recall) and read at 101 recall points 0, 0.01, ..., 1 (0
past the highest recall reached): AP is their mean. Categories without
ground truth are left out; mAP is the mean over categories, then over the
thresholds 0.50:0.05:0.95. Only the area range "all" is computed.
"""

import dataclasses
from typing import Dict, Optional, Sequence

import numpy as np

from perceiver import boxes as box_ops

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


class ImageTruth(tuple):
    """`(boxes [K, 4] xywh pixels, labels [K], crowd [K] bool or None)` of one image."""

    def __new__(cls, boxes, labels, crowd=None):
        return super().__new__(cls, (boxes, labels, crowd))


class ImageDetections(tuple):
    """`(boxes [D, 4] xywh pixels, scores [D], labels [D])` of one image."""

    def __new__(cls, boxes, scores, labels):
        return super().__new__(cls, (boxes, scores, labels))


@dataclasses.dataclass(frozen=True)
class DetectionScores:
    """mAP@[.5:.95] (`map`), @0.5, @0.75; `per_threshold` [10]; `per_category` {label: AP@[.5:.95]}."""

    map: float
    map_50: float
    map_75: float
    per_threshold: np.ndarray
    per_category: Dict[int, float]


def _iou_xywh(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """`[D, G]` IoU; for a crowd ground truth, intersection over the detection's area."""
    a, b = box_ops.xywh_to_xyxy(dt), box_ops.xywh_to_xyxy(gt)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(high - low, 0)
    inter = wh[..., 0] * wh[..., 1]
    dt_area = (dt[:, 2] * dt[:, 3])[:, None]
    union = np.where(crowd[None, :], dt_area, dt_area + (gt[:, 2] * gt[:, 3])[None, :] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_image(ious: np.ndarray, crowd: np.ndarray, threshold: float):
    """`(matched, ignored)` bool `[D]`: detections (in score order) hitting a real / a crowd truth."""
    num_dt, num_gt = ious.shape
    taken = np.zeros(num_gt, bool)
    matched = np.zeros(num_dt, bool)
    ignored = np.zeros(num_dt, bool)
    limit = min(threshold, 1 - 1e-10)
    for d in range(num_dt):
        best, best_iou = -1, limit
        # Real truths come first (see the caller): once one is matched, crowds are not tried.
        for g in range(num_gt):
            if taken[g] and not crowd[g]:
                continue
            if best > -1 and not crowd[best] and crowd[g]:
                break
            if ious[d, g] < best_iou:
                continue
            best, best_iou = g, ious[d, g]
        if best == -1:
            continue
        taken[best] = True
        ignored[d] = crowd[best]
        matched[d] = True
    return matched, ignored


def _average_precision(scores, hits, ignored, num_truth: int) -> float:
    order = np.argsort(-scores, kind="mergesort")
    hits, ignored = hits[order], ignored[order]
    tp = np.cumsum(hits & ~ignored)
    fp = np.cumsum(~hits & ~ignored)
    recall = tp / num_truth
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    values = np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0) \
        if len(precision) else np.zeros(len(RECALL_POINTS))
    return float(values.mean())


def coco_map(
    truth: Sequence[ImageTruth],
    detections: Sequence[ImageDetections],
    max_detections: int = 100,
    iou_thresholds: Optional[Sequence[float]] = None,
) -> DetectionScores:
    """COCO box mAP of `detections` against `truth`, image by image (same order and length).

    Args:
      truth: per image `(boxes [K, 4], labels [K], crowd [K] or None)`, boxes
        COCO xywh in pixels (a `datasets.coco.ImageAnnotations` is one).
      detections: per image `(boxes [D, 4], scores [D], labels [D])`, xywh.
      max_detections: detections kept per image and category, best first.
      iou_thresholds: defaults to 0.50:0.05:0.95 (`map_50`/`map_75` need 0.5 / 0.75 in it).

    Returns:
      `DetectionScores`; NaN where no category has ground truth.

    Raises:
      ValueError: if `truth` and `detections` differ in length.
    """
    if len(truth) != len(detections):
        raise ValueError(f"truth has {len(truth)} images but detections {len(detections)}.")
    thresholds = IOU_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, float)
    images = []
    for t, d in zip(truth, detections):
        gt_boxes = np.asarray(t[0], float).reshape(-1, 4)
        gt_labels = np.asarray(t[1]).reshape(-1)
        crowd = np.zeros(len(gt_boxes), bool) if len(t) < 3 or t[2] is None else np.asarray(t[2], bool)
        dt_boxes = np.asarray(d[0], float).reshape(-1, 4)
        images.append((gt_boxes, gt_labels, crowd, dt_boxes, np.asarray(d[1], float).reshape(-1),
                       np.asarray(d[2]).reshape(-1)))
    labels = sorted({int(x) for im in images for x in im[1]})
    ap = np.full((len(thresholds), len(labels)), np.nan)
    for k, label in enumerate(labels):
        num_truth = 0
        scores, hits, ignored = [], [[] for _ in thresholds], [[] for _ in thresholds]
        for gt_boxes, gt_labels, crowd, dt_boxes, dt_scores, dt_labels in images:
            g = np.nonzero(gt_labels == label)[0]
            g = g[np.argsort(crowd[g], kind="mergesort")]  # Real truths first.
            num_truth += int((~crowd[g]).sum())
            d = np.nonzero(dt_labels == label)[0]
            d = d[np.argsort(-dt_scores[d], kind="mergesort")][:max_detections]
            scores.append(dt_scores[d])
            ious = _iou_xywh(dt_boxes[d], gt_boxes[g], crowd[g])
            for i, threshold in enumerate(thresholds):
                m, ig = _match_image(ious, crowd[g], threshold)
                hits[i].append(m)
                ignored[i].append(ig)
        if num_truth == 0:
            continue
        scores = np.concatenate(scores)
        for i in range(len(thresholds)):
            ap[i, k] = _average_precision(scores, np.concatenate(hits[i]), np.concatenate(ignored[i]), num_truth)
    valid = ~np.isnan(ap[0]) if len(labels) else np.zeros(0, bool)
    per_threshold = ap[:, valid].mean(axis=1) if valid.any() else np.full(len(thresholds), np.nan)

    def at(value):
        hit = np.nonzero(np.isclose(thresholds, value))[0]
        return float(per_threshold[hit[0]]) if len(hit) else float("nan")

    return DetectionScores(
        map=float(per_threshold.mean()),
        map_50=at(0.5),
        map_75=at(0.75),
        per_threshold=per_threshold,
        per_category={label: float(ap[:, k].mean()) for k, label in enumerate(labels) if valid[k]},
    )
