"""Flow pictures a person can read: a fixed colour scale, a colour key drawn in,
the demo's one figure, and pyramid levels checked against the image size.

Most tests run `perceiver flow` / `perceiver demo` with a stand-in model of
known, uniform flow (`OpticalFlow.from_function`), so that every expected
colour is worked out here from the Middlebury wheel's definition; one runs
the shipped model on two identical photographs, the case that used to be
drawn as saturated noise.
"""

import os

import numpy as np
import pytest

from perceiver import cli, media
from perceiver.tasks import flow as flow_lib

PHOTO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "flow", "astronaut_160.png")

# The Middlebury wheel's pure colours and where they start on it: segments of
# 15 (red to yellow), 6, 4, 11, 13 and 6 colours. Its code spreads positions
# 0..54 over the full turn, so a vector at angle t from +x towards +y (down)
# sits at position 54 t / (2 pi).
PURE = {
    0: (255, 0, 0), 15: (255, 255, 0), 21: (0, 255, 0), 25: (0, 255, 255), 36: (0, 0, 255), 49: (255, 0, 255)
}


def _stand_in(monkeypatch, motion=(0.0, 0.0), tile=(16, 16)):
    """`perceiver flow` and `demo` get a model whose flow is `motion` everywhere; returns its calls."""
    calls = []

    def tile_fn(tiles):
        calls.append(len(tiles))
        return np.broadcast_to(np.float32(motion), tiles.shape[:1] + tiles.shape[2:4] + (2,)).copy()

    estimator = flow_lib.OpticalFlow.from_function(tile_fn, tile, min_overlap=2, batch_size=8)
    monkeypatch.setattr(cli.flow, "_flow_estimator", lambda *args: estimator)
    return calls


def _pair(tmp_path, height=64, width=80):
    photo = media.read_image(PHOTO)
    media.write_image(tmp_path / "a.png", photo[:height, :width])
    media.write_image(tmp_path / "b.png", photo[1 : height + 1, :width])
    return str(tmp_path / "a.png"), str(tmp_path / "b.png")


# ---------------------------------------------------------------------------
# The colour scale
# ---------------------------------------------------------------------------


def test_identical_photos_are_drawn_near_white(tmp_path, offline, capsys, run_cli):
    """The shipped model's noise on a still pair stays pale on the fixed 10 px scale."""
    a, _ = _pair(tmp_path, 48, 64)
    out = tmp_path / "still.png"
    argv = ["flow", a, a, "-o", str(out), "--levels", "1", "--flo", str(tmp_path / "s.flo")]
    code, text, err = run_cli(*argv)
    assert code == 0, err
    assert "(1 pyramid level)" in text and "mean (dx, dy) = (" in text and "full colour: 10 px" in text
    picture = media.read_image(out).astype(int)
    flow = flow_lib.read_flo(tmp_path / "s.flo")
    longest = float(np.linalg.norm(flow, axis=-1).max())
    assert 0 < longest < 2.0  # noise, not motion
    # White minus at most (longest / 10) of the way to a pure colour, on
    # every channel; the key takes the bottom-right corner.
    free = picture[:24, :32]
    assert free.min() >= np.floor(255 * (1 - longest / 10)) and free.mean() > 245
    # Scaled by its own largest vector (the old default) the same flow reaches full colour.
    assert flow_lib.flow_to_color(flow, max_flow=None).min() == 0


@pytest.mark.parametrize("position", sorted(PURE))
def test_uniform_flow_has_the_wheels_colour_at_its_angle(tmp_path, offline, monkeypatch, capsys, position, run_cli):
    angle = 2 * np.pi * position / 54
    # Just inside the scale (a length of exactly 3.0 can round past it, to the darkened colour).
    motion = (2.995 * np.cos(angle), 2.995 * np.sin(angle))
    _stand_in(monkeypatch, motion)
    a, b = _pair(tmp_path)
    out = tmp_path / "f.png"
    code, _, err = run_cli("flow", a, b, "-o", str(out), "--levels", "1", "--max-flow", "3")
    assert code == 0, err
    picture = media.read_image(out).astype(int)
    np.testing.assert_allclose(picture[:24, :32], np.broadcast_to(PURE[position], (24, 32, 3)), atol=1)


