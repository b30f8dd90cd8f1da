"""COCO object-detection annotation files: read with checks, write atomically.

`read_coco` checks the whole file at once and says what is wrong in one
line naming the file and the image or annotation (index and id). Image
files are checked EAGERLY: every image the file lists must exist when it
is read. Crowd annotations (`iscrowd`) are kept and flagged.
"""

import dataclasses
import json
import math
import os
import pathlib
import secrets
from typing import Dict, List, Sequence, Tuple

import numpy as np

PathLike = "os.PathLike[str] | str"
# How far (pixels) a box may reach past the right or bottom edge: COCO's
# boxes come from polygons whose vertices can sit half a pixel outside.
EDGE_TOLERANCE = 0.5


@dataclasses.dataclass(frozen=True)
class CocoImage:
    """One image: its file (absolute, resolved against the JSON file's folder), size and id."""

    path: str
    width: int
    height: int
    id: int


class ImageAnnotations(tuple):
    """`(boxes, category_ids, crowd)` of one image; positionally an `evaluation.detection` truth.

    boxes: float64 `[K, 4]` COCO xywh in pixels; category_ids: int64 `[K]`;
    crowd: bool `[K]`.
    """

    def __new__(cls, boxes, category_ids, crowd=None):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        category_ids = np.asarray(category_ids, np.int64).reshape(-1)
        crowd = np.zeros(len(boxes), bool) if crowd is None else np.asarray(crowd, bool).reshape(-1)
        return super().__new__(cls, (boxes, category_ids, crowd))

    boxes = property(lambda self: self[0])
    category_ids = property(lambda self: self[1])
    crowd = property(lambda self: self[2])


@dataclasses.dataclass(frozen=True)
class CocoSet:
    """A detection set: images, their annotations (same order) and the categories `(id, name)`."""

    images: List[CocoImage]
    annotations: List[ImageAnnotations]
    categories: List[Tuple[int, str]]


def _fail(path, what: str) -> None:
    raise ValueError(f"{path}: {what}")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _records(path, data: dict, key: str, fields: Sequence[str], what: str) -> List[dict]:
    records = data[key]
    if not isinstance(records, list):
        _fail(path, f'"{key}" must be a list; got {type(records).__name__}.')
    seen = set()
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            _fail(path, f"{what} {index} is not an object; got {type(record).__name__}.")
        missing = [f for f in fields if f not in record]
        if missing:
            _fail(path, f"{what} {index} (id {record.get('id')!r}) lacks {', '.join(missing)}.")
        if not _int(record["id"]):
            _fail(path, f"{what} {index} has id {record['id']!r}; ids must be integers.")
        if record["id"] in seen:
            _fail(path, f"{what} {index} repeats id {record['id']}.")
        seen.add(record["id"])
    return records


