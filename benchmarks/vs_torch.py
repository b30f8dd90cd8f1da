"""Ours against transformers' PyTorch Perceiver, same weights, same process.

    python benchmarks/vs_torch.py                     # all five, ~25 min here
    python benchmarks/vs_torch.py --models flow --rounds 3

For each model: our float32 and bfloat16 forward passes (bfloat16 with its
weights converted once by `perceiver.compute.cast_params`), compiled as
`perceiver.compute.jit` compiles them (and with XLA's defaults where that
differs), and transformers' float32 one (and its bfloat16 one with
--torch-bf16), batch 1, at the published sizes, on the same random weights (`run.seeded_params`, written for
transformers by `perceiver.convert.to_hf`) and the same inputs. All are
compiled or warmed up first, then timed in turn, round after round, so that
load on the machine falls on all of them alike; the best time of each counts.

Also measured, first: the machine's product limit, the best rate of one
2048 x 2048 x 2048 product among XLA, numpy's BLAS and torch (float32, and
bfloat16 with a float32 result). Each model's useful GFLOP/s (XLA's count of
the computation as the reference writes it, `run.flop_count`) is reported as
a share of it.

torch and transformers are optional: without them only ours is timed. The
table goes to stdout, the numbers to --out (JSON).
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import run  # noqa: E402  (benchmarks/run.py: models, inputs, weights, FLOP counts)

MODELS = ("mlm", "imagenet_learned", "imagenet_fourier", "imagenet_conv", "flow")
# The five models transformers has (its video autoencoder is not timed here:
# its decoder subsampling differs from the colab's chunking).

PRODUCT_N = 2048


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> List[str]:
    """The matrix-unit flags the CPU reports (AMX, AVX-512 BF16/FP16, VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    wanted = ("amx", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx512f")
                    return sorted(f for f in flags if f.startswith(wanted))
    except OSError:
        pass
    return []


def best_of(fns: Dict[str, Callable[[], None]], rounds: int, calls: int = 1) -> Dict[str, float]:
    """Best wall time of each function, timed in turn round after round (after a warm-up)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def product_limit(rounds: int, compiler_options: Dict[str, Dict],
                  torch_dtypes: Sequence[str] = ("float32", "bfloat16")) -> Dict[str, Dict[str, float]]:
    """GFLOP/s of one n x n x n product by each library, float32 and bf16 (float32 result).

    Args:
      rounds: timing rounds (3 calls each).
      compiler_options: extra XLA variants to time, name -> per-function
        compiler options (`jax.jit(...).lower(...).compile(compiler_options=...)`).
      torch_dtypes: the dtypes torch's product is timed in (its bf16 product
        takes minutes on a CPU without a bf16 unit).
    """
    import jax
    import jax.numpy as jnp

    n = PRODUCT_N
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    fns = {}
    for dtype in ("float32", "bfloat16"):
        x, y = jnp.asarray(a, dtype), jnp.asarray(b, dtype)

        def product(x, y):
            return jnp.matmul(x, y, preferred_element_type=jnp.float32)

        for label, options in {"xla": {}, **compiler_options}.items():
            compiled = jax.jit(product).lower(x, y).compile(compiler_options=options)
            fns[(label, dtype)] = lambda c=compiled, x=x, y=y: c(x, y).block_until_ready()
    fns[("numpy", "float32")] = lambda: a @ b
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ta16, tb16 = ta.bfloat16(), tb.bfloat16()
        if "float32" in torch_dtypes:
            fns[("torch", "float32")] = lambda: ta @ tb
        if "bfloat16" in torch_dtypes:
            fns[("torch", "bfloat16")] = lambda: ta16 @ tb16
    except ImportError:
        pass
    best = best_of(fns, rounds, calls=3)
    out: Dict[str, Dict[str, float]] = {}
    for (label, dtype), seconds in best.items():
        out.setdefault(label, {})[dtype] = 2 * n**3 / seconds / 1e9
    return out


def hf_inputs(model: str, inputs):
    """transformers' keyword arguments for our positional inputs."""
    import torch

    sys.path.insert(0, str(run.REPO / "tests"))
    from make_hf_fixtures import patches_for_flow

    if model == "mlm":
        tokens, mask = inputs
        return dict(
            inputs=torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask).float()
        )
    (images,) = inputs
    if model == "flow":
        # transformers takes the 3x3 patches ready made; ours extracts them
        # inside the timed call.
        return dict(inputs=torch.from_numpy(patches_for_flow(images)))
    return dict(inputs=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())


def build_hf(config: "run.Config", params, state, folder: str, dtype: str):
    import torch
    import transformers

    from perceiver import convert

    factory, sizes = run._factory(config)
    convert.to_hf(params, state, factory, sizes, folder, allow_deviations=True)
    arch = json.load(open(os.path.join(folder, "config.json")))["architectures"][0]
    hf = getattr(transformers, arch).from_pretrained(folder).eval()
    return hf.to(torch.bfloat16) if dtype == "bfloat16" else hf


