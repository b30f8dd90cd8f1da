"""Task-level functions built on the published models: optical flow, video
autoencoding, masked byte language modelling, ImageNet classification, and
text classification with a fine-tuned byte model.

Each task's `from_pretrained` takes a published name or a checkpoint file; a
file's description beside it (`NAME.json`, see
`perceiver.checkpoint.save_description`) gives its sizes, task options and
class names."""
