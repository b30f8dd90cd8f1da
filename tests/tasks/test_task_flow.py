"""Optical flow as a library call: tiling, stitching, .flo files, colours, EPE."""

import struct

import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint, models
from perceiver.tasks import flow as flow_lib

TILE = (12, 16)
SMALL_SIZES = ref.SMALL_FACTORIES["flow"][1]


def _coordinate_images(height, width):
    """Two uint8 frames whose pixels hold their own (y, x); channel 2 marks real pixels."""
    y, x = np.mgrid[:height, :width]
    image = np.stack([y, x, np.full_like(y, 200)], -1).astype(np.uint8)
    return image, image.copy()


def _decode(tiles):
    """The (y, x) each tile pixel came from, and which tiles are real (not padding)."""
    pixels = np.rint((tiles[:, 0] + 1.0) / 2.0 * 255.0).astype(int)  # frame 1
    return pixels[..., 0], pixels[..., 1], pixels[:, 0, 0, 2] == 200


def _known_flow(y, x):
    """The flow the fake model returns: a fixed function of the global position."""
    return np.stack([0.25 * x - 1.0, -0.5 * y + 2.0], -1)


class CoordinateModel:
    """A stand-in model: flow = `_known_flow` of each pixel's global position.

    Records the batch shapes it was called with and the origins of the real
    tiles it saw.
    """

    def __init__(self):
        self.batch_shapes = []
        self.origins = []

    def __call__(self, tiles):
        assert tiles.dtype == np.float32
        self.batch_shapes.append(tiles.shape)
        y, x, real = _decode(tiles)
        self.origins += [(int(y[i, 0, 0]), int(x[i, 0, 0])) for i in np.flatnonzero(real)]
        return _known_flow(y, x).astype(np.float32)


def _blend(origins, tile_flows, height, width):
    """Tile flows `[N, h, w, 2]` blended as in DeepMind's notebook: a pixel's
    weight in a tile is 1 + its distance to the tile's nearest edge."""
    total = np.zeros((height, width, 2))
    weight_sum = np.zeros((height, width))
    y, x = np.mgrid[:height, :width]
    for (top, left), tile_flow in zip(origins, tile_flows):
        dy, dx = y - top, x - left
        inside = (dy >= 0) & (dy < TILE[0]) & (dx >= 0) & (dx < TILE[1])
        weight = np.minimum.reduce([dy + 1, TILE[0] - dy, dx + 1, TILE[1] - dx])
        weight = np.where(inside, weight, 0)
        padded = np.zeros((height, width, 2))
        padded[top : top + TILE[0], left : left + TILE[1]] = tile_flow
        total += weight[..., None] * padded
        weight_sum += weight
    return total / weight_sum[..., None]


def _estimator(tile_fn, batch_size=5, min_overlap=4):
    return flow_lib.OpticalFlow.from_function(
        tile_fn, TILE, min_overlap=min_overlap, batch_size=batch_size
    )


# ---------------------------------------------------------------------------
# Tiling and stitching
# ---------------------------------------------------------------------------


def test_stitched_flow_equals_a_position_consistent_model():
    model = CoordinateModel()
    estimator = _estimator(model, batch_size=5)
    first, second = _coordinate_images(30, 40)
    flow = estimator(first, second)
    y, x = np.mgrid[:30, :40]
    assert flow.dtype == np.float32 and flow.shape == (30, 40, 2)
    np.testing.assert_allclose(flow, _known_flow(y, x), rtol=0, atol=1e-5)
    # Rows start at 0, 8, 16 and 18 (flush with the bottom), columns at 0, 12
    # and 24: 12 distinct tiles, each computed once, in 2 batches of 5 and
    # one of the 2 left (a power of two: few batch shapes to compile).
    origins = [(a, b) for a in (0, 8, 16, 18) for b in (0, 12, 24)]
    assert estimator.tile_origins(30, 40) == origins
    assert sorted(model.origins) == origins
    assert model.batch_shapes == [(5, 2) + TILE + (3,)] * 2 + [(2, 2) + TILE + (3,)]


