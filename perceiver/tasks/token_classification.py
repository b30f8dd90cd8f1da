"""Tagging spans of text with a byte-level Perceiver IO tagger (`perceiver.models.token_classifier`).

Such a model is what `perceiver train --config finetune_tokens` trains: the
byte MLM's embedding and encoder with a decoder giving each byte a BIO tag.
Exported with `--export model.pystate`, its description (`model.json`) gives
its sizes, tag names and windows, so

    tagger = TokenClassifier.from_pretrained("model.pystate")
    tagger.tag("def f(x): return x + 1")   # [[(start, end, label, score), ...]]

Texts are UTF-8 bytes (`BytesTokenizer`); offsets are in characters. A text
longer than `seq_len` bytes is read in windows `stride` bytes apart, each
byte's tag probabilities averaged over the windows that hold it
(`perceiver.datasets.token_spans.decode_windows`).
"""

import functools
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from perceiver import _validation
from perceiver import bytes_tokenizer
from perceiver import checkpoint
from perceiver import models
from perceiver.datasets import token_spans
from perceiver.tasks import _loading
from perceiver.tasks import text as text_lib

FACTORY = "token_classifier"
TaggedSpan = Tuple[int, int, str, float]


def _check_tags(names: Sequence[str], where: str, error) -> None:
    """Raises `error` unless `names` are 'O' then 'B-'/'I-' tag names."""
    for name in names[1:] if names and names[0] == "O" else names:
        if name[:2] not in ("B-", "I-") or len(name) < 3:
            raise error(
                f"{where}: tag names must be 'O', then 'B-LABEL' and 'I-LABEL' "
                f"(as finetune_tokens exports); got {list(names)[:6]!r}."
            )


@functools.lru_cache(maxsize=8)
def _log_probs_fn(sizes: Tuple[Tuple[str, object], ...]):
    """The jitted `(params, state, tokens, mask) -> tag log-probabilities`, one per model shape.

    Shared by the taggers of one model, so a second one (the CLI after
    Python, a reload) compiles nothing again.
    """
    model = models.token_classifier(**dict(sizes))

    def log_probs(params, state, tokens, mask):
        logits, _ = model.apply(params, state, None, tokens, mask)
        return jax.nn.log_softmax(logits, axis=-1)

    return jax.jit(log_probs)


