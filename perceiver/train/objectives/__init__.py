"""What the recipes optimise: one module per kind of objective, and the pieces they share.

Each kind's module holds its recipes' config sections (the `data` and `task`
keys' `*Settings`), the builder of the trainer's `Objective` and the
description of an exported checkpoint, bundled as an `ObjectiveKind` (its
model-size rules read from the factory) that recipe files register with:

    image            IMAGE_CLASSIFICATION, IMAGE_FINETUNING (imagenet_classifier)
    masked_language  MASKED_LM (masked_language_model), TEXT_CLASSIFICATION
                     (text_classifier: the MLM's encoder, a new decoder)
    language_model   CAUSAL_LM (byte_language_model, Perceiver AR)
    flow             OPTICAL_FLOW (optical_flow) on synthetic scenes
    token_classification  TOKEN_CLASSIFICATION (token_classifier: BIO tags per byte)
    question_answering    QUESTION_ANSWERING (question_answerer: start and end per byte)
    audio_classification  AUDIO_CLASSIFICATION (audio_classifier) on folders of clips
    detection        OBJECT_DETECTION (object_detector: a Hungarian-matched set loss)

and what they share:

    kind             ObjectiveKind; size_rules, a factory's size rules from its signature
    classification   ClassificationSettings, classification loss, evaluation and labels
    evaluation       evaluation sums and loaders
    pretrained       loading a pretrained checkpoint into a fresh model
    generated        what tiny runs generate under WORKDIR/generated (stand-in checkpoints)

The recipes (`perceiver.train.recipes`) depend on these modules, never the reverse.
"""