def test_tiles_are_blended_with_weights_falling_off_to_their_borders():
    # Each tile's flow is a constant, its index, so the stitched flow is the
    # blend itself.
    calls = []

    def tile_index_model(tiles):
        start = sum(len(c) for c in calls)
        calls.append(tiles)
        values = np.arange(start, start + len(tiles), dtype=np.float32)
        return np.broadcast_to(values[:, None, None, None], (len(tiles),) + TILE + (2,)).copy()

    estimator = _estimator(tile_index_model, batch_size=4)
    height, width = 26, 30
    first, second = _coordinate_images(height, width)
    flow = estimator(first, second)

    count = len(estimator.tile_origins(height, width))
    tile_flows = np.broadcast_to(np.arange(count)[:, None, None, None], (count,) + TILE + (2,))
    expected = _blend(estimator.tile_origins(height, width), tile_flows, height, width)[..., 0]
    np.testing.assert_allclose(flow[..., 0], expected, rtol=1e-6)
    np.testing.assert_allclose(flow[..., 1], expected, rtol=1e-6)


def test_an_image_of_exactly_the_tile_size_is_one_tile():
    model = CoordinateModel()
    estimator = _estimator(model, batch_size=8)
    flow = estimator(*_coordinate_images(*TILE))
    assert model.batch_shapes == [(1, 2) + TILE + (3,)]
    assert model.origins == [(0, 0)]
    y, x = np.mgrid[: TILE[0], : TILE[1]]
    np.testing.assert_allclose(flow, _known_flow(y, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 7), (8, 40), (30, 9)])
def test_images_smaller_than_a_tile_are_padded_and_cropped_back(shape):
    model = CoordinateModel()
    estimator = _estimator(model, batch_size=2)
    flow = estimator(*_coordinate_images(*shape))
    assert flow.shape == shape + (2,)
    y, x = np.mgrid[: shape[0], : shape[1]]
    np.testing.assert_allclose(flow, _known_flow(y, x), rtol=0, atol=1e-5)
    assert len(model.origins) == len(set(model.origins)) == len(estimator.tile_origins(*shape))


def test_published_tiles_on_a_sintel_frame_match_the_notebooks_grid():
    # DeepMind's notebook covers a 436 x 1024 Sintel frame with these six
    # 368 x 496 tiles (rows every 348 pixels, columns every 476, the last
    # flush with the border).
    estimator = flow_lib.OpticalFlow.from_function(CoordinateModel(), (368, 496))
    assert estimator.tile_origins(436, 1024) == [
        (0, 0), (0, 476), (0, 528), (68, 0), (68, 476), (68, 528)
    ]
    assert estimator.min_overlap == 20 and estimator.batch_size == 1


def test_frames_reach_the_model_scaled_to_unit_range():
    seen = []

    def model(tiles):
        seen.append(tiles)
        return np.zeros((len(tiles),) + TILE + (2,), np.float32)

    first = np.zeros(TILE + (3,), np.uint8)
    second = np.full(TILE + (3,), 255, np.uint8)
    _estimator(model)(first, second)
    np.testing.assert_array_equal(seen[0][0, 0], -1.0)
    np.testing.assert_array_equal(seen[0][0, 1], 1.0)
    # Float images in [0, 255] give the same flow as uint8.
    estimator = _estimator(CoordinateModel())
    images = _coordinate_images(20, 20)
    np.testing.assert_array_equal(
        estimator(*images), estimator(*(i.astype(np.float64) for i in images))
    )


def test_bad_arguments_fail_early():
    estimator = _estimator(CoordinateModel())
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        estimator(image, np.zeros((20, 21, 3), np.uint8))
    with pytest.raises(ValueError, match=r"image1 must be an RGB image \[H, W, 3\]"):
        estimator(np.zeros((20, 20)), image)
    with pytest.raises(TypeError, match="image2 must be uint8"):
        estimator(image, image.astype(bool))
    with pytest.raises(ValueError, match="non-finite"):
        estimator(image, np.full((20, 20, 3), np.nan))
    with pytest.raises(ValueError, match="min_overlap must be in"):
        _estimator(CoordinateModel(), min_overlap=12)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        _estimator(CoordinateModel(), batch_size=0)
    wrong = _estimator(lambda tiles: np.zeros((len(tiles), 3, 3, 2)))
    with pytest.raises(ValueError, match="returned shape"):
        wrong(image, image)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])  # 1e39 is Inf in float32.
def test_non_finite_images_are_refused_before_any_tile(bad):
    calls = []
    estimator = _estimator(lambda tiles: calls.append(tiles) or np.zeros(tiles.shape[:-2] + (2,)))
    image = np.zeros((20, 20, 3))
    broken = image.copy()
    broken[3, 4, :2] = bad
    with pytest.raises(ValueError, match=r"^image1 has 2 non-finite values \(NaN or Inf\)\.$"):
        estimator(broken, image)
    with pytest.raises(ValueError, match=r"^image2 has 2 non-finite values"):
        estimator(image, broken)
    assert not calls


