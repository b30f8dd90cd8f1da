"""Object detection: the ImageNet classifier's encoder read by N learned queries (as DETR).

The image preprocessor ('image_preprocessor') and encoder
('perceiver_encoder') have the ImageNet classifier's names and shapes for
the same variant and sizes, so a published ImageNet checkpoint fills
everything but the detection decoder and its two heads. Each query's output
becomes class logits (the classes and a last "no object" class) and one box,
(centre x, centre y, width, height) as fractions of the image (Carion et al.
2020, "End-to-End Object Detection with Transformers").
"""

import haiku as hk
import jax
import numpy as np

from perceiver import _validation
from perceiver import io_processors
from perceiver import perceiver
from perceiver._factories.imagenet import (
    IMAGENET_VARIANTS,
    _check_square_images,
    imagenet_encoder_kwargs,
    imagenet_preprocessor_kwargs,
    _training_mode,
)
from perceiver._factories.shared import _Built


def _object_detector(
    num_classes: int,
    *,
    variant: str = "conv_preprocessing",
    num_queries: int = 100,
    image_size: int = 224,
    num_latents: int = 512,
    num_latent_channels: int = 1024,
    num_blocks: int = 8,
    num_self_attends_per_block: int = 6,
    num_self_attend_heads: int = 8,
    num_bands: int = 64,
    learned_pos_channels: int = 256,
) -> _Built:
    _validation.check_positive_int("num_classes", num_classes)
    _validation.check_positive_int("num_queries", num_queries)
    _validation.check_choice("variant", variant, IMAGENET_VARIANTS)
    encoder_kwargs = imagenet_encoder_kwargs(
        num_latents=num_latents,
        num_latent_channels=num_latent_channels,
        num_blocks=num_blocks,
        num_self_attends_per_block=num_self_attends_per_block,
        num_self_attend_heads=num_self_attend_heads,
    )
    prep_kwargs = imagenet_preprocessor_kwargs(
        variant, image_size=image_size, num_bands=num_bands, learned_pos_channels=learned_pos_channels
    )

    def forward(images, is_training=False):
        _check_square_images(images, image_size, "resize first: boxes are fractions of the image")
        decoder = perceiver.BasicDecoder(
            output_num_channels=num_latent_channels,
            position_encoding_type="trainable",
            output_index_dims=(num_queries,),
            num_z_channels=num_latent_channels,
            use_query_residual=True,
            final_project=False,
            trainable_position_encoding_kwargs=dict(init_scale=0.02, num_channels=num_latent_channels),
            name="detection_decoder",
        )
        model = perceiver.Perceiver(
            encoder=perceiver.PerceiverEncoder(**encoder_kwargs),
            decoder=decoder,
            input_preprocessor=io_processors.ImagePreprocessor(**prep_kwargs),
        )
        queries = model(images, is_training=_training_mode(variant, is_training))  # [B, N, C]
        logits = hk.Linear(num_classes + 1, name="class_head")(queries)
        boxes = hk.nets.MLP(
            [num_latent_channels, num_latent_channels, 4], activation=jax.nn.relu, name="box_head"
        )(queries)
        return {"logits": logits, "boxes": jax.nn.sigmoid(boxes)}

    images = np.zeros((1, image_size, image_size, 3), np.float32)
    return _Built(hk.transform_with_state(forward), (images,))


def object_detector(num_classes: int, **sizes) -> hk.TransformedWithState:
    """Boxes and classes from N learned queries on the ImageNet classifier's encoder.

    What the `finetune_detection` recipe trains, with a Hungarian-matched set
    loss (`perceiver.boxes`). `apply(params, state, rng, images,
    is_training=False)`: normalised images `[B, S, S, 3]` (S = image_size) ->
    `{'logits': [B, N, num_classes + 1], 'boxes': [B, N, 4]}`; the last class
    is "no object", boxes are (cx, cy, w, h) as fractions of the image.

    Args:
      num_classes: the number of object classes.
      **sizes: variant='conv_preprocessing' (or another of
        `IMAGENET_VARIANTS`), num_queries=100, and the ImageNet classifier's
        sizes (image_size=224, num_latents=512, num_latent_channels=1024,
        num_blocks=8, num_self_attends_per_block=6, num_self_attend_heads=8,
        num_bands=64, learned_pos_channels=256).

    Raises:
      ValueError: for num_classes or num_queries < 1, or an unknown variant.
    """
    return _object_detector(num_classes, **sizes).model
