"""Object detection: train --tiny -> export -> `ObjectDetector.detect` and `perceiver detect`; bad input.

The tiny run trains a few steps on the copy-paste set (digits pasted on
scikit-image / scikit-learn photos, evaluation photos held out): the point
is the path, not what it learns (benchmarks/detection_quality.py measures that).
"""

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from perceiver import checkpoint, media

pytest.importorskip("grain")

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# Short: a few steps of a one-block model on 16 small images.
TINY = [
    "train.num_steps=3", "train.batch_size=4", "train.progress=false", "train.final_eval=false",
    "checkpoint.every_steps=1000", "optimizer.warmup_steps=1", "train.log_every=100",
    "model.num_blocks=1", "model.variant=fourier_position_encoding", "model.image_size=16", "model.num_bands=4",
    "data.generated_size=40", "data.generated_images=16",
]


def _needs_photos():
    pytest.importorskip("skimage", reason="the copy-paste set needs scikit-image")
    pytest.importorskip("sklearn", reason="the copy-paste set needs scikit-learn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`(exported checkpoint, the run's folder)` of a few steps of `finetune_detection --tiny`."""
    _needs_photos()
    folder = tmp_path_factory.mktemp("detection")
    workdir, path = folder / "run", folder / "detector.pystate"
    # In a process of its own, with XLA's quicker CPU compilation (a third of the time).
    script = (
        "import sys; from perceiver.train import main; "
        f"sys.exit(main.main({['--config', 'finetune_detection', '--workdir', str(workdir), '--tiny'] + TINY!r}) "
        f"or main.main({['--workdir', str(workdir), '--export', str(path)]!r}))"
    )
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return str(path), workdir


@pytest.fixture(scope="module")
def detector(trained):
    from perceiver.tasks.detection import ObjectDetector

    # One image per call: one shape compiles.
    return ObjectDetector.from_pretrained(trained[0], batch_size=1)


def _eval_file(workdir):
    (found,) = (workdir / "generated" / "detection").glob("eval-*/annotations.json")
    return found


def test_exported_detector_finds_boxes_in_images_of_any_size(trained, detector):
    path, workdir = trained
    described = checkpoint.read_description(path)
    assert described["factory"] == "object_detector" and described["labels"] == [str(d) for d in range(10)]
    assert described["task"]["category_ids"] == list(range(1, 11))
    assert (detector.image_size, detector.num_queries, detector.class_names[3]) == (16, 10, "3")
    wide = np.random.default_rng(0).integers(0, 256, (30, 90, 3), dtype=np.uint8)
    square = media.read_image(sorted((_eval_file(workdir).parent / "images").glob("*.png"))[0])
    found_wide, found_square = detector.detect([wide, square], threshold=0.0)
    # Every query gives one detection at threshold 0, best first, inside its own image.
    assert found_wide.boxes.shape == (10, 4) and np.all(np.diff(found_wide.scores) <= 0)
    assert np.all(found_wide.boxes >= 0) and np.all(found_wide.boxes[:, [0, 2]] <= 90)
    assert np.all(found_wide.boxes[:, [1, 3]] <= 30)
    assert np.all(found_wide.boxes[:, 2:] >= found_wide.boxes[:, :2])
    assert set(found_square.labels) <= set(detector.class_names)
    np.testing.assert_array_equal(found_square.category_ids, found_square.classes + 1)
    # Boxes are fractions of the image scaled back: a 3x wider image gives 3x wider boxes.
    (stretched,) = detector.detect(np.repeat(square, 3, axis=1), threshold=0.0)
    (alone,) = detector.detect(square, threshold=0.0)
    np.testing.assert_allclose(alone.scores, found_square.scores, rtol=1e-4, atol=1e-6)
    assert stretched.boxes.shape == alone.boxes.shape
    (none,) = detector.detect(square, threshold=0.99)
    assert none.boxes.shape == (0, 4) and none.to_json() == []
    with pytest.raises(ValueError, match="threshold must be a number in"):
        detector.detect(square, threshold=1.0)
    scores = detector.evaluate(_eval_file(workdir))
    assert 0 <= scores.map <= scores.map_50 <= 1


def test_detect_command_draws_boxes_and_writes_json(trained, detector, offline, run_cli, tmp_path):
    path, workdir = trained
    photo = tmp_path / "photo.png"
    image = np.random.default_rng(1).integers(0, 256, (48, 70, 3), dtype=np.uint8)
    media.write_image(photo, image)
    drawn, boxes = tmp_path / "boxes.png", tmp_path / "boxes.json"
    code, out, err = run_cli("detect", photo, "-o", drawn, "--json", boxes, "--checkpoint", path,
                             "--threshold", "0")
    assert code == 0, err
    record = json.loads(boxes.read_text())
    assert (record["width"], record["height"], len(record["detections"])) == (70, 48, 10)
    (found,) = detector.detect(image, threshold=0.0)
    np.testing.assert_allclose([d["box"] for d in record["detections"]], found.boxes, rtol=1e-5, atol=1e-4)
    assert [d["label"] for d in record["detections"]] == list(found.labels)
    picture = media.read_image(drawn)
    assert picture.shape == image.shape and np.any(picture != image)
    assert "10 object(s)" in out


def test_set_loss_matches_each_target_to_one_query():
    import jax

    from perceiver.train.objectives.detection import DetectionSettings, set_loss

    loss = jax.jit(lambda *arrays: set_loss(*arrays, DetectionSettings()))
    # Two queries predict the two targets exactly (in the other order), the third says no object;
    # the third target is padding (mask False).
    target = np.array([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.1, 0.3], [0.1, 0.1, 0.1, 0.1]]], np.float32)
    boxes = np.array([[[0.7, 0.6, 0.1, 0.3], [0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2]]], np.float32)
    logits = np.full((1, 3, 4), -5.0, np.float32)
    logits[0, 0, 2], logits[0, 1, 3], logits[0, 2, 0] = 5.0, 5.0, 5.0
    labels, mask = np.array([[0, 2, 1]], np.int32), np.array([[True, True, False]])
    terms = {k: float(v[0]) for k, v in loss(logits, boxes, labels, target, mask).items()}
    assert terms["targets"] == 2 and terms["correct"] == 2 and terms["no_object_correct"] == 1
    assert terms["l1"] < 1e-6 and abs(terms["giou"] - 1) < 1e-6 and terms["ce"] < 1e-3
    # Whatever the padding holds, the loss is the same.
    other = loss(logits, boxes, np.array([[0, 2, 0]], np.int32), target[:, [0, 1, 0]], mask)
    assert abs(float(other["loss"][0]) - terms["loss"]) < 1e-6


