"""Metrics that score the heads' predictions against labels.

- `perceiver.evaluation.entities`: entity-level precision, recall and F1 (seqeval's definition).
- `perceiver.evaluation.squad`: SQuAD v1.1 exact match and token F1.
- `perceiver.evaluation.detection`: COCO mAP@0.5 and mAP@[.5:.95] (pycocotools' definitions).
"""
