"""GFLOP/s of a stack of latent self-attention layers alone, against one large product.

    python benchmarks/latent_layers.py                 # MLM's and ImageNet's latents
    python benchmarks/latent_layers.py --shape 512 1024 8 1024

Most of the models' arithmetic is their latent layers: dense products of
256-512 latents by 1024-1280 channels. This times `perceiver.SelfAttention`
layers with the published sizes, float32 and bfloat16 (weights converted
once, `compute.cast_params`; compiled by `compute.jit`), and reports their
useful FLOP rate as a share of the best rate of one 2048^3 product among
XLA, numpy and torch (when installed) in the same process
(`vs_torch.product_limit`).
"""

import argparse
import pathlib
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import vs_torch  # noqa: E402  (benchmarks/vs_torch.py: the product limit, timing in turn)

from perceiver import compute, perceiver  # noqa: E402

# (latents, channels, heads, qk channels): MLM's and the ImageNet models'.
SHAPES = {"mlm": (256, 1280, 8, 256), "imagenet": (512, 1024, 8, 1024)}


def layers_forward(latents, channels, heads, qk, num_layers, dtype):
    """`(call, GFLOP)`: `num_layers` self-attention layers on random latents, compiled."""

    def stack(x):
        for _ in range(num_layers):
            layer = perceiver.SelfAttention(
                num_heads=heads, qk_channels=qk, v_channels=channels, widening_factor=1
            )
            x = layer(x, is_training=False)
        return x

    model = hk.transform(lambda x: compute.in_compute_dtype(stack, x))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, latents, channels)), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    low_precision = dtype != jnp.float32
    if low_precision:
        model = compute.configure(model, compute_dtype=dtype)
        params = compute.cast_params(model.apply, params, None, x)
    forward = compute.jit(lambda p, x: model.apply(p, None, x), compute_dtype=dtype if low_precision else None)
    # q, k (qk channels), v, output (channels), MLP (2 x channels); logits, weighted values.
    per_layer = 2 * latents * channels * (2 * qk + 4 * channels) + 2 * latents**2 * (qk + channels)
    return (lambda: jax.block_until_ready(forward(params, x))), num_layers * per_layer / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=4, type=int, metavar=("LATENTS", "CHANNELS", "HEADS", "QK"))
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (3 calls each)")
    args = parser.parse_args(argv)
    shapes = {"given": tuple(args.shape)} if args.shape else SHAPES
    limit = vs_torch.product_limit(args.rounds, {})
    fns, gflop = {}, {}
    for dtype in (jnp.float32, jnp.bfloat16):
        for label, shape in shapes.items():
            key = (label, shape, jnp.dtype(dtype).name)
            fns[key], gflop[key] = layers_forward(*shape, args.layers, dtype)
    best = vs_torch.best_of(fns, args.rounds, calls=3)
    for dtype in ("float32", "bfloat16"):
        best_rate = max(rates.get(dtype, 0) for rates in limit.values())
        sources = ", ".join(f"{lib} {rates[dtype]:.0f}" for lib, rates in limit.items() if dtype in rates)
        print(f"{dtype}: one {vs_torch.PRODUCT_N}^3 product, GFLOP/s: {sources}")
        for (label, shape, name), seconds in best.items():
            if name == dtype:
                rate = gflop[(label, shape, name)] / seconds
                print(f"  {label} {shape}: {args.layers} layers {rate:.0f} GFLOP/s, "
                      f"{rate / best_rate:.0%} of the best product")


if __name__ == "__main__":
    main()
