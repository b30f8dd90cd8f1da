"""The package's modules import each other without cycles.

Every module under `perceiver/` is parsed (not imported), and every import
in it counts, at module level or inside a function: an import put off into
a function still ties the two modules together. A package's `__init__`
counts as a module; `from perceiver.compute import folding` depends on the
module `perceiver.compute.folding`, not on the package's `__init__`, so a
package that re-exports its own submodules is no cycle.
"""

import ast
import pathlib
from typing import Dict, List, Optional, Set

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "perceiver"

# Calls that import a module named by a string: `importlib.import_module("perceiver.x")`.
_IMPORT_CALLS = ("import_module", "__import__")


def module_files(root: pathlib.Path = ROOT) -> Dict[str, pathlib.Path]:
    """`{dotted module name: file}` for the package at `root`; an `__init__` is its package."""
    package = root.name
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package,) + parts)] = path
    return modules


def _resolve(name: str, modules: Set[str]) -> Optional[str]:
    """The module `name` is, or the nearest one it is in (`perceiver.x.y` -> `perceiver.x`)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name of `from BASE import ...`, relative imports resolved."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    # A package's `__init__` is its own package: `from . import x` is a sibling of its modules.
    keep = len(parts) - node.level + (1 if is_package else 0)
    if keep <= 0:
        raise ValueError(f"{module}: relative import beyond the top-level package")
    base = ".".join(parts[:keep])
    return f"{base}.{node.module}" if node.module else base


def imports(module: str, path: pathlib.Path, modules: Set[str]) -> Dict[str, int]:
    """`{package module imported: first line}` for every import in one module's source.

    Args:
      module: the module's dotted name.
      path: its file.
      modules: the dotted names of all the package's modules.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: Dict[str, int] = {}

    def add(name: Optional[str], line: int) -> None:
        if name is not None and name != module:
            found.setdefault(name, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_resolve(alias.name, modules), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _base(node, module, is_package)
            for alias in node.names:
                # `from perceiver import x`: the submodule x if there is one, else perceiver itself.
                target = f"{base}.{alias.name}"
                add(target if target in modules else _resolve(base, modules), node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _IMPORT_CALLS and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    add(_resolve(arg.value, modules), node.lineno)
    return found


def import_graph(root: pathlib.Path = ROOT) -> Dict[str, Dict[str, int]]:
    """`{module: {module it imports: line}}` within the package at `root`."""
    files = module_files(root)
    names = set(files)
    return {module: imports(module, path, names) for module, path in files.items()}


def _components(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's, without recursion)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _shortest_cycle(start: str, members: Set[str], graph: Dict[str, Dict[str, int]]) -> List[str]:
    """The shortest cycle `[start, ..., start]` through modules of one component."""
    previous: Dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt not in members:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start] + path[::-1][1:] + [start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")  # Not reached for a component's member.


def find_cycles(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """One import cycle `[a, b, ..., a]` in each group of modules that import each other."""
    return [_shortest_cycle(c[0], set(c), graph) for c in _components(graph)]


def describe_cycle(
    cycle: List[str], graph: Dict[str, Dict[str, int]], root: pathlib.Path = ROOT
) -> str:
    """A cycle as one line per import: `perceiver/a.py:12 imports perceiver.b`."""
    files = module_files(root)
    lines = []
    for a, b in zip(cycle, cycle[1:]):
        where = files[a].relative_to(root.parent).as_posix()
        lines.append(f"  {where}:{graph[a][b]} imports {b}")
    return "\n".join(lines)


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "perceiver.cli" in graph and "perceiver.compute.attention" in graph
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(
        f"import cycle {' -> '.join(cycle)}:\n{describe_cycle(cycle, graph)}" for cycle in cycles
    ) + "\nMove what both need into a lower module, or pass it in from above."


def test_the_hook_and_the_hub_stay_at_the_bottom():
    graph = import_graph()
    # The modules call the recording hook, the inspection sets it: it must import neither.
    assert graph["perceiver._recording"] == {}
    # The downloader knows no model and reads no checkpoint: its callers hand it the check.
    assert set(graph["perceiver.hub"]) <= {"perceiver._progress"}


def _public_names(tree: ast.Module) -> Set[str]:
    """The names a module defines at its top level, less those starting with '_'."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {name for name in names if not name.startswith("_")}


def test_models_offers_every_factory():
    # The factories are written below the loading layer; users import them from models.
    factories = set().union(
        *(_public_names(ast.parse(p.read_text(encoding="utf-8"))) for p in (ROOT / "_factories").glob("*.py"))
    )
    models = ast.parse((ROOT / "models.py").read_text(encoding="utf-8"))
    offered = {
        alias.asname or alias.name
        for node in models.body
        if isinstance(node, ast.ImportFrom) and node.module == "perceiver._factories"
        for alias in node.names
    }
    assert factories - offered == set()


def _package(tmp_path: pathlib.Path, files: Dict[str, str]) -> pathlib.Path:
    root = tmp_path / "pkg"
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


@pytest.mark.parametrize(
    "source",
    [
        "from pkg import b",
        "import pkg.b",
        "import pkg.b as bee",
        "from pkg.b import thing",
        "from . import b",
        "from .b import thing",
        "def late():\n    from pkg import b\n",
        "class C:\n    def method(self):\n        import pkg.b\n",
        "import importlib\nimportlib.import_module('pkg.b')",
        "x = __import__('pkg.b', fromlist=['thing'])",
    ],
)
def test_every_form_of_import_is_seen(tmp_path, source):
    root = _package(
        tmp_path,
        {"__init__.py": "", "a.py": source, "b.py": "def thing():\n    from pkg import a\n"},
    )
    graph = import_graph(root)
    assert "pkg.b" in graph["pkg.a"]
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_a_package_reexporting_its_submodules_is_no_cycle(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "__version__ = '1'",
            "sub/__init__.py": "from pkg.sub.x import f\nfrom pkg.sub import y\n",
            "sub/x.py": "from pkg.sub import y\nfrom . import y as why\n",
            "sub/y.py": "from pkg import __version__\n",
        },
    )
    graph = import_graph(root)
    assert graph["pkg.sub"] == {"pkg.sub.x": 1, "pkg.sub.y": 2}
    assert graph["pkg.sub.x"] == {"pkg.sub.y": 1}
    assert graph["pkg.sub.y"] == {"pkg": 1}  # A name of the package's __init__.
    assert find_cycles(graph) == []
    # A submodule that wants a name of its package's __init__ does close a cycle.
    (root / "sub" / "y.py").write_text("from pkg.sub import f\n")
    assert find_cycles(import_graph(root)) == [["pkg.sub", "pkg.sub.y", "pkg.sub"]]


def test_a_cycle_is_reported_with_its_lines(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "import os\nfrom pkg import b\n",
            "b.py": "\n\nfrom pkg import a\n",
        },
    )
    graph = import_graph(root)
    (cycle,) = find_cycles(graph)
    assert cycle == ["pkg.a", "pkg.b", "pkg.a"]
    text = describe_cycle(cycle, graph, root)
    assert text == "  pkg/a.py:2 imports pkg.b\n  pkg/b.py:3 imports pkg.a"