# ---------------------------------------------------------------------------
# The real (small) model
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_estimator():
    return flow_lib.OpticalFlow.from_pretrained(
        ref.checkpoint_path("flow"), min_overlap=4, batch_size=4, **SMALL_SIZES
    )


def test_small_model_on_one_tile_equals_the_model_and_the_reference(small_estimator):
    inputs, reference_out = ref.recorded("flow")
    frames = inputs["images"][0]  # [2, 12, 16, 3] in [-1, 1]
    pixels = (frames.astype(np.float64) + 1.0) / 2.0 * 255.0
    flow = small_estimator(pixels[0], pixels[1])

    model = models.optical_flow(**SMALL_SIZES)
    params, state = checkpoint.load(ref.checkpoint_path("flow"))
    normalised = (pixels / 255.0 * 2.0 - 1.0).astype(np.float32)
    direct, _ = model.apply(params, state, None, normalised[None])
    np.testing.assert_allclose(flow, np.asarray(direct)[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(flow, reference_out[0], rtol=0, atol=1e-4)


def test_small_model_on_an_image_of_several_tiles(small_estimator):
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    second = np.roll(first, 1, axis=1)
    flow = small_estimator(first, second)
    assert flow.shape == (20, 30, 2) and flow.dtype == np.float32

    # The same tiles through the model directly, blended independently.
    origins = [(0, 0), (0, 12), (0, 14), (8, 0), (8, 12), (8, 14)]
    assert small_estimator.tile_origins(20, 30) == origins
    frames = np.stack([first, second]).astype(np.float32) / 255.0 * 2.0 - 1.0
    tiles = np.stack([frames[:, y : y + TILE[0], x : x + TILE[1]] for y, x in origins])
    model = models.optical_flow(**SMALL_SIZES)
    tile_flows, _ = model.apply(small_estimator.params, small_estimator.state, None, tiles)
    expected = _blend(origins, np.asarray(tile_flows), 20, 30)
    np.testing.assert_allclose(flow, expected, rtol=0, atol=1e-5)


def test_constructor_checks_parameters_and_from_pretrained_checks_the_name():
    params, state = checkpoint.load(ref.checkpoint_path("flow"))
    estimator = flow_lib.OpticalFlow(params, state, min_overlap=4, **SMALL_SIZES)
    assert estimator.tile_shape == tuple(SMALL_SIZES["image_shape"])
    params = dict(params)
    params.pop("flow_decoder/~/basic_decoder/output")
    with pytest.raises(checkpoint.CheckpointError, match="missing flow_decoder"):
        flow_lib.OpticalFlow(params, state, min_overlap=4, **SMALL_SIZES)
    with pytest.raises(ValueError, match="not an optical-flow one"):
        flow_lib.OpticalFlow.from_pretrained("mlm")
    with pytest.raises(FileNotFoundError):
        flow_lib.OpticalFlow.from_pretrained("/no/such/flow.pystate", min_overlap=4, **SMALL_SIZES)


# ---------------------------------------------------------------------------
# .flo files
# ---------------------------------------------------------------------------


def test_flo_round_trip_and_layout(tmp_path):
    flow = np.random.default_rng(1).normal(size=(5, 7, 2)).astype(np.float32)
    flow_lib.write_flo(tmp_path / "a.flo", flow)
    np.testing.assert_array_equal(flow_lib.read_flo(tmp_path / "a.flo"), flow)
    data = (tmp_path / "a.flo").read_bytes()
    assert data[:12] == b"PIEH" + struct.pack("<ii", 7, 5)
    assert struct.unpack("<fff", data[12:24]) == tuple(flow[0, 0].tolist() + [flow[0, 1, 0]])
    assert len(data) == 12 + 5 * 7 * 2 * 4


def test_bad_flo_files(tmp_path):
    path = tmp_path / "bad.flo"
    path.write_bytes(struct.pack("<fii", 1.0, 2, 2) + bytes(32))
    with pytest.raises(ValueError, match="magic number"):
        flow_lib.read_flo(path)
    path.write_bytes(b"PIEH" + struct.pack("<ii", 2, 2) + bytes(31))
    with pytest.raises(ValueError, match="holds 31 bytes"):
        flow_lib.read_flo(path)
    path.write_bytes(b"PIEH" + struct.pack("<ii", -3, 2))
    with pytest.raises(ValueError, match="width -3"):
        flow_lib.read_flo(path)
    path.write_bytes(b"PIE")
    with pytest.raises(ValueError, match="header"):
        flow_lib.read_flo(path)
    with pytest.raises(FileNotFoundError, match="none.flo"):
        flow_lib.read_flo(tmp_path / "none.flo")
    with pytest.raises(ValueError, match=r"\[H, W, 2\]"):
        flow_lib.write_flo(tmp_path / "x.flo", np.zeros((4, 4, 3)))


# ---------------------------------------------------------------------------
# Colour coding
# ---------------------------------------------------------------------------


def test_color_wheel_has_the_middlebury_segments():
    wheel = flow_lib.color_wheel()
    assert wheel.shape == (55, 3)
    # Segment starts: red, yellow, green, cyan, blue, magenta.
    starts = {0: (255, 0, 0), 15: (255, 255, 0), 21: (0, 255, 0), 25: (0, 255, 255),
              36: (0, 0, 255), 49: (255, 0, 255)}
    for index, color in starts.items():
        np.testing.assert_array_equal(wheel[index], color)
    np.testing.assert_array_equal(wheel[1:15, 1], np.floor(255 * np.arange(1, 15) / 15))


def test_flow_to_color_on_known_vectors():
    vectors = np.array([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]],
                        [[0.0, 0.0], [0.5, 0.0], [2.0, -0.0], [np.nan, 0.0]]])
    colors = flow_lib.flow_to_color(vectors, max_flow=1.0)
    assert colors.dtype == np.uint8 and colors.shape == (2, 4, 3)
    # +x is the wheel's red; +y halfway between wheel colours 13 and 14;
    # -x is colour 27; -y halfway between 40 and 41.
    wheel = flow_lib.color_wheel()
    np.testing.assert_array_equal(colors[0, 0], (255, 0, 0))
    np.testing.assert_allclose(colors[0, 1], (wheel[13] + wheel[14]) / 2, atol=1)
    np.testing.assert_array_equal(colors[0, 2], wheel[27])
    np.testing.assert_allclose(colors[0, 3], (wheel[40] + wheel[41]) / 2, atol=1)
    np.testing.assert_array_equal(colors[1, 0], (255, 255, 255))  # no motion: white
    np.testing.assert_array_equal(colors[1, 1], (255, 127, 127))  # half length: paler
    np.testing.assert_array_equal(colors[1, 2], (191, 0, 0))  # beyond max_flow: darker
    np.testing.assert_array_equal(colors[1, 3], (0, 0, 0))  # unknown: black


