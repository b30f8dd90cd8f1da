"""Text with labelled character spans, as BIO tags on UTF-8 byte tokens.

A span is `(start, end, label)` in character offsets of the text, end
exclusive. The byte models read UTF-8 bytes (byte b is token b + 6, as in
`perceiver.bytes_tokenizer`), so spans are moved to byte positions: every
byte of a span's characters is tagged, the first `B-label`, the rest
`I-label`, and the bytes outside spans `O`. Predictions go back the other
way: only spans that begin and end on whole characters are reported.
"""

import bisect
import io
import json
import keyword
import pathlib
import tokenize
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

Span = Tuple[int, int, str]
PathLike = Union[str, pathlib.Path]

_NUM_RESERVED_TOKENS = 6  # perceiver.bytes_tokenizer: byte b is token b + 6, PAD is 0.
_EXPECTED = 'a JSON object {"text": str, "spans": [[start, end, "LABEL"], ...]}'


class SpanExample(NamedTuple):
    """One text and its labelled spans `(start, end, label)`, sorted, in characters."""

    text: str
    spans: Tuple[Span, ...]


class Window(NamedTuple):
    """Encoded bytes `[offset, offset + max_len)` of a text; arrays are `[max_len]`."""

    offset: int
    ids: np.ndarray
    tags: np.ndarray
    mask: np.ndarray


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_spans(text: str, spans, where: str) -> Tuple[Span, ...]:
    """The spans as sorted tuples; ValueError naming `where` for the first bad one."""
    if not isinstance(spans, list):
        raise ValueError(f'{where}: "spans" must be a list of [start, end, "LABEL"]; got {type(spans).__name__}.')
    checked = []
    for span in spans:
        if not isinstance(span, (list, tuple)) or len(span) != 3:
            raise ValueError(f'{where}: each span must be [start, end, "LABEL"]; got {span!r}.')
        start, end, label = span
        if not (_is_int(start) and _is_int(end)):
            raise ValueError(f"{where}: span start and end must be integers; got {span!r}.")
        if not isinstance(label, str) or not label:
            raise ValueError(f"{where}: span label must be a non-empty string; got {span!r}.")
        if start >= end:
            raise ValueError(f"{where}: span {span!r} is empty; expected start < end (end exclusive).")
        if start < 0 or end > len(text):
            raise ValueError(f"{where}: span {span!r} is outside the text of {len(text)} characters.")
        checked.append((start, end, label))
    checked.sort()
    for before, after in zip(checked, checked[1:]):
        if after[0] < before[1]:
            raise ValueError(f"{where}: spans {list(before)!r} and {list(after)!r} overlap.")
    return tuple(checked)


def read_span_file(path: PathLike) -> List[SpanExample]:
    """Reads JSON lines `{"text": str, "spans": [[start, end, "LABEL"], ...]}`.

    Offsets count characters, end exclusive. Blank lines are skipped; other keys
    are ignored.

    Raises:
      ValueError: naming the file and line, for a line that is not JSON, lacks
        or mistypes "text" or "spans", or has a span that is not integer,
        outside the text, empty, overlapping another, or has a label that is
        not a non-empty string; or if the file holds no example.
    """
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
                raise ValueError(f"{where}: not JSON ({e.msg}); expected {_EXPECTED}.") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected {_EXPECTED}; got {type(record).__name__}.")
            for key in ("text", "spans"):
                if key not in record:
                    raise ValueError(f'{where}: missing "{key}"; expected {_EXPECTED}.')
            if not isinstance(record["text"], str):
                raise ValueError(f'{where}: "text" must be a string; got {type(record["text"]).__name__}.')
            examples.append(SpanExample(record["text"], _check_spans(record["text"], record["spans"], where)))
    if not examples:
        raise ValueError(f"{path}: no examples; expected one {_EXPECTED} per line.")
    return examples


def label_set(examples: Sequence[SpanExample]) -> List[str]:
    """The sorted labels used by the examples' spans."""
    return sorted({label for example in examples for _, _, label in example.spans})


