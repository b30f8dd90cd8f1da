"""`perceiver detect`: objects in an image, with a detector you trained (`finetune_detection`)."""

import numpy as np

from perceiver._outputs import UserError, _check_outputs
from perceiver.cli._common import (
    _add_cache_dir,
    _checkpoint_source,
    _read_image,
    _write_all,
    _write_json,
)

# Box colours, one per class in turn: bright, told apart on photos.
_COLOURS = np.array(
    [(255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220),
     (255, 128, 0), (160, 64, 255), (255, 255, 255), (128, 255, 128)], np.uint8
)


def add_parsers(commands) -> None:
    """Adds `detect` to the CLI's subparsers."""
    sub = commands.add_parser("detect", help="boxes and classes of the objects in an image, with a detector you trained")
    sub.add_argument("image", help="image (PNG, JPEG, ...), any size")
    sub.add_argument(
        "--checkpoint",
        help="the exported detector (perceiver train --config finetune_detection --export FILE)",
    )
    sub.add_argument("-o", "--output", help="draw the boxes and labels on the image (PNG, JPEG, ...)")
    sub.add_argument("--json", help="write the boxes (x0, y0, x1, y1 pixels), labels and scores as JSON")
    sub.add_argument("--threshold", type=float, default=0.5, help="the least score shown, in [0, 1) (default 0.5)")
    _add_cache_dir(sub)
    sub.set_defaults(
        handler=_cmd_detect,
        input_options={"image": "file", "checkpoint": "checkpoint"},
        output_options={"output": "-o", "json": "--json"},
    )


def draw_detections(image: np.ndarray, found) -> np.ndarray:
    """A copy of `image` `[H, W, 3]` uint8 with each box of `found` (`tasks.detection.Detections`) and its label."""
    from perceiver import _bitmap_text

    out = np.array(image, np.uint8, copy=True)
    height, width = out.shape[:2]
    thick = max(1, min(height, width) // 200)
    scale = max(1, min(height, width) // 250)
    # Drawn least confident first, so the best boxes lie on top.
    for i in reversed(range(len(found.scores))):
        colour = _COLOURS[int(found.classes[i]) % len(_COLOURS)]
        x0, y0, x1, y1 = (int(round(float(v))) for v in found.boxes[i])
        x0, x1 = np.clip([x0, x1 - 1], 0, width - 1)
        y0, y1 = np.clip([y0, y1 - 1], 0, height - 1)
        out[y0:y0 + thick, x0:x1 + 1] = colour
        out[max(y1 - thick + 1, 0):y1 + 1, x0:x1 + 1] = colour
        out[y0:y1 + 1, x0:x0 + thick] = colour
        out[y0:y1 + 1, max(x1 - thick + 1, 0):x1 + 1] = colour
        text = _printable(f"{found.labels[i]} {found.scores[i]:.2f}")
        text_h, text_w = _bitmap_text.text_size(text, scale)
        top = y0 - text_h - 2 * scale if y0 >= text_h + 2 * scale else y0 + thick
        out[max(top, 0):top + text_h + 2 * scale, x0:x0 + text_w + 2 * scale] = colour
        ink = (0, 0, 0) if int(colour.astype(int) @ (299, 587, 114)) > 128_000 else (255, 255, 255)
        _bitmap_text.draw_text(out, text, top + scale, x0 + scale, ink, scale)
    return out


def _printable(text: str) -> str:
    """`text` with the characters the bitmap font lacks replaced by spaces."""
    from perceiver import _bitmap_text

    def has(char):
        try:
            _bitmap_text.text_mask(char)
            return True
        except ValueError:
            return False

    return "".join(c if has(c) else " " for c in text)


def _cmd_detect(args) -> str:
    from perceiver import media
    from perceiver.tasks import detection

    _check_outputs([("-o", args.output, "image"), ("--json", args.json, "json")])
    if not 0 <= args.threshold < 1:
        raise UserError(f"--threshold must be in [0, 1); got {args.threshold}")
    if not args.checkpoint:
        raise UserError(
            "detect needs --checkpoint FILE: a detector exported by `perceiver train --config "
            "finetune_detection ... --export FILE` (none is published)"
        )
    image = _read_image(args.image)
    source = _checkpoint_source(args.checkpoint, None)
    detector = detection.ObjectDetector.from_pretrained(source, cache_dir=args.cache_dir)
    (found,) = detector.detect(image, threshold=args.threshold)
    writes = []
    if args.output:
        drawn = draw_detections(image, found)
        writes.append((args.output, lambda p: media.write_image(p, drawn)))
    if args.json:
        record = {"image": args.image, "width": int(image.shape[1]), "height": int(image.shape[0]),
                  "threshold": args.threshold, "detections": found.to_json()}
        writes.append((args.json, lambda p: _write_json(p, record)))
    _write_all(writes)
    lines = [f"{args.image}: {len(found.scores)} object(s) scored above {args.threshold}"]
    lines += [
        f"  {score:6.3f}  {label}  [{', '.join(f'{v:.1f}' for v in box)}]"
        for label, score, box in zip(found.labels, found.scores, found.boxes)
    ]
    return "\n".join(lines)
