"""perceiver.datasets.coco: round trip, and one-line errors naming the file and the record."""

import json

import numpy as np
import pytest

from perceiver.datasets import coco


def _valid(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(b"x")
    return {
        "images": [
            {"id": 1, "file_name": "img/a.png", "width": 40, "height": 30},
            {"id": 7, "file_name": "img/b.png", "width": 20, "height": 20},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40.4, 30], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 5, "bbox": [1.5, 2, 3, 4]},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [5, 5, 5, 5], "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
    }


def _write(tmp_path, data):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_read_resolves_paths_and_groups_annotations_per_image(tmp_path):
    got = coco.read_coco(_write(tmp_path, _valid(tmp_path)))
    assert [(im.id, im.width, im.height) for im in got.images] == [(1, 40, 30), (7, 20, 20)]
    assert got.images[0].path == str((tmp_path / "img" / "a.png").resolve())
    boxes, cats, crowd = got.annotations[0]
    np.testing.assert_allclose(boxes, [[0, 0, 40.4, 30], [1.5, 2, 3, 4], [5, 5, 5, 5]])
    assert cats.tolist() == [3, 5, 3] and crowd.tolist() == [False, False, True]
    assert got.annotations[1].boxes.shape == (0, 4)
    assert got.categories == [(3, "cat"), (5, "dog")]


def test_write_then_read_round_trips(tmp_path):
    first = coco.read_coco(_write(tmp_path, _valid(tmp_path)))
    out = tmp_path / "sub" / "copy.json"
    out.parent.mkdir()
    coco.write_coco(out, first)
    again = coco.read_coco(out)
    assert again.images == first.images and again.categories == first.categories
    for a, b in zip(again.annotations, first.annotations):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert json.loads(out.read_text())["images"][0]["file_name"] == "../img/a.png"
    assert [p.name for p in out.parent.iterdir()] == ["copy.json"]  # No temporary left.


def _edit(change):
    def apply(data):
        change(data)
        return data
    return apply


CASES = [
    ("not json", lambda d: "{nope", r"ann\.json: is not JSON"),
    ("not coco", lambda d: [1, 2], r"is not a COCO annotation file: no 'images'"),
    ("missing key", _edit(lambda d: d["annotations"][1].pop("bbox")), r"annotation 1 \(id 11\) lacks bbox"),
    ("image key", _edit(lambda d: d["images"][1].pop("width")), r"image 1 \(id 7\) lacks width"),
    ("x < 0", _edit(lambda d: d["annotations"][1].update(bbox=[-1, 0, 2, 2])), r"annotation 1 \(id 11\).*outside its image 1 of 40x30"),
    ("past edge", _edit(lambda d: d["annotations"][0].update(bbox=[0, 0, 40.6, 3])), r"annotation 0 \(id 10\).*outside"),
    ("zero area", _edit(lambda d: d["annotations"][2].update(bbox=[1, 1, 0, 3])), r"annotation 2 \(id 12\).*zero or negative area"),
    ("bad box", _edit(lambda d: d["annotations"][2].update(bbox=[1, 1, 3])), r"annotation 2 \(id 12\) has bbox \[1, 1, 3\]"),
    ("unknown image", _edit(lambda d: d["annotations"][1].update(image_id=99)), r"annotation 1 \(id 11\) has image_id 99"),
    ("unknown category", _edit(lambda d: d["annotations"][0].update(category_id=4)), r"annotation 0 \(id 10\) has category_id 4"),
    ("duplicate image", _edit(lambda d: d["images"][1].update(id=1)), r"image 1 repeats id 1"),
    ("duplicate annotation", _edit(lambda d: d["annotations"][2].update(id=10)), r"annotation 2 repeats id 10"),
    ("duplicate category", _edit(lambda d: d["categories"][1].update(id=3)), r"category 1 repeats id 3"),
    ("no categories", _edit(lambda d: d.update(categories=[])), r"has no categories"),
    ("missing file", _edit(lambda d: d["images"][1].update(file_name="img/c.png")), r"image 1 \(id 7\): its file .*c\.png does not exist"),
]


@pytest.mark.parametrize("name,change,message", CASES, ids=[c[0] for c in CASES])
def test_bad_files_fail_in_one_line(tmp_path, name, change, message):
    path = _write(tmp_path, change(_valid(tmp_path)))
    with pytest.raises(ValueError, match=message) as info:
        coco.read_coco(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path))


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no COCO annotation file"):
        coco.read_coco(tmp_path / "none.json")
