"""Models you train or describe yourself, used like the published ones.

Two halves. First, train -> export -> use: a tiny run of each recipe is
exported with `perceiver train --export FILE`, and FILE is then used by the
command line and by Python with nothing written by hand (the export's
description beside it gives the sizes, task options and class names).
Second, the reading side alone: small reference checkpoints with
descriptions written here by `perceiver.checkpoint.save_description`.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint, cli, media, models
from perceiver.tasks import flow as flow_lib
from perceiver.tasks import imagenet, text, text_classification, video

FLOW_SIZES = ref.SMALL_FACTORIES["flow"][1]
MLM_SIZES = ref.SMALL_FACTORIES["mlm"][1]
# Shorter than --tiny: the point is the export, not what it learns.
COMMON = [
    "train.progress=false", "checkpoint.every_steps=1000", "optimizer.warmup_steps=2",
    "train.log_every=100", "train.final_eval=false",
]


def _frames(folder, shape=(20, 24, 3)):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        paths.append(str(folder / name))
        media.write_image(paths[-1], rng.integers(0, 256, shape, dtype=np.uint8))
    return paths


# ---------------------------------------------------------------------------
# Train, export, use
# ---------------------------------------------------------------------------


def _train_and_export(folder, recipe, overrides):
    """`perceiver train --config RECIPE --tiny ...`, then `--workdir DIR --export FILE`; FILE."""
    main = pytest.importorskip("perceiver.train.main")
    workdir = str(folder / "run")
    assert main.main(["--config", recipe, "--workdir", workdir, "--tiny"] + COMMON + overrides) == 0
    path = folder / "model.pystate"
    assert main.main(["--workdir", workdir, "--export", str(path)]) == 0  # the run's own config
    return str(path)


@pytest.fixture(scope="module")
def trained_flow(tmp_path_factory):
    return _train_and_export(tmp_path_factory.mktemp("flow"), "flow", ["train.num_steps=4"])


@pytest.fixture(scope="module")
def trained_image_classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    # Two classes, named by their folders, as `data.train_dir` wants them.
    for name, level in (("dark", 40), ("light", 210)):
        (folder / "train" / name).mkdir(parents=True)
        for i in range(8):
            image = np.clip(level + 20 * rng.standard_normal((20, 20, 3)), 0, 255).astype(np.uint8)
            media.write_image(folder / "train" / name / f"{i}.png", image)
    path = _train_and_export(folder, "imagenet", [
        f"data.train_dir={folder / 'train'}", "data.generate=false", "data.randaugment_layers=0",
        "data.mixup_alpha=0", "data.cutmix=false", "model.num_blocks=1", "model.image_size=16",
        "train.num_steps=4",
    ])
    return path, str(folder / "train" / "dark" / "0.png")


@pytest.fixture(scope="module")
def trained_text_classifier(tmp_path_factory):
    # --tiny generates labelled sentences about sport, food and space; trained
    # from scratch (the tiny recipes' stand-in encoder is covered by test_train_recipes).
    folder = tmp_path_factory.mktemp("text")
    return _train_and_export(
        folder, "finetune_text", ["train.num_steps=4", "model.num_self_attends=1", "task.pretrained=none"]
    )


@pytest.mark.slow  # a flow train and export run by default in tests/train/test_train_workflow.py
def test_trained_flow_model_runs_from_its_export(trained_flow, tmp_path, offline, capsys, run_cli):
    assert checkpoint.read_description(trained_flow).get("factory") == "optical_flow"
    a, b = _frames(tmp_path)
    out, flo = str(tmp_path / "flow.png"), str(tmp_path / "flow.flo")
    code, _, err = run_cli("flow", a, b, "-o", out, "--flo", flo, "--checkpoint", trained_flow)
    assert code == 0, err
    # Python reads the same description (sizes, and a min_overlap that fits its tiles).
    estimator = flow_lib.OpticalFlow.from_pretrained(trained_flow)
    assert estimator.min_overlap < min(estimator.tile_shape)
    expected = estimator(media.read_image(a), media.read_image(b))
    np.testing.assert_allclose(flow_lib.read_flo(flo), expected, rtol=1e-5, atol=1e-5)


def test_trained_image_classifier_names_its_folders(trained_image_classifier, tmp_path, offline, capsys, run_cli):
    path, image = trained_image_classifier
    out = tmp_path / "classes.json"
    code, printed, err = run_cli("classify", image, "--top-k", "2", "--json", str(out), "--checkpoint", path)
    assert code == 0, err
    (result,) = json.loads(out.read_text())
    assert sorted(name for name, _ in result["labels"]) == ["dark", "light"]
    assert "dark" in printed and "light" in printed
    classifier = imagenet.ImageClassifier.from_pretrained(path)
    assert classifier.class_names == ("dark", "light")
    (top,) = classifier.classify(media.read_image(image), top_k=2)
    assert [name for name, _ in top] == [name for name, _ in result["labels"]]
    np.testing.assert_allclose([p for _, p in top], [p for _, p in result["labels"]], rtol=1e-5)


@pytest.mark.slow  # the byte encoder's train-export-CLI path runs by default in tests/tasks/test_token_classification.py
def test_trained_text_classifier_names_its_labels(trained_text_classifier, tmp_path, offline, capsys, run_cli):
    path = trained_text_classifier
    assert checkpoint.read_description(path).get("factory") == "text_classifier"
    out = tmp_path / "classes.json"
    texts = ["the rocket reached orbit", "a hot bowl of tomato soup"]  # one padded length
    code, _, err = run_cli("classify-text", *texts, "--top-k", "3", "--json", str(out), "--checkpoint", path)
    assert code == 0, err
    results = json.loads(out.read_text())
    assert [r["text"] for r in results] == texts
    for r in results:
        assert sorted(name for name, _ in r["labels"]) == ["food", "space", "sport"]
    classifier = text_classification.TextClassifier.from_pretrained(path)
    assert classifier.class_names == ("food", "space", "sport")
    np.testing.assert_allclose(
        [[p for _, p in top] for top in classifier.classify(texts, top_k=3)],
        [[p for _, p in r["labels"]] for r in results],
        rtol=1e-5,
    )


# ---------------------------------------------------------------------------
# Reading descriptions (written here), through Python and the command line
# ---------------------------------------------------------------------------


def _described(tmp_path, model, description=None, name=None):
    """A copy of reference checkpoint `model` in tmp_path, with `description` beside it."""
    path = tmp_path / f"{name or 'my_' + model}.pystate"
    shutil.copy(ref.checkpoint_path(model), path)
    if description is not None:
        checkpoint.save_description(path, description)
    return str(path)


def test_shipped_flow_model_loads_from_python_by_its_path(offline):
    estimator = flow_lib.OpticalFlow.from_pretrained(cli.flow._bundled_flow_model())
    assert estimator.tile_shape == (32, 32) and estimator.min_overlap == 4 and estimator.max_flow == 4.0
    assert estimator.sizes["num_latents"] == 64


def test_flow_reads_sizes_and_options_and_keywords_override(tmp_path, offline, capsys, run_cli):
    path = _described(tmp_path, "flow", {
        "factory": "optical_flow", "sizes": FLOW_SIZES, "task": {"min_overlap": 4, "batch_size": 3},
    })
    estimator = flow_lib.OpticalFlow.from_pretrained(path)
    assert (estimator.min_overlap, estimator.batch_size) == (4, 3)
    assert estimator.tile_shape == FLOW_SIZES["image_shape"]
    assert flow_lib.OpticalFlow.from_pretrained(path, min_overlap=2).min_overlap == 2
    # An explicit size beats the description's, so this one no longer fits.
    with pytest.raises(checkpoint.CheckpointError, match="does not fit optical_flow"):
        flow_lib.OpticalFlow.from_pretrained(path, num_latents=8)
    # The command line runs the same code, and --max-flow fixes the colour scale.
    a, b = _frames(tmp_path)
    out, flo = tmp_path / "f.png", tmp_path / "f.flo"
    code, _, err = run_cli("flow", a, b, "-o", str(out), "--flo", str(flo), "--max-flow", "50", "--checkpoint", path)
    assert code == 0, err
    field = flow_lib.read_flo(flo)
    np.testing.assert_allclose(field, estimator(media.read_image(a), media.read_image(b)), atol=1e-5)
    np.testing.assert_array_equal(media.read_image(out), flow_lib.flow_to_color(field, max_flow=50))
    assert not np.array_equal(media.read_image(out), flow_lib.flow_to_color(field))


def _misfit(task, tmp_path):
    """Loads a file that the task's sizes do not fit."""
    wide = dict(num_latent_channels=32)  # changes many shapes
    if task == "flow":  # no description, so the published sizes: the case
        flow_lib.OpticalFlow.from_pretrained(_described(tmp_path, "flow"))
    elif task == "mlm":
        text.MaskedLanguageModel.from_pretrained(_described(tmp_path, "mlm"), **dict(MLM_SIZES, **wide))
    elif task == "video":
        sizes = dict(ref.SMALL_FACTORIES["video_autoencoding"][1], **wide)
        video.VideoAutoencoder.from_pretrained(_described(tmp_path, "video_autoencoding"), **sizes)
    elif task == "imagenet":  # no variant given: each is tried
        sizes = dict(ref.SMALL_FACTORIES["imagenet_conv"][1], **wide)
        del sizes["variant"]
        imagenet.ImageClassifier.from_pretrained(_described(tmp_path, "imagenet_conv"), **sizes)
    else:
        path = _text_classifier_file(tmp_path, {})
        text_classification.TextClassifier.from_pretrained(
            path, num_classes=3, **dict(MLM_SIZES, **wide)
        )


