"""`perceiver attention`: an image classifier's cross-attention maps, drawn into a PNG, offline."""

import shutil
import sys

import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint, cli, hub, media
from perceiver.tasks import imagenet

pytest.importorskip("matplotlib")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path / "cache"))
    # Any download attempt fails fast instead of reaching the internet.
    monkeypatch.setenv("PERCEIVER_BASE_URL", "http://127.0.0.1:9")
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    """The small reference Fourier classifier (16x16 pixels, 16 latents) as a described file, and an image."""
    folder = tmp_path_factory.mktemp("attention")
    path = folder / "mine.pystate"
    shutil.copy(ref.checkpoint_path("imagenet_fourier"), path)
    sizes = dict(ref.SMALL_FACTORIES["imagenet_fourier"][1])
    checkpoint.save_description(
        path, {"factory": "imagenet_classifier", "sizes": sizes, "task": {"crop_fraction": 1.0}}
    )
    image = folder / "photo.png"
    media.write_image(image, np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    return str(path), str(image)


def _run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_draws_each_latents_map_into_a_png(classifier_file, tmp_path, offline, capsys):
    path, image = classifier_file
    out = tmp_path / "maps.png"
    argv = ["attention", image, "-o", str(out), "--checkpoint", path, "--latents", "12"]
    code, printed, err = _run(argv, capsys)
    assert code == 0, err
    # The image and 12 maps: 13 panels, 8 a row, 1.6 x 1.6 inches each at 100 dpi.
    assert media.read_image(out).shape == (2 * 160, 8 * 160, 3)
    assert "the attention of 12 of 16 latents over 16x16 keys" in printed
    assert "perceiver_encoder/~/cross_attention/attention" in printed
    # The class it names is the classifier's own, as `perceiver classify` gives it.
    (top,) = imagenet.ImageClassifier.from_pretrained(path).classify(media.read_image(image), top_k=1)
    assert printed.startswith(f"{image}: {top[0][0]} ({top[0][1]:.3f})")


def test_bad_arguments_end_in_one_line(classifier_file, tmp_path, offline, capsys, monkeypatch):
    path, image = classifier_file
    out = str(tmp_path / "maps.png")
    cases = [
        (["attention", str(tmp_path / "absent.png"), "-o", out, "--checkpoint", path], "no such image"),
        (["attention", image, "-o", out, "--checkpoint", path, "--latents", "0"], "--latents must be >= 1"),
        (["attention", image, "-o", out, "--checkpoint", path, "--layer", "*nothing*"],
         "match none of the model's attention layers"),
        (["attention", image, "-o", out, "--checkpoint", path, "--layer", "*self_attention_1/attention"],
         "does not attend from latents to the image's 16x16 grid"),
        (["attention", image, "-o", out], "run `perceiver fetch imagenet_conv`"),  # nothing cached
        (["attention", image, "-o", str(tmp_path / "maps.xyz"), "--checkpoint", path], "-o:"),
    ]
    for argv, message in cases:
        code, _, err = _run(argv, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "maps.png").exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = _run(["attention", image, "-o", out, "--checkpoint", path], capsys)
    assert code == 2 and "pip install 'perceiver-io-jax[notebook]'" in err


def test_default_is_the_first_cached_published_classifier(offline):
    offline.mkdir()
    with pytest.raises(cli.UserError, match="perceiver fetch imagenet_conv"):
        cli._cached_image_classifier(None)
    (offline / hub.get("imagenet_learned").filename).write_bytes(b"")
    assert cli._cached_image_classifier(None) == "imagenet_learned"
    (offline / hub.get("imagenet_fourier").filename).write_bytes(b"")
    assert cli._cached_image_classifier(None) == "imagenet_fourier"
