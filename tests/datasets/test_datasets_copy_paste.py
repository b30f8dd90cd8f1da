"""perceiver.datasets.copy_paste: boxes are exactly the pasted pixels' extent; files are deterministic."""

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from perceiver.datasets import coco, copy_paste  # noqa: E402


def test_boxes_are_the_exact_extent_of_the_pasted_pixels():
    # On a flat grey photo every changed pixel is a digit's: the boxes, computed here
    # independently from the changed pixels, must be the ones compose reports.
    rng = np.random.default_rng(0)
    photo = np.full((50, 60, 3), 128, np.uint8)
    scans = np.zeros((2, 8, 8))
    scans[0, 1:7, 3:5] = 1.0  # A "1": a bar.
    scans[1, 1:7, 1:7] = 1.0  # A block.
    for _ in range(5):
        image, boxes, labels = copy_paste.compose(rng, photo, scans, np.array([1, 7]), 48, max_overlap=0.0)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert 1 <= len(boxes) <= 4 and set(labels.tolist()) <= {1, 7}
        changed = (image != 128).any(-1)
        covered = np.zeros_like(changed)
        for x, y, w, h in boxes.astype(int):
            inside = changed[y:y + h, x:x + w]
            # Tight: every edge row and column of the box holds a changed pixel.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y:y + h, x:x + w] = True
        assert not (changed & ~covered).any()


def test_the_set_is_written_as_coco_and_is_deterministic(tmp_path):
    first = copy_paste.make_copy_paste_set(tmp_path / "a", ["coffee"], 2, size=40, seed=3)
    again = copy_paste.make_copy_paste_set(tmp_path / "b", ["coffee"], 2, size=40, seed=3)
    one, two = coco.read_coco(first), coco.read_coco(again)
    assert [c[1] for c in one.categories] == list("0123456789")
    for a, b, image in zip(one.annotations, two.annotations, one.images):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert len(a.boxes) >= 1 and (image.width, image.height) == (40, 40)
    for a, b in zip(one.images, two.images):
        assert open(a.path, "rb").read() == open(b.path, "rb").read()


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown photo 'lena'.*astronaut"):
        copy_paste.load_photo("lena")
    with pytest.raises(ValueError, match="digit_split"):
        copy_paste._digits("test")
