"""The models' factories: the six published Perceiver IO models, a text classifier, a byte LM.

Import them from `perceiver.models`, which adds loading checkpoints
(`pretrained`, `load_for`) on top; this module knows nothing of files, so
that the loading layer (`perceiver.loading`) can stand between the two.

Each factory assembles the model the way DeepMind's notebooks do and returns
an `hk.TransformedWithState`; defaults are the published sizes, so the
parameter trees equal the published checkpoints'. Keyword arguments shrink
the model (for tests, or new models of the same shape). `text_classifier`
is the byte MLM's embedding and encoder with a classification decoder: the
model the `finetune_text` training recipe trains; `byte_language_model` the
Perceiver AR the `perceiver_ar` recipe trains.

The heads the Perceiver IO tutorials name are built on them:
`token_classifier` and `question_answerer` on the byte MLM's encoder,
`object_detector` on the ImageNet classifier's, and `audio_classifier`.

The factories are written one model family a module (`language`,
`imagenet`, `flow`, `video`, `autoregressive`, `text_heads`, `audio`,
`detection`); this package's `__init__`
names them (`FACTORIES`, `factory_name`, `factory_sizes`, ...).
"""

import inspect
from typing import Any, Callable, Dict, Mapping, Tuple

import jax

from perceiver import _validation
from perceiver._factories.audio import _audio_classifier, audio_classifier
from perceiver._factories.autoregressive import _byte_language_model, byte_language_model
from perceiver._factories.detection import _object_detector, object_detector
from perceiver._factories.flow import FLOW_OUTPUT_SCALE, _optical_flow, optical_flow  # noqa: F401
from perceiver._factories.imagenet import (  # noqa: F401
    IMAGENET_VARIANTS,
    _imagenet_classifier,
    imagenet_classifier,
    imagenet_encoder_kwargs,
    imagenet_preprocessor_kwargs,
)
from perceiver._factories.language import (  # noqa: F401
    _masked_language_model,
    _text_classifier,
    embed_bytes,
    masked_language_model,
    mlm_encoder_kwargs,
    text_classifier,
)
from perceiver._factories.shared import _Built, _bind_sizes
from perceiver._factories.text_heads import (
    _question_answerer,
    _token_classifier,
    question_answerer,
    token_classifier,
)
from perceiver._factories.video import (  # noqa: F401
    VideoAutoencoderParts,
    _video_autoencoder,
    video_autoencoder,
    video_autoencoder_parts,
)

# ---------------------------------------------------------------------------
# Factories by name
# ---------------------------------------------------------------------------

_BUILDERS: Dict[str, Callable[..., _Built]] = {
    "masked_language_model": _masked_language_model,
    "imagenet_classifier": _imagenet_classifier,
    "optical_flow": _optical_flow,
    "video_autoencoder": _video_autoencoder,
    "text_classifier": _text_classifier,
    "byte_language_model": _byte_language_model,
    "token_classifier": _token_classifier,
    "question_answerer": _question_answerer,
    "audio_classifier": _audio_classifier,
    "object_detector": _object_detector,
}
FACTORIES: Tuple[str, ...] = tuple(_BUILDERS)
# The public factory functions, so that callers may pass one instead of its name.
_FACTORY_FUNCTIONS: Dict[Callable, str] = {
    masked_language_model: "masked_language_model",
    imagenet_classifier: "imagenet_classifier",
    optical_flow: "optical_flow",
    video_autoencoder: "video_autoencoder",
    text_classifier: "text_classifier",
    byte_language_model: "byte_language_model",
    token_classifier: "token_classifier",
    question_answerer: "question_answerer",
    audio_classifier: "audio_classifier",
    object_detector: "object_detector",
}


def factory_name(factory: "str | Callable") -> str:
    """The name of a factory given by name ('optical_flow') or as the function (`optical_flow`).

    Raises:
      ValueError: for an unknown name.
      TypeError: for anything else than a name or one of this module's factories.
    """
    if isinstance(factory, str):
        _validation.check_choice("factory", factory, FACTORIES)
        return factory
    try:
        return _FACTORY_FUNCTIONS[factory]
    except (KeyError, TypeError):  # TypeError: an unhashable value
        raise TypeError(
            f"factory must be a factory name ({', '.join(FACTORIES)}) or one of those "
            f"functions of perceiver.models; got {factory!r}."
        ) from None


def parameter_shapes(factory: "str | Callable", **kwargs) -> Tuple[Mapping, Mapping]:
    """`(params, state)` of a factory's model as `jax.ShapeDtypeStruct` leaves (no compute).

    Args:
      factory: a factory, by name ('masked_language_model',
        'imagenet_classifier', 'optical_flow', 'video_autoencoder',
        'text_classifier') or as the function (`models.optical_flow`).
      **kwargs: the factory's arguments.

    Raises:
      ValueError, TypeError: for an unknown factory (see `factory_name`) or
        arguments the factory does not take.
    """
    built = _BUILDERS[factory_name(factory)](**kwargs)
    return jax.eval_shape(
        lambda: built.model.init(jax.random.PRNGKey(0), *built.example_inputs, is_training=True)
    )


def factory_arguments(factory: "str | Callable") -> Tuple[str, ...]:
    """The names of a factory's arguments (by name or function, see `parameter_shapes`)."""
    return tuple(inspect.signature(_BUILDERS[factory_name(factory)]).parameters)


def factory_sizes(factory: "str | Callable", **kwargs) -> Dict[str, Any]:
    """A factory's arguments with its defaults filled in.

    `factory_sizes('video_autoencoder', num_frames=4)` gives every size of
    that model, e.g. its image_size (224) and num_classes (700).

    Args:
      factory: a factory, by name ('masked_language_model',
        'imagenet_classifier', 'optical_flow', 'video_autoencoder',
        'text_classifier') or as the function.
      **kwargs: some of the factory's arguments.

    Raises:
      ValueError: for an unknown factory.
      TypeError: for an argument the factory does not take, or a missing one
        (imagenet_classifier's variant, text_classifier's num_classes).
    """
    factory = factory_name(factory)
    return _bind_sizes(factory, _BUILDERS[factory], kwargs)
