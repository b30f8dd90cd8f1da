"""Perceiver AR speed: ours (JAX) against two PyTorch ports, same sizes, same CPU.

    python benchmarks/ar_vs_torch.py --quick            # tiny sizes, checks it all runs
    python benchmarks/ar_vs_torch.py --out ar.json      # the default sizes below

The two ports, installed in a venv of their own (their top-level package
`perceiver` clashes with ours), run in a subprocess
(`benchmarks/_ar_torch_worker.py`, with `--torch-python`):

- krasserm: PyPI `perceiver-io`, `perceiver.model.text.clm`
  (`CausalLanguageModel` to train, its Hugging Face wrapper
  `PerceiverCausalLanguageModel.generate` to generate, with and without
  its key/value cache);
- lucidrains: PyPI `perceiver-ar-pytorch`, `perceiver_ar_pytorch.PerceiverAR`
  (no key/value cache: every new byte runs the whole context again).

That venv, as made for the first numbers of this script (Python
3.11; perceiver-io 0.11 declares Python < 3.11 but its model code runs on
3.11, and its other requirements, cchardet, tensorboard and torch-optimizer,
are not imported by it):

    python3 -m venv /tmp/artorch
    /tmp/artorch/bin/pip install torch            # a CPU build (2.13.0+cpu here)
    /tmp/artorch/bin/pip install --no-deps --ignore-requires-python \
        perceiver-io==0.11.0 perceiver-ar-pytorch==0.0.10
    /tmp/artorch/bin/pip install 'einops>=0.4,<0.5' transformers==4.35.2 \
        'pytorch-lightning>=2,<3' 'torchmetrics>=0.9,<0.10' \
        'jsonargparse[signatures]>=4.18,<5' 'setuptools<81' wheel  # torchmetrics 0.9: pkg_resources
    /tmp/artorch/bin/pip install --no-build-isolation 'fairscale>=0.4,<0.5'

All three are built at the same sizes: `--channels` wide, `--layers` latent
self-attention layers after one causal cross-attention, `--heads` heads in
both (ours: `num_cross_attend_heads=--heads` too, as both ports use one
head count), MLPs 4x wide, 259 classes (bytes + 3), `--latents` latents on
the last positions of a `--context` long sequence, rotary positions (all
latent layers; ours rotates a quarter of each head, krasserm's all of it
without absolute embeddings, lucidrains' 32 channels of each head plus its
learned absolute embedding), no dropout. Each model's parameter count is
printed so the match is visible.

Measured in float32 and in bfloat16, one after another in the same run so
that the machine's load falls on all alike. bfloat16, ours: training wraps
the model in `compute.configure(..., compute_dtype=bfloat16)` (float32
weights and AdamW, bfloat16 activations and products with float32 results;
the JSON's `configure_bf16_products` counts the products it makes
bfloat16); generation is handed a bfloat16 copy of the parameters, which
the model then computes in. bfloat16, torch:
`torch.autocast('cpu', dtype=torch.bfloat16)`, float32 weights; where a
port fails under autocast (lucidrains: its masks fill a bfloat16 tensor
with float32's lowest value) it runs with `model.to(bfloat16)` instead,
and the table says so.

- training: forward + backward + AdamW on a `[--batch, --context]` byte
  batch, loss = next-byte cross-entropy on the latent (last `--latents`)
  positions; median over `--steps` timed steps after `--warmup` steps (ours:
  and after the compiling call). Context tokens/s = batch * context / step.
- generation: batch 1, greedy, a `--gen-prompt` byte prompt then
  `--gen-new` new bytes; new bytes/s of the whole call (prompt included).
  Ours with its key/value cache and without, each run once first so that
  nothing is compiled while timed (without the cache each number of held
  latents is a program of its own: `--gen-new` programs to compile, about
  2.5 s each at the default sizes here, hence the default of 32 bytes);
  krasserm's Hugging Face `generate` with its cache and without;
  lucidrains' forward in a greedy loop over a window of the context, as its
  `generate` loops (after one byte as warm-up). The fastest of up to
  `--rounds` runs counts (another run only while it fits in `--budget`).
- `--budget` seconds bound each measurement: training stops timing after
  it (one step at least; a warm-up step longer than it is timed instead),
  the ports' generation stops with the bytes made by then. torch's
  bfloat16 products are very slow on a CPU without AVX-512 BF16 or AMX
  (0.2 GFLOP/s for 2048^2 here, 55 in float32), which is what it bounds.

Prints a markdown table; `--out FILE` writes the numbers as JSON.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "_ar_torch_worker.py"
VOCAB = 259  # 256 bytes + 3 reserved ids, as the reference's byte models
OFFSET = 3  # bytes are ids 3..258; 0 is padding to Perceiver AR
FRAMEWORKS = ("ours", "krasserm", "lucidrains")
DTYPES = ("float32", "bfloat16")
METRICS = ("train", "generate")

SIZES = dict(context=2048, latents=256, channels=512, layers=6, heads=8, batch=2,
             gen_prompt=512, gen_new=32, steps=3, warmup=1, budget=30, rounds=3)
QUICK = dict(context=64, latents=16, channels=64, layers=2, heads=2, batch=2,
             gen_prompt=24, gen_new=8, steps=3, warmup=1, budget=10, rounds=2)
HELP = dict(
    context="sequence length (inputs per row)", latents="latents, on the last positions",
    channels="width of embeddings and latents", layers="latent self-attention layers",
    heads="attention heads (cross- and self-attention)", batch="training batch",
    gen_prompt="prompt bytes for generation", gen_new="new bytes to generate",
    steps="timed training steps (median counts)", warmup="untimed training steps first",
    budget="seconds one measurement may take before it is cut short: fewer timed steps, "
           "and the torch ports' generation stops with the bytes made by then (at least one)",
    rounds="timed generation runs (the fastest counts), as many as fit in --budget",
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in SIZES.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"{HELP[name]}; default {default} ({QUICK[name]} with --quick)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated: float32,bfloat16")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help="comma-separated: ours,krasserm,lucidrains")
    p.add_argument("--metrics", default=",".join(METRICS), help="comma-separated: train,generate")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--torch-python", default="/tmp/artorch/bin/python",
                   help="python of the venv with torch, perceiver-io and perceiver-ar-pytorch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    base = QUICK if a.quick else SIZES
    for name, default in base.items():
        if getattr(a, name) is None:
            setattr(a, name, default)
    a.dtypes = _choices(a.dtypes, DTYPES, "--dtypes")
    a.frameworks = _choices(a.frameworks, FRAMEWORKS, "--frameworks")
    a.metrics = _choices(a.metrics, METRICS, "--metrics")
    if not 0 < a.latents < a.context:
        p.error("--latents must be in [1, --context).")
    if a.latents % 2:
        p.error("--latents must be even (our cache refills to half of it).")
    if a.channels % a.heads:
        p.error("--channels must be divisible by --heads.")
    if not a.latents <= a.gen_prompt or a.gen_prompt + a.gen_new > a.context:
        p.error("need --latents <= --gen-prompt and --gen-prompt + --gen-new <= --context.")
    if min(a.steps, a.gen_new, a.rounds, a.budget) < 1 or a.warmup < 0:
        p.error("--steps, --gen-new, --rounds and --budget must be >= 1, --warmup >= 0.")
    return a


def _choices(text: str, allowed, flag: str) -> List[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in chosen if x not in allowed]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad}; choose from {list(allowed)}.")
    return chosen


def timed_steps(step: Callable[[], Any], warmup: int, steps: int,
                budget: float) -> Dict[str, Any]:
    """Seconds of up to `steps` calls of `step` after `warmup` untimed ones, within `budget`.

    Timed calls stop once the whole measurement has used the budget (after
    one at least). A warm-up call that alone takes longer than the budget
    ends the warm-up and is kept as the one timed call: on a call that slow
    the first call's overhead is lost in the noise.
    """
    start = time.perf_counter()
    warmed = 0
    for _ in range(warmup):
        t0 = time.perf_counter()
        step()
        took = time.perf_counter() - t0
        if took > budget:
            return dict(step_s=[took], warmup_steps=warmed, note="the first call, over budget, "
                        "was timed (no warm-up)")
        warmed += 1
    times: List[float] = []
    while len(times) < steps:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return dict(step_s=times, warmup_steps=warmed)


def best_round(run: Callable[[], float], rounds: int, budget: float) -> Dict[str, Any]:
    """The fastest of up to `rounds` calls of `run` (each returns its bytes/s), another
    round only while one more (as long as the slowest so far) fits in `budget` seconds."""
    start = time.perf_counter()
    rates: List[float] = []
    slowest = 0.0
    while len(rates) < rounds:
        t0 = time.perf_counter()
        rate = run()
        slowest = max(slowest, time.perf_counter() - t0)
        rates.append(rate)
        if rate is None or time.perf_counter() - start + slowest > budget:
            break
    done = [r for r in rates if r is not None]
    return dict(bytes_per_s=max(done) if done else None, rounds_bytes_per_s=rates)


def byte_batch(seed: int, batch: int, length: int) -> np.ndarray:
    """`[batch, length]` random bytes as ids (3..258); the same for every framework."""
    return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.int32) + OFFSET


def prompt_bytes(seed: int, length: int) -> np.ndarray:
    return byte_batch(seed + 1, 1, length)


# ---------------------------------------------------------------------------
# Ours (JAX), in this process
# ---------------------------------------------------------------------------


def our_config(a) -> Dict[str, Any]:
    """The byte language model's PerceiverAR keywords at these sizes (heads tied, as the ports tie them)."""
    from perceiver import language_model

    return language_model.perceiver_ar_config(
        max_context_length=a.context, num_latents=a.latents, num_channels=a.channels,
        num_layers=a.layers, num_heads=a.heads, num_cross_attend_heads=a.heads, widening_factor=4,
    )


