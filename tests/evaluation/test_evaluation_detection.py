"""perceiver.evaluation.detection: hand-computed mAP, and pycocotools on a random case."""

import contextlib
import io
import json

import numpy as np
import pytest

from perceiver.evaluation import detection

BOX = [10.0, 10.0, 20.0, 20.0]


def _one(boxes, labels, crowd=None):
    return detection.ImageTruth(np.array(boxes, float).reshape(-1, 4), labels, crowd)


def _dets(boxes, scores, labels):
    return detection.ImageDetections(np.array(boxes, float).reshape(-1, 4), scores, labels)


def test_perfect_detections_score_one():
    truth = [_one([BOX, [50, 50, 10, 5]], [1, 2]), _one([[0, 0, 4, 4]], [1])]
    dets = [_dets([BOX, [50, 50, 10, 5]], [0.9, 0.8], [1, 2]), _dets([[0, 0, 4, 4]], [0.3], [1])]
    got = detection.coco_map(truth, dets)
    # pycocotools' precision is tp / (tp + fp + eps): 1 to within rounding.
    assert got.map == got.map_50 == got.map_75 == pytest.approx(1.0)
    assert got.per_category == pytest.approx({1: 1.0, 2: 1.0})


def test_a_false_positive_ranked_first():
    # Ranked: FP, TP. Precision [0, 1/2] -> monotone [1/2, 1/2]; recall reaches 1 at rank 2:
    # all 101 recall points read 1/2.
    truth = [_one([BOX], [1])]
    dets = [_dets([[60, 60, 10, 10], BOX], [0.9, 0.5], [1, 1])]
    assert detection.coco_map(truth, dets).map == pytest.approx(0.5)
    # Ranked last it costs nothing; two truths, one found: recall points 0..0.5 (51 of 101) read 1.
    dets = [_dets([BOX, [60, 60, 10, 10]], [0.9, 0.5], [1, 1])]
    assert detection.coco_map(truth, dets).map == pytest.approx(1.0)
    truth2 = [_one([BOX, [100, 100, 5, 5]], [1, 1])]
    assert detection.coco_map(truth2, dets).map == pytest.approx(51 / 101)


def test_iou_0_62_counts_at_0_5_not_at_0_75():
    # [10, 10, 20, 20] against [10, 10, 20, 12.4]: IoU = 248 / 400 = 0.62.
    truth = [_one([BOX], [3])]
    dets = [_dets([[10, 10, 20, 12.4]], [0.7], [3])]
    got = detection.coco_map(truth, dets)
    assert got.map_50 == pytest.approx(1.0) and got.map_75 == 0.0
    # Thresholds 0.50, 0.55 and 0.60 of ten hit.
    assert got.map == pytest.approx(0.3)


def test_crowd_is_ignored_and_categories_without_truth_are_left_out():
    truth = [_one([BOX, [40, 40, 30, 30]], [1, 1], [False, True])]
    # A detection inside the crowd region (IoU over its own area = 1) is neither hit nor miss;
    # detections of category 9 (no truth) do not count.
    dets = [_dets([[45, 45, 10, 10], BOX, BOX], [0.9, 0.8, 0.99], [1, 1, 9])]
    got = detection.coco_map(truth, dets)
    assert got.map == pytest.approx(1.0) and list(got.per_category) == [1]
    # A category with truth and no detection scores 0.
    got = detection.coco_map([_one([BOX, BOX], [1, 2])], [_dets([BOX], [1.0], [1])])
    assert got.map == pytest.approx(0.5)


def _random_case(rng, num_images=5, num_categories=3):
    truth, dets = [], []
    for _ in range(num_images):
        k = rng.integers(1, 6)
        xy = rng.uniform(0, 80, (k, 2))
        gt = np.concatenate([xy, rng.uniform(5, 30, (k, 2))], 1)
        gl = rng.integers(1, num_categories + 1, k)
        crowd = rng.uniform(size=k) < 0.15
        # Detections: jittered truths (some relabelled) and random boxes.
        jitter = gt + rng.normal(0, 0.1, gt.shape) * gt[:, [2, 3, 2, 3]]
        jitter[:, 2:] = np.maximum(jitter[:, 2:], 1)
        extra = rng.integers(0, 4)
        rnd = np.concatenate([rng.uniform(0, 80, (extra, 2)), rng.uniform(5, 30, (extra, 2))], 1)
        db = np.concatenate([jitter, rnd])
        dl = np.concatenate([np.where(rng.uniform(size=k) < 0.2, rng.integers(1, num_categories + 1, k), gl),
                             rng.integers(1, num_categories + 1, extra)])
        truth.append(detection.ImageTruth(gt, gl, crowd))
        dets.append(detection.ImageDetections(db, rng.uniform(size=len(db)), dl))
    return truth, dets


def test_agrees_with_pycocotools(tmp_path, seed=0):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth, dets = _random_case(np.random.default_rng(seed))
    images, anns, results = [], [], []
    for i, (t, d) in enumerate(zip(truth, dets)):
        images.append({"id": i + 1, "width": 120, "height": 120, "file_name": f"{i}.png"})
        for box, label, crowd in zip(*t):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label),
                         "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": int(crowd)})
        for box, score, label in zip(*d):
            results.append({"image_id": i + 1, "category_id": int(label), "bbox": box.tolist(),
                            "score": float(score)})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    got = detection.coco_map(truth, dets)
    if seed == 0:
        assert 0.1 < got.map < 0.9  # A case that tests something.
    assert got.map == pytest.approx(evaluator.stats[0], abs=1e-12)
    assert got.map_50 == pytest.approx(evaluator.stats[1], abs=1e-12)
    assert got.map_75 == pytest.approx(evaluator.stats[2], abs=1e-12)
