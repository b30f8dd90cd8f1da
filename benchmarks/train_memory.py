"""The largest training batch that fits a memory budget, per model and compute mode (XLA's plan).

    python benchmarks/train_memory.py                         # published sizes, 16 GiB
    python benchmarks/train_memory.py --models mlm --budget-gib 80
    python benchmarks/train_memory.py --tiny                  # the recipes' tiny sizes: a quick check

For each model (`train_vs_torch.py`'s: its loss, batch and AdamW step,
parameters and optimizer state donated as the trainer donates them) and
each mode of the recipes' `compute` section (float32; `compute.dtype=
bfloat16`; `compute.remat=true`; both), the step is compiled, never run,
for two batch sizes; the memory of a step is XLA's buffer plan of the
compiled executable (`memory_analysis()`): arguments + outputs - donated
aliases + temporaries, i.e. the parameters, optimizer state, batch,
gradients and every intermediate the backward pass keeps, at once. That is
affine in the batch, so the two sizes give the per-example cost and the
largest batch under the budget; that batch is then compiled too and its
plan reported (and one less, if it went over). Nothing is allocated: inputs
are shapes only, so a 16 GiB plan is measured on a machine with less.

What it does not count: the Python process, XLA's own compile-time memory,
and the data pipeline. On a CPU, jax's float32 parameters and optimizer
state are the same bytes in every mode; bf16 saves activations only.
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_vs_torch as tvt  # noqa: E402  (models, batches, losses, the AdamW step)
import vs_torch  # noqa: E402  (CPU name)

MODES = {
    "f32": {},
    "bf16": {"compute_dtype": "bfloat16"},
    "f32 remat": {"remat": True},
    "bf16 remat": {"compute_dtype": "bfloat16", "remat": True},
}
GIB = 2.0**30


def step_bytes(name: str, factory: str, sizes: Dict[str, Any], batch: int, mode: Dict[str, Any]) -> Dict[str, int]:
    """XLA's memory plan of one compiled training step at `batch` (nothing allocated)."""
    import jax
    import jax.numpy as jnp
    from perceiver import models

    model = getattr(models, factory)(**sizes)
    optimizer = tvt.make_optimizer()
    options = dict(mode)
    if "compute_dtype" in options:
        options["compute_dtype"] = jnp.bfloat16
    one = tvt.make_batch(name, sizes, 1)
    shapes = {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype) for k, v in one.items()}
    inputs = tvt.our_inputs(name, shapes)
    targets = {k: v for k, v in shapes.items() if k not in ("tokens", "mask", "images")}
    rng = jax.random.PRNGKey(0)
    params, state = jax.eval_shape(
        lambda r, *x: model.init(r, *x, is_training=True), rng, *tvt.our_inputs(name, one)
    )
    opt_state = jax.eval_shape(optimizer.init, params)
    step = tvt.train_step(model, name, optimizer, options)

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 2)).lower(params, state, opt_state, rng, inputs, targets).compile()
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))
    return {
        "batch": batch, "total": int(total), "temp": int(m.temp_size_in_bytes),
        "arguments": int(m.argument_size_in_bytes), "params": int(param_bytes),
        "compile_s": round(time.perf_counter() - start, 1),
    }


