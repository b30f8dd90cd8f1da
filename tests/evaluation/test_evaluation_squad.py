"""SQuAD v1.1 scores against hand-computed values."""

import pytest

from perceiver.evaluation import squad


def test_normalize_answer():
    assert squad.normalize_answer("The  Cat's, an apple!") == "cats apple"
    assert squad.normalize_answer("A\tTHEORY of the") == "theory of"
    assert squad.normalize_answer("theater") == "theater"  # "the" only as a word


def test_exact_match_and_f1_by_hand():
    assert squad.exact_match("the Eiffel Tower.", "Eiffel tower")
    assert not squad.exact_match("Eiffel", "Eiffel Tower")
    # pred tokens [eiffel], truth [eiffel, tower]: P = 1, R = 1/2, F1 = 2/3.
    assert squad.f1_score("Eiffel", "the Eiffel Tower") == pytest.approx(2 / 3)
    # pred [red, red, car] truth [red, car, park]: common {red: 1, car: 1} = 2; P = R = 2/3.
    assert squad.f1_score("red red car", "red car park") == pytest.approx(2 / 3)
    assert squad.f1_score("the", "a") == 0.0  # both empty after normalizing: 0 in v1.1


def test_max_over_ground_truths():
    assert squad.max_over_ground_truths(squad.f1_score, "Paris", ["London", "in Paris"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        squad.max_over_ground_truths(squad.f1_score, "x", [])


def test_squad_scores_in_percent():
    answers = {"q1": ["Denver Broncos"], "q2": ["1990", "in 1990"], "q3": ["gold"]}
    predictions = {"q1": "the Denver Broncos", "q2": "1990s", "unknown": "x"}  # q3 unanswered
    scores = squad.squad_scores(predictions, answers)
    # EM: q1 only -> 1/3. F1: q1 1, q2 0, q3 0 -> 1/3.
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 / 3)
    by_order = squad.squad_scores(["Broncos", "in 1990"], [["Denver Broncos"], ["1990"]])
    # q1: F1 2/3, EM 0; q2: "in 1990" vs "1990": EM 0, F1 P=1/2 R=1 -> 2/3.
    assert by_order == pytest.approx({"exact_match": 0.0, "f1": 100 * 2 / 3})


def test_squad_scores_errors():
    with pytest.raises(ValueError, match="at least one question"):
        squad.squad_scores({}, {})
    with pytest.raises(ValueError, match="2 predictions for 1 questions"):
        squad.squad_scores(["a", "b"], [["a"]])
