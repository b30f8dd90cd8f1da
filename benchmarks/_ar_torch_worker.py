"""The PyTorch side of `ar_vs_torch.py`: krasserm's and lucidrains' Perceiver AR ports.

Run by `ar_vs_torch.py` with the python of a venv that has torch,
`perceiver-io` (krasserm; its package is also named `perceiver`, so it
cannot share ours' venv) and `perceiver-ar-pytorch` (lucidrains). Takes the
same size flags and prints one JSON object (the last line of stdout):
`{"versions": {...}, "results": [...]}`, one result per framework and dtype
as ours' are made, or with an "error" where a port failed.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

# The driver's helpers (it imports only numpy at module level; its own
# `perceiver` imports are inside its functions, so krasserm's package here
# does not clash).
from ar_vs_torch import VOCAB, best_round, byte_batch, prompt_bytes, timed_steps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    for name in ("context", "latents", "channels", "layers", "heads", "batch", "gen-prompt",
                 "gen-new", "steps", "warmup", "budget", "rounds"):
        p.add_argument("--" + name, type=int, required=True)
    p.add_argument("--frameworks", default="krasserm,lucidrains")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--metrics", default="train,generate")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for name in ("frameworks", "dtypes", "metrics"):
        setattr(a, name, [x for x in getattr(a, name).split(",") if x])
    return a


def amp(mode: str):
    """The context each forward runs in: autocast for 'autocast', else none."""
    if mode == "autocast":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return nullcontext()


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """`[B, 1]` argmax ids, never 0 (padding), as our sampler draws."""
    logits = logits.float().clone()
    logits[:, 0] = -float("inf")
    return logits.argmax(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def krasserm_model(a):
    from perceiver.model.text.clm import (
        CausalLanguageModelConfig,
        PerceiverCausalLanguageModel,
        PerceiverCausalLanguageModelConfig,
    )

    config = CausalLanguageModelConfig(
        vocab_size=VOCAB, max_seq_len=a.context, max_latents=a.latents,
        num_channels=a.channels, num_heads=a.heads, num_self_attention_layers=a.layers,
        num_self_attention_rotary_layers=-1,  # rotary in every latent layer, as ours
        self_attention_widening_factor=4, cross_attention_widening_factor=4,
        cross_attention_dropout=0.0, abs_pos_emb=False,
    )
    hf_config = PerceiverCausalLanguageModelConfig(config)
    hf_config.is_decoder = True
    return PerceiverCausalLanguageModel(hf_config)  # .backend_model: the torch module


def lucidrains_model(a):
    from perceiver_ar_pytorch import PerceiverAR

    return PerceiverAR(
        num_tokens=VOCAB, dim=a.channels, depth=a.layers, max_seq_len=a.context,
        cross_attn_seq_len=a.context - a.latents, dim_head=a.channels // a.heads,
        heads=a.heads, ff_mult=4, perceive_max_heads_process=a.heads,
    )


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def train(a, module: torch.nn.Module, logits_fn, mode: str) -> Dict[str, Any]:
    """Median step time of forward + backward + AdamW on the latent positions' next bytes."""
    t, u = a.context, a.latents
    tokens = torch.from_numpy(byte_batch(a.seed, a.batch, t + 1)).long()
    inputs, targets = tokens[:, :t], tokens[:, t - u + 1:]
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    module.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with amp(mode):
            logits = logits_fn(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss

    last = {}

    def one_step():
        last["loss"] = step()

    timing = timed_steps(one_step, a.warmup, a.steps, a.budget)
    median = statistics.median(timing["step_s"])
    return dict(ms_per_step=1e3 * median, tokens_per_s=a.batch * t / median,
                loss=float(last["loss"]), **timing)


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def timed_generation(a, gen) -> Dict[str, Any]:
    """`gen(n, seconds)` -> `[1, k]` new ids, k <= n, stopping after `seconds` (None: never).

    One byte first (untimed; kept as the timed run when it alone took over
    the budget), then up to `a.rounds` runs of `a.gen_new` bytes (the fastest
    counts), the first cut short after `a.budget` seconds and another only
    while it fits in the budget.
    """
    start = time.perf_counter()
    new = gen(1, None)
    first = time.perf_counter() - start
    if first > a.budget:
        return dict(bytes_per_s=new.shape[1] / first, seconds=first, bytes=int(new.shape[1]),
                    first_run_s=first, tokens=new,
                    note="the first (warm-up) byte, over budget, was timed")
    runs = []

    def run():
        t0 = time.perf_counter()
        ids = gen(a.gen_new, a.budget)
        seconds = time.perf_counter() - t0
        runs.append((ids, seconds))
        # A run cut short ends the rounds: its rate is not comparable to full ones.
        return ids.shape[1] / seconds if ids.shape[1] == a.gen_new or len(runs) == 1 else None

    best = best_round(run, a.rounds, a.budget)
    ids, seconds = runs[0]
    if ids.shape[1] < a.gen_new:  # the first run was cut short: that is the measurement
        return dict(best, seconds=seconds, bytes=int(ids.shape[1]), first_run_s=first,
                    tokens=ids)
    return dict(best, seconds=a.gen_new / best["bytes_per_s"], bytes=a.gen_new,
                first_run_s=first, tokens=ids)


def krasserm_generate(a, hf_model, mode: str) -> Dict[str, Any]:
    prompt = torch.from_numpy(prompt_bytes(a.seed, a.gen_prompt)).long()
    hf_model.eval()
    out: Dict[str, Any] = {}
    tokens = {}
    for use_cache in (True, False):
        def gen(n, seconds, use_cache=use_cache):
            with torch.inference_mode(), amp(mode):
                ids = hf_model.generate(input_ids=prompt, max_new_tokens=n, num_latents=1,
                                        do_sample=False, num_beams=1, use_cache=use_cache,
                                        pad_token_id=0, suppress_tokens=[0], max_time=seconds)
            return ids[:, a.gen_prompt:]

        r = timed_generation(a, gen)
        tokens[use_cache] = r.pop("tokens")
        r["how"] = ("PerceiverCausalLanguageModel.generate (Hugging Face), greedy, num_latents=1, "
                    f"use_cache={use_cache}")
        out["cache" if use_cache else "no_cache"] = r
    n = min(tokens[True].shape[1], tokens[False].shape[1])
    out["same_tokens_with_and_without_cache"] = bool(
        torch.equal(tokens[True][:, :n], tokens[False][:, :n]))
    return out


def lucidrains_generate(a, model, mode: str) -> Dict[str, Any]:
    """Greedy: each new byte runs the model on the last `context` ids (left-padded, masked)."""
    t, prefix = a.context, a.context - a.latents
    prompt = torch.from_numpy(prompt_bytes(a.seed, a.gen_prompt)).long()
    model.eval()

    def gen(n, seconds):
        start = time.perf_counter()
        window = torch.zeros(1, t, dtype=torch.long)
        window[:, t - prompt.shape[1]:] = prompt
        real = torch.zeros(1, t, dtype=torch.bool)
        real[:, t - prompt.shape[1]:] = True
        new = []
        with torch.inference_mode(), amp(mode):
            for _ in range(n):
                logits = model(window, prefix_mask=real[:, :prefix])[:, -1]
                nxt = greedy(logits)
                new.append(nxt)
                window = torch.cat([window[:, 1:], nxt], dim=1)
                real = torch.cat([real[:, 1:], torch.ones(1, 1, dtype=torch.bool)], dim=1)
                if seconds is not None and time.perf_counter() - start > seconds:
                    break
        return torch.cat(new, dim=1)

    r = timed_generation(a, gen)
    r.pop("tokens")
    r["how"] = ("greedy loop over PerceiverAR.forward on a left-padded window of context ids "
                "with prefix_mask (no cache)")
    return dict(no_cache=r)


# ---------------------------------------------------------------------------


MODES = {"float32": "float32", "bfloat16": "autocast"}


def run_one(a, framework: str, dtype: str) -> Dict[str, Any]:
    """One framework at one dtype; bfloat16 under autocast, else (when autocast fails) pure."""
    try:
        return measure(a, framework, dtype, MODES[dtype])
    except RuntimeError as e:
        if dtype != "bfloat16":
            raise
        traceback.print_exc()
        result = measure(a, framework, dtype, "pure")
        result["autocast_error"] = f"{type(e).__name__}: {e}"
        return result


def measure(a, framework: str, dtype: str, mode: str) -> Dict[str, Any]:
    """mode: 'float32', 'autocast' (bf16 compute, f32 weights) or 'pure' (bf16 weights)."""
    torch.manual_seed(a.seed)
    result: Dict[str, Any] = dict(framework=framework, dtype=dtype, precision=dict(
        float32="float32", autocast="bf16 autocast, f32 weights",
        pure="bf16 weights (model.to(bfloat16)), no autocast")[mode])
    if framework == "krasserm":
        hf_model = krasserm_model(a)
        module = hf_model.backend_model
        prefix_len = a.context - a.latents
        result["params"] = count(module)
        if mode == "pure":
            hf_model.to(torch.bfloat16)
        if "train" in a.metrics:
            result["train"] = train(a, module, lambda x: module(x, prefix_len=prefix_len).logits,
                                    mode)
        if "generate" in a.metrics:
            result["generate"] = krasserm_generate(a, hf_model, mode)
    elif framework == "lucidrains":
        model = lucidrains_model(a)
        result["params"] = count(model)
        if mode == "pure":
            model.to(torch.bfloat16)
        if "train" in a.metrics:
            result["train"] = train(a, model, model, mode)
        if "generate" in a.metrics:
            result["generate"] = lucidrains_generate(a, model, mode)
    else:
        raise ValueError(f"unknown framework {framework!r}")
    return result


def versions() -> Dict[str, str]:
    from importlib import metadata

    out = dict(python=platform.python_version(), torch=torch.__version__,
               torch_threads=str(torch.get_num_threads()))
    for dist in ("perceiver-io", "perceiver-ar-pytorch", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    results: List[Dict[str, Any]] = []
    for framework in a.frameworks:
        for dtype in a.dtypes:
            start = time.perf_counter()
            try:
                results.append(run_one(a, framework, dtype))
            except Exception as e:  # report it and go on with the others
                traceback.print_exc()
                results.append(dict(framework=framework, dtype=dtype,
                                    error=f"{type(e).__name__}: {e}"))
            print(f"{framework} {dtype}: {time.perf_counter() - start:.0f} s", file=sys.stderr,
                  flush=True)
    print(json.dumps(dict(versions=versions(), results=results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