def largest_batch(name: str, factory: str, sizes: Dict[str, Any], mode: Dict[str, Any], budget: float,
                  probe: Tuple[int, int], log, max_compiles: int = 7) -> Dict[str, Any]:
    """The largest batch whose plan fits `budget` bytes: secant steps from two probes, each compiled.

    The plan is close to affine in the batch but not exactly (XLA fuses and
    schedules differently at other sizes), so each guess is compiled and the
    line refitted through the measured batches nearest the budget, until the
    largest fitting batch and the smallest failing one are neighbours, or
    within 1% of each other, or `max_compiles` plans were made.
    """
    plans = {}

    def plan(b):
        if b not in plans:
            plans[b] = step_bytes(name, factory, sizes, b, mode)
            log(f"    batch {b}: {plans[b]['total'] / GIB:.2f} GiB (compiled in {plans[b]['compile_s']} s)")
        return plans[b]["total"]

    for b in probe:
        plan(b)
    b0, b1 = probe
    # Small batches can share one plan (XLA reuses the buffers): probe larger until it grows.
    while plans[b1]["total"] - plans[b0]["total"] <= 0.01 * plans[b0]["total"] and len(plans) < max_compiles - 1:
        b1 *= 2
        plan(b1)
    m0, m1 = plans[b0]["total"], plans[b1]["total"]
    per_example = (m1 - m0) / (b1 - b0)
    out: Dict[str, Any] = {"per_example_bytes": per_example, "fixed_bytes": m0 - per_example * b0}
    if per_example <= 0:
        out.update(status="the plan does not grow with the batch", plans=list(plans.values()))
        return out
    while len(plans) < max_compiles:
        fits = [b for b in plans if plans[b]["total"] <= budget]
        over = [b for b in plans if plans[b]["total"] > budget]
        best, fail = max(fits, default=0), min(over, default=None)
        if fail is not None and (fail - best <= 1 or (best and fail - best <= 0.01 * best)):
            break
        # The secant through the measured batches nearest the budget, below and above it.
        ends = sorted(plans)
        lo = best if best else ends[0]
        hi = fail if fail is not None else max(b for b in ends if b != lo)
        slope = (plans[hi]["total"] - plans[lo]["total"]) / (hi - lo) or per_example
        guess = int(lo + (budget - plans[lo]["total"]) // slope)
        guess = max(1, min(guess, fail - 1) if fail is not None else guess)
        if guess in plans:
            guess = best + 1 if fail is None or best + 1 < fail else guess
            if guess in plans:
                break
        if fail is None and guess <= best:
            break
        plan(guess)
    fits = [b for b in plans if plans[b]["total"] <= budget]
    best = max(fits, default=0)
    out.update(
        status="ok" if best else "batch 1 does not fit" if 1 in plans else f"no probe fits ({min(plans)} and up)",
        largest=best, plan=plans.get(best), plans=[plans[b] for b in sorted(plans)],
    )
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(tvt.MODELS), help="comma-separated: " + ", ".join(tvt.MODELS))
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--budget-gib", type=float, default=16.0)
    parser.add_argument("--tiny", action="store_true", help="the recipes' tiny sizes")
    parser.add_argument("--probe", default="2,4", help="the two batch sizes of the affine fit")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "train_memory.json"))
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    for m in models:
        if m not in tvt.MODELS:
            parser.error(f"--models: unknown {m!r}; choose from {', '.join(tvt.MODELS)}")
    for m in modes:
        if m not in MODES:
            parser.error(f"--modes: unknown {m!r}; choose from {', '.join(MODES)}")
    try:
        probe = tuple(int(x) for x in args.probe.split(","))
        if len(probe) != 2 or not 1 <= probe[0] < probe[1]:
            raise ValueError
    except ValueError:
        parser.error(f"--probe: expected two batch sizes 'A,B' with 1 <= A < B; got {args.probe!r}")
    if args.budget_gib <= 0:
        parser.error(f"--budget-gib must be positive; got {args.budget_gib}")

    def log(line):
        print(line, flush=True)

    budget = args.budget_gib * GIB
    results: Dict[str, Dict[str, Any]] = {}
    for name in models:
        factory, sizes, _ = tvt.model_sizes(name, args.tiny)
        for mode in modes:
            log(f"{name} {mode}:")
            results[f"{name} {mode}"] = largest_batch(name, factory, sizes, MODES[mode], budget, probe, log)
    lines = [
        f"CPU: {vs_torch.cpu_name()}; {'tiny' if args.tiny else 'published'} sizes; budget "
        f"{args.budget_gib:g} GiB (XLA's plan of the compiled AdamW step)",
        "",
        "| model | mode | params MiB | fixed GiB | per example MiB | largest batch | its plan GiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in results.items():
        name, mode = key.split(" ", 1)
        plan = (r.get("plan") or {}).get("total")
        lines.append(
            f"| {name} | {mode} | {r['plans'][0]['params'] / 2**20:.0f} | {r['fixed_bytes'] / GIB:.2f} | "
            f"{r['per_example_bytes'] / 2**20:.0f} | {r.get('largest', r['status'])} | "
            f"{f'{plan / GIB:.2f}' if plan else '-'} |"
        )
    print("\n" + "\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(cpu=vs_torch.cpu_name(), budget_gib=args.budget_gib, tiny=args.tiny,
                       date=time.strftime("%Y-%m-%d %H:%M"), command=" ".join(sys.argv), results=results), f,
                  indent=2)


if __name__ == "__main__":
    main()