def _coco(folder, bbox):
    media.write_image(folder / "a.png", np.zeros((20, 30, 3), np.uint8))
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 30, "height": 20}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]},
                        {"id": 2, "image_id": 7, "category_id": 1, "bbox": bbox}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = folder / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("bbox, why", [([25, 2, 10, 5], "outside its image"), ([3, 3, 0, 4], "zero or negative area")])
def test_a_bad_box_is_one_line_naming_the_file_and_annotation(tmp_path, offline, run_cli, bbox, why):
    path = _coco(tmp_path, bbox)
    code, _, err = run_cli("train", "--config", "finetune_detection", "--workdir", tmp_path / "run",
                           f"data.train_paths={path}", "task.pretrained=none")
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and "annotation 1 (id 2)" in err and why in err


def test_a_checkpoint_of_another_kind_is_refused(tmp_path, offline, run_cli):
    from perceiver import models
    from perceiver.tasks.detection import ObjectDetector

    from perceiver.train.objectives import generated

    # A tiny image classifier (random weights, nothing compiled), described as one: not a detector.
    model = models.imagenet_classifier("conv_preprocessing", num_classes=2, image_size=16, num_latents=4,
                                       num_latent_channels=8, num_blocks=1, num_self_attends_per_block=1,
                                       num_self_attend_heads=1)
    path = tmp_path / "classifier.pystate"
    generated.stand_in_checkpoint(str(path), model, jnp.zeros((1, 16, 16, 3)))
    checkpoint.save_description(str(path), {"factory": "imagenet_classifier", "sizes": {"num_classes": 2}})
    with pytest.raises(checkpoint.CheckpointError, match="describes a 'imagenet_classifier' model.*perceiver classify"):
        ObjectDetector.from_pretrained(str(path))
    photo = tmp_path / "photo.png"
    media.write_image(photo, np.zeros((8, 8, 3), np.uint8))
    for source in (path, "imagenet_conv"):
        code, _, err = run_cli("detect", photo, "--checkpoint", source)
        assert code == 2 and err.count("\n") == 1, err
        assert "imagenet_classifier" in err
    # No file at all: the sizes alone do not say the classes.
    shutil.copy(path, tmp_path / "bare.pystate")
    with pytest.raises(checkpoint.CheckpointError):
        ObjectDetector.from_pretrained(str(tmp_path / "bare.pystate"))


@pytest.mark.slow
def test_the_detector_learns_its_training_images(tmp_path):
    """The whole pipeline (boxes, set loss, decoding, mAP) is right if it can memorise 16 images."""
    _needs_photos()
    from perceiver.tasks.detection import ObjectDetector
    from perceiver.train import main

    workdir, path = tmp_path / "run", tmp_path / "detector.pystate"
    overrides = [
        "data.generated_images=16", "data.generated_size=128", "model.image_size=128", "train.num_steps=400",
        "train.batch_size=16", "optimizer.warmup_steps=20", "task.pretrained=none", "train.progress=false",
        "train.final_eval=false", "train.log_every=1000", "checkpoint.every_steps=1000",
    ]
    assert main.main(["--config", "finetune_detection", "--workdir", str(workdir), "--tiny", *overrides]) == 0
    assert main.main(["--workdir", str(workdir), "--export", str(path)]) == 0
    (train_file,) = (workdir / "generated" / "detection").glob("train-*/annotations.json")
    scores = ObjectDetector.from_pretrained(str(path)).evaluate(train_file)
    assert scores.map_50 >= 0.6, scores
