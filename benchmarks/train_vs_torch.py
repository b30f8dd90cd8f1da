"""One training step of ours against transformers' PyTorch Perceiver: same batch, weights, optimizer.

    python benchmarks/train_vs_torch.py --torch-site /path/to/site-packages        # published sizes
    python benchmarks/train_vs_torch.py --tiny --rounds 1 --torch-site ...         # a quick check

For each model and dtype, one optimizer step (forward, loss, backward,
gradient clipping, AdamW update) of ours and of transformers', on the same
random weights (`run.seeded_params`, written for transformers by
`perceiver.convert.to_hf`), the same batch and the same optimizer settings
(the tiny recipes' AdamW: `perceiver.train.recipes._tiny.optimizer`, at a
constant learning rate, weight decay on every parameter as torch's AdamW
applies it). Losses: softmax cross-entropy (imagenet_*), cross-entropy over
the masked bytes (mlm), mean end-point error (flow), as the recipes compute
them (`perceiver.train.losses`), written again in torch for transformers.

dtypes: float32, and bf16 as mixed precision: ours the recipes'
`compute.dtype=bfloat16` (the loss traced under `perceiver.compute.options
(compute_dtype=bfloat16)`: float32 parameters and optimizer state, bfloat16
products); transformers' forward and loss under `torch.autocast("cpu",
dtype=torch.bfloat16)`, backward and AdamW outside it. Ours is compiled as
the trainer compiles its step (`jax.jit`, parameters and optimizer state
donated); where `perceiver.compute.compiler_options` chooses XLA options for
the dtype it is also timed so compiled ("ours ... +options").

Fairness check: the first two steps of each side are run before timing and
their losses printed side by side: step 0 (same weights and batch) and step
1 (after one update, so the optimizers agree too).

Time: both sides are built, then timed in turn, round after round, in this
process (as vs_torch.py does); the best time of each counts. The step's
useful FLOPs are XLA's cost analysis of our float32 step written plainly
(unrolled, no fused or tiled attention: `run.flop_count`'s way), reported
as GFLOP/s and as a share of the machine's measured 2048^3 product rate
(`vs_torch.product_limit`: best of XLA, numpy and torch; bf16 steps against
the bf16 product rate).

Memory: each side runs again in a fresh subprocess (`--worker`): after
building the model, weights and batch (and compiling ours), the peak
resident set is reset (`/proc/self/clear_refs`) and two steps run; the
reported peak is the rise of the resident set over the set-up one: optimizer
state, gradients, activations and temporaries. Where the reset is not
allowed, the process's `ru_maxrss` minus the set-up resident set is given
instead (it then includes compilation), and said so in the JSON. Ours also
reports XLA's `memory_analysis()` temporary buffer size of the step.

--torch-site PATH appends PATH to sys.path before torch is imported (so the
project's numpy and jax win); without torch and transformers only ours is
timed. The table goes to stdout, the numbers to --out (JSON).
"""

import argparse
import gc
import glob
import gzip
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402  (benchmarks/run.py: weights, FLOP-count conventions)
import vs_torch  # noqa: E402  (product limit, timing in turn, CPU name)

MODELS = ("imagenet_fourier", "imagenet_conv", "mlm", "flow")
DTYPES = ("f32", "bf16")
# Our name -> (factory, variant) and the model's name in tests/make_hf_fixtures.
FACTORIES = {
    "imagenet_fourier": ("imagenet_classifier", "fourier_position_encoding", "fourier"),
    "imagenet_conv": ("imagenet_classifier", "conv_preprocessing", "conv"),
    "mlm": ("masked_language_model", None, "mlm"),
    "flow": ("optical_flow", None, "flow"),
}
# Sizes transformers' code fixes (perceiver.hf.config.FIELDS): the tiny
# recipes' sizes take these values, or transformers could not hold them.
HF_FIXED = {
    "imagenet_fourier": dict(image_size=224, num_bands=64),
    "imagenet_conv": dict(image_size=224, num_bands=64),
    "mlm": dict(num_heads=8, qk_channels=256),
    "flow": dict(num_bands=64),
}
# Our plain computation, whose FLOPs XLA counts fully (see run.flop_count).
PLAIN = dict(attention="plain", absorb_projections=False, decoder_chunk_size=None, scan_blocks=False)
MLM_MASK_RATE = 0.15
# Our flow model outputs transformers' flow times this (perceiver.models.
# FLOW_OUTPUT_SCALE; main checks it), so the torch loss scales its logits.
# Kept here so that the torch worker never imports jax.
FLOW_OUTPUT_SCALE = 20.0


