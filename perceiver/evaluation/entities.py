"""Entity-level precision, recall and F1, as seqeval defines them.

An entity is a `(start, end, label)` span. A predicted entity counts as
correct only if a true entity of the same sequence has the same start, end
and label. Counts are summed over all sequences (micro average); a ratio
with nothing to divide is 0, as in seqeval.
"""

from typing import Dict, Hashable, Sequence, Set, Tuple

Entity = Tuple[int, int, str]


def _entities(spans: Sequence[Sequence], where: str) -> Set[Tuple[Hashable, Hashable, str]]:
    """The set of `(start, end, label)` of one sequence; extra fields (a score) are dropped."""
    found = set()
    for span in spans:
        if len(span) < 3:
            raise ValueError(f"{where}: each span must be (start, end, label, ...); got {span!r}.")
        found.add((span[0], span[1], span[2]))
    return found


def _ratios(correct: int, predicted: int, true: int) -> Dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_scores(true: Sequence[Sequence[Sequence]], pred: Sequence[Sequence[Sequence]]) -> dict:
    """Micro-averaged entity precision, recall and F1, overall and per label.

    Args:
      true: for each sequence, its true spans `(start, end, label)`.
      pred: for each sequence, its predicted spans `(start, end, label[, score])`.

    Returns:
      `{"precision", "recall", "f1", "per_label": {label: {"precision", "recall",
      "f1", "support"}}}`, ratios in [0, 1]; `support` is the number of true
      entities of the label. Labels are those seen in `true` or `pred`.

    Raises:
      ValueError: if `true` and `pred` hold different numbers of sequences, or a
        span has fewer than three fields.
    """
    if len(true) != len(pred):
        raise ValueError(f"true has {len(true)} sequences but pred has {len(pred)}.")
    counts: Dict[str, list] = {}  # label -> [correct, predicted, true]
    for i, (true_spans, pred_spans) in enumerate(zip(true, pred)):
        true_set = _entities(true_spans, f"true[{i}]")
        pred_set = _entities(pred_spans, f"pred[{i}]")
        for entity in true_set:
            counts.setdefault(entity[2], [0, 0, 0])[2] += 1
        for entity in pred_set:
            row = counts.setdefault(entity[2], [0, 0, 0])
            row[1] += 1
            row[0] += entity in true_set
    totals = [sum(row[k] for row in counts.values()) for k in range(3)]
    scores = _ratios(*totals)
    scores["per_label"] = {
        label: dict(_ratios(*counts[label]), support=counts[label][2]) for label in sorted(counts)
    }
    return scores