def _load_json(path: pathlib.Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        _fail(path, "is a folder, not a COCO JSON file.")
    except UnicodeDecodeError:
        _fail(path, "is not JSON (not UTF-8 text); expected a COCO annotation file.")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
        _fail(path, f"is not JSON ({e}); expected a COCO annotation file.")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        _fail(path, f"is not a COCO annotation file: no {', '.join(repr(k) for k in missing)} key.")
    return data


def read_coco(path: PathLike) -> CocoSet:
    """Reads and checks a COCO detection annotation file.

    Args:
      path: the JSON file; images' `file_name` entries are relative to its folder.

    Returns:
      a `CocoSet`: images in file order, their annotations in file order,
      categories in file order.

    Raises:
      FileNotFoundError: if there is no file at `path`.
      ValueError: in one line naming the file and the image, annotation or
        category: not JSON or not a COCO object, missing keys, repeated ids,
        a box not 4 finite numbers, of zero or negative area or outside its
        image (x < 0, y < 0, x + w > width + 0.5, y + h > height + 0.5),
        unknown image_id or category_id, no categories, a missing image file.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no COCO annotation file at {path}")
    data = _load_json(path)
    folder = path.resolve().parent
    images = []
    for index, record in enumerate(_records(path, data, "images", ("id", "file_name", "width", "height"), "image")):
        width, height, name = record["width"], record["height"], record["file_name"]
        where = f"image {index} (id {record['id']})"
        if not (_int(width) and _int(height) and width > 0 and height > 0):
            _fail(path, f"{where} has size {width!r}x{height!r}; expected positive integers.")
        if not isinstance(name, str) or not name:
            _fail(path, f"{where} has file_name {name!r}; expected a path.")
        file = pathlib.Path(os.path.normpath(folder / name))
        if not file.is_file():
            _fail(path, f"{where}: its file {file} does not exist.")
        images.append(CocoImage(str(file), width, height, record["id"]))
    categories = _records(path, data, "categories", ("id", "name"), "category")
    if not categories:
        _fail(path, "has no categories.")
    category_ids = {c["id"] for c in categories}
    by_id: Dict[int, int] = {image.id: i for i, image in enumerate(images)}
    rows: List[list] = [[] for _ in images]
    fields = ("id", "image_id", "category_id", "bbox")
    for index, record in enumerate(_records(path, data, "annotations", fields, "annotation")):
        where = f"annotation {index} (id {record['id']})"
        image_index = by_id.get(record["image_id"]) if _int(record["image_id"]) else None
        if image_index is None:
            _fail(path, f"{where} has image_id {record['image_id']!r}, which no image has.")
        if record["category_id"] not in category_ids or not _int(record["category_id"]):
            _fail(path, f"{where} has category_id {record['category_id']!r}, which no category has.")
        box = record["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            _fail(path, f"{where} has bbox {box!r}; expected [x, y, width, height], 4 finite numbers.")
        x, y, w, h = box
        if w <= 0 or h <= 0:
            _fail(path, f"{where} has bbox {box} of zero or negative area.")
        image = images[image_index]
        if x < 0 or y < 0 or x + w > image.width + EDGE_TOLERANCE or y + h > image.height + EDGE_TOLERANCE:
            _fail(
                path,
                f"{where} has bbox {box}, outside its image {image.id} of {image.width}x{image.height}.",
            )
        crowd = record.get("iscrowd", 0)
        if crowd not in (0, 1):
            _fail(path, f"{where} has iscrowd {crowd!r}; expected 0 or 1.")
        rows[image_index].append((box, record["category_id"], bool(crowd)))
    annotations = [
        ImageAnnotations([r[0] for r in row], [r[1] for r in row], [r[2] for r in row]) for row in rows
    ]
    return CocoSet(images, annotations, [(c["id"], str(c["name"])) for c in categories])


def write_coco(path: PathLike, dataset: CocoSet) -> None:
    """Writes `dataset` as a COCO annotation file, atomically (a temporary file, then renamed).

    Image paths are written relative to the file's folder; annotation ids
    count from 1 in image order; `area` is the box's (w * h).

    Raises:
      ValueError: if the annotations are not one per image.
    """
    path = pathlib.Path(path)
    if len(dataset.annotations) != len(dataset.images):
        raise ValueError(
            f"cannot write {path}: {len(dataset.images)} images but "
            f"{len(dataset.annotations)} annotation lists."
        )
    folder = path.resolve().parent
    images, annotations = [], []
    for image, ann in zip(dataset.images, dataset.annotations):
        ann = ImageAnnotations(*ann)
        name = os.path.relpath(os.path.abspath(image.path), folder)
        images.append(
            {"id": int(image.id), "file_name": pathlib.Path(name).as_posix(),
             "width": int(image.width), "height": int(image.height)}
        )
        for box, category, crowd in zip(ann.boxes, ann.category_ids, ann.crowd):
            box = [float(v) for v in box]
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(image.id), "category_id": int(category),
                "bbox": box, "area": box[2] * box[3], "iscrowd": int(crowd),
            })
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": int(i), "name": str(n)} for i, n in dataset.categories],
    }
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        temporary.write_text(json.dumps(data), encoding="utf-8")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
