"""Loading a task's model from a published name or a checkpoint file and its description.

A checkpoint file may have a description beside it, `NAME.json` for
`NAME.pystate` (see `perceiver.checkpoint.save_description`): the factory
that builds the model, its sizes, the task's options and class names. Every
task's `from_pretrained` reads it through `read_description`, so a file that
`perceiver train --export` wrote needs nothing else; a keyword given to
`from_pretrained` overrides what the description says.
"""

import dataclasses
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar

from perceiver import checkpoint
from perceiver import hub
from perceiver import loading

T = TypeVar("T")

# The task and command that run each factory's models, for messages.
TASKS: Mapping[str, Tuple[str, str]] = {
    "optical_flow": ("perceiver.tasks.flow.OpticalFlow", "perceiver flow"),
    "video_autoencoder": ("perceiver.tasks.video.VideoAutoencoder", "perceiver autoencode"),
    "masked_language_model": ("perceiver.tasks.text.MaskedLanguageModel", "perceiver fill-mask"),
    "imagenet_classifier": ("perceiver.tasks.imagenet.ImageClassifier", "perceiver classify"),
    "text_classifier": (
        "perceiver.tasks.text_classification.TextClassifier",
        "perceiver classify-text",
    ),
    "byte_language_model": ("perceiver.tasks.generation.TextGenerator", "perceiver generate"),
    "audio_classifier": ("perceiver.tasks.audio_classification.AudioClassifier", "perceiver classify-audio"),
    "token_classifier": ("perceiver.tasks.token_classification.TokenClassifier", "perceiver tag"),
    "question_answerer": ("perceiver.tasks.question_answering.QuestionAnswerer", "perceiver answer"),
    "object_detector": ("perceiver.tasks.detection.ObjectDetector", "perceiver detect"),
}


def _tuples(value: Any) -> Any:
    """JSON lists as tuples (image shapes), nested ones too."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class Description:
    """A checkpoint's description, checked for one factory; empty when there is none.

    Attributes:
      source: the description's file ('' when there is none).
      factory: the factory it was checked for.
      sizes: that factory's keyword arguments (JSON lists as tuples).
      task: the task's options.
      labels: class names in the order of the model's outputs, or None.
      tokenizer: facts about the text encoding ({} if none).
      fields: the whole description as read.
    """

    source: str = ""
    factory: str = ""
    sizes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    task: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    labels: Optional[Tuple[str, ...]] = None
    tokenizer: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def sizes_with(self, given: Mapping[str, Any]) -> Dict[str, Any]:
        """The described sizes, with those `given` explicitly taking precedence."""
        return {**self.sizes, **given}

    def option(self, name: str, given: Any, default: Any) -> Any:
        """A task option: `given` unless None, else the description's `task[name]`, else `default`."""
        if given is not None:
            return given
        return self.task.get(name, default)

    def class_names(self, given: Optional[Any], count: int) -> Optional[Tuple[str, ...]]:
        """Class names: `given` unless None, else the description's labels; checked to be `count`.

        Raises:
          perceiver.checkpoint.CheckpointError: (described labels) or
            ValueError (given ones) for a list of another length or of
            non-str.
        """
        names = self.labels if given is None else given
        if names is None:
            return None
        where = f"{self.source}: labels" if given is None else "labels"
        error = checkpoint.CheckpointError if given is None else ValueError
        if isinstance(names, (str, bytes)) or not all(isinstance(n, str) for n in names):
            raise error(f"{where} must be a list of str, one per class; got {names!r:.100}.")
        names = tuple(names)
        if len(names) != count:
            raise error(
                f"{where} must name each of the model's {count} classes; got {len(names)} names."
            )
        return names

    def check_bytes_tokenizer(self) -> None:
        """Raises CheckpointError unless the text encoding is (or is not given, so is) UTF-8 bytes."""
        kind = self.tokenizer.get("kind", "bytes")
        if kind != "bytes":
            raise checkpoint.CheckpointError(
                f"{self.source}: tokenizer kind must be 'bytes' (UTF-8 bytes, the only "
                f"encoding of these models); got {kind!r}."
            )


# The tasks ask here; the loading layer answers.
is_published = loading.is_published
# Every from_pretrained starts here: names of `perceiver list` accepted, paths checked.
resolve = loading.resolve
default_source = loading.default_source


def resolve_for(name_or_path: Any, factory: str) -> Any:
    """`resolve`, refusing a published or shipped name of another task's model before any download.

    Raises:
      ValueError: for a name of another kind of model, naming the task
        that runs it and the names this one takes; else as `resolve`.
    """
    if isinstance(name_or_path, str):
        entry = hub.CHECKPOINTS.get(name_or_path) or hub.SHIPPED.get(name_or_path)
        if entry is not None and entry.factory != factory:
            task, command = TASKS.get(entry.factory, (None, None))
            runs = f"; run it with {task} or `{command}`" if task else ""
            names = [
                n for n, e in [*hub.CHECKPOINTS.items(), *hub.SHIPPED.items()] if e.factory == factory
            ]
            takes = f"one of {', '.join(names)} or a file" if names else "a file (none is published)"
            raise ValueError(
                f"{name_or_path!r} is a checkpoint of {entry.factory}, not of {factory}{runs}; "
                f"this task takes {takes}."
            )
    return resolve(name_or_path)


