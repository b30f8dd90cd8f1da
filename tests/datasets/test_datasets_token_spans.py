"""Character spans <-> BIO tags on UTF-8 bytes, span files, and stdlib source as labelled text."""

import json

import numpy as np
import pytest

from perceiver.datasets import token_spans as ts

# "Aé b": A = 0x41, é = 0xC3 0xA9, space = 0x20, b = 0x62; tokens are byte + 6.
TEXT = "Aé b"
SPANS = [(0, 2, "X"), (3, 4, "Y")]
TAGS = ts.bio_tags(["X", "Y"])
INDEX = {name: i for i, name in enumerate(TAGS)}


def test_bio_tags_and_label_set():
    assert TAGS == ["O", "B-X", "I-X", "B-Y", "I-Y"]
    examples = [ts.SpanExample("ab", ((0, 1, "Y"),)), ts.SpanExample("ab", ((0, 1, "X"), (1, 2, "Y")))]
    assert ts.label_set(examples) == ["X", "Y"]


def test_encode_tags_every_byte_of_a_character():
    ids, tags, mask = ts.encode(TEXT, SPANS, INDEX, max_len=7)
    np.testing.assert_array_equal(ids, [0x41 + 6, 0xC3 + 6, 0xA9 + 6, 0x20 + 6, 0x62 + 6, 0, 0])
    np.testing.assert_array_equal(tags, [1, 2, 2, 0, 3, 0, 0])
    np.testing.assert_array_equal(mask, [True] * 5 + [False] * 2)
    assert ids.dtype == tags.dtype == np.int32 and mask.dtype == bool
    with pytest.raises(ValueError, match="use windows"):
        ts.encode(TEXT, SPANS, INDEX, max_len=4)
    with pytest.raises(ValueError, match="no B-/I- tag"):
        ts.encode(TEXT, [(0, 1, "Z")], INDEX, max_len=7)


def test_windows_cover_every_byte():
    assert ts.window_offsets(5, 3, 2) == [0, 2]
    assert ts.window_offsets(6, 3, 2) == [0, 2, 3]
    assert ts.window_offsets(2, 3, 3) == [0]
    got = list(ts.windows(TEXT, SPANS, INDEX, max_len=3, stride=2))
    assert [w.offset for w in got] == [0, 2]
    np.testing.assert_array_equal(got[1].ids, [0xA9 + 6, 0x20 + 6, 0x62 + 6])
    np.testing.assert_array_equal(got[1].tags, [2, 0, 3])  # starts inside é: keeps its I-X
    with pytest.raises(ValueError, match="stride"):
        ts.window_offsets(5, 3, 4)


def _log_probs(tags, probs, num_tags=5):
    """Rows putting probability p on the tag and the rest evenly on the others."""
    out = np.empty((len(tags), num_tags))
    for row, (tag, p) in enumerate(zip(tags, probs)):
        out[row] = (1 - p) / (num_tags - 1)
        out[row, tag] = p
    return np.log(out)


def test_decode_back_to_characters():
    log_probs = _log_probs([1, 2, 2, 0, 3, 0], [0.9, 0.8, 0.7, 0.9, 0.6, 0.9])  # one padding row
    spans = ts.decode(TEXT, log_probs, TAGS)
    assert [s[:3] for s in spans] == SPANS
    assert spans[0][3] == pytest.approx(0.8) and spans[1][3] == pytest.approx(0.6)
    # B-X on byte 1, I-X on byte 2: the whole é (char 1); B-Y on byte 2 alone ends inside é: dropped.
    assert [s[:3] for s in ts.decode(TEXT, _log_probs([0, 1, 2, 0, 0], [0.9] * 5), TAGS)] == [(1, 2, "X")]
    assert ts.decode(TEXT, _log_probs([0, 0, 3, 0, 0], [0.9] * 5), TAGS) == []
    # I- after O starts an entity; I-Y after X starts a new one.
    assert [s[:3] for s in ts.decode(TEXT, _log_probs([2, 2, 2, 4, 4], [0.9] * 5), TAGS)] == [(0, 2, "X"), (2, 4, "Y")]
    # A window at byte offset 3 sees " b" only.
    assert [s[:3] for s in ts.decode(TEXT, _log_probs([0, 3], [0.9, 0.9]), TAGS, offset=3)] == [(3, 4, "Y")]


