"""`perceiver classify` and `perceiver attention`: the image classifiers, and what their latents look at."""

import pathlib
from typing import Optional

import numpy as np

from perceiver._outputs import UserError, _check_outputs
from perceiver.cli._common import (
    _add_cache_dir,
    _check_positive,
    _checkpoint_source,
    _read_image,
    _write_all,
    _write_json,
)


def add_parsers(commands) -> None:
    """Adds `classify` and `attention` to the CLI's subparsers."""
    sub = commands.add_parser(
        "classify", help="classes of images: ImageNet's, or the labels of your model's description"
    )
    sub.add_argument("images", nargs="+", help="images (PNG, JPEG, ...)")
    sub.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    sub.add_argument("--json", help="write the labels and probabilities as JSON")
    sub.add_argument(
        "--checkpoint",
        help="imagenet_conv (default), imagenet_fourier, imagenet_learned, or a path",
    )
    _add_cache_dir(sub)
    sub.set_defaults(
        handler=_cmd_classify,
        input_options={"images": "file", "checkpoint": "checkpoint"},
        output_options={"json": "--json"},
    )

    sub = commands.add_parser(
        "attention", help="draw each latent's cross-attention over an image (an image classifier's)"
    )
    sub.add_argument("image", help="image (PNG, JPEG, ...); its centre crop, as the classifier sees it, is drawn")
    sub.add_argument(
        "-o", "--output", required=True,
        help="the grid (PNG): the crop, then each latent's map over it (the photo in grey, "
        "the map red to yellow)",
    )
    sub.add_argument(
        "--checkpoint",
        help="imagenet_conv, imagenet_fourier, imagenet_learned, or a path (default: the first "
        "of those in the cache; never downloads)",
    )
    sub.add_argument(
        "--layer", default="*perceiver_encoder/~/cross_attention/attention",
        help="module path or fnmatch pattern of the attention to draw, the first it matches "
        "(default: the encoder's cross-attention)",
    )
    sub.add_argument("--latents", type=int, default=32, help="latents drawn: the first N (default 32)")
    _add_cache_dir(sub)
    sub.set_defaults(
        handler=_cmd_attention,
        input_options={"image": "file", "checkpoint": "checkpoint"},
        output_options={"output": "-o"},
    )


def _cmd_classify(args) -> str:
    from perceiver.tasks import imagenet as imagenet_lib

    _check_outputs([("--json", args.json, "json")])
    _check_positive("--top-k", args.top_k)
    images = [_read_image(path) for path in args.images]
    source = _checkpoint_source(args.checkpoint, "imagenet_conv")
    # A description's labels (e.g. the training folders' names) name the classes.
    model = imagenet_lib.ImageClassifier.from_pretrained(source, cache_dir=args.cache_dir)
    results = model.classify(images, top_k=args.top_k)
    if args.json:
        classes = [
            {"image": path, "labels": [[name, float(p)] for name, p in labels]}
            for path, labels in zip(args.images, results)
        ]
        _write_all([(args.json, lambda p: _write_json(p, classes))])
    lines = []
    for path, labels in zip(args.images, results):
        lines.append(path)
        lines.extend(f"  {p:6.3f}  {name}" for name, p in labels)
    return "\n".join(lines)


# The published image classifiers, in the order `perceiver attention` looks for them in the cache.
_IMAGE_CLASSIFIERS = ("imagenet_conv", "imagenet_fourier", "imagenet_learned")


def _cached_image_classifier(cache_dir: Optional[str]) -> str:
    """The first published image classifier in the cache; never downloads.

    Raises:
      UserError: saying what to fetch, if none is cached.
    """
    from perceiver import hub

    cache = pathlib.Path(cache_dir).expanduser() if cache_dir else hub.cache_dir()
    for name in _IMAGE_CLASSIFIERS:
        if (cache / hub.get(name).filename).is_file():
            return name
    raise UserError(
        f"no image classifier in the cache {cache}: run `perceiver fetch imagenet_conv` (or "
        "imagenet_fourier, imagenet_learned), or give --checkpoint FILE (e.g. from "
        "`perceiver train --export`)"
    )


def _cmd_attention(args) -> str:
    """Each latent's encoder cross-attention laid over the photo's centre crop, in a grid."""
    import importlib.util

    _check_outputs([("-o", args.output, "figure")])
    _check_positive("--latents", args.latents)
    from perceiver import inspect_plots

    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(f"perceiver attention draws with matplotlib: {inspect_plots.INSTALL_HINT}")
    from perceiver import inspect, models
    from perceiver.tasks import imagenet as imagenet_lib

    image = _read_image(args.image)
    if args.checkpoint is None:
        source = _cached_image_classifier(args.cache_dir)
    else:
        source = _checkpoint_source(args.checkpoint, "imagenet_conv")
    classifier = imagenet_lib.ImageClassifier.from_pretrained(source, cache_dir=args.cache_dir)
    model = models.imagenet_classifier(classifier.variant, **classifier.sizes)
    batch = classifier.preprocess(image)[None]
    logits, maps = inspect.attention_maps(
        model, classifier.params, classifier.state, batch, layers=[args.layer]
    )
    name, weights = next(iter(maps.items()))  # the first layer the pattern matches
    # The keys are the image's pixels, or for the conv stem's a grid 4 times coarser.
    side = classifier.image_size // (4 if classifier.variant == "conv_preprocessing" else 1)
    if weights.shape[-1] != side * side or "self_attention" in name or "decoder" in name:
        raise UserError(
            f"--layer {args.layer!r} picks {name}, which does not attend from latents to the "
            f"image's {side}x{side} grid; the encoder's cross-attention does: "
            f"{inspect.ENCODER_CROSS_ATTENTION!r}"
        )
    count = min(args.latents, weights.shape[2])
    logits = np.asarray(logits, np.float64)[0]
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    top = int(np.argmax(probabilities))
    label = f"{classifier.class_names[top]} ({probabilities[top]:.3f})"
    # The part of the photo the model sees (its centre crop), at the photo's
    # own resolution: the keys' grid covers it, and each map is drawn over it.
    crop = imagenet_lib.center_crop(image, classifier.crop_fraction, classifier.min_crop_size)
    fig = inspect_plots.latent_grid(
        weights, (side, side), latents=range(count), image=np.asarray(crop, np.float32) / 255.0,
        title=f"{name}: {label}",
    )
    _write_all([(args.output, lambda p: fig.savefig(p, dpi=100))])
    return (
        f"{args.image}: {label}\n"
        f"wrote {args.output}: the attention of {count} of {weights.shape[2]} latents over "
        f"{side}x{side} keys ({name}, head 0), each over the photo's {crop.shape[0]}x"
        f"{crop.shape[1]} centre crop in grey: red to yellow where the latent looks, "
        "the brighter the more"
    )
