"""Speed, memory and compile time of the published models, side by side.

Every configuration is measured in a fresh subprocess, so that its peak
resident memory (`ru_maxrss`) is its own: imports, parameters, compilation
and execution together. Parameters are random (float32, seeded by name) and
shared by both implementations, which build the same parameter tree.

    python benchmarks/run.py                      # ours only
    PERCEIVER_REFERENCE=/path/to/checkout python benchmarks/run.py

`PERCEIVER_REFERENCE` is a directory containing DeepMind's reference package
(`perceiver/perceiver.py`, `io_processors.py`, `position_encoding.py`,
`bytes_tokenizer.py`); nothing of it is copied here. Each configuration then
runs once per implementation, alternating which goes first, and the table
gives ratios ours/reference and the largest output difference.

Outputs (in --out, default benchmarks/results/): results.json, results.md
(the tables) and scaling.png (time and peak memory against input size).
"""

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import tempfile
import time
import types
from typing import Dict, List, Optional

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB_MODELS = REPO / "tests" / "data" / "reference" / "colab_models.py"

FORWARD_MODELS = (
    "mlm",
    "imagenet_learned",
    "imagenet_fourier",
    "imagenet_conv",
    "flow",
    "video_autoencoding",
)
TRAIN_MODELS = ("imagenet_fourier", "flow")
SCALING = {
    "flow_size": [(92, 124), (184, 248), (276, 372), (368, 496), (460, 620)],
    "mlm_length": [512, 1024, 2048, 4096, 8192],
    "video_frames": [2, 4, 8, 16],
}
# The colab decodes the video in this many chunks; the forward benchmark
# decodes one of them, as the colab does per call.
VIDEO_CHUNKS = 128


@dataclasses.dataclass
class Config:
    """One measurement: a model, its sizes, and what to time."""

    name: str
    model: str
    kind: str = "forward"  # 'forward' or 'train'
    sizes: Dict = dataclasses.field(default_factory=dict)
    batch: int = 1
    video_full_decode: bool = False
    options: Dict = dataclasses.field(default_factory=dict)  # ours only: compute options
    repeats: int = 3


# ---------------------------------------------------------------------------
# Models and inputs, for both implementations
# ---------------------------------------------------------------------------


def _colab_dims(sizes: Dict) -> Dict:
    """colab_models' dimension table at full size, with `sizes` overridden."""
    colab = _load_colab_models()
    dims = colab._dims("full")
    dims.update(sizes)
    return dims


