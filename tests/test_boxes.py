"""perceiver.boxes: formats, IoU/GIoU against hand values and loops, Hungarian against brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import boxes


def _loop_giou(a, b):
    """GIoU of two xyxy boxes, written out in plain Python."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    c = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (c - union) / c


def test_formats_round_trip_and_hand_values():
    xyxy = np.array([[1.0, 2.0, 5.0, 10.0]])
    np.testing.assert_allclose(boxes.xyxy_to_cxcywh(xyxy), [[3, 6, 4, 8]])
    np.testing.assert_allclose(boxes.xyxy_to_xywh(xyxy), [[1, 2, 4, 8]])
    np.testing.assert_allclose(boxes.cxcywh_to_xyxy(boxes.xyxy_to_cxcywh(xyxy)), xyxy)
    np.testing.assert_allclose(boxes.xywh_to_xyxy(boxes.xyxy_to_xywh(xyxy)), xyxy)
    norm = boxes.normalize(xyxy, 10, 20)
    np.testing.assert_allclose(norm, [[0.1, 0.1, 0.5, 0.5]])
    np.testing.assert_allclose(boxes.to_pixels(norm, 10, 20), xyxy)
    assert isinstance(boxes.xyxy_to_cxcywh(jnp.asarray(xyxy)), jax.Array)
    np.testing.assert_allclose(boxes.area(xyxy), [32.0])
    np.testing.assert_allclose(boxes.area(np.array([[5.0, 0, 1, 1]])), [0.0])  # Inverted.


def test_iou_and_giou_hand_values():
    a = np.array([0.0, 0, 2, 2])
    # Half-overlapping: inter 2, union 6, enclosing 3x2 = 6.
    assert boxes.iou(a, np.array([1.0, 0, 3, 2])) == pytest.approx(1 / 3)
    assert boxes.giou(a, np.array([1.0, 0, 3, 2])) == pytest.approx(1 / 3)
    # Disjoint: IoU 0, enclosing 4x2 = 8, union 8... (0 - (8 - 8) / 8) = 0; farther: negative.
    assert boxes.giou(a, np.array([2.0, 0, 4, 2])) == pytest.approx(0.0)
    assert boxes.giou(a, np.array([4.0, 0, 6, 2])) == pytest.approx(0 - (12 - 8) / 12)
    assert boxes.giou(a, a) == pytest.approx(1.0)


def test_pairwise_matches_a_loop_in_numpy_and_jax():
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 10, (2, 5, 2))
    a = np.concatenate([lo[0], lo[0] + rng.uniform(0.5, 5, (5, 2))], -1)
    b = np.concatenate([lo[1][:4], lo[1][:4] + rng.uniform(0.5, 5, (4, 2))], -1)
    want = np.array([[_loop_giou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(boxes.pairwise_iou(a, b), want[..., 0], rtol=1e-12)
    np.testing.assert_allclose(boxes.pairwise_giou(a, b), want[..., 1], rtol=1e-12)
    got = jax.jit(boxes.pairwise_giou)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), want[..., 1], rtol=1e-5, atol=1e-6)


def test_zero_area_boxes_give_no_nan_in_values_or_gradients():
    pred = jnp.array([[0.0, 0, 0, 0], [0.2, 0.2, 0.2, 0.6], [0.1, 0.1, 0.5, 0.5]])
    target = jnp.zeros((3, 4))  # Padding: all zeros.

    def loss(p):
        g = boxes.giou(p, target)
        return (g + boxes.iou(p, target)).sum(), g

    (value, g), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(pred)
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
    assert float(g[0]) == 0.0
    with np.errstate(all="raise"):  # numpy too: no division warnings.
        assert boxes.giou(np.zeros(4), np.zeros(4)) == 0.0


def _brute_force(cost):
    n, m = cost.shape
    if n <= m:
        return min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
    return _brute_force(cost.T)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 4), (5, 5), (2, 5), (5, 3), (4, 6)])
