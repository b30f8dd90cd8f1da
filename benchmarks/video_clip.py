"""A whole 16-frame clip autoencoded: our task function against the notebook's procedure.

DeepMind's notebook reconstructs a clip by running the whole model (encoder
included) once for each of 128 output chunks. `VideoAutoencoder` encodes the
clip once and decodes every output in bounded chunks. Both run here on the
published sizes with the same random weights; the notebook's procedure is
timed on a few chunks (after compilation) and extrapolated to 128, as stated
in the output. With `PERCEIVER_REFERENCE` set (see run.py) that procedure
runs on DeepMind's reference, in its own process; otherwise on our model.

    PERCEIVER_REFERENCE=/path/to/checkout python benchmarks/video_clip.py
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np


def notebook_chunk_times(chunks_timed: int, reference) -> list:
    """Seconds of the whole model on successive 1/128 chunks (the first compiles)."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import run  # benchmarks/run.py: both implementations, same weights and inputs

    config = run.Config("notebook", "video_autoencoding")
    transformed = run.build("reference" if reference else "ours", config, reference)
    images, audio, first_chunk = run.make_inputs(config)
    rng = jax.random.PRNGKey(0)
    shapes = jax.eval_shape(lambda: transformed.init(rng, images, audio, first_chunk))
    params = run.seeded_params(shapes[0], put=jax.device_put)
    apply = jax.jit(transformed.apply)
    n_image, n_audio = 16 * 224 * 224 // 128, 16 * 1920 // 16 // 128
    times = []
    for chunk in range(chunks_timed + 1):
        sub = {
            "image": np.arange(n_image * chunk, n_image * (chunk + 1)),
            "audio": np.arange(n_audio * chunk, n_audio * (chunk + 1)),
            "label": None,
        }
        start = time.perf_counter()
        out, _ = apply(params, {}, rng, images, audio, sub)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks-timed", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--notebook-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.notebook_worker is not None:
        print(json.dumps(notebook_chunk_times(args.notebook_worker, args.reference)))
        return

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
    reference = os.environ.get("PERCEIVER_REFERENCE")
    cmd = [sys.executable, __file__, "--notebook-worker", str(args.chunks_timed)]
    if reference:
        cmd += ["--reference", reference]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    times = json.loads(out.strip().splitlines()[-1])
    who = "the reference" if reference else "our model"
    per_chunk = float(np.median(times[1:]))
    notebook = 128 * per_chunk
    print(
        f"notebook procedure on {who}: {per_chunk:.2f} s per chunk (median of {args.chunks_timed} after "
        f"compilation) x 128 chunks = {notebook:.0f} s (extrapolated)"
    )
    print(f"speed-up: {notebook / ours_time:.1f}x")


if __name__ == "__main__":
    main()
