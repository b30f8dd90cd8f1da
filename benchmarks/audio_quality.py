"""Audio classification: the raw-waveform Perceiver against the MFCC + logistic-regression baseline.

    python benchmarks/audio_quality.py [--num-steps 600] [--variants K] [--workdir DIR] [--skip-baseline]

Data as `benchmarks/heads_baselines_b.py audio`: `datasets.spoken_words`
(the ten digit words spoken by espeak-ng voices), speakers held out: the
first 16 of `SPEAKERS` train (160 clips), the other 8 test (80 clips). The
model is `finetune_audio` from scratch at small sizes that train in about
ten minutes on a 2-core CPU: clips at 8 kHz, one second in 200 patches of
40 samples, 64 latents of 128 channels, 4 self-attention layers. It
classifies the held-out files with `AudioClassifier.classify`. Score:
accuracy (chance 0.1), for the model and for the baseline run here on the
same split. `--variants K` adds each training voice at K other speeds
and pitches (more clips, the same 16 voices; both model and baseline train
on them). Needs espeak-ng (and scikit-learn for the baseline).
"""

import argparse
import contextlib
import io
import os
import pathlib
import re
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import heads_baselines_b  # noqa: E402

from perceiver.datasets import audio_folders, spoken_words  # noqa: E402

SAMPLE_RATE = 8000
SIZES = dict(num_samples=8000, samples_per_patch=40, num_bands=32, num_latents=64, num_latent_channels=128,
             num_blocks=1, num_self_attends_per_block=4, num_self_attend_heads=4, num_cross_attend_heads=1)


def make_data(folder: str, variants: int = 0):
    """The baseline's split, written as class folders: (train folder, test folder)."""
    speakers = spoken_words.vary_speakers(spoken_words.SPEAKERS[:16], variants)
    train = spoken_words.make_spoken_words(os.path.join(folder, "train"), speakers=speakers)
    test = spoken_words.make_spoken_words(os.path.join(folder, "test"), speakers=spoken_words.SPEAKERS[16:])
    return str(train), str(test)


def train_model(workdir: str, train_dir: str, eval_dir: str, num_steps: int) -> str:
    """Trains finetune_audio from scratch on the folders; the exported checkpoint's path."""
    from perceiver.train import main

    overrides = [f"model.{k}={v}" for k, v in SIZES.items()] + [
        f"data.train_dir={train_dir}", f"data.eval_dir={eval_dir}", f"data.sample_rate={SAMPLE_RATE}",
        f"train.num_steps={num_steps}", "train.epochs=0", "train.batch_size=32", "train.eval_batch_size=80",
        f"train.log_every={max(num_steps // 6, 1)}", "train.progress=false", "optimizer.base_lr=1e-3",
        "optimizer.warmup_steps=30", "optimizer.end_lr=5e-5", f"checkpoint.every_steps={num_steps}",
    ]
    status = main.main(["--config", "finetune_audio", "--workdir", workdir] + overrides)
    if status != 0:
        raise SystemExit(f"training failed with status {status}")
    return os.path.join(workdir, "model.pystate")


def baseline_accuracy(variants: int) -> str:
    """Runs heads_baselines_b's MFCC + logistic regression (same split, its own copy of the data)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        heads_baselines_b.audio(variants)
    text = out.getvalue()
    print(text, end="")
    return re.search(r"test accuracy ([\d.]+)", text).group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-steps", type=int, default=600)
    parser.add_argument("--workdir", help="default: a temporary folder")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--variants", type=int, default=0,
                        help="also train on each training voice at this many other speeds and pitches "
                             "(spoken_words.vary_speakers; the held-out voices are unchanged)")
    args = parser.parse_args()
    if not 0 <= args.variants <= 24:
        parser.error(f"--variants: expected 0 to 24; got {args.variants}")
    from perceiver.tasks.audio_classification import AudioClassifier

    workdir = args.workdir or tempfile.mkdtemp(prefix="audio_quality_")
    train_dir, test_dir = make_data(os.path.join(workdir, "data"), args.variants)
    start = time.perf_counter()
    path = train_model(os.path.join(workdir, "run"), train_dir, test_dir, args.num_steps)
    train_s = time.perf_counter() - start
    test = audio_folders.read_audio_folder(test_dir, SAMPLE_RATE, SIZES["num_samples"])
    classifier = AudioClassifier.from_pretrained(path, batch_size=16)
    start = time.perf_counter()
    predicted = [labels[0][0] for labels in classifier.classify(test.paths, top_k=1)]
    classify_s = time.perf_counter() - start
    accuracy = sum(p == test.classes[l] for p, l in zip(predicted, test.labels)) / len(predicted)
    print(f"model: {args.num_steps} steps of 32 clips in {train_s:.0f} s; classifying {len(predicted)} "
          f"held-out clips {classify_s:.1f} s; accuracy {accuracy:.3f}")
    clips = 160 * (1 + args.variants)
    rows = [f"| perceiver finetune_audio, raw waveform, from scratch, {args.num_steps} steps | {accuracy:.3f} |"]
    if not args.skip_baseline:
        rows.insert(0, f"| MFCC + logistic regression (heads_baselines_b.py audio) | {baseline_accuracy(args.variants)} |")
    print(f"\n| spoken digits: {clips} training clips, 8 held-out voices (80 clips) | accuracy |\n|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
