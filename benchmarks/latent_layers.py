"""GFLOP/s of a stack of latent self-attention layers alone, against one large product.

    python benchmarks/latent_layers.py                 # MLM's and ImageNet's latents
    python benchmarks/latent_layers.py --shape 512 1024 8 1024

Most of the models' arithmetic is their latent layers: dense products of
256-512 latents by 1024-1280 channels. This times `perceiver.SelfAttention`
layers with the published sizes, float32 and bfloat16 (weights converted
once, `compute.cast_params`; compiled by `compute.jit`), and reports their
useful FLOP rate as a share of one 2048^3 product's in the same process.
"""

import argparse
import time

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from perceiver import compute, perceiver

# (latents, channels, heads, qk channels): MLM's and the ImageNet models'.
SHAPES = {"mlm": (256, 1280, 8, 256), "imagenet": (512, 1024, 8, 1024)}


def best_time(fn, *args, calls: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def product_rate(dtype, calls: int, n: int = 2048) -> float:
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n)), dtype)
    product = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return 2 * n**3 / best_time(product, a, a, calls=calls) / 1e9


def layers_rate(latents, channels, heads, qk, num_layers, dtype, calls: int) -> float:
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
    return num_layers * per_layer / best_time(forward, params, x, calls=calls) / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=4, type=int, metavar=("LATENTS", "CHANNELS", "HEADS", "QK"))
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args(argv)
    shapes = {"given": tuple(args.shape)} if args.shape else SHAPES
    for dtype in (jnp.float32, jnp.bfloat16):
        limit = product_rate(dtype, args.calls)
        name = jnp.dtype(dtype).name
        print(f"{name}: one 2048^3 product {limit:.0f} GFLOP/s")
        for label, shape in shapes.items():
            rate = layers_rate(*shape, args.layers, dtype, args.calls)
            print(f"  {label} {shape}: {args.layers} layers {rate:.0f} GFLOP/s, {rate / limit:.0%} of it")


if __name__ == "__main__":
    main()
