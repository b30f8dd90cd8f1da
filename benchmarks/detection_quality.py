"""Object detection quality: the finetune_detection recipe with and without pre-training, and HOG.

    pip install scikit-image scikit-learn
    python benchmarks/detection_quality.py            # about 20 minutes on a 2-core CPU
    python benchmarks/detection_quality.py --quick    # a few minutes: the path, not the numbers

Data: `datasets.copy_paste`, digits pasted on photos at 128 px, as
benchmarks/heads_baselines_b.py makes them: training images on the photos
astronaut, coffee, chelsea, rocket (even-numbered digit scans), test images
on china and flower (held out; odd-numbered scans).

Rows, all scored by `evaluation.detection.coco_map` on the same test images
(`ObjectDetector.evaluate`: every query's detection, no threshold):
- pre-trained: the detector's preprocessor and encoder first trained as an
  ImageNet-style classifier (`perceiver train --config imagenet`, the same
  sizes) on single digits pasted on the training photos (one class folder
  per digit), then `finetune_detection` with `task.pretrained` = that
  classifier. No published ImageNet model: imagenet_conv's sizes (224 px, 8
  blocks of 1024 channels) do not train on a CPU in minutes;
- from scratch: `finetune_detection` with `task.pretrained=none`, the same steps;
- HOG: the sliding-window HOG + logistic regression of heads_baselines_b.py,
  trained on the same training images.
Model: the tiny recipe's sizes (conv stem, 64 px input, 2 blocks of 64
channels, 32 latents, 10 queries). Prints a markdown table.
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import heads_baselines_b as baselines  # noqa: E402
from perceiver import media  # noqa: E402
from perceiver.datasets import coco, copy_paste  # noqa: E402
from perceiver.evaluation import detection  # noqa: E402

TRAIN_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]
TEST_PHOTOS = ["china", "flower"]
MODEL = [
    "model.variant=conv_preprocessing", "model.image_size=64", "model.num_latents=32",
    "model.num_latent_channels=64", "model.num_blocks=2", "model.num_self_attends_per_block=1",
    "model.num_self_attend_heads=4", "model.num_bands=8",
]
QUIET = ["train.progress=false", "train.log_every=200", "checkpoint.every_steps=100000", "train.final_eval=false"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _train(args, log):
    from perceiver.train import main

    print("perceiver train " + " ".join(args), file=log, flush=True)
    if main.main(args) != 0:
        raise SystemExit(f"training failed: {' '.join(args)}")


def _classification_folder(folder, count, size):
    """Single digits on the training photos, one sub-folder per digit (links to the images)."""
    annotations = copy_paste.make_copy_paste_set(
        os.path.join(folder, "made"), TRAIN_PHOTOS, count, size=size, seed=2, digit_split="train", objects=(1, 1)
    )
    dataset = coco.read_coco(annotations)
    root = os.path.join(folder, "classes")
    for image, ann in zip(dataset.images, dataset.annotations):
        label = f"digit_{int(ann.category_ids[0]) - 1}"
        os.makedirs(os.path.join(root, label), exist_ok=True)
        os.symlink(image.path, os.path.join(root, label, os.path.basename(image.path)))
    return root


def _hog(train_set, test_set):
    rng = np.random.default_rng(0)
    start = time.time()
    model = baselines._train_detector(train_set, rng)
    found = [baselines._detect(model, baselines._gray(media.read_image(im.path))) for im in test_set.images]
    scores = detection.coco_map(test_set.annotations, found)
    return scores, time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=60)
    parser.add_argument("--steps", type=int, default=1500, help="detection training steps (batch 16)")
    parser.add_argument("--pretrain-steps", type=int, default=1000, help="classifier pre-training steps (batch 16)")
    parser.add_argument("--pretrain-images", type=int, default=2000)
    parser.add_argument("--pretrain-batch-size", type=int, default=16)
    parser.add_argument("--pretrain-optimizer", choices=("lamb", "adamw"),
                        help="default: the tiny imagenet recipe's")
    parser.add_argument("--pretrain-warmup", type=int, default=10, help="pre-training warm-up steps")
    parser.add_argument("--skip-scratch", action="store_true", help="leave out the detector trained from scratch")
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the path only")
    parser.add_argument("--keep", help="keep the data and runs in this folder")
    args = parser.parse_args()
    if args.quick:
        args.train_images, args.test_images, args.steps = 40, 10, 20
        args.pretrain_steps, args.pretrain_images = 20, 40
    for name in ("train_images", "test_images", "steps", "pretrain_steps", "pretrain_images", "pretrain_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected >= 1; got {getattr(args, name)}")
    if not 0 <= args.pretrain_warmup <= args.pretrain_steps:
        parser.error(f"--pretrain-warmup: expected 0 to --pretrain-steps ({args.pretrain_steps}); "
                     f"got {args.pretrain_warmup}")
    log = sys.stderr
    folder = args.keep or tempfile.mkdtemp(prefix="detection_quality_")
    os.makedirs(folder, exist_ok=True)
    from perceiver.tasks.detection import ObjectDetector

    try:
        start = time.time()
        train_file = copy_paste.make_copy_paste_set(
            os.path.join(folder, "train"), TRAIN_PHOTOS, args.train_images, seed=0, digit_split="train")
        test_file = copy_paste.make_copy_paste_set(
            os.path.join(folder, "test"), TEST_PHOTOS, args.test_images, seed=1, digit_split="eval")
        classes = _classification_folder(os.path.join(folder, "pretrain"), args.pretrain_images, 64)
        print(f"data made in {time.time() - start:.0f} s", file=log)
        rows = []
        # ImageNet-style pre-training: the same preprocessor and encoder, classifying single digits.
        start = time.time()
        classifier = os.path.join(folder, "classifier")
        _train(["--config", "imagenet", "--workdir", classifier, "--tiny", f"data.train_dir={classes}",
                "data.randaugment_layers=0", "data.mixup_alpha=0", "data.cutmix=false", "data.flip=false",
                "model.num_classes=0", f"train.num_steps={args.pretrain_steps}",
                f"train.batch_size={args.pretrain_batch_size}", f"optimizer.warmup_steps={args.pretrain_warmup}",
                *([f"optimizer.optimizer={args.pretrain_optimizer}"] if args.pretrain_optimizer else []),
                *MODEL, *QUIET], log)
        pretrain_time = time.time() - start
        common = [f"data.train_paths={train_file}", f"data.eval_paths={test_file}",
                  f"train.num_steps={args.steps}", *MODEL, *QUIET]
        starts = [("pre-trained", os.path.join(classifier, "model.pystate"))]
        if not args.skip_scratch:
            starts.append(("from scratch", "none"))
        for name, pretrained in starts:
            start = time.time()
            workdir = os.path.join(folder, name.replace(" ", "_"))
            _train(["--config", "finetune_detection", "--workdir", workdir, "--tiny",
                    f"task.pretrained={pretrained}", *common], log)
            trained = time.time() - start
            scores = ObjectDetector.from_pretrained(os.path.join(workdir, "model.pystate")).evaluate(test_file)
            extra = f" + {pretrain_time:.0f} s pre-training" if name == "pre-trained" else ""
            rows.append((f"Perceiver IO detector, {name}", scores, f"{trained:.0f} s{extra}"))
        scores, seconds = _hog(coco.read_coco(train_file), coco.read_coco(test_file))
        rows.append(("HOG sliding window + logistic regression (heads_baselines_b)", scores, f"{seconds:.0f} s"))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nCopy-paste digits on photos, 128 px: {args.train_images} training images (4 photos), "
          f"{args.test_images} test images (2 held-out photos); detector {args.steps} steps of batch 16, "
          f"pre-training {args.pretrain_steps} steps of batch {args.pretrain_batch_size} "
          f"({args.pretrain_optimizer or 'recipe optimizer'}) on {args.pretrain_images} single-digit images; "
          f"{cpu_name()}\n")
    print("| model | mAP@0.5 | mAP@[.5:.95] | training time |")
    print("|---|---|---|---|")
    for name, s, seconds in rows:
        print(f"| {name} | {s.map_50:.3f} | {s.map:.3f} | {seconds} |")


if __name__ == "__main__":
    main()
