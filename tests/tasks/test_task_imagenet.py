"""perceiver.tasks.imagenet: preprocessing against numpy, and the small classifiers
(16x16 images, 10 classes) end to end against the factories' own apply."""

import jax
import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint, labels, models
from perceiver.tasks import imagenet

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255
NAMES = ("imagenet_learned", "imagenet_fourier", "imagenet_conv")


def small(name):
    """`(variant, sizes)` of a small classifier."""
    sizes = dict(ref.SMALL_FACTORIES[name][1])
    return sizes.pop("variant"), sizes


@pytest.fixture(scope="module")
def classifiers():
    out = {}
    for name in NAMES:
        variant, sizes = small(name)
        params, state = checkpoint.load(ref.checkpoint_path(name))
        out[name] = imagenet.ImageClassifier(params, state, variant=variant, **sizes)
    return out


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "height, width, top, left",
    [(256, 300, 16, 38), (300, 256, 38, 16), (257, 257, 17, 17), (256, 256, 16, 16)],
)
def test_preprocess_crops_centre_and_normalises(height, width, top, left):
    """Crops of side int(0.875 * 256..257) = 224 need no resize: exact check."""
    image = random_image(height, width)
    out = imagenet.preprocess(image)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    want = (image[top : top + 224, left : left + 224].astype(np.float64) - MEAN) / STD
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-5)


def test_preprocess_resizes_constant_image_to_its_normalised_value():
    image = np.empty((333, 500, 3), np.uint8)
    image[...] = (10, 200, 30)
    out = imagenet.preprocess(image)
    assert out.shape == (224, 224, 3)
    want = np.broadcast_to((np.array([10, 200, 30]) - MEAN) / STD, out.shape)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_preprocess_resize_samples_at_half_pixel_centres():
    """Cubic interpolation reproduces a ramp: output column j lands at
    crop offset + (j + 0.5) * 56 / 16 - 0.5 of the input."""
    ramp = np.broadcast_to(np.arange(64, dtype=np.float32)[None, :, None], (64, 64, 3))
    out = imagenet.preprocess(ramp, image_size=16) * STD + MEAN
    crop_offset = (64 - 56 + 1) // 2
    want = crop_offset + (np.arange(16) + 0.5) * 56 / 16 - 0.5
    np.testing.assert_allclose(out[5, :, 1], want, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out[:, 7, 0], want[7], rtol=1e-5, atol=1e-3)  # Constant in y.


def test_preprocess_resize_matches_jax_bicubic():
    """A random (aliasing-prone) image against jax.image.resize's cubic
    (TensorFlow's kernel) without antialiasing."""
    image = random_image(70, 90, seed=5)
    out = imagenet.preprocess(image, image_size=20) * STD + MEAN
    side, top, left = 61, 5, 15  # int(0.875 * 70) = 61; (70 - 61 + 1) // 2, (90 - 61 + 1) // 2
    crop = image[top : top + side, left : left + side].astype(np.float32)
    want = jax.image.resize(crop, (20, 20, 3), method="cubic", antialias=False)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-3)