def test_decode_windows_averages_overlaps():
    first = _log_probs([1, 2, 2], [0.9, 0.9, 0.9])  # bytes 0..2
    second = _log_probs([0, 0, 3], [0.5, 0.9, 0.9])  # bytes 2..4: byte 2 says O with 0.5
    spans = ts.decode_windows(TEXT, [(0, first), (2, second)], TAGS)
    # Byte 2 averages I-X: (0.9 + 0.125) / 2 = 0.5125 over O: (0.025 + 0.5) / 2 = 0.2625.
    assert [s[:3] for s in spans] == SPANS
    assert spans[0][3] == pytest.approx((0.9 + 0.9 + 0.5125) / 3)
    with pytest.raises(ValueError, match="byte 3"):
        ts.decode_windows(TEXT, [(0, first)], TAGS)


def _write(tmp_path, lines):
    path = tmp_path / "spans.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_read_span_file(tmp_path):
    good = json.dumps({"text": "Aé b", "spans": [[3, 4, "Y"], [0, 2, "X"]]})
    got = ts.read_span_file(_write(tmp_path, [good, "", "  "]))
    assert got == [ts.SpanExample("Aé b", ((0, 2, "X"), (3, 4, "Y")))]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    ('{"spans": []}', 'missing "text"'),
    ('{"text": 3, "spans": []}', '"text" must be a string'),
    ('{"text": "ab", "spans": {}}', '"spans" must be a list'),
    ('{"text": "ab", "spans": [[0, 1.0, "X"]]}', "must be integers"),
    ('{"text": "ab", "spans": [[0, 3, "X"]]}', "outside the text"),
    ('{"text": "ab", "spans": [[1, 1, "X"]]}', "is empty"),
    ('{"text": "abc", "spans": [[0, 2, "X"], [1, 3, "Y"]]}', "overlap"),
    ('{"text": "ab", "spans": [[0, 1, ""]]}', "non-empty string"),
    ('{"text": "ab", "spans": [[0, 1]]}', r"\[start, end"),
])
def test_read_span_file_errors_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, ['{"text": "ok", "spans": []}', line])
    with pytest.raises(ValueError, match=f"spans.jsonl:2: .*{message}"):
        ts.read_span_file(path)


def test_read_span_file_empty(tmp_path):
    with pytest.raises(ValueError, match="no examples"):
        ts.read_span_file(_write(tmp_path, ["", ""]))


def test_stdlib_token_spans_labels_and_chunks(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text('# hi\nif x == 10:\n    s = "é"\n', encoding="utf-8")
    (whole,) = ts.stdlib_token_spans([path], max_chars=100)
    assert whole.spans == ((0, 4, "COMMENT"), (5, 7, "KEYWORD"), (8, 9, "NAME"), (13, 15, "NUMBER"),
                           (21, 22, "NAME"), (25, 28, "STRING"))
    first, second = ts.stdlib_token_spans([path], max_chars=17)  # lines of 5, 12 and 12 characters
    assert first.text == "# hi\nif x == 10:\n" and second.text == '    s = "é"\n'
    assert second.spans == ((4, 5, "NAME"), (8, 11, "STRING"))
    assert second.text[8:11] == '"é"'


def test_stdlib_token_spans_never_cuts_inside_a_token(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text('x = """\n"""\ny = 1\n', encoding="utf-8")  # lines of 8, 4 and 6 characters
    (chunk, tail) = ts.stdlib_token_spans([path], max_chars=12)
    assert chunk.text == 'x = """\n"""\n' and chunk.spans == ((0, 1, "NAME"), (4, 11, "STRING"))
    assert tail.spans == ((0, 1, "NAME"), (4, 5, "NUMBER"))
    # The string's lines do not fit in 10 characters: skipped.
    assert [e.text for e in ts.stdlib_token_spans([path], max_chars=10)] == ["y = 1\n"]
