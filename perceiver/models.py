"""The six published Perceiver IO models, one factory each, and a text classifier.

Each factory assembles the model the way DeepMind's notebooks do and returns
an `hk.TransformedWithState`; defaults are the published sizes, so the
parameter trees equal the published checkpoints'. Keyword arguments shrink
the model (for tests, or new models of the same shape). `text_classifier`
is the byte MLM's embedding and encoder with a classification decoder: the
model the `finetune_text` training recipe trains. `token_classifier`,
`question_answerer`, `audio_classifier` and `object_detector` are the heads
the Perceiver IO tutorials name, each trained by a `finetune_*` recipe.

    model, params, state = pretrained('imagenet_fourier')
    logits, _ = model.apply(params, state, None, images)  # [B, 1000]

The factories are written in `perceiver._factories`; loading checkpoints for
them (`pretrained`, `load_for`) in `perceiver.loading`, which stands above the
factories and `perceiver.hub`. This module offers both, as it always has.
"""

from perceiver._factories import (  # noqa: F401
    FACTORIES,
    FLOW_OUTPUT_SCALE,
    IMAGENET_VARIANTS,
    VideoAutoencoderParts,
    audio_classifier,
    byte_language_model,
    embed_bytes,
    factory_arguments,
    factory_name,
    factory_sizes,
    imagenet_classifier,
    imagenet_encoder_kwargs,
    imagenet_preprocessor_kwargs,
    masked_language_model,
    mlm_encoder_kwargs,
    object_detector,
    optical_flow,
    parameter_shapes,
    question_answerer,
    text_classifier,
    token_classifier,
    video_autoencoder,
    video_autoencoder_parts,
)
from perceiver.loading import load_for, pretrained  # noqa: F401