def test_flow_to_color_normalises_by_the_largest_vector_when_asked():
    flow = np.zeros((3, 4, 2))
    flow[1, 2] = (6.0, 0.0)
    flow[0, 0] = (3.0, 0.0)
    colors = flow_lib.flow_to_color(flow, max_flow=None)
    np.testing.assert_array_equal(colors[1, 2], (255, 0, 0))
    np.testing.assert_array_equal(colors[0, 0], (255, 127, 127))
    np.testing.assert_array_equal(flow_lib.flow_to_color(np.zeros((2, 2, 2)), max_flow=None), 255)
    # By default the scale is fixed at 10 px: 6 px is 6/10 of the way from white to red.
    np.testing.assert_array_equal(flow_lib.flow_to_color(flow)[1, 2], (255, 102, 102))
    with pytest.raises(TypeError, match="max_flow must be a number"):
        flow_lib.flow_to_color(flow, max_flow="10")
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        flow_lib.flow_to_color(np.zeros((2, 2, 3)))


# ---------------------------------------------------------------------------
# End-point error
# ---------------------------------------------------------------------------


def test_end_point_error_against_numpy():
    rng = np.random.default_rng(2)
    pred, target = rng.normal(size=(2, 6, 5, 2))
    distances = np.sqrt(((pred - target) ** 2).sum(-1))
    assert flow_lib.end_point_error(pred, target) == pytest.approx(distances.mean())
    valid = rng.random((6, 5)) > 0.5
    assert flow_lib.end_point_error(pred, target, valid) == pytest.approx(distances[valid].mean())
    assert flow_lib.end_point_error(np.array([[3.0, 4.0]]), np.zeros((1, 2))) == 5.0
    with pytest.raises(ValueError, match="same shape"):
        flow_lib.end_point_error(pred, target[:5])
    with pytest.raises(ValueError, match="no pixels"):
        flow_lib.end_point_error(pred, target, np.zeros((6, 5)))