@pytest.mark.parametrize("task", ["flow", "mlm", "video", "imagenet", "text_classifier"])
def test_a_file_that_does_not_fit_says_so_briefly(tmp_path, offline, task):
    with pytest.raises(checkpoint.CheckpointError) as info:
        _misfit(task, tmp_path)
    message = str(info.value)
    expected = "fits no ImageNet classifier" if task == "imagenet" else "differences"
    if task == "flow":
        expected = "422 differences: 70 mismatched, 352 missing"
    assert expected in message and len(message) < 2000, message
    assert "more (the error's .differences lists all)" in message
    assert len(info.value.differences) > 12
    # No description beside it: the message says how to give the sizes.
    assert ".json beside it gives the model's sizes" in message


@pytest.mark.parametrize(
    "task, model",
    [
        (lambda p: flow_lib.OpticalFlow.from_pretrained(p), "flow"),
        (lambda p: imagenet.ImageClassifier.from_pretrained(p), "imagenet_conv"),
        (lambda p: text.MaskedLanguageModel.from_pretrained(p), "mlm"),
        (lambda p: video.VideoAutoencoder.from_pretrained(p), "video_autoencoding"),
        (lambda p: text_classification.TextClassifier.from_pretrained(p), "mlm"),
    ],
)
def test_a_description_of_another_model_is_a_clear_error(tmp_path, offline, task, model):
    path = _described(tmp_path, model, {"factory": "some_detector", "sizes": {}})
    with pytest.raises(checkpoint.CheckpointError, match="my_.*json describes a 'some_detector' model"):
        task(path)
    checkpoint.save_description(path, {"factory": "optical_flow" if model != "flow" else "text_classifier"})
    with pytest.raises(checkpoint.CheckpointError, match=r"run it with perceiver\.tasks\."):
        task(path)


