"""Coarse-to-fine optical flow: the pyramid's parts, the levels, sequences of frames.

The parts (`downsample`, `upsample_flow`, `warp`) are checked against
per-pixel numpy loops, borders and odd sizes included; the whole pyramid
against stand-in models whose output is a known function of their input;
`levels=1` against the flow recorded before the pyramid existed; and the
shipped model on a real photograph (tests/data/flow/astronaut_160.png, a crop
of scikit-image's `astronaut`, NASA, public domain), moved further than it
resolves in one shot.
"""

import os

import numpy as np
import pytest

from perceiver import cli, media
from perceiver.tasks import flow as flow_lib

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "flow")
TILE = (8, 12)


def _clamp(i, n):
    return min(max(i, 0), n - 1)


def _bilinear_loop(image, x, y):
    """One bilinear sample with coordinates clamped to the image, written out."""
    h, w = image.shape[:2]
    x, y = min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    x1, y1 = _clamp(x0 + 1, w), _clamp(y0 + 1, h)
    return ((1 - fx) * (1 - fy) * image[y0, x0] + fx * (1 - fy) * image[y0, x1]
            + (1 - fx) * fy * image[y1, x0] + fx * fy * image[y1, x1])


# ---------------------------------------------------------------------------
# The parts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 10), (8, 9), (1, 5), (2, 3)])
def test_downsample_is_the_binomial_filter_between_pixel_pairs(shape):
    image = np.random.default_rng(0).uniform(0, 255, shape + (3,)).astype(np.float32)
    out = flow_lib.downsample(image)
    h, w = shape
    assert out.shape == ((h + 1) // 2, (w + 1) // 2, 3)
    taps = {-1: 1, 0: 3, 1: 3, 2: 1}
    expected = np.zeros(out.shape)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for dy, wy in taps.items():
                for dx, wx in taps.items():
                    expected[i, j] += wy * wx * image[_clamp(2 * i + dy, h), _clamp(2 * j + dx, w)]
    np.testing.assert_allclose(out, expected / 64, rtol=1e-6, atol=1e-4)


def test_downsample_halves_a_ramp_about_the_centres_of_pixel_pairs():
    # A linear image stays linear; coarse pixel i sits at fine coordinate 2i + 0.5.
    y, x = np.mgrid[:12, :16].astype(np.float32)
    out = flow_lib.downsample(np.stack([x, y, 3 * x - y], -1))
    i, j = np.mgrid[:6, :8].astype(np.float32)
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(out[..., 0][inner], (2 * j + 0.5)[inner], atol=1e-5)
    np.testing.assert_allclose(out[..., 1][inner], (2 * i + 0.5)[inner], atol=1e-5)


@pytest.mark.parametrize("shape", [(9, 13), (10, 12), (1, 2), (3, 1)])
def test_upsample_flow_doubles_size_and_values_at_the_inverse_geometry(shape):
    height, width = shape
    coarse = np.random.default_rng(1).normal(size=((height + 1) // 2, (width + 1) // 2, 2))
    out = flow_lib.upsample_flow(coarse, shape)
    assert out.shape == (height, width, 2) and out.dtype == np.float32
    expected = np.zeros((height, width, 2))
    for y in range(height):
        for x in range(width):
            # Fine pixel (x, y) is coarse (x - 0.5) / 2, (y - 0.5) / 2; the border clamps.
            expected[y, x] = 2 * _bilinear_loop(coarse, (x - 0.5) / 2, (y - 0.5) / 2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_upsample_flow_keeps_affine_flow_affine_away_from_the_border():
    # A flow linear in coarse coordinates is, once upsampled, linear in fine ones.
    i, j = np.mgrid[:5, :7].astype(np.float32)
    coarse = np.stack([0.5 * j - 0.25 * i + 1, 0.125 * i], -1)
    out = flow_lib.upsample_flow(coarse, (9, 13))  # odd: the last coarse pixel half used
    y, x = np.mgrid[:9, :13].astype(np.float32)
    xc, yc = (x - 0.5) / 2, (y - 0.5) / 2
    expected = 2 * np.stack([0.5 * xc - 0.25 * yc + 1, 0.125 * yc], -1)
    np.testing.assert_allclose(out[1:, 1:], expected[1:, 1:], atol=1e-5)
    with pytest.raises(ValueError, match=r"= \[6, 7, 2\] for shape \(11, 13\); got \(5, 7, 2\)"):
        flow_lib.upsample_flow(coarse, (11, 13))


def test_warp_samples_at_pixel_plus_flow_and_clamps_at_the_border():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 255, (7, 9, 3)).astype(np.float32)
    flow = rng.uniform(-4, 4, (7, 9, 2)).astype(np.float32)  # many points fall outside
    out = flow_lib.warp(image, flow)
    expected = np.zeros_like(out)
    for y in range(7):
        for x in range(9):
            expected[y, x] = _bilinear_loop(image, x + flow[y, x, 0], y + flow[y, x, 1])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)
    # Integer flow is an exact shift, the border repeated beyond the image.
    shifted = flow_lib.warp(image, np.broadcast_to(np.float32([2, -1]), (7, 9, 2)))
    padded = np.pad(image, [(1, 0), (0, 2), (0, 0)], mode="edge")
    np.testing.assert_array_equal(shifted, padded[:7, 2:])
    with pytest.raises(ValueError, match=r"\[7, 9, 2\]"):
        flow_lib.warp(image, flow[:6])


# ---------------------------------------------------------------------------
# The pyramid, with stand-in models
# ---------------------------------------------------------------------------


class ConstantResidual:
    """Predicts flow (1, -1) everywhere and records the tiles it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, tiles):
        self.calls.append(tiles.copy())
        flow = np.zeros(tiles.shape[:1] + tiles.shape[2:4] + (2,), np.float32)
        return flow + np.float32([1, -1])


@pytest.mark.parametrize("shape", [(37, 53), (40, 48)])
def test_each_level_doubles_the_flow_so_far_and_adds_the_residual(shape):
    model = ConstantResidual()
    estimator = flow_lib.OpticalFlow.from_function(model, TILE, min_overlap=2, batch_size=4)
    rng = np.random.default_rng(3)
    first, second = rng.integers(0, 256, (2,) + shape + (3,), dtype=np.uint8)
    flow = estimator(first, second, levels=3)
    # Residual (1, -1) at each of 3 levels: (1 + 2 + 4) (1, -1), borders included.
    np.testing.assert_array_equal(flow, np.broadcast_to(np.float32([7, -7]), shape + (2,)))
    # Every tile of every level is computed once: the counts of the three grids.
    sizes = [shape, ((shape[0] + 1) // 2, (shape[1] + 1) // 2)]
    sizes.append(((sizes[1][0] + 1) // 2, (sizes[1][1] + 1) // 2))
    counts = [len(estimator.tile_origins(*s)) for s in sizes]
    calls_per_level = [-(-c // 4) for c in counts]
    assert len(model.calls) == sum(calls_per_level)
    # Batches are 4 tiles, or a power of two for a level's last ones.
    assert {len(t) for t in model.calls} <= {1, 2, 4}
    # At the finest level (the last calls) frame 2 is warped by the flow of
    # the level above, (3, -3), upsampled: (6, -6), an exact shift of 6 px
    # left and down, its border repeated.
    one, two = (f.astype(np.float32) / 255 * 2 - 1 for f in (first, second))
    warped = np.pad(two, [(6, 0), (0, 6), (0, 0)], mode="edge")[: shape[0], 6:]
    finest = model.calls[-calls_per_level[0]:]
    tiles = np.concatenate(finest)[: counts[0]]
    for tile, (y, x) in zip(tiles, estimator.tile_origins(*shape)):
        window = (slice(y, y + TILE[0]), slice(x, x + TILE[1]))
        np.testing.assert_allclose(tile[0], one[window], atol=1e-6)  # frame 1 as it is
        np.testing.assert_allclose(tile[1], warped[window], atol=1e-6)


def _ramp_pair(shape, shift):
    """Frames whose channels hold x and y (frame 2 moved by `shift`), as floats in [0, 255]."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    scale = 2.0  # values per pixel; the frames reach the model scaled by 2 / 255

    def frame(dx, dy):
        return np.stack([(x - dx) * scale + 20, (y - dy) * scale + 20, np.full_like(x, 100)], -1)

    return frame(0, 0), frame(*shift), scale


def _oracle(scale, reach):
    """A model that reads each pixel's motion off ramp frames, resolving at most `reach` px."""

    def model(tiles):
        pixels = (tiles + 1.0) / 2.0 * 255.0
        motion = (pixels[:, 0, ..., :2] - pixels[:, 1, ..., :2]) / scale
        return np.clip(motion, -reach, reach).astype(np.float32)

    return model


def test_the_pyramid_recovers_motion_beyond_the_models_range():
    shape, shift = (64, 80), (6.5, -5.0)
    first, second, scale = _ramp_pair(shape, shift)
    estimator = flow_lib.OpticalFlow.from_function(
        _oracle(scale, 1.5), (16, 16), min_overlap=4, batch_size=8, max_flow=1.5
    )
    single = estimator(first, second, levels=1)
    np.testing.assert_allclose(single[20:-20, 20:-20], np.broadcast_to([1.5, -1.5], (24, 40, 2)), atol=1e-4)
    assert estimator.levels_for(*shape) == 3
    flow = estimator(first, second)
    # Exact away from the border, where warping repeats the edge instead of the ramp.
    np.testing.assert_allclose(flow[12:-12, 12:-12], np.broadcast_to(shift, (40, 56, 2)), atol=1e-3)


def test_levels_follow_from_image_size_and_trained_range():
    estimator = flow_lib.OpticalFlow.from_function(ConstantResidual(), TILE, min_overlap=2, max_flow=2.5)
    # Motions up to 1/8 of the longer side must come within 2.5 px at the
    # coarsest level, whose shorter side stays >= 16 px.
    assert estimator.levels_for(480, 640) == 5  # 80 px: 16x, capped at 30 x 40
    assert estimator.levels_for(500, 741) == 6  # 93 px: 37x would be 7 levels; 16 x 24 is the last
    assert estimator.levels_for(125, 185) == 4
    assert estimator.levels_for(16, 20) == 1  # 2.5 px: one level suffices
    assert estimator.levels_for(20, 200) == 1  # halving would make 10 px rows
    assert flow_lib.OpticalFlow.from_function(ConstantResidual(), TILE, min_overlap=2).levels_for(480, 640) == 1
    with pytest.raises(ValueError, match="levels must be an int >= 1"):
        estimator(np.zeros((9, 9, 3)), np.zeros((9, 9, 3)), levels=0)
    with pytest.raises(ValueError, match="max_flow must be a positive number"):
        flow_lib.OpticalFlow.from_function(ConstantResidual(), TILE, min_overlap=2, max_flow=-1.0)


# ---------------------------------------------------------------------------
# The shipped model on a real photograph
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo():
    return media.read_image(os.path.join(DATA, "astronaut_160.png")).astype(np.float32)


@pytest.fixture(scope="module")
def shipped():
    return flow_lib.OpticalFlow.from_pretrained(cli.flow._bundled_flow_model())


def test_levels_1_is_the_flow_recorded_before_the_pyramid(photo, shipped):
    # Recorded with the single-scale OpticalFlow of the pyramid's parent commit
    # (20fc596; tiles of 32 with overlap 8, one per call) and today's shipped
    # model: frame 2 is frame 1 moved by (-2, -1).
    a, b = photo[40:80, 50:106], photo[41:81, 52:108]
    recorded = np.load(os.path.join(DATA, "astronaut_levels1_flow.npy"))
    estimator = flow_lib.OpticalFlow.from_pretrained(
        cli.flow._bundled_flow_model(), min_overlap=8, batch_size=1
    )
    np.testing.assert_allclose(estimator(a, b, levels=1), recorded, rtol=0, atol=1e-5)


def test_shipped_model_recovers_a_translation_beyond_its_single_scale_range(photo, shipped):
    # The model resolves ~2.5 px in one shot; here the photo moves (6, -5).
    dx, dy, m = 6, -5, 16
    a = photo[m : m + 104, m : m + 128]
    b = photo[m - dy : m - dy + 104, m - dx : m - dx + 128]
    truth = np.float32([dx, dy])
    zero = float(np.hypot(dx, dy))

    def error(flow):
        return float(np.linalg.norm(flow - truth, axis=-1).mean())

    assert shipped.levels_for(104, 128) == 3
    assert error(shipped(a, b, levels=1)) > 0.6 * zero
    assert error(shipped(a, b)) < 0.2 * zero


# ---------------------------------------------------------------------------
# Sequences of frames
# ---------------------------------------------------------------------------


def test_sequence_is_each_consecutive_pair_with_tiles_batched_across_pairs():
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, (30, 40, 3)).astype(np.float32)
    frames = np.stack([np.roll(base, t, axis=1) for t in range(5)])
    model = ConstantResidual()
    estimator = flow_lib.OpticalFlow.from_function(model, TILE, min_overlap=2, batch_size=16)
    flows = estimator.sequence(frames, levels=2, pairs_per_batch=3)
    assert flows.shape == (4, 30, 40, 2) and flows.dtype == np.float32
    np.testing.assert_array_equal(flows, np.broadcast_to(np.float32([3, -3]), flows.shape))
    # 3 pairs, then 1: per level, their tiles share batches of 16.
    fine, coarse = len(estimator.tile_origins(30, 40)), len(estimator.tile_origins(15, 20))
    expected = []
    for pairs in (3, 1):
        for count in (coarse * pairs, fine * pairs):
            expected += [16] * (count // 16) + ([min(16, 1 << (count % 16 - 1).bit_length())] if count % 16 else [])
    assert [len(t) for t in model.calls] == expected
    # The same flows as pair by pair, from a generator of frames too.
    one = estimator(frames[1], frames[2], levels=2)
    np.testing.assert_array_equal(flows[1], one)
    streamed = list(estimator.iter_sequence(iter(frames), levels=2))
    np.testing.assert_array_equal(np.stack(streamed), flows)


def test_sequence_refuses_too_few_or_mixed_frames():
    estimator = flow_lib.OpticalFlow.from_function(ConstantResidual(), TILE, min_overlap=2)
    with pytest.raises(ValueError, match="at least 2 frames"):
        estimator.sequence(np.zeros((1, 9, 9, 3)))
    with pytest.raises(ValueError, match=r"frames\[2\] is \(9, 8, 3\)"):
        estimator.sequence([np.zeros((9, 9, 3))] * 2 + [np.zeros((9, 8, 3))])
    with pytest.raises(ValueError, match="pairs_per_batch must be >= 1"):
        estimator.sequence(np.zeros((3, 9, 9, 3)), pairs_per_batch=0)