def _positions(batch: int, length: int) -> np.ndarray:
    """1-based positions `[batch, length, 1]`, as our sampler feeds them."""
    return np.broadcast_to(np.arange(1, length + 1, dtype=np.int32)[None, :, None],
                           (batch, length, 1))


def _block(tree) -> None:
    import jax

    jax.block_until_ready(tree)


def ours(a, dtype: str) -> Dict[str, Any]:
    import haiku as hk
    import jax
    import jax.numpy as jnp

    from perceiver import compute, perceiver_ar

    config = our_config(a)
    compute_dtype = jnp.bfloat16 if dtype == "bfloat16" else None

    def forward(tokens, idxs):
        model = perceiver_ar.PerceiverAR(**config)
        return model(tokens, idxs, is_training=True).input_events_logits

    transformed = hk.transform(forward)
    if compute_dtype is not None:
        transformed = compute.configure(transformed, compute_dtype=compute_dtype)
    t, u = a.context, a.latents
    tokens = byte_batch(a.seed, a.batch, t + 1)
    inputs, targets = jnp.asarray(tokens[:, :t]), jnp.asarray(tokens[:, t - u + 1:])
    idxs = jnp.asarray(_positions(a.batch, t))
    rng = jax.random.PRNGKey(a.seed)
    params = transformed.init(rng, inputs, idxs)
    result: Dict[str, Any] = dict(
        framework="ours", dtype=dtype, precision="float32",
        params=int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
    )
    cast = _identity
    if compute_dtype is not None:
        result["configure_bf16_products"] = _bf16_products(
            jax.jit(transformed.apply).lower(params, rng, inputs, idxs).as_text())
        cast = _to_bfloat16
        result["precision"] = "bf16 compute (train: compute.configure; generate: bf16 params)"
    if "train" in a.metrics:
        result["train"] = _our_train(a, transformed, params, _identity, compute_dtype, rng, inputs,
                                     idxs, targets)
    if "generate" in a.metrics:
        result["generate"] = _our_generate(a, config, cast(params), compute_dtype)
    return result


