"""Filling masked spans of text with the byte-level language model (Perceiver IO, section 4.1).

The published model reads up to 2048 UTF-8 bytes and predicts each masked
byte from the whole string. Mark the spans to fill by character offsets, or
with a run of placeholder characters:

    mlm = MaskedLanguageModel.from_pretrained()
    text = "This is an incomplete sentence where some words are_________"
    result = mlm.fill(text, spans_from_placeholder(text))
    result.text, result.spans[0].probabilities

Each masked span is as many bytes long as the text it replaces, so a run of
n one-byte placeholders asks for n bytes. The model does much better when a
span starts at a space (DeepMind's note): mask " missing." rather than
"missing.".

Strings of different lengths are batched together: each is padded with pad
tokens (and masked out) to the next of a few lengths (16, 32, 64, ...,
max_seq_len), so at most a handful of shapes are ever compiled.
"""

import dataclasses
import re
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from perceiver import _validation
from perceiver import bytes_tokenizer
from perceiver.tasks import _loading
from perceiver import models

Span = Tuple[int, int]

# Shortest padded length; the others double up to max_seq_len.
_MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class FilledSpan:
    """One filled span.

    Attributes:
      start, end: character offsets of the span in the input text.
      byte_start, byte_end: its byte offsets in the text's UTF-8.
      predicted: the predicted bytes, `byte_end - byte_start` of them.
      text: `predicted` decoded as UTF-8 (invalid sequences become U+FFFD).
      probabilities: `[byte_end - byte_start]`, the model's probability of
        each predicted byte (softmax over its whole vocabulary).
    """

    start: int
    end: int
    byte_start: int
    byte_end: int
    predicted: bytes
    text: str
    probabilities: np.ndarray


@dataclasses.dataclass(frozen=True)
class FillResult:
    """A text with its masked spans filled.

    Attributes:
      input: the text as given.
      text: the completed text: the input's UTF-8 with each span's bytes
        replaced by the predicted ones, decoded with errors='replace'.
      spans: the filled spans, in the order they were given.
    """

    input: str
    text: str
    spans: Tuple[FilledSpan, ...]


