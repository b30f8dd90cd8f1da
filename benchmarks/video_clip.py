"""A whole 16-frame clip autoencoded: our task function against the notebook's procedure.

DeepMind's notebook reconstructs a clip by running the whole model (encoder
included) once for each of 128 output chunks. `VideoAutoencoder` encodes the
clip once and decodes every output in bounded chunks. Both run here on the
published sizes with random weights; the notebook's procedure is timed on a
few chunks (after compilation) and extrapolated to 128, as stated in the
output.

    python benchmarks/video_clip.py [--chunks-timed 3] [--chunk-size 8192]
"""

import argparse
import time

import jax
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks-timed", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=8192)
    args = parser.parse_args()

    from perceiver import models
    from perceiver.tasks import video as video_lib

    params, state = models.parameter_shapes("video_autoencoder")
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: (0.02 * rng.standard_normal(s.shape)).astype(s.dtype), params
    )
    frames = rng.uniform(0, 1, (16, 224, 224, 3)).astype(np.float32)
    audio = rng.uniform(-1, 1, (16 * 1920,)).astype(np.float32)

    ours = video_lib.VideoAutoencoder(params, {}, chunk_size=args.chunk_size)
    start = time.perf_counter()
    ours(frames[:16], audio)  # compiles encode and decode
    first = time.perf_counter() - start
    start = time.perf_counter()
    ours(frames, audio)
    ours_time = time.perf_counter() - start
    print(f"ours: whole clip {ours_time:.1f} s (first call, with compilation: {first:.1f} s)")

    # The notebook's procedure: the whole model per chunk of 1/128 of the outputs.
    model = models.video_autoencoder()
    apply = jax.jit(model.apply)
    n_image, n_audio = 16 * 224 * 224 // 128, 16 * 1920 // 16 // 128
    times = []
    for chunk in range(args.chunks_timed + 1):
        sub = {
            "image": np.arange(n_image * chunk, n_image * (chunk + 1)),
            "audio": np.arange(n_audio * chunk, n_audio * (chunk + 1)),
        }
        start = time.perf_counter()
        out, _ = apply(params, {}, None, frames[None], audio[None, :, None], sub)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    per_chunk = float(np.median(times[1:]))
    notebook = 128 * per_chunk
    print(
        f"notebook procedure: {per_chunk:.2f} s per chunk (median of {args.chunks_timed} after "
        f"compilation) x 128 chunks = {notebook:.0f} s (extrapolated)"
    )
    print(f"speed-up: {notebook / ours_time:.1f}x")


if __name__ == "__main__":
    main()
