"""Classifying text with a byte-level Perceiver IO classifier (`perceiver.models.text_classifier`).

Such a model is what `perceiver train --config finetune_text` trains: the
byte MLM's embedding and encoder with a classification decoder. Exported
with `--export model.pystate`, its description (`model.json`) gives its
sizes and class names, so

    classifier = TextClassifier.from_pretrained("model.pystate")
    classifier.classify("what a lovely day")   # [[(label, probability), ...]]

Texts are UTF-8 bytes (`BytesTokenizer`). A text longer than `seq_len`
bytes (the length the model was trained on, `task.seq_len` of the
description, else max_seq_len) is cut to its first `seq_len` bytes, as the
training data was. Texts of different lengths are batched together, padded
(and masked out) to the next of a few lengths, so few shapes are compiled.
"""

from typing import List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from perceiver import _validation
from perceiver import bytes_tokenizer
from perceiver import checkpoint
from perceiver import models
from perceiver.tasks import _loading
from perceiver.tasks import text as text_lib


class TextClassifier:
    """Classifies UTF-8 text with a `perceiver.models.text_classifier` model.

    Attributes:
      class_names: the name of each class (the labels given, else the
        indices as str).
      num_classes: the number of classes.
      max_seq_len: the most bytes the model can read.
      seq_len: the bytes of a text that are read; the rest is cut off.
      buckets: the lengths inputs are padded to (16, 32, ..., seq_len).
      batch_size: most texts per call.
      sizes: the `text_classifier` keywords of the model.
    """

    def __init__(
        self,
        params: Mapping,
        state: Optional[Mapping] = None,
        *,
        labels: Optional[Sequence[str]] = None,
        batch_size: int = 8,
        seq_len: Optional[int] = None,
        **sizes,
    ):
        """Wraps parameters of `perceiver.models.text_classifier(**sizes)`.

        Args:
          params: the model's parameters.
          state: its state (the model has none; None means `{}`).
          labels: the name of each class, in the order of the logits.
          batch_size: most texts per call.
          seq_len: bytes read of each text, at most max_seq_len (default).
          **sizes: `text_classifier`'s keywords: num_classes (required),
            max_seq_len, d_model, ...

        Raises:
          TypeError: for a missing num_classes, an unknown size keyword, or a
            non-int batch_size or seq_len.
          ValueError: for labels that do not name each class, or seq_len
            outside [1, max_seq_len].
          perceiver.checkpoint.CheckpointError: if params or state do not fit
            the model, listing the differences.
        """
        config = models.factory_sizes("text_classifier", **sizes)
        _validation.check_positive_int("batch_size", batch_size)
        self.max_seq_len: int = config["max_seq_len"]
        seq_len = self.max_seq_len if seq_len is None else seq_len
        _validation.check_positive_int("seq_len", seq_len)
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"seq_len must be at most max_seq_len={self.max_seq_len}; got {seq_len}."
            )
        state = {} if state is None else state
        _loading.check_fits("text_classifier", params, state, **sizes)
        self.num_classes: int = config["num_classes"]
        named = _loading.Description().class_names(labels, self.num_classes)
        self.class_names: Tuple[str, ...] = (
            named if named is not None else tuple(str(i) for i in range(self.num_classes))
        )
        self.seq_len = int(seq_len)
        self.batch_size = batch_size
        self.sizes = dict(sizes)
        self.tokenizer = bytes_tokenizer.BytesTokenizer()
        self.buckets = text_lib._bucket_lengths(self.seq_len)
        self._params = jax.device_put(params)
        self._state = jax.device_put(state)
        model = models.text_classifier(**sizes)

        def probabilities(params, state, tokens, mask):
            logits, _ = model.apply(params, state, None, tokens, mask)
            return jax.nn.softmax(logits, axis=-1)

        self._probabilities = jax.jit(probabilities)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        cache_dir: Optional[str] = None,
        progress: bool = True,
        labels: Optional[Sequence[str]] = None,
        batch_size: Optional[int] = None,
        seq_len: Optional[int] = None,
        **sizes,
    ) -> "TextClassifier":
        """A text classifier from a checkpoint file, e.g. one `perceiver train --export` wrote.

        The file's description (`NAME.json` beside it, see
        `perceiver.checkpoint.save_description`) gives its sizes, class names
        (`labels`) and `task.seq_len`, `task.batch_size`; keywords given here
        override it.

        Args:
          name_or_path: the path of a checkpoint of a `text_classifier`
            model (no such model is published).
          cache_dir, progress: as for `perceiver.hub.fetch`.
          labels, batch_size, seq_len: as in the constructor; None: the
            description's (else the indices, 8, max_seq_len).
          **sizes: `text_classifier`'s keywords (default: the description's).

        Raises:
          ValueError: for a published name (none is a text classifier), or a
            word that is neither a file nor a checkpoint name.
          FileNotFoundError: for a path to nothing.
          perceiver.checkpoint.CheckpointError: for a folder or a file that is
            not a checkpoint, saying what it is (a description, an image...);
            if the file does not fit, its description is of another model
            or tokenizer, or nothing gives the number of classes.
        """
        from perceiver import hub

        if _loading.is_published(name_or_path):
            factory = hub.get(name_or_path).factory
            raise ValueError(
                f"name_or_path {name_or_path!r} is a published {factory} checkpoint, not a text "
                "classifier; fine-tune one from it (perceiver train --config finetune_text "
                "... --export model.pystate) and give that file."
            )
        name_or_path = _loading.resolve_for(name_or_path, "text_classifier")
        description = _loading.read_description(name_or_path, "text_classifier")
        description.check_bytes_tokenizer()
        sizes = description.sizes_with(sizes)
        named = labels if labels is not None else description.labels
        if "num_classes" not in sizes:
            if named is None:
                where = description.source or checkpoint.description_path(str(name_or_path))
                raise checkpoint.CheckpointError(
                    f"{name_or_path}: the number of classes is unknown: {where} gives no "
                    "sizes.num_classes or labels; pass num_classes= (or labels=) and the sizes."
                )
            sizes["num_classes"] = len(named)
        labels = description.class_names(labels, sizes["num_classes"])
        batch_size = description.option("batch_size", batch_size, 8)
        seq_len = description.option("seq_len", seq_len, None)
        return _loading.build_from_checkpoint(
            lambda params, state: cls(
                params, state, labels=labels, batch_size=batch_size, seq_len=seq_len, **sizes
            ),
            name_or_path,
            cache_dir=cache_dir,
            progress=progress,
            description=description,
        )

    def probabilities(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """Class probabilities `[N, num_classes]` of one text or a sequence of them.

        Raises:
          TypeError: for texts that are not str.
        """
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, bytes) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a str or a sequence of str; got {type(texts).__name__}.")
        tokens = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str; got {type(text).__name__}.")
            tokens.append(self.tokenizer.to_int(text)[: self.seq_len])
        out = np.zeros((len(tokens), self.num_classes), np.float32)
        pad = self.tokenizer.pad_token
        for batch, ids, mask in text_lib.padded_batches(tokens, self.buckets, self.batch_size, pad):
            probs = np.asarray(self._probabilities(self._params, self._state, ids, mask))
            out[batch] = probs[: len(batch)]
        return out

    def classify(
        self, texts: Union[str, Sequence[str]], top_k: int = 5
    ) -> List[List[Tuple[str, float]]]:
        """The top-k `(class name, probability)` of each text, most probable first.

        Args:
          texts: one str or a sequence of str.
          top_k: classes per text (at most num_classes are given).

        Returns:
          One list per text (a list of one for a single str).

        Raises:
          TypeError: as `probabilities`; ValueError: for top_k < 1.
        """
        _validation.check_positive_int("top_k", top_k)
        results = []
        for probs in self.probabilities(texts):
            order = np.argsort(-probs, kind="stable")[:top_k]
            results.append([(self.class_names[i], float(probs[i])) for i in order])
        return results
