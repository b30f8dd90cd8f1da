"""The six models on whatever accelerator jax sees: outputs checked, steps timed, FLOP utilisation.

    python benchmarks/gpu_check.py --out DIR             # published sizes
    python benchmarks/gpu_check.py --out DIR --dry-run   # tiny sizes, any CPU

1. Outputs: each model's small reference checkpoint, run on the default
   device, against the outputs DeepMind's reference recorded on a CPU
   (tests/data), at float32's highest matmul precision and at jax's default
   (TF32 on NVIDIA GPUs).
2. Speed: a forward pass and a training step (AdamW) of each model with
   random weights, in float32 and in bfloat16 compute (float32 parameters),
   with the attention kernel chosen by 'auto' (cuDNN's fused kernel for
   large bfloat16 attention on a GPU) and with the tiled kernel. The work is
   counted by XLA on the plain computation (the reference's), so the FLOP
   rate is comparable between kernels; utilisation is against this device's
   own measured matrix-product peak in the same dtype.

Results are written after every case to DIR/gpu_check.json and
DIR/gpu_check.md, so a run cut short keeps what it measured. The exit status
is 1 when an output check fails.
"""

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import platform
import sys
import time
from typing import Dict, List, Optional

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import reference_fixtures as ref  # noqa: E402
from perceiver import _factories as factories  # noqa: E402
from perceiver import compute, models  # noqa: E402

# Published sizes: batch per model for forward and training steps.
BATCH = {"mlm": 8, "imagenet_learned": 16, "imagenet_fourier": 16, "imagenet_conv": 16, "flow": 4,
         "video_autoencoding": 1}
TRAINED = ("mlm", "imagenet_fourier", "imagenet_conv", "flow")
# Relative error allowed against the reference's CPU outputs.
TOLERANCE = {"highest": 1e-4, "default": 3e-2}


@dataclasses.dataclass
class Case:
    model: str
    kind: str  # 'forward' or 'train'
    dtype: str  # 'float32' or 'bfloat16'
    attention: str  # 'auto' or 'tiled'


def _relative_error(actual, expected) -> float:
    actual = jax.tree_util.tree_leaves(actual)
    expected = jax.tree_util.tree_leaves(expected)
    worst = 0.0
    for a, e in zip(actual, expected):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        worst = max(worst, float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-12)))
    return worst


def check_outputs(chosen: List[str]) -> List[Dict]:
    """Each chosen reference model on the default device against the recorded CPU outputs."""
    rows = []
    for model in chosen:
        factory, sizes = ref.SMALL_FACTORIES[model]
        transformed, params, state = models.load_for(factory, ref.checkpoint_path(model), **sizes)
        inputs, expected = ref.recorded(model)
        args = ref.factory_inputs(model, inputs)
        row = {"model": model}
        for precision in ("highest", "default"):
            with jax.default_matmul_precision(precision if precision == "highest" else None):
                fn = jax.jit(lambda p, s, *a: transformed.apply(p, s, None, *a)[0])
                out = fn(params, state, *args)
            row[precision] = _relative_error(out, expected)
        row["ok"] = all(row[p] <= TOLERANCE[p] for p in TOLERANCE)
        rows.append(row)
    return rows


def _benchmark_run():
    """benchmarks/run.py, whose matrix-product peak this check shares."""
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sizes(model: str, dry_run: bool):
    table = ref.SMALL_FACTORIES if dry_run else ref.FULL_FACTORIES
    return table[model]


def _inputs(factory: str, sizes: Dict, batch: int):
    """The factory's example inputs at `batch`: random bytes for tokens, noise for signals, masks of ones."""
    rng = np.random.default_rng(0)
    inputs = []
    for i, x in enumerate(factories._BUILDERS[factory](**sizes).example_inputs):
        if not isinstance(x, np.ndarray) or not x.ndim:
            inputs.append(x)  # e.g. the video autoencoder's subsampled outputs
            continue
        shape = (batch,) + x.shape[1:]
        if x.dtype.kind == "f":
            inputs.append(rng.uniform(-1, 1, shape).astype(x.dtype))
        elif i == 0:
            inputs.append(rng.integers(6, 262, shape).astype(x.dtype))
        else:
            inputs.append(np.ones(shape, x.dtype))
    return tuple(inputs)


def _step(transformed, kind: str):
    if kind == "forward":
        return jax.jit(lambda p, s, o, *a: transformed.apply(p, s, None, *a)[0])
    optimizer = optax.adamw(1e-4)

    def loss_fn(params, state, *inputs):
        out, new_state = transformed.apply(params, state, jax.random.PRNGKey(0), *inputs, is_training=True)
        leaves = jax.tree_util.tree_leaves(out)
        return sum(jnp.mean(jnp.square(x.astype(jnp.float32))) for x in leaves), new_state

    def train(params, state, opt_state, *inputs):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, *inputs)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    return jax.jit(train, donate_argnums=(0, 2)), optimizer


