"""Reading and writing Perceiver checkpoints safely.

The published checkpoints (`*.pystate`, `*.pickle`) are Python pickles of
nested dicts of numpy arrays, sometimes inside Haiku's old `FlatMapping`
container, and either params alone or `{'params': ..., 'state': ...}`.
Unpickling runs whatever the file names, so `load` never unpickles: it runs
the file's opcodes on `perceiver.safe_unpickle.Reader`, which builds only
dicts, plain values and the few numpy calls such files need
(`ALLOWED_GLOBALS`), each checked before numpy sees it. Nothing from the file
runs, and no array is ever a view of memory it does not own.

`save` and `load` choose the format by the file's extension: a path ending
in `.safetensors` is read and written with the safetensors package's numpy
API (`pip install 'perceiver-io-jax[hf]'`), keyed as `SAFETENSORS_FORMAT` says, with
its header bounded, its dtypes numeric, and the same non-finite check; any
other path is a pickle. A description (`save_description`) sits beside
either as `NAME.json`.

Before reading, `load` tells from the file's first bytes what it is
(`check_file`): a folder, an empty file, a description, a text, an image...
is refused as what it is ("x.json is a checkpoint description, expected a
checkpoint file; give the checkpoint it describes, x.pystate"), and a
damaged pickle as "a damaged checkpoint" before the parser's detail.

The package's modules, one format or concern each:

- `files.py`: `load`, `save`, `check_file`: the format by the extension;
- `pickled.py`: `loads`, `dumps`: pickles, read without running them;
- `unpickling.py`: `ALLOWED_GLOBALS`, what a pickle may build;
- `safetensors_format.py`: `SAFETENSORS_FORMAT`, `read_safetensors`;
- `description.py`: the JSON description beside a checkpoint;
- `trees.py`: parameter trees' checks and differences (`check_tree`);
- `atomic_write.py`: files written whole or not at all;
- `errors.py`: `CheckpointError`.
"""

from perceiver.checkpoint import safetensors_format as _safetensors_format
from perceiver.checkpoint.description import (
    DESCRIPTION_FORMAT,
    MAX_DESCRIPTION_BYTES,
    description_path,
    read_description,
    save_description,
)
from perceiver.checkpoint.errors import CheckpointError
from perceiver.checkpoint.files import check_file, load, save, wrong_kind_hint
from perceiver.checkpoint.pickled import dumps, loads
from perceiver.checkpoint.safetensors_format import (
    MAX_SAFETENSORS_HEADER_BYTES,
    SAFETENSORS_SUFFIX,
    STATE_PREFIX,
    is_safetensors,
    read_safetensors,
)
from perceiver.checkpoint.trees import Tree, check_tree, differences_error, tree_differences
from perceiver.checkpoint.unpickling import ALLOWED_GLOBALS

SAFETENSORS_FORMAT = _safetensors_format.SAFETENSORS_FORMAT
"""Our trees in a `.safetensors` file: one tensor per leaf, named `MODULE/NAME`.

Params are keyed `MODULE/NAME` (a Haiku module path holds '/', a leaf name
none: the last '/' splits them); state leaves the same under the prefix
`state/` (`state/MODULE/NAME`), in the same file, so that one file is one
checkpoint as with pickles. The header's metadata is `{"format":
SAFETENSORS_FORMAT}`; reading does not need it. A params module called
`state` or under `state/` cannot be saved (it would read back as state).
"""

__all__ = [
    "CheckpointError",
    "wrong_kind_hint",
    "check_file",
    "loads",
    "load",
    "dumps",
    "save",
    "SAFETENSORS_FORMAT",
    "STATE_PREFIX",
    "SAFETENSORS_SUFFIX",
    "MAX_SAFETENSORS_HEADER_BYTES",
    "is_safetensors",
    "read_safetensors",
    "DESCRIPTION_FORMAT",
    "MAX_DESCRIPTION_BYTES",
    "description_path",
    "save_description",
    "read_description",
    "tree_differences",
    "differences_error",
    "check_tree",
    "ALLOWED_GLOBALS",
    "Tree",
]
