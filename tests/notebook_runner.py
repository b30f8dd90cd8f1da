"""Runs a notebook top to bottom with nbclient, in this interpreter's environment.

A notebook's cell tagged `parameters` holds its defaults; `run_notebook`
appends overrides to that cell (papermill's convention) so tests can point a
notebook at small models and local files.
"""

import json
import os
import pathlib
import sys
from typing import Mapping

import nbformat
from nbclient import NotebookClient

KERNEL_NAME = "perceiver-tests"


def _kernelspec_dir(root: pathlib.Path) -> pathlib.Path:
    """A kernelspec running `sys.executable`, so the notebook sees this venv."""
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "perceiver tests",
                "language": "python",
            }
        )
    )
    return root


def run_notebook(
    path: pathlib.Path,
    workdir: pathlib.Path,
    overrides: Mapping[str, object],
    env: Mapping[str, str],
    timeout: int = 300,
) -> nbformat.NotebookNode:
    """Executes `path` in `workdir` with parameter overrides; returns the executed notebook.

    Raises:
      ValueError: if the notebook has no cell tagged 'parameters'.
      nbclient.exceptions.CellExecutionError: if a cell fails.
    """
    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path} must have exactly one cell tagged 'parameters'.")
    lines = [f"{name} = {value!r}" for name, value in overrides.items()]
    cells[0].source += "\n# Overrides injected by the test suite.\n" + "\n".join(lines) + "\n"

    jupyter = _kernelspec_dir(workdir / "jupyter")
    saved = {k: os.environ.get(k) for k in list(env) + ["JUPYTER_PATH"]}
    os.environ.update(env)
    os.environ["JUPYTER_PATH"] = str(jupyter)
    try:
        client = NotebookClient(
            nb,
            kernel_name=KERNEL_NAME,
            timeout=timeout,
            resources={"metadata": {"path": str(workdir)}},
        )
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return nb


def outputs_of(nb: nbformat.NotebookNode, kind: str):
    """All outputs of a type ('stream', 'display_data', 'execute_result') in order."""
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == kind]
