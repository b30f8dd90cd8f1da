"""How Perceiver modules compute: attention kernels, chunking, precision, loops.

Options choose *how* the modules of `perceiver.perceiver` evaluate the same
function; they never change a parameter's name, shape or initial value, and
outputs agree with the plain computation within float32 rounding (the opt-in
bfloat16 mode aside). The default, 'auto', takes the fast paths where they
help:

- attention runs in tiles with a running softmax, never materialising a
  large `[queries, keys]` matrix, and its gradient recomputes the tiles;
- large decoders run over chunks of queries inside one compiled loop, and
  fold a narrow output layer (e.g. to RGB or to 2 flow channels) into the
  last product of their MLP (`AffineTail`);
- single-head cross-attentions over long inputs fold their projections (and
  the inputs' layer norm) into the side with fewer positions;
- weight-shared encoder blocks run in a loop instead of unrolled.

Options are read when a module is *traced*, so enter them inside the function
that jax transforms:

    def forward(images):
        with compute.options(compute_dtype=jnp.bfloat16):
            return model(images, is_training=False)

or wrap a transformed model, which does the same in its `init` and `apply`:

    model = compute.configure(models.optical_flow(), decoder_chunk_size=4096)

Beware of `with compute.options(...): jax.jit(model.apply)(...)`: jax caches
one trace per function, so only the first trace of `model.apply` sees those
options, and later calls under other options (even through a new `jax.jit`
wrapper) silently reuse it. `configure` makes new functions each time and so
cannot be mixed up.

Modules hand their parameters to this package in small types and it
decides how to compute (the seam, `attention.py`):

- `settings.py`: `Options`, `options`, `configure`, and reading them;
- `attention.py`: the seam: `Projections` in, `Attended` out
  (`attention_layer`, or `prepare_keys` then `attend_keys`), with new
  attention math as arguments (bias, causal order, a `HeadsTransform`, a
  `KVCache`);
- `rotary.py`: `Rotary`, rotary position encodings of query and key heads;
- `cache.py`: `KVCache`, keys and values of a fixed capacity;
- `folding.py`: which form of single-head attention (`Fold`), the algebra
  of each, and a decoder's tail folded into its MLP (`AffineTail`);
- `kernels.py`: plain, fused and tiled attention and the choice among them;
- `tiled.py`: the tiled kernel and its recomputing gradient;
- `logits.py`: logits, masks and weighted values, shared by the kernels;
- `chunks.py`: chunks of a long axis; decoding over chunks of queries;
- `stacks.py`: layers rematerialised per the options, weight-shared
  repeats in one loop (`layer`, `repeat_layers`);
- `layers.py`: `Linear`, `Projection`, `LayerNormed` and their math;
- `precision.py`: the compute dtype, parameters converted to it
  (`cast_params`) and half-precision matmuls;
- `recompute.py`: rematerialisation that saves memory on XLA:CPU too;
- `compiler.py`: XLA options for one compiled function (`compute.jit`),
  where they are measured to be faster; never process-wide.

This package exports what users set and the seam's types and calls
(`__all__`); the rest is reached through its submodules and may change.
"""

from perceiver.compute.attention import (
    Attended,
    Dropout,
    HeadsTransform,
    KeyInputs,
    Keys,
    attend_keys,
    attention_layer,
    prepare_keys,
)
from perceiver.compute.cache import KVCache
from perceiver.compute.chunks import over_query_chunks
from perceiver.compute.compiler import compiler_options, jit
from perceiver.compute.folding import AffineTail, Projections
from perceiver.compute.kernels import dot_product_attention
from perceiver.compute.layers import LayerNormed, Linear, Projection
from perceiver.compute.precision import cast_params, in_compute_dtype
from perceiver.compute.rotary import Rotary
from perceiver.compute.settings import Options, configure, options
from perceiver.compute.stacks import gradient_boundary, layer, repeat_layers

# What users set, then the seam's types and calls for module writers; the
# rest (kernels, tiles, folds, chunk sizes, precision helpers) is reached
# through the submodules and may change.
__all__ = [
    "Options",
    "options",
    "configure",
    "cast_params",
    "jit",
    "compiler_options",
    "Projection",
    "Projections",
    "LayerNormed",
    "Linear",
    "Dropout",
    "Attended",
    "Keys",
    "KeyInputs",
    "HeadsTransform",
    "Rotary",
    "KVCache",
    "AffineTail",
    "attention_layer",
    "prepare_keys",
    "attend_keys",
    "dot_product_attention",
    "over_query_chunks",
    "repeat_layers",
    "layer",
    "gradient_boundary",
    "in_compute_dtype",
]


# Names this package exported before its surface was narrowed, and where
# they live now; reading one still works, with a warning.
_MOVED = {
    "attend_heads": "attention", "choose_attention": "kernels", "attention_tiles": "kernels",
    "plain_attention": "kernels", "fused_attention": "kernels", "tiled_attention": "tiled",
    "TILE_ELEMENTS": "settings", "ONE_TILE_MAX_ELEMENTS": "settings",
    "ATTENTION_KINDS": "settings", "ABSORB_MIN_ELEMENTS": "settings",
    "ABSORB_MIN_SAVING": "settings", "current": "settings", "remat": "settings",
    "scan_blocks": "settings", "Fold": "folding", "NO_FOLD": "folding",
    "FoldedTail": "folding", "Logits": "folding", "Values": "folding",
    "choose_fold": "folding", "fold_tail": "folding", "folds_tail": "folding",
    "absorb_enabled": "folding", "chunk_start": "chunks", "join_chunks": "chunks",
    "decoder_chunk": "chunks", "compute_dtype": "precision", "parameter_dtype": "precision",
    "is_low_precision": "precision", "matmul": "precision", "checkpoint": "recompute",
    "haiku_checkpoint": "recompute", "layer_norm": "layers", "linear": "layers",
    "attention_logits": "logits", "no_valid_key": "logits", "weighted_values": "logits",
}


def __getattr__(name):
    if name in _MOVED:
        import importlib
        import warnings

        where = f"perceiver.compute.{_MOVED[name]}"
        warnings.warn(
            f"perceiver.compute.{name} is internal now; use {where}.{name}.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(where), name)
    raise AttributeError(f"module 'perceiver.compute' has no attribute {name!r}")
