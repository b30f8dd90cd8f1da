"""Sphinx configuration: `python -m sphinx -W --keep-going -b html docs docs/_build/html`.

Needs the 'docs' extra (`pip install -e '.[docs]'`). The API pages import the
package (jax on a CPU is enough); the guides are MyST markdown, and their
```python blocks are run by tests/test_docs.py.
"""

import importlib.util
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the docs import the package, nothing more

with open(os.path.join(ROOT, "perceiver", "__init__.py")) as f:
    release = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

project = "perceiver"
author = "the perceiver-io-jax authors"
copyright = "the perceiver-io-jax authors, Apache-2.0"  # noqa: A001
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]

# The API pages import every public module. Those of the optional extras
# ('train', 'media', 'notebook', 'hf') that are not installed are stood in
# for, so that the 'docs' extra alone builds the pages.
autodoc_mock_imports = [
    name
    for name in ("grain", "orbax", "PIL", "av", "matplotlib", "tqdm", "tensorboardX", "safetensors")
    if importlib.util.find_spec(name) is None
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# The docstrings write code as `name`, as markdown does: show it as code.
default_role = "code"

# Google-style docstrings (Args:, Returns:, Raises:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Attributes: sections as fields, so that a NamedTuple's fields are not described twice.
napoleon_use_ivar = True

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# A class's page shows its constructor's Args, and `__call__`: a Haiku module's
# computation and a task's main entry point.
autoclass_content = "both"
autodoc_default_options = {"members": True, "show-inheritance": True, "special-members": "__call__"}

# `## Heading` anchors for links such as guides/models.md#checkpoints.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "alabaster"
html_theme_options = {"description": "Perceiver, Perceiver IO and Perceiver AR in JAX/Haiku"}
html_title = f"perceiver {release}"


# The docstrings show code as markdown does: an indented block after a blank
# line, under top-level prose. reStructuredText would read it as a quotation,
# so such blocks become literal blocks (before napoleon reads the sections).
def _literal_blocks(app, what, name, obj, options, lines):
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        starts_block = (
            not line.strip()
            and i < len(lines)
            and lines[i].startswith("  ")
            and lines[i].strip()
            and out[:-1]
            and out[-2].strip()
            and not out[-2].startswith(" ")
            and not out[-2].rstrip().endswith("::")
        )
        if starts_block:
            out += ["::", ""]
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("  ")):
                out.append(lines[i])
                i += 1
            if out[-1].strip():
                out.append("")
    lines[:] = out


# napoleon splits `a, *args, **kwargs: ...` into one field each but leaves the
# stars bare, which reStructuredText reads as emphasis: escape them. It does
# not split an Attributes entry `params, state: ...`, which Sphinx would read
# as a type and a name: give each name the field.
_STARRED = re.compile(r"^(\s*:(?:param|type) )(\*\*?)(\w+:)")
_SHARED_IVAR = re.compile(r"^(\s*):ivar (\w+(?:, \w+)+):(.*)$")


def _fields(app, what, name, obj, options, lines):
    out, i = [], 0
    while i < len(lines):
        line = _STARRED.sub(lambda m: m.group(1) + m.group(2).replace("*", r"\*") + m.group(3), lines[i])
        shared = _SHARED_IVAR.match(line)
        i += 1
        if not shared:
            out.append(line)
            continue
        indent, names, first = shared.groups()
        rest = []
        while i < len(lines) and lines[i].startswith(indent + " "):
            rest.append(lines[i])
            i += 1
        for ivar in names.split(", "):
            out += [f"{indent}:ivar {ivar}:{first}"] + rest
    lines[:] = out


def setup(app):
    app.connect("autodoc-process-docstring", _literal_blocks, priority=400)
    app.connect("autodoc-process-docstring", _fields, priority=600)
