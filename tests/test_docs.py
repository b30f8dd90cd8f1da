"""The documentation's Python examples run: every ```python block of docs/**/*.md.

Each page's blocks run in order in one namespace, in a fresh temporary
working directory of their own, so a page may build on its earlier blocks
and write files; a failure names the page and the block (1-based, counting
only the page's ```python blocks) with its traceback. Blocks that must not
run here (downloads, long trainings, shell commands) are fenced with
another language (```bash, ```text, or MyST's ```{code-block} python).

The pages run in one fresh interpreter (`python tests/test_docs.py --run
RESULTS.json`): the examples see jax as a reader's script would, whatever
other tests set in this process, and XLA compiles them without its backend
optimisations, which halves the compile time that dominates them (the
examples check shapes and answers, not speed). Nothing downloads: the
cache is empty and the checkpoint server unreachable.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
PACKAGE = DOCS.parent / "perceiver"

# A fence opens at the start of a line with three or more backticks and an
# info string; it closes with a line of at least as many backticks alone.
_FENCE = re.compile(r"^(?P<ticks>`{3,})(?P<info>[^`\n]*)$")


def python_blocks(text: str):
    """`[(line, code)]`: the ```python blocks of a markdown text, with the line each starts on."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opened = _FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        ticks, info = opened.group("ticks"), opened.group("info").strip()
        start = i = i + 1
        while i < len(lines) and not (lines[i].startswith(ticks) and not lines[i].strip("`")):
            i += 1
        if info.split(" ")[0] == "python":
            blocks.append((start + 1, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return blocks


def pages():
    """The markdown pages of docs/ that hold ```python blocks."""
    found = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
    return [p for p in found if python_blocks(p.read_text())]


def page_id(page: pathlib.Path) -> str:
    return page.relative_to(DOCS).as_posix() if page.is_relative_to(DOCS) else str(page)


def run_page(page: pathlib.Path, workdir: pathlib.Path) -> dict:
    """Runs a page's blocks in order in one namespace, in `workdir`; the first failure, if any."""
    blocks = python_blocks(page.read_text())
    namespace = {"__name__": "docs_" + re.sub(r"\W", "_", page.stem)}
    previous = os.getcwd()
    os.chdir(workdir)
    start = time.perf_counter()
    try:
        for number, (line, code) in enumerate(blocks, 1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the examples' warnings are not the test's
                    exec(compile(code, f"{page}:{line}", "exec"), namespace)
            except BaseException:  # noqa: BLE001 - report any failure with its place
                return {
                    "page": page_id(page), "block": number, "blocks": len(blocks), "line": line,
                    "error": traceback.format_exc(), "seconds": time.perf_counter() - start,
                }
    finally:
        os.chdir(previous)
    return {"page": page_id(page), "blocks": len(blocks), "error": None,
            "seconds": time.perf_counter() - start}


def describe_failure(result: dict) -> str:
    return (f"{result['page']}, python block {result['block']} of {result['blocks']} "
            f"(line {result['line']}) failed:\n{result['error']}")


def _child_env(root: pathlib.Path) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = ("--xla_backend_optimization_level=0 " + env.get("XLA_FLAGS", "")).strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PERCEIVER_CACHE"] = str(root / "cache")
    env["PERCEIVER_BASE_URL"] = "http://127.0.0.1:9/no-downloads-in-the-docs"
    return env


def test_the_docs_have_examples():
    """The extraction finds the guides' examples (a broken fence pattern would skip them all)."""
    found = [page_id(p) for p in pages()]
    assert len(found) >= 8 and "guides/getting-started.md" in found, found


def test_every_docs_example_runs(tmp_path):
    results_path = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, __file__, "--run", str(results_path)],
        cwd=tmp_path, env=_child_env(tmp_path), capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0 and results_path.exists(), (
        f"the docs runner failed (status {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    print(done.stdout)  # seconds per page: shown with `pytest -rP`
    results = json.loads(results_path.read_text())
    assert {r["page"] for r in results} == {page_id(p) for p in pages()}
    failures = [describe_failure(r) for r in results if r["error"]]
    assert not failures, "\n\n".join(failures)


def test_a_failure_names_the_page_and_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 1\n```\n\n```bash\nexit 1\n```\n\n```python\nassert x == 2, 'x is 1'\n```\n")
    result = run_page(page, tmp_path)
    assert result["block"] == 2 and result["line"] == 10 and "x is 1" in result["error"]
    assert describe_failure(result).startswith(f"{page}, python block 2 of 2 (line 10) failed:")


def test_the_extraction_reads_fences_as_myst_does():
    text = "\n".join([
        "```python", "a = 1", "```",
        "```bash", "echo no", "```",
        "````python", "```", "b = 2", "````",
        "```{code-block} python", "c = 3", "```",
        "```python title", "d = 4", "```",
    ])
    assert [code for _, code in python_blocks(text)] == ["a = 1\n", "```\nb = 2\n", "d = 4\n"]


def _public_modules():
    """Every module of the package whose dotted name has no part starting with '_'."""
    names = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts):
            names.append(".".join(parts))
    return sorted(names)


# Documented on another module's page: `perceiver.compute` and
# `perceiver.checkpoint` export their API (their submodules, one per format or
# kernel, may change), and `perceiver.train` has one page of entry points.
_COVERED_BY = {
    "perceiver.compute": "perceiver.compute.",
    "perceiver.checkpoint": "perceiver.checkpoint.",
    "perceiver.train": "perceiver.train.",
}


def test_every_public_module_has_an_api_page():
    api_pages = {p.stem for p in (DOCS / "api").glob("*.rst")}
    missing = [
        name
        for name in _public_modules()
        if name != "perceiver"
        and name not in api_pages
        and not any(name.startswith(prefix) and page in api_pages for page, prefix in _COVERED_BY.items())
    ]
    assert not missing, f"public modules without a page in docs/api/: {missing}"


def test_every_api_page_is_in_the_index():
    index = (DOCS / "api" / "index.md").read_text()
    missing = [p.stem for p in (DOCS / "api").glob("*.rst") if f"\n{p.stem}\n" not in index]
    assert not missing, f"docs/api/index.md does not list {missing}"


def _main(argv) -> int:
    """`--run RESULTS.json [PAGE.md ...]`: run the pages (default: all), each in a temporary folder."""
    if len(argv) < 2 or argv[0] != "--run":
        print(__doc__)
        return 2
    chosen = [pathlib.Path(p).resolve() for p in argv[2:]] or pages()
    results = []
    with tempfile.TemporaryDirectory() as root:
        for number, page in enumerate(chosen):
            workdir = pathlib.Path(root, str(number))
            workdir.mkdir()
            result = run_page(page, workdir)
            print(f"{result['seconds']:6.2f} s  {result['page']}{'  FAILED' if result['error'] else ''}",
                  flush=True)
            results.append(result)
    pathlib.Path(argv[1]).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
