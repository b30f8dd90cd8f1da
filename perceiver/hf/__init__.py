"""The Hugging Face bridge: transformers' Perceiver checkpoints into our models, and back.

    model, params, state = from_hf("path/to/save_pretrained/dir")
    logits, _ = model.apply(params, state, None, images)
    to_hf(params, state, "imagenet_classifier", {"variant": ...}, "out_dir")
    convert("hf_dir", "ours.pystate")   # or convert("ours.pystate", "hf_dir"):
                                        # `perceiver convert SRC DST`

The seven Perceiver IO heads transformers ships map to our factories:
PerceiverForMaskedLM -> `masked_language_model`,
PerceiverForSequenceClassification -> `text_classifier`,
PerceiverForImageClassificationLearned / Fourier / ConvProcessing ->
`imagenet_classifier` (its three variants), PerceiverForOpticalFlow ->
`optical_flow`, PerceiverForMultimodalAutoencoding -> `video_autoencoder`.
Neither torch nor transformers is needed. Configs and models the other side
cannot express are refused with a ValueError naming the field or size, and
malformed files with a `perceiver.checkpoint.CheckpointError` naming the file.

- `perceiver.hf.config`: config.json fields <-> our factories' sizes, one
  two-way table.
- `perceiver.hf.names`: parameter names and layouts <-> our trees, by rule.
- `perceiver.hf.reading`: config.json and weights files, `from_hf`.
- `perceiver.hf.writing`: `to_hf`, all files or none.
- `perceiver.hf.pipeline_files`: the image processor and tokenizer files
  transformers' pipelines read.
- `perceiver.hf.conversion`: `convert`, the `perceiver convert` command.

Where transformers' classes compute differently from DeepMind's reference
(which our models follow), and by how much, is measured in
docs/guides/hf_measurements.md (the "Hugging Face measurements" guide).
"""

from perceiver.hf.config import HF_ARCHITECTURES, ARCHITECTURES, build, hf_config, hf_factory
from perceiver.hf.conversion import command, convert
from perceiver.hf.names import convert_state_dict, to_hf_state_dict
from perceiver.hf.reading import from_hf, read_config, read_weights
from perceiver.hf.writing import to_hf

__all__ = [
    "ARCHITECTURES",
    "HF_ARCHITECTURES",
    "build",
    "command",
    "convert",
    "convert_state_dict",
    "from_hf",
    "hf_config",
    "hf_factory",
    "read_config",
    "read_weights",
    "to_hf",
    "to_hf_state_dict",
]