# ---------------------------------------------------------------------------
# Models, batches, losses
# ---------------------------------------------------------------------------


def model_sizes(name: str, tiny: bool) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """`(factory, sizes, changed)`: published sizes, or the recipe's tiny ones made convertible.

    `changed` maps each tiny size replaced by transformers' fixed value to
    `(tiny value, value used)`.
    """
    from perceiver import models

    factory, variant, _ = FACTORIES[name]
    extra = {"variant": variant} if variant else {}
    if not tiny:
        return factory, models.factory_sizes(factory, **extra), {}
    from perceiver.train.recipes import flow, imagenet, mlm

    base = {
        "imagenet_fourier": imagenet.TINY_IMAGE_MODEL,
        "imagenet_conv": imagenet.TINY_IMAGE_MODEL,
        "mlm": mlm.TINY_MLM_MODEL,
        "flow": flow.TINY_FLOW_MODEL,
    }[name]
    sizes = dict(base, **extra)
    changed = {}
    for key, value in HF_FIXED[name].items():
        if sizes.get(key) != value:
            changed[key] = (sizes.get(key), value)
            sizes[key] = value
    return factory, sizes, changed


def make_batch(name: str, sizes: Dict[str, Any], batch: int) -> Dict[str, np.ndarray]:
    """The model's inputs and the loss's targets, seeded (numpy only)."""
    rng = np.random.default_rng(0)
    if name == "mlm":
        n = sizes["max_seq_len"]
        tokens = rng.integers(6, 262, size=(batch, n)).astype(np.int32)
        mask = np.ones((batch, n), np.int32)
        mask[:, n * 7 // 8 :] = 0  # padded tail, as run.make_inputs
        tokens[:, n * 7 // 8 :] = 0
        targets = rng.integers(6, 262, size=(batch, n)).astype(np.int32)
        weights = ((rng.uniform(size=(batch, n)) < MLM_MASK_RATE) & (mask == 1)).astype(np.float32)
        return dict(tokens=tokens, mask=mask, targets=targets, weights=weights)
    if name == "flow":
        h, w = sizes["image_shape"]
        images = rng.uniform(-1, 1, (batch, 2, h, w, 3)).astype(np.float32)
        target = rng.uniform(-2, 2, (batch, h, w, 2)).astype(np.float32)
        return dict(images=images, target=target)
    s = sizes["image_size"]
    images = rng.standard_normal((batch, s, s, 3)).astype(np.float32)
    labels = rng.integers(0, sizes["num_classes"], size=(batch,)).astype(np.int32)
    return dict(images=images, labels=labels)


def our_inputs(name: str, b: Dict[str, np.ndarray]) -> tuple:
    return (b["tokens"], b["mask"]) if name == "mlm" else (b["images"],)


def our_loss(name: str, out, b):
    """The recipes' loss of our model's output (`perceiver.train.losses`)."""
    from perceiver.train import losses

    if name == "mlm":
        return losses.masked_lm_loss(out, b["targets"], b["weights"])[0]
    if name == "flow":
        return losses.endpoint_error(out, b["target"])
    return losses.classification_loss(out, b["labels"])


def torch_inputs(name: str, b: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """transformers' keyword arguments for the batch (`vs_torch.hf_inputs`)."""
    return vs_torch.hf_inputs(name, our_inputs(name, b))


def torch_loss(name: str, logits, t: Dict[str, Any]):
    """`our_loss` for transformers' logits, in torch (float32)."""
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    if name == "mlm":
        log_probs = F.log_softmax(logits, dim=-1)
        nll = -log_probs.gather(-1, t["targets"][..., None])[..., 0]
        return (nll * t["weights"]).sum() / t["weights"].sum().clamp(min=1.0)
    if name == "flow":
        diff = logits * FLOW_OUTPUT_SCALE - t["target"]
        return torch.sqrt((diff * diff).sum(-1) + 1e-12).mean()
    return F.cross_entropy(logits, t["labels"])


def torch_targets(name: str, b: Dict[str, np.ndarray]) -> Dict[str, Any]:
    import torch

    if name == "mlm":
        return dict(targets=torch.from_numpy(b["targets"]).long(), weights=torch.from_numpy(b["weights"]))
    if name == "flow":
        return dict(target=torch.from_numpy(b["target"]))
    return dict(labels=torch.from_numpy(b["labels"]).long())


OPTIMIZER_FIELDS = ("base_lr", "b1", "b2", "eps", "weight_decay", "max_norm")


def optimizer_settings() -> Dict[str, float]:
    """The tiny recipes' AdamW settings (`_tiny.optimizer`), at a constant rate."""
    from perceiver.train.recipes import _tiny

    opt = _tiny.optimizer()
    return {k: getattr(opt, k) for k in OPTIMIZER_FIELDS}


# ---------------------------------------------------------------------------
# The two steps
# ---------------------------------------------------------------------------


def make_optimizer():
    """The benchmark's optax AdamW (`optimizer_settings`), clipped by global norm."""
    import optax

    opt = optimizer_settings()
    return optax.chain(
        optax.clip_by_global_norm(opt["max_norm"]),
        optax.adamw(opt["base_lr"], b1=opt["b1"], b2=opt["b2"], eps=opt["eps"], weight_decay=opt["weight_decay"]),
    )


def train_step(model, name: str, optimizer, options: Dict[str, Any]) -> Callable:
    """`(params, state, opt_state, rng, inputs, targets) -> (params, state, opt_state, loss)` under `options`."""
    import jax
    import optax

    from perceiver import compute

    def loss_fn(params, state, rng, inputs, targets):
        # As perceiver.train.recipes._compute_in wraps the recipes' loss.
        with compute.options(**options):
            out, new_state = model.apply(params, state, rng, *inputs, is_training=True)
        return our_loss(name, out, targets), new_state

    def step(params, state, opt_state, rng, inputs, targets):
        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, rng, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, loss

    return step


class OursStep:
    """Our jitted train step with its own (donated) parameters and optimizer state."""

    def __init__(self, name, factory, sizes, params_np, state_np, b, dtype, compiler_options=None):
        import jax
        import jax.numpy as jnp

        from perceiver import models

        self.model = getattr(models, factory)(**sizes)
        self.optimizer = make_optimizer()
        self.options = {"compute_dtype": jnp.bfloat16} if dtype == "bf16" else {}
        self.name = name
        self.inputs = tuple(jax.device_put(x) for x in our_inputs(name, b))
        self.targets = {k: jax.device_put(v) for k, v in b.items() if k not in ("tokens", "mask", "images")}
        self.rng = jax.random.PRNGKey(0)
        self.params = jax.device_put(params_np)
        self.state = jax.device_put(state_np)
        self.step_fn = self.make_step(self.options)
        abstract_opt = jax.eval_shape(self.optimizer.init, self.params)
        args = (self.params, self.state, abstract_opt, self.rng, self.inputs, self.targets)
        jitted = jax.jit(self.step_fn, donate_argnums=(0, 2))
        start = time.perf_counter()
        self.compiled = jitted.lower(*args).compile(compiler_options=compiler_options or None)
        self.compile_s = time.perf_counter() - start
        self.opt_state = None

    def make_step(self, options):
        return train_step(self.model, self.name, self.optimizer, options)

    def init_optimizer(self):
        import jax

        self.opt_state = jax.jit(self.optimizer.init)(self.params)

    def __call__(self) -> float:
        import jax

        if self.opt_state is None:
            self.init_optimizer()
        self.params, self.state, self.opt_state, loss = self.compiled(
            self.params, self.state, self.opt_state, self.rng, self.inputs, self.targets
        )
        return float(jax.block_until_ready(loss))

    def flops(self) -> Dict[str, Optional[float]]:
        """XLA's FLOP count of the plain float32 step (the numerator) and of the compiled one."""
        import jax

        from perceiver import compute

        out: Dict[str, Optional[float]] = {}
        plain = self.make_step({})

        def plainly(*args):
            with compute.options(**PLAIN):
                return plain(*args)

        opt = jax.eval_shape(self.optimizer.init, self.params)
        args = (self.params, self.state, opt, self.rng, self.inputs, self.targets)
        shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
        try:
            out["plain"] = float(jax.jit(plainly).lower(*shapes).cost_analysis()["flops"])
        except Exception as e:  # cost analysis is best effort
            out["plain"], out["plain_error"] = None, repr(e)
        try:
            out["compiled"] = float(self.compiled.cost_analysis()["flops"])
        except Exception:
            out["compiled"] = None
        return out

    def memory_analysis(self) -> Dict[str, Optional[int]]:
        try:
            m = self.compiled.memory_analysis()
            return {
                "temp_bytes": int(m.temp_size_in_bytes),
                "argument_bytes": int(m.argument_size_in_bytes),
                "output_bytes": int(m.output_size_in_bytes),
                "alias_bytes": int(m.alias_size_in_bytes),
            }
        except Exception:
            return {}


class TorchStep:
    """transformers' model (as ours computes: tests/make_hf_fixtures.undo_deviations) and AdamW."""

    def __init__(self, name, folder, b, dtype, opt: Dict[str, float]):
        import torch
        import transformers

        sys.path.insert(0, str(run.REPO / "tests"))
        from make_hf_fixtures import undo_deviations

        arch = json.load(open(os.path.join(folder, "config.json")))["architectures"][0]
        hf = getattr(transformers, arch).from_pretrained(folder)
        self.model = undo_deviations(hf, FACTORIES[name][2], hf.config).train()
        del hf
        self.max_norm = opt["max_norm"]
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=opt["base_lr"], betas=(opt["b1"], opt["b2"]), eps=opt["eps"],
            weight_decay=opt["weight_decay"],
        )
        self.name, self.dtype = name, dtype
        self.kwargs = torch_inputs(name, b)
        self.targets = torch_targets(name, b)

    def __call__(self) -> float:
        import contextlib

        import torch

        self.optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.dtype == "bf16" else contextlib.nullcontext()
        )
        with autocast:
            logits = self.model(**self.kwargs).logits
        loss = torch_loss(self.name, logits, self.targets)  # float32, outside autocast
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
        self.optimizer.step()
        return float(loss.detach())


def seeded_weights(factory, sizes, b, name):
    """Our float32 random weights (`run.seeded_params`) as numpy trees."""
    import jax

    from perceiver import models

    model = getattr(models, factory)(**sizes)
    p, s = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), *our_inputs(name, b), is_training=True)
    )
    return run.seeded_params(p), run.seeded_params(s)


