"""SQuAD v1.1's official answer scores: exact match and token F1.

The definitions follow the official `evaluate-v1.1.py`: both answers are
normalized (lower case, punctuation removed, the articles a/an/the removed,
whitespace collapsed); F1 counts the normalized whitespace tokens the two
share; each question scores the best over its ground truths; the dataset's
scores are means in percent.
"""

import collections
import re
import string
from typing import Callable, Mapping, Sequence, Union

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, ground_truth: str) -> bool:
    """Whether the two answers are equal once normalized."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token F1 of the normalized answers, in [0, 1]; 0 when they share no token (v1.1)."""
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_ground_truths(metric: Callable[[str, str], float], prediction: str,
                           ground_truths: Sequence[str]) -> float:
    """The best `metric(prediction, truth)` over the truths.

    Raises:
      ValueError: if there is no ground truth.
    """
    if not ground_truths:
        raise ValueError("each question needs at least one ground-truth answer.")
    return max(float(metric(prediction, truth)) for truth in ground_truths)


def squad_scores(predictions: Union[Mapping[str, str], Sequence[str]],
                 answers: Union[Mapping[str, Sequence[str]], Sequence[Sequence[str]]]) -> dict:
    """Dataset-level exact match and F1 in percent, as the official script prints them.

    Args:
      predictions: `{question id: answer}`, or one answer per question.
      answers: `{question id: [ground truths]}`, or the ground truths per question
        in the same order. With mappings, a question without a prediction
        scores 0 (as in the official script) and predictions of unknown ids are
        ignored.

    Returns:
      `{"exact_match": float, "f1": float}`, each in [0, 100].

    Raises:
      ValueError: if there are no questions, the two sequences differ in length,
        or a question has no ground truth.
    """
    if isinstance(answers, Mapping) != isinstance(predictions, Mapping):
        raise ValueError("predictions and answers must both be mappings by id or both sequences.")
    if isinstance(answers, Mapping):
        pairs = [(predictions.get(qid), truths) for qid, truths in answers.items()]
    else:
        if len(predictions) != len(answers):
            raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions.")
        pairs = list(zip(predictions, answers))
    if not pairs:
        raise ValueError("squad_scores needs at least one question.")
    em = f1 = 0.0
    for prediction, truths in pairs:
        if isinstance(truths, str):
            truths = [truths]
        if prediction is None:
            max_over_ground_truths(exact_match, "", truths)  # still rejects empty truths
            continue
        em += max_over_ground_truths(exact_match, prediction, truths)
        f1 += max_over_ground_truths(f1_score, prediction, truths)
    return {"exact_match": 100.0 * em / len(pairs), "f1": 100.0 * f1 / len(pairs)}
