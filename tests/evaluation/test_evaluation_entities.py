"""Entity precision/recall/F1 against hand-computed counts."""

import pytest

from perceiver.evaluation.entities import entity_scores


def test_hand_computed_micro_and_per_label():
    true = [[(0, 3, "PER"), (5, 9, "LOC")], [(2, 4, "PER")]]
    # Sequence 0: PER right, LOC wrong end; sequence 1: PER right, an extra ORG.
    pred = [[(0, 3, "PER", 0.9), (5, 8, "LOC", 0.5)], [(2, 4, "PER"), (6, 7, "ORG")]]
    scores = entity_scores(true, pred)
    # 2 correct of 4 predicted, of 3 true: P = 1/2, R = 2/3, F1 = 2 * (1/2 * 2/3) / (7/6) = 4/7.
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(4 / 7)
    assert scores["per_label"]["PER"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2})
    assert scores["per_label"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["per_label"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_label_must_match_and_spans_stay_in_their_sequence():
    true = [[(0, 3, "PER")], []]
    pred = [[(0, 3, "LOC")], [(0, 3, "PER")]]  # right span, wrong label; right label, wrong sequence
    scores = entity_scores(true, pred)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)


def test_nothing_to_divide_is_zero():
    scores = entity_scores([[], []], [[], []])
    assert scores == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_label": {}}


def test_errors():
    with pytest.raises(ValueError, match="1 sequences but pred has 2"):
        entity_scores([[]], [[], []])
    with pytest.raises(ValueError, match=r"pred\[0\]"):
        entity_scores([[]], [[(0, 1)]])