def test_preprocess_rejects_bad_images():
    with pytest.raises(ValueError, match=r"rank 3"):
        imagenet.preprocess(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        imagenet.preprocess(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(TypeError, match="dtype"):
        imagenet.preprocess(np.zeros((10, 10, 3), bool))


def test_non_finite_images_are_refused_before_the_model_runs(classifiers, monkeypatch):
    classifier = classifiers["imagenet_fourier"]

    def run(*args):
        raise AssertionError("the model ran on bad input")

    monkeypatch.setattr(classifier, "_probabilities", run)
    image = random_image(20, 24).astype(np.float32)
    image[0, 0] = np.nan  # In a corner the centre crop drops: refused all the same.
    with pytest.raises(ValueError, match=r"^image has 3 non-finite values \(NaN or Inf\)\.$"):
        classifier.classify(image)
    with pytest.raises(ValueError, match=r"^images\[1\]: image has 3 non-finite values"):
        classifier.classify([random_image(20, 24), image])
    batch = np.zeros((2, 16, 16, 3), np.float32)
    batch[1, 2, 3, 0] = np.inf
    with pytest.raises(ValueError, match=r"^images has 1 non-finite value \(NaN or Inf\)\.$"):
        classifier.probabilities(batch)
    image = np.zeros((10, 10, 3))
    image[2, 2, 1] = -np.inf
    with pytest.raises(ValueError, match="image has 1 non-finite value"):
        imagenet.preprocess(image)


@pytest.mark.parametrize("name", NAMES)
def test_small_models_end_to_end(classifiers, name):
    classifier = classifiers[name]
    variant, sizes = small(name)
    model, params, state = models.load_for(
        "imagenet_classifier", ref.checkpoint_path(name), variant=variant, **sizes
    )
    images = [random_image(40, 50, seed=1), random_image(31, 17, seed=2)]
    probabilities = classifier.probabilities(images)
    batch = np.stack([imagenet.preprocess(image, image_size=16) for image in images])
    logits, _ = jax.jit(model.apply)(params, state, None, batch)
    logits = np.asarray(logits, np.float64)
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, want, rtol=1e-4, atol=1e-6)
    # A preprocessed batch gives the same.
    np.testing.assert_allclose(classifier.probabilities(batch), probabilities, rtol=1e-6)


def test_batching_equals_one_at_a_time(classifiers):
    classifier = classifiers["imagenet_conv"]
    images = [random_image(20 + 7 * i, 30 - 3 * i, seed=i) for i in range(3)]
    together = classifier.classify(images, top_k=3)
    alone = [classifier.classify(image, top_k=3)[0] for image in images]
    for a, b in zip(together, alone):
        assert [n for n, _ in a] == [n for n, _ in b]
        np.testing.assert_allclose([p for _, p in a], [p for _, p in b], rtol=1e-5)


def test_batches_split_and_pad_to_few_shapes(monkeypatch):
    variant, sizes = small("imagenet_fourier")
    params, state = checkpoint.load(ref.checkpoint_path("imagenet_fourier"))
    traces = []
    factory = models.imagenet_classifier

    def spied(*args, **kwargs):
        # The task calls apply only inside its jitted function: once per trace.
        model = factory(*args, **kwargs)
        return model._replace(apply=lambda *a, **k: traces.append(1) or model.apply(*a, **k))

    monkeypatch.setattr(models, "imagenet_classifier", spied)
    classifier = imagenet.ImageClassifier(params, state, variant=variant, batch_size=2, **sizes)
    images = [random_image(16, 16, seed=i) for i in range(5)]
    together = classifier.probabilities(images)  # Calls of 2, 2 and 1 images.
    alone = np.concatenate([classifier.probabilities(image) for image in images])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-7)
    assert len(traces) == 2  # Batch shapes 2 and 1.


def test_top_k_is_ordered(classifiers):
    result = classifiers["imagenet_learned"].classify(random_image(24, 24), top_k=4)
    assert len(result) == 1 and len(result[0]) == 4
    probabilities = [p for _, p in result[0]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6
    assert all(name in [str(i) for i in range(10)] for name, _ in result[0])
    full = classifiers["imagenet_learned"].classify(random_image(24, 24), top_k=50)[0]
    assert len(full) == 10 and sum(p for _, p in full) == pytest.approx(1, abs=1e-5)


def test_imagenet_names_for_1000_classes():
    variant, sizes = small("imagenet_fourier")
    sizes["num_classes"] = 1000
    params, state = models.parameter_shapes("imagenet_classifier", variant=variant, **sizes)
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), params)
    classifier = imagenet.ImageClassifier(params, state, variant=variant, **sizes)
    assert classifier.class_names == labels.imagenet_labels()


def test_from_pretrained_infers_variant_of_a_file():
    variant, sizes = small("imagenet_conv")
    path = str(ref.checkpoint_path("imagenet_conv"))
    classifier = imagenet.ImageClassifier.from_pretrained(path, **sizes)
    assert classifier.variant == variant == "conv_preprocessing"
    with pytest.raises(checkpoint.CheckpointError, match="fits no ImageNet classifier"):
        imagenet.ImageClassifier.from_pretrained(path, **dict(sizes, num_classes=11))
    with pytest.raises(ValueError, match="is variant 'conv_preprocessing'"):
        imagenet.ImageClassifier.from_pretrained(
            "imagenet_conv", variant="learned_position_encoding"
        )


def test_min_crop_size_keeps_small_images_whole_as_training_evaluates_them():
    """An 8x8 digit at a 32-pixel model: the trainer's eval crop keeps it whole, so does the task."""
    image = np.arange(8 * 10 * 3, dtype=np.float32).reshape(8, 10, 3)
    assert imagenet.center_crop(image, 0.5).shape[:2] == (4, 4)
    np.testing.assert_array_equal(imagenet.center_crop(image, 0.5, min_side=32), image[:, 1:9])
    assert imagenet.center_crop(np.zeros((100, 80, 3)), 0.5, min_side=32).shape[:2] == (40, 40)
    whole = imagenet.preprocess(image, 32, crop_fraction=0.5, min_crop_size=32)
    np.testing.assert_array_equal(whole, imagenet.preprocess(image[:, 1:9], 32, crop_fraction=1.0))
    variant, sizes = small("imagenet_fourier")
    params, state = checkpoint.load(ref.checkpoint_path("imagenet_fourier"))
    with pytest.raises(ValueError, match="min_crop_size must be an int >= 0"):
        imagenet.ImageClassifier(params, state, variant=variant, min_crop_size=-1, **sizes)