def _bf16_products(hlo: str) -> str:
    """'n of m': the dot products of this StableHLO text that take bfloat16 operands."""
    dots = [line.rsplit(":", 1)[-1] for line in hlo.splitlines() if "stablehlo.dot_general" in line]
    low = [d for d in dots if "bf16" in d.split("->")[0]]
    return f"{len(low)} of {len(dots)}"


def _identity(params):
    return params


def _to_bfloat16(params):
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(
        lambda p: p.astype(jnp.bfloat16) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def _our_train(a, transformed, params, cast, compute_dtype, rng, inputs, idxs, targets):
    import jax
    import jax.numpy as jnp
    import optax

    from perceiver import compute

    optimizer = optax.adamw(1e-4)

    def loss_fn(params, rng, inputs, idxs, targets):
        logits = transformed.apply(cast(params), rng, inputs, idxs).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def step(params, opt_state, rng, inputs, idxs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, rng, inputs, idxs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = compute.jit(step, compute_dtype=compute_dtype, donate_argnums=(0, 1))
    params = jax.tree_util.tree_map(jnp.array, params)  # a copy: the step donates it
    opt_state = optimizer.init(params)
    state = dict(params=params, opt_state=opt_state, loss=None)

    def one_step():
        state["params"], state["opt_state"], state["loss"] = step(
            state["params"], state["opt_state"], rng, inputs, idxs, targets)
        _block((state["params"], state["loss"]))

    start = time.perf_counter()
    one_step()  # compiles
    first = time.perf_counter() - start
    timing = timed_steps(one_step, a.warmup, a.steps, a.budget)
    return _train_summary(a, timing, float(state["loss"]), first_call_s=first)


def _train_summary(a, timing: Dict[str, Any], loss: float, **extra) -> Dict[str, Any]:
    """ms/step and context tokens/s of the median timed step."""
    median = statistics.median(timing["step_s"])
    return dict(ms_per_step=1e3 * median, tokens_per_s=a.batch * a.context / median,
                loss=loss, **timing, **extra)


def _our_generate(a, config, params, compute_dtype) -> Dict[str, Any]:
    """`perceiver_ar_sampling.generate`, greedy, with and without the cache.

    The first call compiles; later calls with the same shapes reuse the
    compiled programs (measured: about 10 ms at --quick against seconds),
    so the timed calls compile nothing.
    """
    from perceiver import compute
    from perceiver import perceiver_ar_sampling as sampling

    prompt = prompt_bytes(a.seed, a.gen_prompt)
    out: Dict[str, Any] = {}
    tokens = {}
    for use_cache in (True, False):
        def run(use_cache=use_cache):
            with compute.options(compute_dtype=compute_dtype):
                return sampling.generate(
                    config, params, prompt, max_new=a.gen_new, context=a.context,
                    latents=a.latents, options=sampling.SamplingOptions(temperature=0),
                    seed=a.seed, use_cache=use_cache)

        start = time.perf_counter()
        tokens[use_cache] = np.asarray(run())  # compiles every shape the timed runs meet
        warm = time.perf_counter() - start

        def timed_run():
            t0 = time.perf_counter()
            run()
            return a.gen_new / (time.perf_counter() - t0)

        best = best_round(timed_run, a.rounds, a.budget)
        out["cache" if use_cache else "no_cache"] = dict(
            **best, seconds=a.gen_new / best["bytes_per_s"], bytes=a.gen_new, first_run_s=warm,
            how=f"perceiver_ar_sampling.generate, greedy, use_cache={use_cache}",
        )
    out["same_tokens_with_and_without_cache"] = bool((tokens[True] == tokens[False]).all())
    return out


# ---------------------------------------------------------------------------
# The PyTorch ports, in a subprocess
# ---------------------------------------------------------------------------


def torch_side(a, frameworks: List[str]) -> Dict[str, Any]:
    """The worker's JSON object, or one with an 'error' when it cannot be run."""
    python = pathlib.Path(a.torch_python)
    if not python.exists():
        return dict(error=f"{python} not found: make the torch venv (see the doc of "
                          "benchmarks/ar_vs_torch.py) or pass --torch-python.")
    cmd = [str(python), str(WORKER), "--frameworks", ",".join(frameworks),
           "--dtypes", ",".join(a.dtypes), "--metrics", ",".join(a.metrics),
           "--seed", str(a.seed)]
    for name in SIZES:
        cmd += ["--" + name.replace("_", "-"), str(getattr(a, name))]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return dict(error=f"worker exited {proc.returncode}:\n{tail}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def _fmt(x: Optional[float], digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _cut(a, r: Dict[str, Any]) -> List[str]:
    """Lines saying which of this result's measurements the budget cut short."""
    lines = []
    train = r.get("train") or {}
    if train and (len(train["step_s"]) < a.steps or train.get("note")):
        lines.append(f"train: {len(train['step_s'])} timed step(s), {train['warmup_steps']} "
                     f"warm-up" + (f" ({train['note']})" if train.get("note") else ""))
    for kind, g in (r.get("generate") or {}).items():
        if isinstance(g, dict) and g.get("bytes", a.gen_new) < a.gen_new:
            lines.append(f"generate {kind}: {g['bytes']} of {a.gen_new} bytes timed "
                         f"({g['seconds']:.1f} s)" + (f", {g['note']}" if g.get("note") else ""))
    return lines


def table(a, results: List[Dict[str, Any]]) -> str:
    """The markdown table; a dagger marks a measurement cut short by --budget (listed after)."""
    rows = ["| framework | precision | params (M) | train ms/step | train context tok/s "
            "| gen bytes/s, cache | gen bytes/s, no cache |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for r in results:
        if "error" in r:
            rows.append(f"| {r['framework']} | {r.get('dtype', '-')} | failed: "
                        f"{r['error'].splitlines()[0][:80]} | | | | |")
            continue
        cut = _cut(a, r)
        mark = " \u2020" if cut else ""
        notes += [f"- \u2020 {r['framework']} {r['dtype']}: {line}" for line in cut]
        train = r.get("train") or {}
        gen = r.get("generate") or {}
        rows.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            r["framework"] + mark, r.get("precision", r["dtype"]), _fmt(r["params"] / 1e6, 2),
            _fmt(train.get("ms_per_step")), _fmt(train.get("tokens_per_s")),
            _fmt((gen.get("cache") or {}).get("bytes_per_s"), 1),
            _fmt((gen.get("no_cache") or {}).get("bytes_per_s"), 1)))
    return "\n".join(rows + ([""] + notes if notes else []))


NOTES = """\
- Heads: all three use --heads heads in the cross-attention and in the latent
  layers (ours with num_cross_attend_heads=--heads, since both ports tie the
  two counts; the reference's own configs often use 1 cross-attend head).
- ours: PerceiverAR (sq_relu MLPs, a quarter of each head rotated,
  separate output layer); train step compiled by `compute.jit`; generation
  = `perceiver_ar_sampling.generate`, compiled in a first, untimed call;
  without the cache each step runs the whole `context` buffer with as many
  latents as the cache holds.
  bfloat16: training under `compute.configure(compute_dtype=bfloat16)`
  (float32 weights), generation with a bfloat16 copy of the parameters.
- krasserm (perceiver-io): CausalLanguageModel(num_self_attention_rotary_layers=-1,
  abs_pos_emb=False, cross_attention_dropout=0); output layer tied to the
  input embedding (fewer params); generation = Hugging Face `generate`
  (greedy, num_latents=1) with use_cache=True (its key/value cache) and
  use_cache=False (re-runs the sequence so far, not a padded full context).
- lucidrains (perceiver-ar-pytorch): PerceiverAR(cross_attn_seq_len=context-latents,
  perceive_max_heads_process=heads, i.e. all heads at once); learned absolute
  positions plus rotary. No cache; its own generate samples top-k and needs
  a sequence longer than the prefix, so generation is the same loop
  (last `context` ids, forward, next id) made greedy over a left-padded
  window of `context` ids with its prefix_mask: each byte runs the whole
  context. bfloat16 under autocast fails (its masks), so bfloat16 weights.
- Generation bytes/s = new bytes / time of the whole call, prompt included.
"""


def main(argv: Optional[List[str]] = None) -> int:
    a = parse_args(argv)
    begin = time.perf_counter()
    sizes = {name: getattr(a, name) for name in SIZES}
    print(f"sizes: {sizes}", file=sys.stderr, flush=True)
    results: List[Dict[str, Any]] = []
    meta: Dict[str, Any] = dict(cpu=cpu_name(), cores=os.cpu_count(), sizes=sizes,
                                dtypes=a.dtypes, metrics=a.metrics, quick=a.quick,
                                python=platform.python_version(),
                                loadavg_start=os.getloadavg())
    if "ours" in a.frameworks:
        import jax

        meta["jax"] = jax.__version__
        for dtype in a.dtypes:
            start = time.perf_counter()
            try:
                results.append(ours(a, dtype))
            except Exception as e:  # report and go on with the others
                results.append(dict(framework="ours", dtype=dtype,
                                    error=f"{type(e).__name__}: {e}"))
            print(f"ours {dtype}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    others = [f for f in a.frameworks if f != "ours"]
    if others:
        start = time.perf_counter()
        torch_out = torch_side(a, others)
        print(f"torch worker: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        if "error" in torch_out:
            results += [dict(framework=f, error=torch_out["error"]) for f in others]
        else:
            meta["torch"] = torch_out.get("versions", {})
            results += torch_out["results"]
    meta["total_s"] = round(time.perf_counter() - begin, 1)
    meta["loadavg_end"] = os.getloadavg()
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    print(f"\n{meta['cpu']}, {meta['cores']} cores; sizes {sizes}; "
          f"the whole run took {meta['total_s']:.0f} s; load average "
          f"{meta['loadavg_start'][0]:.1f} at the start, {meta['loadavg_end'][0]:.1f} at the end\n")
    print(table(a, results))
    counts = {r["framework"]: r["params"] for r in results if "params" in r}
    print("\nParameter counts: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    for r in results:
        if "configure_bf16_products" in r:
            print(f"Products that compute.configure(compute_dtype=bfloat16) makes bfloat16 "
                  f"in our PerceiverAR: {r['configure_bf16_products']}.")
    print("\n" + NOTES)
    for r in results:
        if "error" in r:
            print(f"{r['framework']} {r.get('dtype', '')} failed:\n{r['error']}\n")
        if "autocast_error" in r:
            print(f"{r['framework']} {r['dtype']}: under torch.autocast it failed "
                  f"({r['autocast_error']}), so it ran with bfloat16 weights instead.")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