def spans_from_placeholder(text: str, placeholder: str = "_") -> List[Span]:
    """The `(start, end)` character offsets of each run of `placeholder` in `text`.

    Args:
      text: the text.
      placeholder: one character.

    Raises:
      TypeError, ValueError: if text is not a str or placeholder not one character.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}.")
    if not isinstance(placeholder, str) or len(placeholder) != 1:
        raise ValueError(f"placeholder must be one character; got {placeholder!r}.")
    return [m.span() for m in re.finditer(re.escape(placeholder) + "+", text)]


def _bucket_lengths(max_seq_len: int) -> Tuple[int, ...]:
    lengths, n = [], _MIN_BUCKET
    while n < max_seq_len:
        lengths.append(n)
        n *= 2
    return tuple(lengths) + (max_seq_len,)


def _bucket(n: int, buckets: Sequence[int]) -> int:
    return next(b for b in buckets if b >= n)


def padded_batches(tokens: Sequence[np.ndarray], buckets: Sequence[int], batch_size: int, pad: int):
    """Yields `(indices, ids [R, L], mask [R, L])` covering every token row once.

    Rows are grouped by length bucket L and batches padded to a power of two
    rows R (at most batch_size), so that few shapes are compiled; padding is
    masked out. `indices` are the rows of `tokens` in the first len(indices)
    rows of the batch.
    """
    by_bucket = {}
    for i, t in enumerate(tokens):
        by_bucket.setdefault(_bucket(max(len(t), 1), buckets), []).append(i)
    for length, members in sorted(by_bucket.items()):
        for first in range(0, len(members), batch_size):
            batch = members[first : first + batch_size]
            rows = min(1 << (len(batch) - 1).bit_length(), batch_size)
            ids = np.full((rows, length), pad, np.int32)
            mask = np.zeros((rows, length), np.int32)
            for row, i in enumerate(batch):
                ids[row, : len(tokens[i])] = tokens[i]
                mask[row, : len(tokens[i])] = 1
            yield batch, ids, mask


def _check_spans(index: int, text: str, spans) -> List[Span]:
    what = f"spans[{index}]"
    if isinstance(spans, np.ndarray):
        spans = spans.tolist()
    if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence):
        raise TypeError(
            f"{what} must be a sequence of (start, end) pairs; got {type(spans).__name__}."
        )
    checked = []
    for pair in spans:
        if isinstance(pair, np.ndarray):
            pair = pair.tolist()
        if (
            not isinstance(pair, Sequence)
            or len(pair) != 2
            or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in pair)
        ):
            raise TypeError(
                f"{what} must be a sequence of (start, end) pairs of ints; got an element "
                f"{pair!r}."
            )
        start, end = int(pair[0]), int(pair[1])
        if not 0 <= start < end <= len(text):
            raise ValueError(
                f"{what} has span ({start}, {end}); spans need 0 <= start < end <= "
                f"{len(text)} (the text's length in characters)."
            )
        checked.append((start, end))
    ordered = sorted(checked)
    for (_, end), (start, _) in zip(ordered, ordered[1:]):
        if start < end:
            raise ValueError(f"{what} has overlapping spans: {ordered}.")
    return checked


class MaskedLanguageModel:
    """Fills masked spans of UTF-8 text with the Perceiver IO byte model.

    Attributes:
      max_seq_len: the longest input in bytes (2048).
      buckets: the lengths inputs are padded to (16, 32, ..., max_seq_len).
      batch_size: most strings per call.
    """

    def __init__(
        self, params: Mapping, state: Optional[Mapping] = None, *, batch_size: int = 8, **sizes
    ):
        """Wraps parameters of `perceiver.models.masked_language_model(**sizes)`.

        Args:
          params: the model's parameters.
          state: its state (the published model has none).
          batch_size: most strings run in one call.
          **sizes: `masked_language_model`'s size keywords.

        Raises:
          TypeError: for an unknown size keyword or a non-int batch_size.
          perceiver.checkpoint.CheckpointError: if params or state do not fit
            the model, listing every difference.
        """
        config = models.factory_sizes("masked_language_model", **sizes)
        _validation.check_positive_int("batch_size", batch_size)
        state = {} if state is None else state
        _loading.check_fits("masked_language_model", params, state, **sizes)
        self.max_seq_len: int = config["max_seq_len"]
        self.batch_size = batch_size
        self.tokenizer = bytes_tokenizer.BytesTokenizer()
        self.buckets = _bucket_lengths(self.max_seq_len)
        self._params = jax.device_put(params)
        self._state = jax.device_put(state)
        model = models.masked_language_model(**sizes)
        # Token ids below byte 0's are special (pad, mask, ...).
        first_byte = int(self.tokenizer.to_int(b"\0")[0])
        self._first_byte = first_byte

        def predict(params, state, tokens, mask):
            logits, _ = model.apply(params, state, None, tokens, mask)
            # Only bytes may fill a span: the best byte, and its probability
            # under the whole vocabulary.
            best = jnp.argmax(logits[..., first_byte:], axis=-1) + first_byte
            log_probs = jax.nn.log_softmax(logits, axis=-1)
            chosen = jnp.take_along_axis(log_probs, best[..., None], axis=-1)[..., 0]
            return best, jnp.exp(chosen)

        self._predict = jax.jit(predict)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "mlm",
        *,
        cache_dir: Optional[str] = None,
        progress: bool = True,
        batch_size: Optional[int] = None,
        **sizes,
    ) -> "MaskedLanguageModel":
        """The published model (downloaded once), or a checkpoint file of one.

        A file's description (`NAME.json` beside it, see
        `perceiver.checkpoint.save_description`) gives its sizes and
        `task.batch_size`; keywords given here override it.

        Args:
          name_or_path: 'mlm' or the path of a checkpoint.
          cache_dir: where downloads are kept (see `perceiver.hub.fetch`).
          progress: show a download progress bar (only when stderr is a
            terminal).
          batch_size: as in the constructor; None: the description's, else 8.
          **sizes: the sizes the checkpoint was made for (default: its
            description's, else the published ones).

        Raises:
          ValueError: for a word that is neither a file nor a checkpoint name.
          FileNotFoundError: for a path to nothing.
          perceiver.checkpoint.CheckpointError: for a folder or a file that is
            not a checkpoint, saying what it is (a description, an image...);
            if the file does not fit, or its description is of another
            model or another tokenizer.
        """
        name_or_path = _loading.resolve_for(name_or_path, "masked_language_model")
        description = _loading.read_description(name_or_path, "masked_language_model")
        description.check_bytes_tokenizer()
        sizes = description.sizes_with(sizes)
        batch_size = description.option("batch_size", batch_size, 8)
        return _loading.build_from_checkpoint(
            lambda params, state: cls(params, state, batch_size=batch_size, **sizes),
            name_or_path,
            cache_dir=cache_dir,
            progress=progress,
            description=description,
        )

    def fill(
        self, texts: Union[str, Sequence[str]], spans
    ) -> Union[FillResult, List[FillResult]]:
        """Predicts the bytes of masked spans.

        Each span's bytes are replaced by mask tokens, and each masked byte
        by the most probable byte (greedy, one pass: the bytes of a span are
        predicted together, not one after another).

        Args:
          texts: one str, or a sequence of str; each at most max_seq_len
            (2048) bytes of UTF-8.
          spans: for one str, a sequence of `(start, end)` character offsets
            (e.g. from `spans_from_placeholder`); for a sequence of str, one
            such sequence per str. Spans must not overlap.

        Returns:
          A `FillResult` for one str, a list of them (in order) for a sequence.

        Raises:
          TypeError: for texts or spans of the wrong type.
          ValueError: for a text longer than max_seq_len bytes, spans outside
            their text or overlapping, or a different number of texts and
            span lists.
        """
        single = isinstance(texts, str)
        if single:
            texts, spans = [texts], [spans]
        if isinstance(texts, bytes) or not isinstance(texts, Sequence):
            raise TypeError(
                f"texts must be a str or a sequence of str; got {type(texts).__name__}."
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str; got {type(text).__name__}.")
        if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence):
            raise TypeError(
                f"spans must be a sequence with one sequence of (start, end) pairs per text; "
                f"got {type(spans).__name__}."
            )
        if len(spans) != len(texts):
            raise ValueError(
                f"spans must have one entry per text: {len(texts)} texts; got {len(spans)}."
            )
        spans = [_check_spans(i, text, s) for i, (text, s) in enumerate(zip(texts, spans))]
        encoded = [text.encode("utf-8") for text in texts]
        for i, data in enumerate(encoded):
            if len(data) > self.max_seq_len:
                raise ValueError(
                    f"texts[{i}] is {len(data)} bytes of UTF-8; the model reads at most "
                    f"max_seq_len={self.max_seq_len} bytes."
                )
        byte_spans = [
            [(len(text[:s].encode("utf-8")), len(text[:e].encode("utf-8"))) for s, e in text_spans]
            for text, text_spans in zip(texts, spans)
        ]
        predictions = self._predict_all(encoded, byte_spans)
        results = []
        for text, data, text_spans, text_byte_spans, (best, probs) in zip(
            texts, encoded, spans, byte_spans, predictions
        ):
            filled, completed = [], bytearray(data)
            for (start, end), (byte_start, byte_end) in zip(text_spans, text_byte_spans):
                predicted = bytes(
                    (best[byte_start:byte_end] - self._first_byte).astype(np.uint8)
                )
                completed[byte_start:byte_end] = predicted
                filled.append(
                    FilledSpan(
                        start=start,
                        end=end,
                        byte_start=byte_start,
                        byte_end=byte_end,
                        predicted=predicted,
                        text=predicted.decode("utf-8", errors="replace"),
                        probabilities=probs[byte_start:byte_end].copy(),
                    )
                )
            results.append(
                FillResult(
                    input=text,
                    text=bytes(completed).decode("utf-8", errors="replace"),
                    spans=tuple(filled),
                )
            )
        return results[0] if single else results

    def _predict_all(self, encoded: Sequence[bytes], byte_spans) -> List[Tuple[np.ndarray, ...]]:
        """`(best token [n], its probability [n])` at every byte of each text."""
        tokens = []
        for data, text_spans in zip(encoded, byte_spans):
            t = self.tokenizer.to_int(data)
            for start, end in text_spans:
                t[start:end] = self.tokenizer.mask_token
            tokens.append(t)
        results: List[Optional[Tuple[np.ndarray, ...]]] = [None] * len(tokens)
        pad = self.tokenizer.pad_token
        for batch, ids, mask in padded_batches(tokens, self.buckets, self.batch_size, pad):
            best, probs = jax.device_get(self._predict(self._params, self._state, ids, mask))
            for row, i in enumerate(batch):
                results[i] = (best[row, : len(tokens[i])], probs[row, : len(tokens[i])])
        return results