class TokenClassifier:
    """Tags spans of UTF-8 text with a `perceiver.models.token_classifier` model.

    Attributes:
      tag_names: the name of each tag, in the order of the logits ('O', 'B-X', 'I-X', ...).
      labels: the entity labels (the tag names without their B-/I-).
      max_seq_len: the most bytes the model reads at once.
      seq_len: bytes per window.
      stride: bytes from one window to the next.
      batch_size: most windows per call of the model.
      sizes: the `token_classifier` keywords of the model.
    """

    def __init__(
        self,
        params: Mapping,
        state: Optional[Mapping] = None,
        *,
        labels: Sequence[str],
        batch_size: int = 8,
        seq_len: Optional[int] = None,
        stride: Optional[int] = None,
        **sizes,
    ):
        """Wraps parameters of `perceiver.models.token_classifier(**sizes)`.

        Args:
          params, state: the model's parameters and state (None: `{}`).
          labels: the name of each tag, in the order of the logits: 'O', then
            'B-LABEL' and 'I-LABEL' per label (the description's `labels`).
          batch_size: most windows per call.
          seq_len: bytes per window, at most max_seq_len (default).
          stride: bytes between windows, in [1, seq_len] (default seq_len // 2).
          **sizes: `token_classifier`'s keywords: num_labels (default: the
            number of tag names), max_seq_len, d_model, ...

        Raises:
          TypeError: for an unknown size keyword or a non-int batch_size, seq_len or stride.
          ValueError: for tag names that are not one per output or not BIO
            names, or seq_len / stride out of range.
          perceiver.checkpoint.CheckpointError: if params or state do not fit the model.
        """
        sizes = dict(sizes)
        sizes.setdefault("num_labels", len(labels))
        config = models.factory_sizes(FACTORY, **sizes)
        _validation.check_positive_int("batch_size", batch_size)
        self.max_seq_len: int = config["max_seq_len"]
        seq_len = self.max_seq_len if seq_len is None else seq_len
        _validation.check_positive_int("seq_len", seq_len)
        if seq_len > self.max_seq_len:
            raise ValueError(f"seq_len must be at most max_seq_len={self.max_seq_len}; got {seq_len}.")
        stride = max(seq_len // 2, 1) if stride is None else stride
        _validation.check_positive_int("stride", stride)
        if stride > seq_len:
            raise ValueError(f"stride must be at most seq_len={seq_len}; got {stride}.")
        self.tag_names: Tuple[str, ...] = _loading.Description().class_names(labels, config["num_labels"])
        _check_tags(self.tag_names, "labels", ValueError)
        state = {} if state is None else state
        _loading.check_fits(FACTORY, params, state, **sizes)
        self.labels: Tuple[str, ...] = tuple(dict.fromkeys(n[2:] for n in self.tag_names if n != "O"))
        self.seq_len, self.stride, self.batch_size = int(seq_len), int(stride), batch_size
        self.sizes = sizes
        self.tokenizer = bytes_tokenizer.BytesTokenizer()
        self.buckets = text_lib._bucket_lengths(self.seq_len)
        self._params = jax.device_put(params)
        self._state = jax.device_put(state)
        self._log_probs = _log_probs_fn(tuple(sorted(sizes.items())))

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
        stride: Optional[int] = None,
        **sizes,
    ) -> "TokenClassifier":
        """A tagger from a checkpoint file, e.g. one `perceiver train --config finetune_tokens --export` wrote.

        The file's description (`NAME.json` beside it) gives its sizes, tag
        names (`labels`) and `task.seq_len`, `task.stride`; keywords given
        here override it.

        Raises:
          ValueError: for a published name (none is a tagger), or a word that
            is neither a file nor a checkpoint name.
          FileNotFoundError: for a path to nothing.
          perceiver.checkpoint.CheckpointError: for a file that is not a
            checkpoint, does not fit, is described as another kind of model,
            or has no tag names.
        """
        from perceiver import hub

        if _loading.is_published(name_or_path):
            factory = hub.get(name_or_path).factory
            raise ValueError(
                f"name_or_path {name_or_path!r} is a published {factory} checkpoint, not a token "
                "classifier; fine-tune one from it (perceiver train --config finetune_tokens "
                "... --export model.pystate) and give that file."
            )
        name_or_path = _loading.resolve_for(name_or_path, FACTORY)
        description = _loading.read_description(name_or_path, FACTORY)
        description.check_bytes_tokenizer()
        sizes = description.sizes_with(sizes)
        named = labels if labels is not None else description.labels
        if named is None:
            where = description.source or checkpoint.description_path(str(name_or_path))
            raise checkpoint.CheckpointError(
                f"{name_or_path}: the tag names are unknown: {where} gives no labels; pass labels= "
                "(['O', 'B-LABEL', 'I-LABEL', ...]) and the sizes."
            )
        sizes.setdefault("num_labels", len(named))
        named = description.class_names(labels, sizes["num_labels"])
        if labels is None:
            _check_tags(named, description.source, checkpoint.CheckpointError)
        batch_size = description.option("batch_size", batch_size, 8)
        seq_len = description.option("seq_len", seq_len, None)
        stride = description.option("stride", stride, None)
        return _loading.build_from_checkpoint(
            lambda params, state: cls(
                params, state, labels=named, batch_size=batch_size, seq_len=seq_len, stride=stride, **sizes
            ),
            name_or_path,
            cache_dir=cache_dir,
            progress=progress,
            description=description,
        )

    def tag(self, texts: Union[str, Sequence[str]]) -> List[List[TaggedSpan]]:
        """The labelled spans of each text.

        Args:
          texts: one str or a sequence of str.

        Returns:
          Per text (a list of one for a single str), `[(start, end, label,
          score)]` sorted: character offsets, end exclusive; score is the
          mean probability of the span's bytes' tags.

        Raises:
          TypeError: for texts that are not str.
        """
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts, bytes) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a str or a sequence of str; got {type(texts).__name__}.")
        rows, owners = [], []  # each window's tokens, and (text, byte offset)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str; got {type(text).__name__}.")
            data = self.tokenizer.to_int(text)
            if not len(data):
                continue
            for offset in token_spans.window_offsets(len(data), self.seq_len, self.stride):
                rows.append(data[offset:offset + self.seq_len])
                owners.append((i, offset))
        windows: List[list] = [[] for _ in texts]
        pad = self.tokenizer.pad_token
        for batch, ids, mask in text_lib.padded_batches(rows, self.buckets, self.batch_size, pad):
            out = np.asarray(self._log_probs(self._params, self._state, ids, mask))
            for row, r in enumerate(batch):
                i, offset = owners[r]
                windows[i].append((offset, out[row, :len(rows[r])]))
        return [
            token_spans.decode_windows(text, sorted(w, key=lambda x: x[0]), self.tag_names) if w else []
            for text, w in zip(texts, windows)
        ]