def write_hf(factory, sizes, params, state, folder):
    from perceiver import convert

    convert.to_hf(params, state, factory, sizes, folder, allow_deviations=True)


def have_torch() -> Optional[str]:
    import importlib

    try:
        importlib.import_module("torch")
        importlib.import_module("transformers")
    except ImportError as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------
# Profile and memory
# ---------------------------------------------------------------------------


def profile_ours(step: OursStep, folder: str, steps: int = 3, top: int = 15) -> Dict[str, Any]:
    """Our step's time per XLA op over `steps` steps, from a `jax.profiler` trace (Perfetto JSON).

    Returns:
      `{"status", "folder", "executable_s", "top_s": [(op, seconds, share of the executable)]}`:
      the `top` XLA ops (fusions, dots, copies: the CPU runtime's thunks) by
      total time; Python frames and the runtime's own spans left out.
    """
    import jax

    with jax.profiler.trace(folder, create_perfetto_trace=True):
        for _ in range(steps):
            step()
    files = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        return {"status": "no Perfetto trace written", "folder": folder}
    with gzip.open(max(files, key=os.path.getmtime), "rt") as f:
        events = json.load(f)
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    totals: Dict[str, float] = {}
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            totals[e.get("name", "?")] = totals.get(e.get("name", "?"), 0.0) + float(e["dur"]) / 1e6
    executable = totals.get("ThunkExecutor::Execute", 0.0)
    # Python frames start with '$'; the runtime's and jit's own spans hold
    # every op, so they are not ops.
    ops = {
        k: v for k, v in totals.items()
        if not k.startswith("$") and "::" not in k and not k.startswith("PjitFunction")
    }
    ranked = sorted(ops.items(), key=lambda kv: -kv[1])[:top]
    return {
        "status": "ok",
        "folder": folder,
        "steps": steps,
        "executable_s": executable,
        "top_s": [(k, v, v / executable if executable else None) for k, v in ranked],
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """One side of one (model, dtype) in this fresh process: set-up, then the peak of two steps."""
    import resource

    name, dtype, side = spec["model"], spec["dtype"], spec["side"]
    factory, sizes = spec["factory"], spec["sizes"]
    if "image_shape" in sizes:
        sizes["image_shape"] = tuple(sizes["image_shape"])
    b = make_batch(name, sizes, spec["batch"])
    if side == "ours":
        import jax

        params, state = seeded_weights(factory, sizes, b, name)
        step = OursStep(name, factory, sizes, params, state, b, dtype)
        del params, state
        jax.block_until_ready((step.params, step.state))
    else:
        import torch

        torch.set_grad_enabled(True)
        # The optimizer settings come in the spec: this process never imports jax.
        step = TorchStep(name, spec["folder"], b, dtype, spec["optimizer"])
    gc.collect()
    setup_kib = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set
        how = "VmHWM after a reset (/proc/self/clear_refs)"
    except OSError:
        how = "ru_maxrss (no reset: includes set-up and compilation)"
    losses = [step(), step()]
    peak_kib = _status_kib("VmHWM") if how.startswith("VmHWM") else 0
    peak_kib = peak_kib or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "setup_rss_bytes": setup_kib * 1024,
        "peak_rss_bytes": peak_kib * 1024,
        "step_peak_bytes": (peak_kib - setup_kib) * 1024,
        "how": how,
        "losses": losses,
    }
    if side == "ours":
        out["xla_memory"] = step.memory_analysis()
    return out


