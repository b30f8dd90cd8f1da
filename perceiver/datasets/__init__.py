"""Readers and builders of labelled datasets for the heads.

- `perceiver.datasets.token_spans`: text with labelled character spans (token classification).
- `perceiver.datasets.squad`: extractive question answering (SQuAD-style JSON lines).
- `perceiver.datasets.coco`: COCO object-detection annotation files (read with checks, write).
- `perceiver.datasets.copy_paste`: a detection set of real objects pasted on real photos.
- `perceiver.datasets.audio_folders`: audio clips in folders named by class.
- `perceiver.datasets.spoken_words`: a spoken-word set made with espeak-ng.
"""