def measure_model(name: str, rounds: int, torch_bf16: bool, variants: Dict[str, Dict]) -> Dict:
    """Best forward times of ours (f32, bf16, and per-function XLA variants) and transformers'."""
    import jax
    import jax.numpy as jnp

    from perceiver import compute

    config = run.Config(name=name, model=name)
    inputs = run.make_inputs(config)
    model = run.build("ours", config, None)
    rng = jax.random.PRNGKey(0)
    p_shape, s_shape = jax.eval_shape(lambda: model.init(rng, *inputs, is_training=True))
    # On the device once, as transformers' model holds its tensors: numpy
    # arguments would be copied in on every call.
    params = run.seeded_params(p_shape, put=jax.device_put)
    state = run.seeded_params(s_shape, put=jax.device_put)
    fns: Dict[str, Callable[[], None]] = {}
    for dtype in ("float32", "bfloat16"):
        transformed = model
        if dtype == "bfloat16":
            transformed = compute.configure(model, compute_dtype=jnp.bfloat16)

        def forward(params, state, *inputs, transformed=transformed):
            return transformed.apply(params, state, None, *inputs)[0]

        # bfloat16: weights converted once (`compute.cast_params`), as
        # transformers' bf16 model holds its weights in bf16.
        weights = params
        if dtype == "bfloat16":
            weights = compute.cast_params(transformed.apply, params, state, None, *inputs)
        lowered = jax.jit(forward).lower(weights, state, *inputs)
        # "": what perceiver.compute.jit compiles with; "xla defaults": no
        # options, where that differs; then the variants asked for.
        chosen = compute.compiler_options(jnp.dtype(dtype))
        timed = {"": chosen, **({"xla defaults": {}} if chosen else {}), **variants}
        for label, options in timed.items():
            compiled = lowered.compile(compiler_options=options)
            key = f"ours {dtype}" + (f" {label}" if label else "")
            fns[key] = lambda c=compiled, w=weights: jax.block_until_ready(c(w, state, *inputs))
    result: Dict = {"gflop": run.flop_count(config) / 1e9}
    tmp = None
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        torch.set_grad_enabled(False)
        tmp = tempfile.TemporaryDirectory()
        kwargs = hf_inputs(name, inputs)
        dtypes = ("float32", "bfloat16") if torch_bf16 else ("float32",)
        for dtype in dtypes:
            hf = build_hf(config, params, state, os.path.join(tmp.name, dtype), dtype)
            args = kwargs
            if dtype == "bfloat16":
                args = {k: v.bfloat16() if v.is_floating_point() else v for k, v in kwargs.items()}
            fns[f"transformers {dtype}"] = lambda hf=hf, args=args: hf(**args)
    except ImportError as e:
        result["transformers"] = f"not timed ({e})"
    result["best_s"] = best_of(fns, rounds)
    if tmp is not None:
        tmp.cleanup()
    return result


def report(limit: Dict, models: Dict) -> str:
    best32 = max(v.get("float32", 0) for v in limit.values())
    best16 = max(v.get("bfloat16", 0) for v in limit.values())
    lines = [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores; flags: {' '.join(cpu_flags()) or '-'}",
        "",
        f"One {PRODUCT_N}^3 product, GFLOP/s (float32 / bfloat16 with a float32 result):",
    ]
    for label, rates in limit.items():
        lines.append(
            f"  {label:28s} {rates.get('float32', float('nan')):7.0f} / "
            f"{rates.get('bfloat16', float('nan')):7.0f}"
        )
    lines += [f"  limit (best)                 {best32:7.0f} / {best16:7.0f}", ""]
    header = "| model | GFLOP | timing | s | ours / transformers f32 | GFLOP/s | share of limit |"
    lines += [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, result in models.items():
        hf = result["best_s"].get("transformers float32")
        for key, seconds in result["best_s"].items():
            rate = result["gflop"] / seconds
            limit_rate = best16 if "bfloat16" in key else best32
            ratio = f"{seconds / hf:.2f}" if hf and key.startswith("ours") else ""
            lines.append(
                f"| {name} | {result['gflop']:.0f} | {key} | {seconds:.3f} | {ratio} | "
                f"{rate:.0f} | {rate / limit_rate:.0%} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch-bf16", action="store_true", help="also time transformers in bf16")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="also time ours compiled with these XLA compiler options, "
        'e.g. eigen=\'{"xla_cpu_experimental_ynn_fusion_type": ""}\'',
    )
    parser.add_argument("--out", default=str(run.REPO / "benchmarks" / "results" / "vs_torch.json"))
    args = parser.parse_args(argv)
    variants = {}
    for text in args.variant:
        label, _, options = text.partition("=")
        variants[label] = json.loads(options)
    limit = product_limit(args.rounds, variants)
    print(report(limit, {}), flush=True)
    models = {}
    for name in args.models:
        models[name] = measure_model(name, args.rounds, args.torch_bf16, variants)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in models[name]["best_s"].items()), flush=True)
    text = report(limit, models)
    print("\n" + text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            dict(cpu=cpu_name(), flags=cpu_flags(), limit=limit, models=models, variants=variants),
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