def measure_memory(spec: Dict[str, Any], torch_site: Optional[str], timeout: float) -> Dict[str, Any]:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", json.dumps(spec)]
    if torch_site:
        cmd += ["--torch-site", torch_site]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(run.REPO))
    except subprocess.TimeoutExpired:
        return {"status": f"stopped after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"status": f"failed (exit {proc.returncode})", "error": proc.stderr[-2000:]}
    return dict(json.loads(lines[-1][len("RESULT ") :]), status="ok")


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def measure_pair(name, dtype, args, folder, weights, log, flops=None) -> Dict[str, Any]:
    """Both sides of one model at one dtype: losses of steps 0 and 1, best step time, FLOPs.

    `flops`: the model's count from an earlier dtype (the same plain float32
    step), else counted here.
    """
    import jax.numpy as jnp

    from perceiver import compute

    factory, sizes, params, state, b = weights
    result: Dict[str, Any] = {}
    fns: Dict[str, Callable[[], float]] = {}
    ours = OursStep(name, factory, sizes, params, state, b, dtype)
    result["ours_compile_s"] = ours.compile_s
    fns["ours"] = ours
    if dtype == "bf16":
        chosen = compute.compiler_options(jnp.bfloat16)
        if chosen:
            fns["ours +options"] = OursStep(name, factory, sizes, params, state, b, dtype, chosen)
            result["options"] = chosen
    result["flops"] = flops or ours.flops()
    result["xla_memory"] = ours.memory_analysis()
    if folder and dtype in args.torch_dtypes:
        fns["torch"] = TorchStep(name, folder, b, dtype, optimizer_settings())
    # Steps 0 and 1 of each side, before any timing: the fairness check.
    result["losses"] = {label: [fn(), fn()] for label, fn in fns.items()}
    log("  losses (step 0, step 1): " + "; ".join(
        f"{label} {l0:.6f}, {l1:.6f}" for label, (l0, l1) in result["losses"].items()
    ))
    if "torch" in fns:
        l_ours, l_torch = result["losses"]["ours"], result["losses"]["torch"]
        result["loss_rel_diff"] = [abs(a - t) / max(abs(t), 1e-30) for a, t in zip(l_ours, l_torch)]
    result["best_s"] = vs_torch.best_of(fns, args.rounds)
    if args.profile:
        where = os.path.join(args.profile, f"{name}_{dtype}")
        result["profile"] = prof = profile_ours(ours, where)
        if prof["status"] == "ok":
            log(f"  profile of ours ({prof['steps']} steps, executable {prof['executable_s']:.4f} s): "
                + ", ".join(f"{op} {sec:.4f} s" for op, sec, _ in prof["top_s"][:8]))
        else:
            log(f"  profile: {prof['status']}")
    return result


def report(limit: Dict, results: Dict, meta: Dict) -> str:
    best32 = max(v.get("float32", 0) for v in limit.values()) if limit else float("nan")
    best16 = max(v.get("bfloat16", 0) for v in limit.values()) if limit else float("nan")
    product = (
        f"2048^3 product limit {best32:.0f} GFLOP/s float32, {best16:.0f} bf16"
        if limit
        else "2048^3 product limit not measured (--no-limit)"
    )
    lines = [
        f"CPU: {vs_torch.cpu_name()}, {os.cpu_count()} cores; flags: {' '.join(vs_torch.cpu_flags()) or '-'}",
        f"batch {meta['batch']}, {'tiny' if meta['tiny'] else 'published'} sizes; {product}",
        "",
        "| model | dtype | step GFLOP | side | step s | ours / torch | ours / torch f32 | GFLOP/s "
        "| share of limit | step peak MiB | loss step 0 | loss step 1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    mib = 2.0**20
    for (name, dtype), r in results.items():
        gflop = (r.get("flops") or {}).get("plain")
        gflop = gflop / 1e9 if gflop else None
        torch_s = r["best_s"].get("torch")
        # The bf16 target is against torch's float32 step (on CPUs without a bf16 unit torch's bf16 crawls).
        torch_f32_s = results.get((name, "f32"), {}).get("best_s", {}).get("torch")
        for side, seconds in r["best_s"].items():
            rate = gflop / seconds if gflop else None
            limit_rate = best16 if dtype == "bf16" else best32
            ratio = f"{seconds / torch_s:.2f}" if torch_s and side != "torch" else ""
            ratio32 = f"{seconds / torch_f32_s:.2f}" if torch_f32_s and side != "torch" else ""
            mem = r.get("memory", {}).get(side.split()[0], {})
            peak = f"{mem['step_peak_bytes'] / mib:.0f}" if mem.get("status") == "ok" else ""
            l0, l1 = r["losses"][side]
            share = f"{rate / limit_rate:.1%}" if rate and limit_rate == limit_rate else "-"
            lines.append(
                f"| {name} | {dtype} | {f'{gflop:.1f}' if gflop else '?'} | {side} | {seconds:.4f} | "
                f"{ratio} | {ratio32} | {f'{rate:.0f}' if rate else '?'} | {share} | {peak} | {l0:.6g} | {l1:.6g} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated: f32, bf16")
    parser.add_argument("--torch-dtypes", help="the dtypes transformers is timed in (default: --dtypes); "
                        "f32 alone on a CPU without a bf16 unit, where torch's bf16 takes hours")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tiny", action="store_true",
                        help="the recipes' TINY_* sizes (with the sizes transformers fixes)")
    parser.add_argument("--profile", metavar="DIR", help="also trace our step (jax.profiler) into DIR "
                        "and list the longest events")
    parser.add_argument("--no-limit", action="store_true",
                        help="skip measuring the 2048^3 product rate (no shares of it)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per memory subprocess")
    parser.add_argument("--torch-site", help="a site-packages holding torch and transformers, "
                        "appended to sys.path")
    parser.add_argument("--out", default=str(run.REPO / "benchmarks" / "results" / "train_vs_torch.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_site:
        sys.path.append(args.torch_site)  # appended: the project's numpy and jax come first
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    models = [m for m in args.models.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for m in models:
        if m not in MODELS:
            parser.error(f"--models: unknown {m!r}; choose from {', '.join(MODELS)}")
    args.torch_dtypes = dtypes if args.torch_dtypes is None else [d for d in args.torch_dtypes.split(",") if d]
    for flag, chosen in (("--dtypes", dtypes), ("--torch-dtypes", args.torch_dtypes)):
        for d in chosen:
            if d not in DTYPES:
                parser.error(f"{flag}: unknown {d!r}; choose from {', '.join(DTYPES)}")

    def log(line):
        print(line, flush=True)

    from perceiver import models as ours_models

    if ours_models.FLOW_OUTPUT_SCALE != FLOW_OUTPUT_SCALE:
        raise RuntimeError(f"update FLOW_OUTPUT_SCALE to {ours_models.FLOW_OUTPUT_SCALE}")
    missing = have_torch()
    if missing:
        log(f"transformers not timed ({missing}); ours only")
    else:
        import torch

        log(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    torch_products = [{"f32": "float32", "bf16": "bfloat16"}[d] for d in args.torch_dtypes]
    limit = {} if args.no_limit else vs_torch.product_limit(max(args.rounds, 3), {}, torch_products)
    log("2048^3 product, GFLOP/s: " + json.dumps({k: {d: round(v) for d, v in r.items()} for k, r in limit.items()}))
    meta = {"batch": args.batch, "tiny": args.tiny, "rounds": args.rounds}
    results: Dict[Tuple[str, str], Dict] = {}
    for name in models:
        factory, sizes, changed = model_sizes(name, args.tiny)
        if changed:
            log(f"{name}: tiny sizes changed to what transformers fixes: {changed}")
        b = make_batch(name, sizes, args.batch)
        params, state = seeded_weights(factory, sizes, b, name)
        with tempfile.TemporaryDirectory() as tmp:
            folder = None
            if not missing:
                folder = os.path.join(tmp, "hf")
                write_hf(factory, sizes, params, state, folder)
            flops = None
            for dtype in dtypes:
                log(f"{name} {dtype}:")
                weights = (factory, sizes, params, state, b)
                r = measure_pair(name, dtype, args, folder, weights, log, flops)
                flops = r["flops"]
                r.update(sizes={k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
                         tiny_changes=changed)
                gc.collect()
                if args.memory:
                    r["memory"] = {}
                    for side in ["ours"] + (["torch"] if folder and dtype in args.torch_dtypes else []):
                        spec = dict(model=name, dtype=dtype, side=side, factory=factory,
                                    sizes=r["sizes"], batch=args.batch, folder=folder,
                                    optimizer=optimizer_settings())
                        r["memory"][side] = measure_memory(spec, args.torch_site, args.timeout)
                        mem = r["memory"][side]
                        log(f"  memory {side}: " + (
                            f"step peak {mem['step_peak_bytes'] / 2**20:.0f} MiB over set-up "
                            f"{mem['setup_rss_bytes'] / 2**20:.0f} MiB; losses {mem['losses']}"
                            if mem["status"] == "ok" else mem["status"] + " " + mem.get("error", "")[-500:]
                        ))
                log("  best step s: " + ", ".join(f"{k} {v:.4f}" for k, v in r["best_s"].items()))
                results[(name, dtype)] = r
                # After every pair: a long run stopped early keeps what it measured.
                write_json(args.out, limit, meta, results)
    text = report(limit, results, meta)
    print("\n" + text)
    write_json(args.out, limit, meta, results)


def write_json(path: str, limit: Dict, meta: Dict, results: Dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".part", "w") as f:
        json.dump(
            dict(
                cpu=vs_torch.cpu_name(), cpus=os.cpu_count(), flags=vs_torch.cpu_flags(), limit=limit,
                meta=dict(meta, command=" ".join(sys.argv), date=time.strftime("%Y-%m-%d %H:%M")),
                results={f"{n} {d}": r for (n, d), r in results.items()},
            ),
            f,
            indent=2,
            default=str,
        )
    os.replace(path + ".part", path)


if __name__ == "__main__":
    main()