def bio_tags(labels: Sequence[str]) -> List[str]:
    """Tag names `["O", "B-L1", "I-L1", "B-L2", ...]`; tag i is class i of the head."""
    tags = ["O"]
    for label in labels:
        tags += [f"B-{label}", f"I-{label}"]
    return tags


def _byte_offsets(text: str) -> np.ndarray:
    """`[len(text) + 1]` byte offset of each character, and the total byte length last."""
    lengths = [len(ch.encode("utf-8")) for ch in text]
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def _byte_tags(text: str, spans: Sequence[Span], tag_index: Dict[str, int]) -> Tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes `[N]` int32 tokens and their BIO tags `[N]` int32."""
    data = text.encode("utf-8")
    ids = np.frombuffer(data, np.uint8).astype(np.int32) + _NUM_RESERVED_TOKENS
    tags = np.full(len(data), tag_index["O"], np.int32)
    offsets = _byte_offsets(text)
    for start, end, label in _check_spans(text, [list(s) for s in spans], "spans"):
        try:
            begin, inside = tag_index[f"B-{label}"], tag_index[f"I-{label}"]
        except KeyError:
            raise ValueError(f"label {label!r} has no B-/I- tag in tag_index.") from None
        tags[offsets[start]:offsets[end]] = inside
        tags[offsets[start]] = begin
    return ids, tags


def _pad(ids: np.ndarray, tags: np.ndarray, max_len: int, pad_tag: int):
    n = len(ids)
    out_ids = np.zeros(max_len, np.int32)
    out_tags = np.full(max_len, pad_tag, np.int32)
    out_ids[:n], out_tags[:n] = ids, tags
    return out_ids, out_tags, np.arange(max_len) < n


def encode(text: str, spans: Sequence[Span], tag_index: Dict[str, int], max_len: int):
    """Byte tokens, BIO tags and mask of a text that fits in `max_len` bytes.

    Args:
      text: the text.
      spans: `(start, end, label)` in characters, end exclusive.
      tag_index: `{tag name: class}`, e.g. from `bio_tags`; must hold "O".
      max_len: the number of positions T.

    Returns:
      `(ids [T] int32, tags [T] int32, mask [T] bool)`; padding has id 0 (PAD),
      tag "O" and mask False.

    Raises:
      ValueError: if the text's UTF-8 is longer than `max_len` (use `windows`),
        a span is invalid, or a label has no tag.
    """
    ids, tags = _byte_tags(text, spans, tag_index)
    if len(ids) > max_len:
        raise ValueError(f"text is {len(ids)} bytes, longer than max_len={max_len}; use windows().")
    return _pad(ids, tags, max_len, tag_index["O"])


def window_offsets(num_bytes: int, max_len: int, stride: int) -> List[int]:
    """Byte offsets of windows of `max_len` every `stride` bytes, the last one ending at the end.

    Raises:
      ValueError: unless 1 <= stride <= max_len.
    """
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be in [1, max_len={max_len}]; got {stride}.")
    last = max(num_bytes - max_len, 0)
    offsets = list(range(0, last + 1, stride))
    if offsets[-1] != last:
        offsets.append(last)
    return offsets


def windows(text: str, spans: Sequence[Span], tag_index: Dict[str, int], max_len: int,
            stride: int) -> Iterator[Window]:
    """Overlapping windows that together cover every byte of the text.

    A window may begin or end inside a multi-byte character or a span; its
    bytes keep the tags they have in the whole text.

    Yields:
      `Window(offset, ids [T], tags [T], mask [T])`, offsets increasing.
    """
    ids, tags = _byte_tags(text, spans, tag_index)
    for offset in window_offsets(len(ids), max_len, stride):
        yield Window(offset, *_pad(ids[offset:offset + max_len], tags[offset:offset + max_len],
                                   max_len, tag_index["O"]))


def _spans_from_probs(text: str, probs: np.ndarray, covered: np.ndarray,
                      tag_names: Sequence[str]) -> List[Tuple[int, int, str, float]]:
    """Spans from per-byte tag probabilities `[N, K]` of the whole text (see `decode`)."""
    offsets = _byte_offsets(text)
    char_of = np.full(len(probs) + 1, -1, np.int64)
    char_of[offsets] = np.arange(len(offsets))  # -1 where a byte is inside a character
    best = probs.argmax(axis=-1)
    found = []
    current = None  # [start byte, label, [probs]]

    def close(end_byte):
        start_byte, label, scores = current
        if char_of[start_byte] >= 0 and char_of[end_byte] >= 0:
            found.append((int(char_of[start_byte]), int(char_of[end_byte]), label, float(np.mean(scores))))

    for i, tag in enumerate(best):
        name = tag_names[tag] if covered[i] else "O"
        kind, _, label = name.partition("-")
        if current is not None and not (kind == "I" and label == current[1]):
            close(i)
            current = None
        if kind in ("B", "I") and current is None:
            # An I- tag after another label or O starts an entity, as seqeval reads IOB.
            current = [i, label, []]
        if current is not None:
            current[2].append(probs[i, tag])
    if current is not None:
        close(len(best))
    return found


def decode(text: str, tag_log_probs: np.ndarray, tag_names: Sequence[str],
           offset: int = 0) -> List[Tuple[int, int, str, float]]:
    """Labelled spans, in characters, from a window's per-byte tag log-probabilities.

    The most likely tag of each byte is read as BIO; an entity starts at a
    `B-` tag, or an `I-` tag not continuing the same label. Spans that begin or
    end inside a multi-byte character are dropped.

    Args:
      text: the whole text.
      tag_log_probs: `[T, K]` log-probabilities of the K tags for bytes
        `[offset, offset + T)` of the text's UTF-8; rows past its end are padding.
      tag_names: the K tag names, e.g. `bio_tags(labels)`.
      offset: byte offset of the window in the text.

    Returns:
      `[(start, end, label, score)]` sorted, characters end exclusive; score is
      the mean probability of the span's bytes' tags.
    """
    num_bytes = len(text.encode("utf-8"))
    tag_log_probs = np.asarray(tag_log_probs, np.float64)
    if tag_log_probs.ndim != 2 or tag_log_probs.shape[1] != len(tag_names):
        raise ValueError(f"tag_log_probs must be [T, {len(tag_names)}]; got shape {tag_log_probs.shape}.")
    probs = np.zeros((num_bytes, len(tag_names)))
    covered = np.zeros(num_bytes, bool)
    stop = min(offset + len(tag_log_probs), num_bytes)
    if stop > offset:
        probs[offset:stop] = np.exp(tag_log_probs[:stop - offset])
        covered[offset:stop] = True
    return _spans_from_probs(text, probs, covered, tag_names)


def decode_windows(text: str, window_log_probs: Sequence[Tuple[int, np.ndarray]],
                   tag_names: Sequence[str]) -> List[Tuple[int, int, str, float]]:
    """Labelled spans from overlapping windows: each byte's tag probabilities are averaged.

    Args:
      window_log_probs: `[(byte offset, tag log-probabilities [T, K])]`, e.g.
        the offsets of `windows`.

    Returns:
      As `decode`, for the whole text.

    Raises:
      ValueError: if some byte of the text is in no window.
    """
    num_bytes = len(text.encode("utf-8"))
    total = np.zeros((num_bytes, len(tag_names)))
    count = np.zeros(num_bytes)
    for offset, log_probs in window_log_probs:
        log_probs = np.asarray(log_probs, np.float64)
        stop = min(offset + len(log_probs), num_bytes)
        if stop > offset:
            total[offset:stop] += np.exp(log_probs[:stop - offset])
            count[offset:stop] += 1
    if not count.all():
        raise ValueError(f"byte {int(np.argmin(count))} of the text is in no window.")
    return _spans_from_probs(text, total / count[:, None], np.ones(num_bytes, bool), tag_names)


# --- Real labelled text: Python source tagged by the tokenize module. ---

_FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # Python 3.12+ splits f-strings.
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)


def _python_spans(source: str, line_starts: Sequence[int]) -> List[Span]:
    """`(start, end, label)` character spans of KEYWORD, NAME, NUMBER, STRING and COMMENT tokens."""
    spans = []
    fstring_depth, fstring_start = 0, None

    def at(row_col):
        return line_starts[row_col[0] - 1] + row_col[1]

    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        # An f-string is one STRING span on every Python, as it is before 3.12.
        if _FSTRING_START is not None and token.type == _FSTRING_START:
            fstring_depth += 1
            if fstring_depth == 1:
                fstring_start = at(token.start)
            continue
        if _FSTRING_END is not None and token.type == _FSTRING_END:
            fstring_depth -= 1
            if fstring_depth == 0:
                spans.append((fstring_start, at(token.end), "STRING"))
            continue
        if fstring_depth:
            continue
        if token.type == tokenize.NAME:
            label = "KEYWORD" if keyword.iskeyword(token.string) else "NAME"
        elif token.type in (tokenize.NUMBER, tokenize.STRING, tokenize.COMMENT):
            label = tokenize.tok_name[token.type]
        else:
            continue
        if token.end > token.start:
            spans.append((at(token.start), at(token.end), label))
    return spans


def stdlib_token_spans(paths: Sequence[PathLike], max_chars: int) -> List[SpanExample]:
    """Python source files as labelled text: the tokenize module's tokens as spans.

    Each text is consecutive whole lines of one file, as many as fit in
    `max_chars` characters, cut only between lines no token crosses (a
    multi-line string longer than `max_chars` and its lines are skipped).
    Labels: KEYWORD (`keyword.iskeyword`), NAME, NUMBER, STRING (f-strings
    whole), COMMENT. Texts without a span are left out; files that do not
    tokenize are skipped. Deterministic: files in the order given.

    Args:
      paths: Python source files, e.g. from the standard library; hold files
        out for evaluation by passing them in a separate call.
      max_chars: the most characters in a text.
    """
    examples = []
    for path in paths:
        with tokenize.open(path) as f:  # the file's declared encoding, newlines as "\n"
            source = f.read()
        lines = io.StringIO(source).readlines()  # split on "\n" only, as tokenize does
        line_starts = np.concatenate([[0], np.cumsum([len(line) for line in lines])]).tolist()
        try:
            spans = _python_spans(source, line_starts)
        except (tokenize.TokenError, SyntaxError):
            continue
        # A cut before line i is allowed unless a token runs across it.
        allowed = [True] * (len(lines) + 1)
        for start, end, _ in spans:
            for i in range(bisect.bisect_right(line_starts, start), bisect.bisect_left(line_starts, end)):
                allowed[i] = False
        examples += _chunks(lines, line_starts, allowed, spans, max_chars)
    return examples


def _chunks(lines, line_starts, allowed, spans, max_chars) -> List[SpanExample]:
    """Greedy chunks of whole lines (see `stdlib_token_spans`)."""
    out = []
    first, index = 0, 0
    while first < len(lines):
        last: Optional[int] = None  # chunk is lines [first, last)
        stop = first + 1
        while stop <= len(lines) and line_starts[stop] - line_starts[first] <= max_chars:
            if allowed[stop]:
                last = stop
            stop += 1
        if last is None:  # nothing fits: skip to the next allowed cut
            last = first + 1
            while not allowed[last]:
                last += 1
            first = last
            continue
        begin, end = line_starts[first], line_starts[last]
        while index < len(spans) and spans[index][0] < begin:
            index += 1
        chunk_spans = []
        while index < len(spans) and spans[index][1] <= end:
            start, stop_char, label = spans[index]
            chunk_spans.append((start - begin, stop_char - begin, label))
            index += 1
        if chunk_spans:
            out.append(SpanExample("".join(lines[first:last]), tuple(chunk_spans)))
        first = last
    return out