def test_hungarian_matches_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(10):
        # Integer costs make ties common; the optimum's value is still unique.
        cost = rng.integers(0, 5, shape).astype(float) if trial % 2 else rng.normal(size=shape)
        rows, cols = boxes.hungarian(cost)
        assert len(rows) == min(shape) and len(set(cols.tolist())) == len(cols)
        assert np.all(np.diff(rows) > 0)
        assert cost[rows, cols].sum() == pytest.approx(_brute_force(cost))


def test_hungarian_matches_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(1)
    for shape in [(20, 20), (7, 30), (30, 9)]:
        cost = rng.uniform(size=shape)
        rows, cols = boxes.hungarian(cost)
        r2, c2 = optimize.linear_sum_assignment(cost)
        assert cost[rows, cols].sum() == pytest.approx(cost[r2, c2].sum())


def test_hungarian_edge_cases():
    rows, cols = boxes.hungarian(np.zeros((0, 3)))
    assert rows.shape == cols.shape == (0,)
    with pytest.raises(ValueError, match="finite"):
        boxes.hungarian(np.array([[np.nan]]))


def _example():
    """Two examples, 4 queries, up to 2 targets (the second example has one)."""
    logits = np.full((2, 4, 3), -5.0)
    pred = np.tile(np.array([0.5, 0.5, 0.1, 0.1]), (2, 4, 1))
    # Example 0: query 2 predicts target 0 (class 1 at (0.2, 0.2)), query 0 target 1.
    logits[0, 2, 1] = 5.0
    pred[0, 2] = [0.2, 0.2, 0.2, 0.2]
    logits[0, 0, 0] = 5.0
    pred[0, 0] = [0.7, 0.7, 0.2, 0.3]
    logits[1, 3, 0] = 5.0
    pred[1, 3] = [0.4, 0.6, 0.3, 0.3]
    labels = np.array([[1, 0], [0, 7]])
    targets = np.array([[[0.2, 0.2, 0.2, 0.2], [0.7, 0.7, 0.2, 0.3]], [[0.4, 0.6, 0.3, 0.3], [0, 0, 0, 0]]])
    mask = np.array([[True, True], [True, False]])
    return logits, pred, labels, targets, mask


def test_match_finds_the_obvious_queries_and_agrees_with_brute_force():
    logits, pred, labels, targets, mask = _example()
    matched = boxes.match(logits, pred, labels, targets, mask)
    np.testing.assert_array_equal(matched, [[2, 0], [3, -1]])
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(1, 5, 4))
    pred = rng.uniform(0.2, 0.8, (1, 5, 4))
    labels = rng.integers(0, 3, (1, 3))
    targets = rng.uniform(0.2, 0.8, (1, 3, 4))
    matched = boxes.match(logits, pred, labels, targets, np.ones((1, 3), bool))[0]
    cost = boxes.matching_cost(logits[0], pred[0], labels[0], targets[0])
    assert cost[matched, np.arange(3)].sum() == pytest.approx(_brute_force(cost.T))


def test_match_in_jit_and_query_targets():
    logits, pred, labels, targets, mask = _example()

    @jax.jit
    def run(logits, pred, *rest):
        matched = boxes.match_in_jit(logits, pred, *rest)
        # The callback's inputs are stopped: a loss through it still has a gradient.
        grad = jax.grad(lambda p: boxes.match_in_jit(logits, p, *rest).sum() * 0.0 + p.sum())(pred)
        return matched, boxes.query_targets(matched, 4), grad

    matched, per_query, grad = run(*(jnp.asarray(x) for x in (logits, pred, labels, targets, mask)))
    np.testing.assert_array_equal(np.asarray(matched), [[2, 0], [3, -1]])
    np.testing.assert_array_equal(np.asarray(per_query), [[1, -1, 0, -1], [-1, -1, -1, 0]])
    assert np.isfinite(np.asarray(grad)).all()
