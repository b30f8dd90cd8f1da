"""The task builders behind the recipes, one module per kind of task.

Each module holds its recipes' config sections (data, task), the rules of its
model's sizes, the builder of the trainer's `Task` and the description of an
exported checkpoint, bundled as a `TaskKind` that recipe files register with:

    common  pieces every kind uses: ClassificationTask, pretrained loading,
            classification loss and evaluation, stand-in checkpoints
    image   IMAGE_CLASSIFICATION, IMAGE_FINETUNING (imagenet_classifier)
    text    MASKED_LM (masked_language_model), TEXT_CLASSIFICATION (text_classifier)
    flow    OPTICAL_FLOW (optical_flow) on synthetic scenes
"""