def test_max_flow_sets_the_saturation_and_the_text_gives_the_mean_motion(
    tmp_path, offline, monkeypatch, capsys, run_cli
):
    # Straight down, 6 px: the wheel's yellow-orange, between positions 13 and 14.
    _stand_in(monkeypatch, (0.0, 6.0))
    a, b = _pair(tmp_path)
    pictures = {}
    for scale in ("6", "12", "4"):
        out = tmp_path / f"f{scale}.png"
        code, text, err = run_cli("flow", a, b, "-o", str(out), "--levels", "1", "--max-flow", scale)
        assert code == 0, err
        assert "mean (dx, dy) = (0.00, 6.00) px" in text and "(1 pyramid level)" in text
        assert f"drawn at full colour: {scale} px" in text
        pictures[scale] = media.read_image(out)[10, 10].astype(float)
    full = pictures["6"]
    assert full[0] == 255 and full[2] == 0 and 200 < full[1] < 255
    # At twice the scale the colour is halfway to white; past the scale it is darkened to 3/4.
    np.testing.assert_allclose(pictures["12"], np.floor(255 - (255 - full) / 2), atol=1)
    np.testing.assert_allclose(pictures["4"], np.floor(full * 0.75), atol=1)
    # The default scale is 10 px, and the Python keyword is the same option.
    code, text, _ = run_cli("flow", a, b, "-o", str(tmp_path / "d.png"), "--levels", "1")
    assert code == 0 and "drawn at full colour: 10 px" in text
    default = media.read_image(tmp_path / "d.png")[10, 10]
    np.testing.assert_allclose(default, np.floor(255 - (255 - full) * 0.6), atol=1)
    flow = np.broadcast_to(np.float32([0, 6]), (64, 80, 2))
    np.testing.assert_array_equal(
        media.read_image(tmp_path / "f12.png"), flow_lib.draw_flow(flow, max_flow=12)
    )


# ---------------------------------------------------------------------------
# The key
# ---------------------------------------------------------------------------


def test_the_key_is_drawn_in_the_corner_with_directions_and_its_scale():
    picture = flow_lib.draw_flow(np.zeros((96, 128, 2)), max_flow=5).astype(int)
    marked = np.argwhere((picture < 250).any(-1))
    top, left = marked.min(0)
    # Only the bottom-right corner is drawn on, less than half of each side.
    assert top >= 48 and left >= 64 and marked.max(0).tolist() == [93, 125]
    colourful = np.argwhere(picture.max(-1) - picture.min(-1) > 60)
    (y0, x0), (y1, x1) = colourful.min(0), colourful.max(0)
    assert y1 - y0 == x1 - x0 >= 14  # a disc, as wide as high
    cy, cx, r = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2
    at = lambda dx, dy: picture[int(round(cy + 0.8 * r * dy)), int(round(cx + 0.8 * r * dx))]
    right, down, left_, up = at(1, 0), at(0, 1), at(-1, 0), at(0, -1)
    # Motion to the right is red, down yellow-orange, left cyan, up blue-violet.
    assert right[0] > 240 and right[1] < 110 and right[2] < 110
    assert down[0] > 240 and down[1] > 180 and down[2] < 110
    assert left_[0] < 110 and left_[1] > 200 and left_[2] > 200
    assert up[2] > 240 and up[1] < 110
    # The centre (no motion) is white, and below the disc its scale is written in black.
    assert (at(0, 0) > 240).all()
    assert (picture[y1 + 2 :, x0 - 20 : x1 + 20] < 60).all(-1).sum() > 20
    # key=False, or a picture too small to hold it, is the plain colour coding.
    np.testing.assert_array_equal(flow_lib.draw_flow(np.zeros((96, 128, 2)), key=False), 255)
    small = np.random.default_rng(0).normal(size=(20, 30, 2))
    np.testing.assert_array_equal(flow_lib.draw_flow(small), flow_lib.flow_to_color(small))
    with pytest.raises(ValueError, match="max_flow must be a positive"):
        flow_lib.draw_flow(small, max_flow=0)


# ---------------------------------------------------------------------------
# The demo's figure
# ---------------------------------------------------------------------------


