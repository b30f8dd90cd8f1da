"""The float32 product rate at the shapes a training step multiplies, XLA against torch and numpy.

    python benchmarks/product_shapes.py [--torch-site SITE] [--reps 10]

A model's step can run its products no faster than the library runs them
alone. For the ImageNet models' latent layers (batch 2 x 512 latents,
1024 channels) and the MLM's (batch 2 x 256 latents, 1280 channels) this
times each product alone as the forward and backward passes orient it:
`nn` (activations x weights), `nt` (the input gradient, weights
transposed) and `tn` (the weight gradient, activations transposed, the
contraction over the rows). Best of `--reps` calls, GFLOP/s (2mkn / s).
"""

import argparse
import json
import sys
import time

import numpy as np

# name: (m, k, n, orientation of the two operands)
SHAPES = {
    "2048^3": (2048, 2048, 2048, "nn"),
    "imagenet layer, nn": (1024, 1024, 1024, "nn"),
    "imagenet input grad, nt": (1024, 1024, 1024, "nt"),
    "imagenet weight grad, tn": (1024, 1024, 1024, "tn"),
    "mlm layer, nn": (512, 1280, 1280, "nn"),
    "mlm weight grad, tn": (1280, 512, 1280, "tn"),
    "mlm mlp, nn": (512, 1280, 5120, "nn"),
}


def operands(m, k, n, orientation):
    """Random float32 operands stored as the orientation says (`t`: transposed in memory)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if orientation[0] == "t" else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if orientation[1] == "t" else (k, n), dtype=np.float32)
    return a, b


def oriented(a, b, orientation):
    return (a.T if orientation[0] == "t" else a) @ (b.T if orientation[1] == "t" else b)


def best_seconds(call, reps):
    # Not vs_torch.best_of's libraries in turn: numpy's and torch's thread pools
    # keep spinning after a call and slow the next library's product (measured:
    # torch 95-108 against 180 GFLOP/s at 1024^3 when interleaved), so each
    # product is timed in a run of its own calls.
    call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def rates(reps, torch_site=None):
    """`{library: {shape name: GFLOP/s}}` for xla, numpy and (if importable) torch."""
    import jax
    import jax.numpy as jnp

    out = {"xla": {}, "numpy": {}}
    torch = None
    if torch_site:
        sys.path.append(torch_site)
    try:
        import torch
    except ImportError:
        pass
    if torch is not None:
        out["torch"] = {}
    for name, (m, k, n, orientation) in SHAPES.items():
        a, b = operands(m, k, n, orientation)
        flop = 2 * m * k * n
        xa, xb = jnp.asarray(a), jnp.asarray(b)
        product = jax.jit(lambda a, b, o=orientation: oriented(a, b, o))
        out["xla"][name] = flop / best_seconds(lambda: product(xa, xb).block_until_ready(), reps) / 1e9
        out["numpy"][name] = flop / best_seconds(lambda: oriented(a, b, orientation), reps) / 1e9
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            out["torch"][name] = flop / best_seconds(lambda: oriented(ta, tb, orientation), reps) / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--torch-site", help="a site-packages holding torch, appended to sys.path")
    parser.add_argument("--out", help="also write the rates as JSON here")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error(f"--reps: expected >= 1; got {args.reps}")
    found = rates(args.reps, args.torch_site)
    libraries = list(found)
    print("| product (m x k x n) | " + " | ".join(libraries) + " |")
    print("| --- |" + " --- |" * len(libraries))
    for name, (m, k, n, _) in SHAPES.items():
        print(f"| {name} ({m} x {k} x {n}) | " + " | ".join(f"{found[lib][name]:.0f}" for lib in libraries) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(found, f, indent=1)


if __name__ == "__main__":
    main()
