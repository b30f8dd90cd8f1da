"""Hugging Face transformers' Perceiver checkpoints: the names of `perceiver.hf`, kept here.

    from perceiver import convert
    model, params, state = convert.from_hf("path/to/save_pretrained/dir")
    convert.convert("hf_dir", "ours.pystate")   # `perceiver convert SRC DST`

The code lives in `perceiver.hf` (config table, parameter names, reading,
writing, pipeline files, the command) and `perceiver.torch_zip` (the
`pytorch_model.bin` reader); this module re-exports their public names so
that `perceiver.convert.X` keeps working. How transformers' models compare
with ours is measured in docs/guides/hf_measurements.md.
"""

from perceiver.checkpoint import CheckpointError
from perceiver.hf.config import (
    ARCHITECTURES,
    FIELDS,
    FOLDED_QUERY_FIELD,
    HF_ARCHITECTURES,
    HIDDEN_ACTS,
    Field,
    build,
    hf_config,
    hf_factory,
)
from perceiver.hf.conversion import command, convert
from perceiver.hf.names import (
    CONV_KERNEL_LAYOUTS,
    Rule,
    Tree,
    convert_state_dict,
    to_hf_state_dict,
)
from perceiver.hf.pipeline_files import (
    PREPROCESSOR_FILE,
    TOKENIZER_FILES,
    hf_preprocessor_config,
    hf_tokenizer_files,
)
from perceiver.hf.reading import (
    MAX_CONFIG_BYTES,
    WEIGHTS_NAMES,
    from_hf,
    read_config,
    read_safetensors,
    read_weights,
)
from perceiver.hf.writing import DESCRIPTION_FIELD, HF_DTYPES, to_hf
from perceiver.torch_zip import MAX_CHECKPOINT_BYTES, MAX_PICKLE_BYTES, read_torch_bin

__all__ = [
    "ARCHITECTURES",
    "CONV_KERNEL_LAYOUTS",
    "CheckpointError",
    "DESCRIPTION_FIELD",
    "FIELDS",
    "FOLDED_QUERY_FIELD",
    "Field",
    "HF_ARCHITECTURES",
    "HF_DTYPES",
    "HIDDEN_ACTS",
    "MAX_CHECKPOINT_BYTES",
    "MAX_CONFIG_BYTES",
    "MAX_PICKLE_BYTES",
    "PREPROCESSOR_FILE",
    "Rule",
    "TOKENIZER_FILES",
    "Tree",
    "WEIGHTS_NAMES",
    "build",
    "command",
    "convert",
    "convert_state_dict",
    "from_hf",
    "hf_config",
    "hf_factory",
    "hf_preprocessor_config",
    "hf_tokenizer_files",
    "read_config",
    "read_safetensors",
    "read_torch_bin",
    "read_weights",
    "to_hf",
    "to_hf_state_dict",
]