def _flops(factory: str, sizes: Dict, inputs, params, state, kind: str) -> float:
    plain = compute.configure(
        getattr(models, factory)(**sizes),
        attention="plain", absorb_projections=False, decoder_chunk_size=None, scan_blocks=False,
    )
    step = _step(plain, kind)
    fn = step if kind == "forward" else step[0]
    extra = (None,) if kind == "forward" else (step[1].init(params),)
    return float(fn.lower(params, state, *extra, *inputs).cost_analysis()["flops"])


def time_case(case: Case, dry_run: bool, repeats: int) -> Dict:
    factory, sizes = _sizes(case.model, dry_run)
    sizes = dict(sizes)
    batch = 2 if dry_run else BATCH[case.model]
    dtype = jnp.bfloat16 if case.dtype == "bfloat16" else None
    transformed = compute.configure(
        getattr(models, factory)(**sizes), attention=case.attention, compute_dtype=dtype
    )
    inputs = _inputs(factory, sizes, batch)
    params, state = jax.jit(lambda: transformed.init(jax.random.PRNGKey(0), *inputs, is_training=True))()
    flops = _flops(factory, sizes, inputs, params, state, case.kind)
    if case.kind == "forward":
        fn = _step(transformed, "forward")
        args = (params, state, None) + inputs
    else:
        fn, optimizer = _step(transformed, "train")
        args = (params, state, optimizer.init(params)) + inputs
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        out = compiled(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
        if case.kind == "train":
            args = tuple(out[:3]) + inputs
    seconds = float(np.median(times[1:]))
    return {**dataclasses.asdict(case), "batch": batch, "compile_s": compile_s, "step_s": seconds,
            "flops": flops, "tflops_per_s": flops / seconds / 1e12}


def _markdown(report: Dict) -> str:
    lines = [f"# GPU check: {report['device']} (jax {report['jax']})", ""]
    lines += ["## Outputs against the reference's CPU outputs (max relative error)", "",
              "| model | highest precision | default precision | ok |", "|---|---|---|---|"]
    for row in report["outputs"]:
        lines.append(f"| {row['model']} | {row['highest']:.2e} | {row['default']:.2e} | {row['ok']} |")
    peaks = report["peak_tflops"]
    lines += ["", f"Matrix-product peak measured: float32 {peaks['float32']:.1f}, bfloat16 "
              f"{peaks['bfloat16']:.1f} TFLOP/s.", "",
              "## Steps (median)", "",
              "| model | step | batch | compute | attention | ms | TFLOP/s | of peak | compile s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["cases"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['kind']} | | {r['dtype']} | {r['attention']} | "
                         f"failed: {r['error'][:80]} | | | |")
            continue
        share = r["tflops_per_s"] / peaks[r["dtype"]]
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['batch']} | {r['dtype']} | {r['attention']} | "
            f"{r['step_s'] * 1e3:.1f} | {r['tflops_per_s']:.2f} | {share:.0%} | {r['compile_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, batch 2: runs on any CPU")
    parser.add_argument("--only", help="comma-separated models (default: all six)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (default both)")
    parser.add_argument("--attention", default="auto,tiled", help="attention kernels (default auto,tiled)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (default 5)")
    parser.add_argument("--budget-s", type=float, default=420,
                        help="stop starting new cases after this many seconds (default 420)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = args.only.split(",") if args.only else list(ref.MODELS)
    unknown = sorted(set(chosen) - set(ref.MODELS))
    if unknown:
        parser.error(f"--only: unknown models {unknown}; choose from {list(ref.MODELS)}")
    if not set(args.dtypes.split(",")) <= {"float32", "bfloat16"}:
        parser.error(f"--dtypes: float32 and/or bfloat16; got {args.dtypes!r}")
    if not set(args.attention.split(",")) <= {"auto", "tiled", "fused", "plain"}:
        parser.error(f"--attention: auto, tiled, fused or plain; got {args.attention!r}")
    device = jax.devices()[0]
    report = {
        "device": f"{device.platform}: {getattr(device, 'device_kind', '')}",
        "host": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "dry_run": args.dry_run,
        "outputs": check_outputs(chosen),
        "peak_tflops": {
            d: gflops / 1e3
            for d, gflops in _benchmark_run().matmul_peak(1024 if args.dry_run else 8192).items()
            if d != "status"
        },
        "cases": [],
    }

    def save():
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
        (out / "gpu_check.md").write_text(_markdown(report))

    save()
    cases = [
        Case(model, kind, dtype, attention)
        for model in chosen
        for kind in ("forward", "train")
        if kind == "forward" or model in TRAINED
        for dtype in args.dtypes.split(",")
        for attention in args.attention.split(",")
    ]
    for case in cases:
        if time.perf_counter() - began > args.budget_s:
            report["cut_short"] = f"budget of {args.budget_s:.0f} s spent"
            break
        try:
            report["cases"].append(time_case(case, args.dry_run, args.repeats))
        except Exception as e:  # one failing case must not lose the others
            report["cases"].append({**dataclasses.asdict(case), "error": f"{type(e).__name__}: {e}"})
        save()
        print(_markdown(report).splitlines()[-1], flush=True)
    save()
    print(_markdown(report))
    return 0 if all(row["ok"] for row in report["outputs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