def read_description(name_or_path: Any, factory: str) -> Description:
    """The description beside checkpoint file `name_or_path`, checked for `factory`.

    A published name, a path to no file, or a file without a description
    give an empty `Description`, so the task's defaults apply. A description
    without a `factory` field is taken to be of `factory` (older sidecars).

    Raises:
      perceiver.checkpoint.CheckpointError: naming the description file, if
        it is unreadable or not a description, describes a model of another
        factory (naming the task that runs it), or its sizes hold a key that
        `factory` does not take.
    """
    from perceiver import models

    if is_published(name_or_path):
        return Description(factory=factory)
    path = os.fspath(name_or_path)
    if not os.path.isfile(path):
        return Description(factory=factory)
    fields = checkpoint.read_description(path)
    if not fields:
        return Description(factory=factory)
    source = checkpoint.description_path(path)
    described = fields.get("factory", factory)
    if described != factory:
        task, command = TASKS.get(described, (None, None))
        runs = f"; run it with {task} or `{command}`" if task else ""
        raise checkpoint.CheckpointError(
            f"{source} describes a {described!r} model; this task runs {factory!r} "
            f"models{runs}."
        )
    sizes = {str(k): _tuples(v) for k, v in fields.get("sizes", {}).items()}
    accepted = models.factory_arguments(factory)
    unknown = sorted(set(sizes) - set(accepted))
    if unknown:
        raise checkpoint.CheckpointError(
            f"{source}: sizes {unknown} are not arguments of perceiver.models.{factory} "
            f"(it takes {', '.join(accepted)})."
        )
    labels = fields.get("labels")
    return Description(
        source=source,
        factory=factory,
        sizes=sizes,
        task=dict(fields.get("task", {})),
        labels=None if labels is None else tuple(labels),
        tokenizer=dict(fields.get("tokenizer", {})),
        fields=fields,
    )


def check_fits(factory: str, params: Mapping, state: Mapping, **sizes) -> None:
    """Raises unless `params` and `state` are the trees of `perceiver.models` `factory(**sizes)`.

    `perceiver.loading.check_fits`, with the sizes as keywords.

    Raises:
      perceiver.checkpoint.CheckpointError: counting the differences by kind
        and showing a few (state ones start with 'state: '); all are in
        `.differences`.
    """
    loading.check_fits(factory, params, state, sizes)


def _hint(name_or_path: Any, description: Optional[Description]) -> str:
    """What to do about a file that does not fit and has no description."""
    if description is None or description.source or is_published(name_or_path):
        return ""
    target = checkpoint.description_path(os.fspath(name_or_path))
    return (
        f"\n  (no {os.path.basename(target)} beside it gives the model's sizes: pass them, or "
        "export with `perceiver train --export`, which writes it)"
    )


def fetch(name_or_path: Any, *, cache_dir: Any = None, progress: bool = True):
    """`perceiver.loading.fetch`: a download is kept only if it is the published model's."""
    return loading.fetch(name_or_path, cache_dir=cache_dir, progress=progress)


def mismatch(
    name_or_path: Any, path: Any, error: checkpoint.CheckpointError, description: Optional[Description] = None
) -> checkpoint.CheckpointError:
    """`error` about `path` as the user should see it.

    For a published name: how to download the file again; for a file
    without a description: how to give its sizes. The differences stay in
    `.differences`.
    """
    if is_published(name_or_path):
        return hub.bad_cache_error(name_or_path, path, error)
    hint = _hint(name_or_path, description)
    if not hint:
        return error
    return checkpoint.CheckpointError(f"{error}{hint}", error.differences)


def build_from_checkpoint(
    build: Callable[[dict, dict], T],
    name_or_path: str,
    *,
    cache_dir: Optional[str] = None,
    progress: bool = True,
    description: Optional[Description] = None,
) -> T:
    """`build(params, state)` on a published checkpoint (downloaded once) or a file.

    Args:
      build: makes the task from the file's trees; raises CheckpointError
        if they do not fit.
      name_or_path: a published name or a checkpoint file.
      cache_dir, progress: as for `perceiver.hub.fetch` (a bar only on a
        terminal).
      description: the file's description as `read_description` gave it,
        for messages.

    Raises:
      perceiver.checkpoint.CheckpointError: if the file is not a checkpoint,
        or `build` finds it does not fit; the message names the file and,
        for a cached published file, how to download it again, for a file
        without a description, how to give its sizes.
    """
    path = fetch(name_or_path, cache_dir=cache_dir, progress=progress)
    try:
        params, state = checkpoint.load(path)  # Its errors name the file.
    except checkpoint.CheckpointError as e:
        raise mismatch(name_or_path, path, e) from None
    try:
        return build(params, state)
    except checkpoint.CheckpointError as e:
        named = checkpoint.CheckpointError(f"{path}: {e}", e.differences)
        raise mismatch(name_or_path, path, named, description) from None