def test_a_size_the_factory_does_not_take_names_the_file(tmp_path, offline):
    path = _described(tmp_path, "flow", {"factory": "optical_flow", "sizes": dict(FLOW_SIZES, depth=3)})
    with pytest.raises(checkpoint.CheckpointError, match=r"my_flow\.json: sizes \['depth'\]"):
        flow_lib.OpticalFlow.from_pretrained(path)


def test_image_classifier_names_classes_by_the_description(tmp_path, offline, capsys, run_cli):
    sizes = dict(ref.SMALL_FACTORIES["imagenet_fourier"][1])
    names = [f"class {c}" for c in "abcdefghij"]
    path = _described(tmp_path, "imagenet_fourier", {
        "factory": "imagenet_classifier", "sizes": sizes, "labels": names, "task": {"crop_fraction": 1.0},
    })
    classifier = imagenet.ImageClassifier.from_pretrained(path)
    assert classifier.class_names == tuple(names) and classifier.variant == sizes["variant"]
    assert classifier.crop_fraction == 1.0
    image = str(tmp_path / "im.png")
    media.write_image(image, np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    code, printed, err = run_cli("classify", image, "--top-k", "2", "--checkpoint", path)
    assert code == 0, err
    top = classifier.classify(media.read_image(image), top_k=2)[0]
    assert [line.split("  ")[-1] for line in printed.splitlines()[1:]] == [n for n, _ in top]
    renamed = imagenet.ImageClassifier.from_pretrained(path, labels=[str(i) for i in range(10)])
    assert renamed.class_names[0] == "0"
    checkpoint.save_description(path, {"sizes": sizes, "labels": names[:3]})
    with pytest.raises(checkpoint.CheckpointError, match="labels must name each of the model's 10 classes"):
        imagenet.ImageClassifier.from_pretrained(path)


def _text_classifier_file(tmp_path, description, num_classes=3):
    """Random weights of a small text_classifier saved as my_text.pystate, described."""
    shapes, state = models.parameter_shapes("text_classifier", num_classes=num_classes, **MLM_SIZES)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    path = str(tmp_path / "my_text.pystate")
    checkpoint.save(path, params, state, description=description or None)
    return path


def test_text_classifier_reads_labels_and_cuts_long_texts(tmp_path, offline, capsys, run_cli):
    description = {
        "factory": "text_classifier",
        "sizes": dict(MLM_SIZES, num_classes=3),
        "labels": ["ham", "spam", "eggs"],
        "tokenizer": {"kind": "bytes"},
        "task": {"seq_len": 16},
    }
    path = _text_classifier_file(tmp_path, description)
    classifier = text_classification.TextClassifier.from_pretrained(path, batch_size=4)
    assert classifier.class_names == ("ham", "spam", "eggs") and classifier.seq_len == 16
    texts = ["short", "a text well over sixteen bytes", "a text well over sixteen"]
    probs = classifier.probabilities(texts)
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    # Bytes past seq_len are cut off, as the training data was.
    np.testing.assert_allclose(probs[1], probs[2], rtol=1e-5, atol=1e-6)
    # Batched and padded, the same as the model applied to one text alone.
    model = models.text_classifier(**description["sizes"])
    params, state = checkpoint.load(path)
    tokens = classifier.tokenizer.to_int("short")[None]
    logits, _ = jax.jit(model.apply)(params, state, None, tokens, np.ones_like(tokens))
    np.testing.assert_allclose(probs[0], jax.nn.softmax(logits[0]), rtol=1e-4, atol=1e-6)
    # The command line prints and writes the same.
    out = tmp_path / "c.json"
    code, printed, err = run_cli("classify-text", "short", "--top-k", "1", "--json", str(out), "--checkpoint", path)
    assert code == 0, err
    best = classifier.class_names[int(np.argmax(probs[0]))]
    assert printed.splitlines()[1].endswith(best)
    assert json.loads(out.read_text())[0]["labels"][0][0] == best


def test_text_classifier_needs_its_classes_and_a_byte_tokenizer(tmp_path, offline):
    path = _text_classifier_file(tmp_path, {})
    with pytest.raises(checkpoint.CheckpointError, match="the number of classes is unknown"):
        text_classification.TextClassifier.from_pretrained(path, **MLM_SIZES)
    by_labels = text_classification.TextClassifier.from_pretrained(path, labels=["x", "y", "z"], **MLM_SIZES)
    assert by_labels.class_names == ("x", "y", "z")
    checkpoint.save_description(path, {"sizes": dict(MLM_SIZES, num_classes=3), "tokenizer": {"kind": "wordpiece"}})
    with pytest.raises(checkpoint.CheckpointError, match="tokenizer kind must be 'bytes'"):
        text_classification.TextClassifier.from_pretrained(path)
    with pytest.raises(ValueError, match="not a text classifier"):
        text_classification.TextClassifier.from_pretrained("mlm")


def test_mlm_and_video_read_their_descriptions(tmp_path, offline):
    mlm_path = _described(tmp_path, "mlm", {"factory": "masked_language_model", "sizes": MLM_SIZES, "task": {"batch_size": 2}})
    mlm = text.MaskedLanguageModel.from_pretrained(mlm_path)
    assert mlm.max_seq_len == MLM_SIZES["max_seq_len"] and mlm.batch_size == 2
    sizes = ref.SMALL_FACTORIES["video_autoencoding"][1]
    names = [f"action {i}" for i in range(sizes["num_classes"])]
    video_path = _described(tmp_path, "video_autoencoding", {
        "factory": "video_autoencoder", "sizes": sizes, "labels": names, "task": {"chunk_size": 64},
    })
    autoencoder = video.VideoAutoencoder.from_pretrained(video_path)
    assert autoencoder.class_names == tuple(names) and autoencoder.chunk_size == 64
    assert video.VideoAutoencoder.from_pretrained(video_path, chunk_size=32).chunk_size == 32
    assert os.path.isfile(checkpoint.description_path(video_path))