def _load_colab_models():
    spec = importlib.util.spec_from_file_location("colab_models", COLAB_MODELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _factory(config: Config):
    """`(factory, kwargs)` of perceiver.models for the configuration."""
    s = config.sizes
    if config.model == "mlm":
        return "masked_language_model", dict(max_seq_len=s.get("seq", 2048))
    if config.model.startswith("imagenet_"):
        variant = {
            "imagenet_learned": "learned_position_encoding",
            "imagenet_fourier": "fourier_position_encoding",
            "imagenet_conv": "conv_preprocessing",
        }[config.model]
        return "imagenet_classifier", dict(variant=variant)
    if config.model == "flow":
        return "optical_flow", dict(image_shape=tuple(s.get("flow_hw", (368, 496))))
    if config.model == "video_autoencoding":
        return "video_autoencoder", dict(num_frames=s.get("frames", 16))
    raise ValueError(f"unknown model {config.model!r}")


def make_inputs(config: Config):
    """Positional inputs of the model's apply (after params, state, rng)."""
    dims = _colab_dims(config.sizes)
    rng = np.random.default_rng(0)
    b = config.batch
    if config.model == "mlm":
        n = dims["seq"]
        tokens = rng.integers(6, 262, size=(b, n)).astype(np.int32)
        mask = np.ones((b, n), np.int32)
        mask[:, n * 7 // 8 :] = 0  # padded tail
        tokens[:, n * 7 // 8 :] = 0
        return (tokens, mask)
    if config.model.startswith("imagenet_"):
        return (rng.standard_normal((b, dims["img"], dims["img"], 3)).astype(np.float32),)
    if config.model == "flow":
        h, w = dims["flow_hw"]
        return (rng.uniform(-1, 1, (b, 2, h, w, 3)).astype(np.float32),)
    frames, hw = dims["frames"], dims["vid_hw"]
    images = rng.uniform(0, 1, (b, frames, hw, hw, 3)).astype(np.float32)
    audio = rng.uniform(-1, 1, (b, frames * dims["audio_per_frame"], 1)).astype(np.float32)
    num_image = frames * hw * hw
    num_audio = frames * dims["audio_per_frame"] // 16
    if config.video_full_decode:
        sub = {"image": np.arange(num_image), "audio": np.arange(num_audio)}
    else:
        img_chunk, aud_chunk = num_image // VIDEO_CHUNKS, num_audio // VIDEO_CHUNKS
        sub = {
            "image": np.arange(img_chunk, 2 * img_chunk),
            "audio": np.arange(aud_chunk, 2 * aud_chunk),
        }
    return (images, audio, {**sub, "label": None})


def build(impl: str, config: Config, reference_dir: Optional[str]):
    """`(transformed, example_inputs)`: ours from perceiver.models, theirs as the colab builds it."""
    if impl == "ours":
        sys.path.insert(0, str(REPO))
        from perceiver import compute, models

        factory, kwargs = _factory(config)
        transformed = getattr(models, factory)(**kwargs)
        if config.options:
            transformed = compute.configure(transformed, **_decode_options(config.options))
        return transformed
    # The reference's perceiver/ has no __init__.py, so a plain import would
    # find this repository's package first; register its folder as the package.
    package = types.ModuleType("perceiver")
    package.__path__ = [str(pathlib.Path(reference_dir) / "perceiver")]
    sys.modules["perceiver"] = package
    from perceiver import bytes_tokenizer, io_processors, perceiver  # the reference's

    where = pathlib.Path(perceiver.__file__).resolve()
    if pathlib.Path(reference_dir).resolve() not in where.parents:
        raise RuntimeError(f"imported {where}, not the reference under {reference_dir}")
    colab = _load_colab_models()
    # The 'full' construction (published head counts, patch sizes, ...) with
    # the configuration's sizes in place of the published ones.
    dims = _colab_dims(config.sizes)
    colab._dims = lambda size: dict(dims)
    pkg = types.SimpleNamespace(
        perceiver=perceiver, io_processors=io_processors, bytes_tokenizer=bytes_tokenizer
    )
    transformed, _ = colab.MODELS[config.model](pkg, "full")
    return transformed


def _decode_options(options: Dict) -> Dict:
    out = dict(options)
    if isinstance(out.get("compute_dtype"), str):
        import jax.numpy as jnp

        out["compute_dtype"] = jnp.dtype(out["compute_dtype"])
    return out


def seeded_params(tree, put=None) -> Dict:
    """Deterministic float32 weights keyed by parameter path (as colab_models does).

    Args:
      tree: `{module: {name: shape-like}}`.
      put: applied to each array as it is made (e.g. `jax.device_put`), so
        that no second full copy of the parameters is ever held.
    """
    import zlib

    put = put or (lambda x: x)
    out = {}
    for module, params in tree.items():
        out[module] = {}
        for name, leaf in params.items():
            shape = tuple(leaf.shape)
            rng = np.random.default_rng(zlib.crc32(f"{module}/{name}".encode()))
            if name == "counter":
                value = np.zeros(shape, np.int32)
            elif name in ("w", "embeddings"):
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                value = rng.standard_normal(shape) / np.sqrt(fan_in)
            elif name == "scale":
                value = 1.0 + 0.1 * rng.standard_normal(shape)
            elif name == "pos_embs":
                value = 0.5 * rng.standard_normal(shape)
            elif module.endswith("var_ema") and name in ("average", "hidden"):
                value = rng.uniform(0.5, 1.5, shape)
            else:
                value = 0.1 * rng.standard_normal(shape)
            out[module][name] = put(np.asarray(value, leaf.dtype))
    return out


# ---------------------------------------------------------------------------
# Worker: one configuration, one implementation, in this process
# ---------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(impl: str, config: Config, reference_dir: Optional[str], output_path: Optional[str]):
    import jax
    import jax.numpy as jnp

    transformed = build(impl, config, reference_dir)
    inputs = make_inputs(config)
    rng = jax.random.PRNGKey(0)
    params_shape, state_shape = jax.eval_shape(
        lambda: transformed.init(rng, *inputs, is_training=True)
    )
    params = seeded_params(params_shape, put=jax.device_put)
    state = seeded_params(state_shape, put=jax.device_put)
    if impl == "ours" and config.kind == "forward" and config.options.get("compute_dtype"):
        from perceiver import compute

        # Weights held in the compute dtype, converted once (as transformers'
        # bf16 models hold theirs), not on every call.
        params = compute.cast_params(transformed.apply, params, state, rng, *inputs)
    jax.block_until_ready((params, state))
    gc.collect()
    result = {"baseline_rss_bytes": _rss_bytes()}

    if config.kind == "forward":

        def fn(params, state, rng, *inputs):
            return transformed.apply(params, state, rng, *inputs)[0]

        args = (params, state, rng) + tuple(inputs)
        options = {}
        if impl == "ours":
            from perceiver import compute

            # What perceiver.compute.jit would choose for this dtype (bf16 on CPU:
            # YNNPACK's dots off); nothing for float32.
            options = compute.compiler_options(_decode_options(config.options).get("compute_dtype"))
        jitted = jax.jit(fn, compiler_options=options or None)
    else:
        import optax

        optimizer = optax.adam(1e-4)

        def loss_fn(params, state, rng, *inputs):
            out, new_state = transformed.apply(params, state, rng, *inputs, is_training=True)
            leaves = jax.tree_util.tree_leaves(out)
            loss = sum(jnp.mean(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves)
            return loss, new_state

        def fn(params, state, opt_state, rng, *inputs):
            (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, state, rng, *inputs
            )
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_state, opt_state, loss

        opt_state = jax.jit(optimizer.init)(params)
        args = (params, state, opt_state, rng) + tuple(inputs)
        # Parameters and optimiser state are updated in place, as in training.
        jitted = jax.jit(fn, donate_argnums=(0, 2))

    start = time.perf_counter()
    lowered = jitted.lower(*args)
    result["trace_s"] = time.perf_counter() - start
    compiled = lowered.compile()
    result["compile_s"] = time.perf_counter() - start
    try:
        result["xla_flops"] = float(compiled.cost_analysis()["flops"])
    except Exception:  # cost analysis is best effort
        result["xla_flops"] = None
    del lowered
    gc.collect()

    times, cpu_times = [], []
    for i in range(config.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = compiled(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        if config.kind == "train":
            params, state, opt_state = out[:3]
            args = (params, state, opt_state, rng) + tuple(inputs)
            result.setdefault("losses", []).append(float(out[3]))
        elif i == 0 and output_path:
            leaves = jax.tree_util.tree_leaves(out)
            np.savez(output_path, *[np.asarray(leaf, np.float32) for leaf in leaves])
        del out
    result.update(
        status="ok",
        times_s=times,
        best_s=min(times),
        cpu_s=cpu_times,
        best_cpu_s=min(cpu_times),
        peak_rss_bytes=_peak_rss_bytes(),
    )
    return result


def matmul_peak(n: int = 2048) -> Dict:
    """GFLOP/s of one `n`^3 matrix product on the default device, float32 and bfloat16: its ceiling.

    bfloat16 operands are multiplied with a float32 result, as the library's
    bfloat16 mode multiplies them.
    """
    import jax
    import jax.numpy as jnp

    out = {"status": "ok"}
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        a = jnp.ones((n, n), dtype)
        product = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
        product(a, a).block_until_ready()
        best = float("inf")
        for _ in range(7):
            start = time.perf_counter()
            product(a, a).block_until_ready()
            best = min(best, time.perf_counter() - start)
        out[name] = 2 * n**3 / best / 1e9
    return out


def flop_count(config: Config) -> float:
    """XLA's FLOP count of the model written as the reference writes it.

    Our fast paths run loops, whose bodies XLA's cost analysis counts once;
    so the work is counted on our plain, unrolled computation, which is the
    reference's, and used as the numerator of GFLOP/s for both.
    """
    import jax

    plain = dict(
        attention="plain", absorb_projections=False, decoder_chunk_size=None, scan_blocks=False
    )
    config = dataclasses.replace(config, options=plain)
    transformed = build("ours", config, None)
    inputs = make_inputs(config)
    rng = jax.random.PRNGKey(0)
    training = config.kind == "train"
    params, state = jax.eval_shape(lambda: transformed.init(rng, *inputs, is_training=True))

    if training:

        def fn(params, state, rng, *inputs):
            def loss(params):
                out, _ = transformed.apply(params, state, rng, *inputs, is_training=True)
                return sum(jax.numpy.mean(jax.numpy.square(x)) for x in jax.tree_util.tree_leaves(out))

            return jax.grad(loss)(params)

    else:

        def fn(params, state, rng, *inputs):
            return transformed.apply(params, state, rng, *inputs)[0]

    lowered = jax.jit(fn).lower(params, state, rng, *inputs)
    return float(lowered.cost_analysis()["flops"])


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def _config_to_json(config: Config) -> str:
    return json.dumps(dataclasses.asdict(config))


def run_subprocess(args: List[str], timeout: float, max_rss: float) -> Dict:
    """Runs a worker; kills it past `timeout` seconds or `max_rss` bytes."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, cwd=str(REPO))
        start, peak, reason = time.time(), 0, None
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            if peak > max_rss:
                reason = f"stopped: resident memory passed {max_rss / 2**30:.0f} GiB"
            elif time.time() - start > timeout:
                reason = f"stopped: ran past {timeout:.0f} s"
            if reason:
                proc.kill()
                proc.wait()
                return {"status": reason, "peak_rss_bytes": peak}
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = err.read()[-2000:]
            status = f"failed (exit {proc.returncode})"
            found = re.search(r"RESOURCE_EXHAUSTED: Out of memory allocating (\d+) bytes", tail)
            if found:
                status = f"out of memory (asked XLA for {int(found.group(1)) / 2**30:.0f} GiB at once)"
            return {"status": status, "error": tail, "peak_rss_bytes": peak}
        return json.loads(lines[-1][len("RESULT ") :])


def _worker_command(mode: str, config: Config, reference_dir, output_path=None) -> List[str]:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", mode]
    cmd += ["--config", _config_to_json(config)]
    if reference_dir:
        cmd += ["--reference", reference_dir]
    if output_path:
        cmd += ["--output", output_path]
    return cmd


def _load_leaves(path: str):
    try:
        with np.load(path) as z:
            return [z[key] for key in z.files]
    except OSError:
        return None


def output_errors(actual_path: str, expected_path: str) -> Optional[Dict]:
    """Largest `max |a - e| / max |e|` and `rms(a - e) / rms(e)` over output arrays."""
    actual, expected = _load_leaves(actual_path), _load_leaves(expected_path)
    if actual is None or expected is None or len(actual) != len(expected):
        return None
    worst = {"max": 0.0, "rms": 0.0}
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            return {"max": float("nan"), "rms": float("nan")}
        a, e = a.astype(np.float64), e.astype(np.float64)
        worst["max"] = max(worst["max"], float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-30)))
        rms = np.sqrt(np.mean((a - e) ** 2)) / max(np.sqrt(np.mean(e**2)), 1e-30)
        worst["rms"] = max(worst["rms"], float(rms))
    return worst


def _combine(results: List[Dict]) -> Dict:
    """One implementation's rounds: best time and compile time, smallest peak."""
    ok = [r for r in results if r.get("status") == "ok"]
    if not ok:
        return results[-1]
    best = dict(min(ok, key=lambda r: r["best_s"]))
    best["compile_s"] = min(r["compile_s"] for r in ok)
    best["best_cpu_s"] = min(r["best_cpu_s"] for r in ok)
    best["peak_rss_bytes"] = min(r["peak_rss_bytes"] for r in ok)
    best["rounds"] = results
    return best


def measure(configs: List[Config], reference_dir, args, log) -> List[Dict]:
    rows = []
    tmp = tempfile.mkdtemp(prefix="perceiver_bench_")
    float32_outputs = {}  # model -> our float32 forward output, to score bfloat16
    for index, config in enumerate(configs):
        impls = ["ours"] + (["reference"] if reference_dir and not config.options else [])
        rounds = args.rounds if config.name.startswith("forward") else 1
        row = {"config": dataclasses.asdict(config), "results": {}}
        outputs, runs = {}, {impl: [] for impl in impls}
        for round_index in range(rounds):
            order = impls if (index + round_index) % 2 == 0 else impls[::-1]
            for impl in order:  # alternate which implementation runs first
                output_path = os.path.join(tmp, f"{index}_{impl}.npz")
                outputs[impl] = output_path
                cmd = _worker_command(impl, config, reference_dir, output_path)
                result = run_subprocess(cmd, args.timeout, args.max_rss_gb * 2**30)
                runs[impl].append(result)
                log(f"{config.name:<34} {impl:<9} {_summary(result)}")
        row["results"] = {impl: _combine(results) for impl, results in runs.items()}
        if config.kind == "forward":
            if "reference" in outputs:
                errors = output_errors(outputs["ours"], outputs["reference"])
                row["max_rel_diff"] = errors and errors["max"]
            if config.name.startswith("forward/"):
                float32_outputs[config.model] = outputs["ours"]
            elif config.options.get("compute_dtype") and config.model in float32_outputs:
                row["bf16_error"] = output_errors(outputs["ours"], float32_outputs[config.model])
        if args.flops and not config.options:
            count = run_subprocess(
                _worker_command("flops", config, None), args.timeout, args.max_rss_gb * 2**30
            )
            row["model_flops"] = count.get("flops")
        rows.append(row)
    return rows


def _summary(result: Dict) -> str:
    if result.get("status") != "ok":
        return result.get("status", "?") + " " + result.get("error", "")[-300:].replace("\n", " | ")
    return (
        f"compile {result['compile_s']:.1f} s, best {result['best_s']:.2f} s "
        f"(cpu {result['best_cpu_s']:.2f} s), peak {result['peak_rss_bytes'] / 2**30:.2f} GiB"
    )


def default_configs(args) -> List[Config]:
    configs = []
    if "forward" in args.parts:
        for model in args.models:
            configs.append(Config(f"forward/{model}", model, repeats=args.repeats))
        if args.bf16:
            for model in args.models:
                configs.append(
                    Config(
                        f"forward-bf16/{model}",
                        model,
                        repeats=args.repeats,
                        options={"compute_dtype": "bfloat16"},
                    )
                )
    if "train" in args.parts:
        for model in TRAIN_MODELS:
            if model in args.models:
                configs.append(Config(f"train/{model}", model, kind="train", repeats=2))
                configs.append(
                    Config(
                        f"train-remat/{model}",
                        model,
                        kind="train",
                        repeats=2,
                        options={"remat": True},
                    )
                )
    if "scaling" in args.parts:
        for hw in SCALING["flow_size"]:
            configs.append(
                Config(f"scaling/flow_size/{hw[0]}x{hw[1]}", "flow", sizes={"flow_hw": hw}, repeats=2)
            )
        for length in SCALING["mlm_length"]:
            configs.append(
                Config(f"scaling/mlm_length/{length}", "mlm", sizes={"seq": length}, repeats=2)
            )
        for frames in SCALING["video_frames"]:
            configs.append(
                Config(
                    f"scaling/video_frames/{frames}",
                    "video_autoencoding",
                    sizes={"frames": frames},
                    video_full_decode=True,
                    repeats=1,
                )
            )
    return configs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default=os.environ.get("PERCEIVER_REFERENCE"),
                        help="checkout containing the reference's perceiver/ package")
    parser.add_argument("--parts", default="forward,train,scaling",
                        help="comma-separated: forward, train, scaling")
    parser.add_argument("--models", default=",".join(FORWARD_MODELS))
    parser.add_argument("--repeats", type=int, default=3, help="forward passes; the best counts")
    parser.add_argument("--rounds", type=int, default=2,
                        help="processes per implementation for the forward passes; the best counts")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--max-rss-gb", type=float, default=10.0,
                        help="stop a configuration whose resident memory passes this")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="skip the bfloat16 forward passes")
    parser.add_argument("--no-flops", dest="flops", action="store_false",
                        help="skip counting each model's FLOPs")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--worker", choices=["ours", "reference", "flops", "peak"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        config = Config(**json.loads(args.config))
        if args.worker == "flops":
            result = {"status": "ok", "flops": flop_count(config)}
        elif args.worker == "peak":
            result = matmul_peak()
        else:
            result = worker(args.worker, config, args.reference, args.output)
        print("RESULT " + json.dumps(result), flush=True)
        return

    args.parts = args.parts.split(",")
    args.models = args.models.split(",")
    if args.reference and not (pathlib.Path(args.reference) / "perceiver" / "perceiver.py").exists():
        parser.error(f"--reference {args.reference} has no perceiver/perceiver.py")
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(line):
        print(line, flush=True)

    configs = default_configs(args)
    log(f"{len(configs)} configurations; reference: {args.reference or 'none'}")
    peak = run_subprocess(
        _worker_command("peak", Config("peak", "mlm"), None), args.timeout, args.max_rss_gb * 2**30
    )
    log(f"matmul peak: {peak}")
    rows = measure(configs, args.reference, args, log)
    meta = {
        "command": " ".join([os.path.basename(sys.executable), "benchmarks/run.py"] + (argv or sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "reference": bool(args.reference),
        "matmul_gflops": {k: v for k, v in peak.items() if k != "status"},
    }
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    import report  # next to this file

    report.write_report(rows, meta, out_dir)
    log(f"wrote {out_dir / 'results.md'} and {out_dir / 'scaling.png'}")


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    main()
