"""`perceiver attention`: an image classifier's cross-attention maps, drawn into a PNG, offline."""

import shutil
import sys

import numpy as np
import pytest

import reference_fixtures as ref
from perceiver import checkpoint, cli, hub, media
from perceiver.tasks import imagenet

pytest.importorskip("matplotlib")


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


def test_draws_each_latents_map_into_a_png(classifier_file, tmp_path, offline, capsys, run_cli):
    path, image = classifier_file
    out = tmp_path / "maps.png"
    argv = ["attention", image, "-o", str(out), "--checkpoint", path, "--latents", "12"]
    code, printed, err = run_cli(*argv)
    assert code == 0, err
    # The image and 12 maps: 13 panels, 8 a row, 1.6 x 1.6 inches each at 100 dpi.
    assert media.read_image(out).shape == (2 * 160, 8 * 160, 3)
    assert "the attention of 12 of 16 latents over 16x16 keys" in printed
    assert "perceiver_encoder/~/cross_attention/attention" in printed
    # The class it names is the classifier's own, as `perceiver classify` gives it.
    (top,) = imagenet.ImageClassifier.from_pretrained(path).classify(media.read_image(image), top_k=1)
    assert printed.startswith(f"{image}: {top[0][0]} ({top[0][1]:.3f})")


def test_bad_arguments_end_in_one_line(classifier_file, tmp_path, offline, capsys, monkeypatch, run_cli):
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
        code, _, err = run_cli(*argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "maps.png").exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run_cli("attention", image, "-o", out, "--checkpoint", path)
    assert code == 2 and "pip install 'perceiver-io-jax[notebook]'" in err


def test_default_is_the_first_cached_published_classifier(offline):
    with pytest.raises(cli.UserError, match="perceiver fetch imagenet_conv"):
        cli.images._cached_image_classifier(None)
    (offline / hub.get("imagenet_learned").filename).write_bytes(b"")
    assert cli.images._cached_image_classifier(None) == "imagenet_learned"
    (offline / hub.get("imagenet_fourier").filename).write_bytes(b"")
    assert cli.images._cached_image_classifier(None) == "imagenet_fourier"


def _numpy_cross_attention(path, image):
    """The reference Fourier classifier's encoder cross-attention `[latents, 16 * 16]`, in float64.

    Written from the parameters: pixels then Fourier features of the 16x16
    grid (positions in [-1, 1], 4 bands per axis up to 8, sin then cos),
    layer norms, one head.
    """
    params, _ = checkpoint.load(path)
    p = {m: {k: np.float64(v) for k, v in leaves.items()} for m, leaves in params.items()}
    enc = "perceiver_encoder/~/"

    def ln(x, q):
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * q["scale"] + q["offset"]

    side = 16
    axis = np.linspace(-1, 1, side)
    pos = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    scaled = (pos[:, :, None] * np.linspace(1, side / 2, 4)[None, None]).reshape(-1, 8)
    inputs = np.concatenate([image.reshape(-1, 3), pos, np.sin(np.pi * scaled), np.cos(np.pi * scaled)], -1)
    z = p[enc + "trainable_position_encoding"]["pos_embs"]
    att = enc + "cross_attention/"
    q = ln(z, p[att + "layer_norm"]) @ p[att + "attention/linear"]["w"] + p[att + "attention/linear"]["b"]
    k = ln(inputs, p[att + "layer_norm_1"]) @ p[att + "attention/linear_1"]["w"] + p[att + "attention/linear_1"]["b"]
    logits = q @ k.T / np.sqrt(q.shape[-1])
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _panels(png):
    """`[(top, bottom, left, right)]` of the pictures in a grid drawn on white, row by row."""
    inked = (png < 0.96).any(-1)
    rows = inked.sum(1) > 100
    bands, start = [], None
    for y, on in enumerate(list(rows) + [False]):
        if on and start is None:
            start = y
        elif not on and start is not None:
            if y - start >= 60:  # a row of pictures, not a line of text
                bands.append((start, y))
            start = None
    panels = []
    for top, bottom in bands:
        columns = inked[top:bottom].sum(0) > (bottom - top) // 2
        start = None
        for x, on in enumerate(list(columns) + [False]):
            if on and start is None:
                start = x
            elif not on and start is not None:
                panels.append((top, bottom, start, x))
                start = None
    return panels


def test_the_maps_are_drawn_over_the_photo_where_the_attention_is(classifier_file, tmp_path, offline, capsys, run_cli):
    path, _ = classifier_file
    # A photo of flat colour blocks, neither white nor small: 120x180, centre crop 120x120.
    rng = np.random.default_rng(1)
    blocks = rng.integers(40, 216, (10, 15, 3)).astype(np.uint8)
    photo = np.repeat(np.repeat(blocks, 12, 0), 12, 1)
    image = tmp_path / "blocks.png"
    media.write_image(image, photo)
    out = tmp_path / "maps.png"
    code, printed, err = run_cli("attention", str(image), "-o", str(out), "--checkpoint", path, "--latents", "7")
    assert code == 0, err
    assert "over the photo's 120x120 centre crop" in printed
    crop = photo[:, 30:150].astype(np.float64) / 255
    model_input = imagenet.ImageClassifier.from_pretrained(path).preprocess(photo)
    weights = _numpy_cross_attention(path, model_input)
    png = media.read_image(out).astype(np.float64) / 255
    panels = _panels(png)
    assert len(panels) == 8  # the crop, then 7 maps
    grey = crop @ np.array([0.299, 0.587, 0.114])

    def on_panel(values, box):
        top, bottom, left, right = box
        rows = np.minimum((np.arange(bottom - top) + 0.5) * values.shape[0] / (bottom - top), values.shape[0] - 1)
        cols = np.minimum((np.arange(right - left) + 0.5) * values.shape[1] / (right - left), values.shape[1] - 1)
        return values[rows.astype(int)][:, cols.astype(int)]

    top, bottom, left, right = panels[0]
    assert np.corrcoef(png[top:bottom, left:right].ravel(), on_panel(crop, panels[0]).ravel())[0, 1] > 0.95
    peaked = 0
    for latent, box in enumerate(panels[1:]):
        top, bottom, left, right = box
        drawn = png[top:bottom, left:right]
        chroma = drawn.max(-1) - drawn.min(-1)
        # Where the latent hardly looks, the panel is the crop in grey.
        level = on_panel(weights[latent].reshape(16, 16) / weights[latent].max(), box)
        quiet = level < 0.05
        if quiet.sum() > 200:
            assert np.corrcoef(drawn[quiet].mean(-1), on_panel(grey, box)[quiet])[0, 1] > 0.95, latent
        # The heat is strongest on the key the numpy attention puts first (within a key),
        # for maps whose peak stands out (nothing beside it within 10% of it).
        grid = weights[latent].reshape(16, 16)
        key = np.unravel_index(np.argmax(grid), grid.shape)
        rest = grid.copy()
        rest[max(0, key[0] - 1) : key[0] + 2, max(0, key[1] - 1) : key[1] + 2] = 0
        if rest.max() > 0.9 * grid.max():
            continue
        peaked += 1
        y, x = np.unravel_index(np.argmax(chroma), chroma.shape)
        cell = ((y + 0.5) * 16 / (bottom - top), (x + 0.5) * 16 / (right - left))
        assert abs(cell[0] - (key[0] + 0.5)) <= 1.5 and abs(cell[1] - (key[1] + 0.5)) <= 1.5, (latent, key, cell)
    assert peaked >= 4