def test_demo_writes_one_figure_besides_its_files(tmp_path, offline, monkeypatch, capsys, run_cli):
    from perceiver import checkpoint
    from perceiver.train import synthetic_flow

    _stand_in(monkeypatch, (0.0, 0.0))  # zero flow: the error is the true motion
    out = tmp_path / "demo"
    code, text, err = run_cli("demo", "-o", str(out))
    assert code == 0, err
    for name in ("frame1.png", "frame2.png", "flow.png", "true_flow.png", "figure.png", "flow.flo"):
        assert (out / name).is_file(), name
    assert "figure.png" in text
    figure = media.read_image(out / "figure.png")
    # Panels of 128 x 96 enlarged 3x, three to a row with 12 px margins, under
    # titles of up to three lines 20 px high (text drawn twice size) + 4 px.
    title, panel_h, panel_w = 64, 288, 384
    assert figure.shape == (2 * (title + panel_h) + 3 * 12, 3 * panel_w + 4 * 12, 3)
    frame1 = media.read_image(out / "frame1.png")
    row1 = 12 + title
    np.testing.assert_array_equal(
        figure[row1 : row1 + panel_h, 12 : 12 + panel_w], np.kron(frame1, np.ones((3, 3, 1), np.uint8))
    )
    # The error map (row 2, column 3): white for 0, black at the truth's
    # largest motion; unscored pixels pale blue.
    scene = checkpoint.read_description(cli.flow._bundled_flow_model())["scene"]
    spec = synthetic_flow.FlowSceneSpec(image_shape=(96, 128), **scene)
    pair = synthetic_flow.make_pair(spec, seed=0, index=0)
    length = np.linalg.norm(pair["flow"], axis=-1)
    shade = np.round(255 * (1 - length / length.max()))
    expected = np.repeat(shade[..., None], 3, -1)
    expected[~pair["valid"]] = (150, 190, 255)
    row2, column3 = row1 + panel_h + 12 + title, 12 + 2 * (panel_w + 12)
    shown = figure[row2 : row2 + panel_h : 3, column3 : column3 + panel_w : 3]
    np.testing.assert_allclose(shown, expected, atol=1)
    # The titles are written: dark pixels above every panel.
    assert (figure[12 : 12 + title, 12 : 12 + panel_w] < 60).all(-1).sum() > 50


def test_a_failed_demo_leaves_no_folder_and_a_bad_seed_is_one_line(tmp_path, offline, monkeypatch, capsys, run_cli):
    _stand_in(monkeypatch)

    def full_disk(path, image):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(media, "write_image", full_disk)
    code, _, err = run_cli("demo", "-o", str(tmp_path / "new" / "demo"))
    assert code == 2 and "No space left on device" in err
    assert not (tmp_path / "new").exists()
    code, _, err = run_cli("demo", "-o", str(tmp_path / "d"), "--seed", "-1")
    assert code == 2 and err.strip().splitlines() == ["perceiver: error: --seed must be >= 0; got -1"]


# ---------------------------------------------------------------------------
# Levels against the image size
# ---------------------------------------------------------------------------


def test_too_many_levels_for_the_image_is_one_line_naming_the_limit(tmp_path, offline, monkeypatch, capsys, run_cli):
    calls = _stand_in(monkeypatch, tile=(32, 32))
    a, b = _pair(tmp_path, 120, 160)
    # 120 px rows halve to 60, 30 and 15: the 4th level would be under 16 px.
    out = tmp_path / "f.png"
    code, _, err = run_cli("flow", a, b, "-o", str(out), "--levels", "4")
    assert code == 2 and not calls and not out.exists()
    assert err.strip().splitlines() == [
        "perceiver: error: --levels must be at most 3 for these 160x120 frames (each level halves "
        "them, and the coarsest must keep sides of 16 px or more); got 4"
    ]
    code, text, err = run_cli("flow", a, b, "-o", str(out), "--levels", "3")
    assert code == 0 and "(3 pyramid levels)" in text, err


def test_python_refuses_levels_beyond_the_image_and_bad_sizes():
    estimator = flow_lib.OpticalFlow.from_function(lambda t: t[:, 0, ..., :2], (32, 32))
    frame = np.zeros((240, 320, 3), np.uint8)
    # The 320 x 240 pair: 240 -> 120 -> 60 -> 30 (15 would be under 16 px).
    assert estimator.max_levels(240, 320) == 4
    with pytest.raises(ValueError, match=r"levels must be at most 4 for a 320x240 image .*; got 50\.$"):
        estimator(frame, frame, levels=50)
    with pytest.raises(ValueError, match="at most 4"):
        estimator.sequence(np.stack([frame] * 3), levels=9)
    # A model with 8 px tiles reads 8 px levels: 240 -> ... -> 15 -> 8.
    small_tiles = flow_lib.OpticalFlow.from_function(lambda t: t[:, 0, ..., :2], (8, 8), min_overlap=2)
    assert small_tiles.max_levels(240, 320) == 6 and small_tiles.max_levels(5, 500) == 1
    # The automatic choice stays within the limit.
    ranged = flow_lib.OpticalFlow.from_function(lambda t: t[:, 0, ..., :2], (32, 32), max_flow=0.5)
    for shape in ((240, 320), (17, 900), (1000, 40)):
        assert 1 <= ranged.levels_for(*shape) <= ranged.max_levels(*shape)
    with pytest.raises(ValueError, match="height must be >= 1; got 0"):
        estimator.max_levels(0, 10)
    with pytest.raises(ValueError, match="total must be a number of frames"):
        next(estimator.iter_sequence([frame, frame], total=-1))
    with pytest.raises(ValueError, match="truth must have the flow's shape"):
        flow_lib.flow_figure(frame, frame, np.zeros((240, 320, 2)), truth=np.zeros((240, 321, 2)))
