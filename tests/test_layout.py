"""The package layout: no import cycles anywhere in the project, and neither search engine imports the other.

Imports are read from the source (module level and inside functions alike, since a lazy import is still a
dependency), so a cycle hidden behind a function-level import fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_space", "runners")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test)
                   in ("TYPE_CHECKING", "typing.TYPE_CHECKING") for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never imported at run time
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    targets = set()
    for f in found:
        while f and f not in modules:  # an attribute of a module: the module itself
            f = f.rpartition(".")[0]
        if f and f != name and not name.startswith(f + "."):  # its own package: no dependency
            targets.add(f)
    return targets


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_back():
    edges = graph()
    assert cycles(edges) == []


def test_neither_engine_imports_the_other():
    edges = graph()
    assert "runners.search.optuna_engine" not in edges["runners.search.ray_engine"]
    assert "runners.search.ray_engine" not in edges["runners.search.optuna_engine"]


def test_runners_is_one_subpackage_per_concern():
    flat = sorted(p.name for p in (ROOT / "runners").glob("*.py") if p.name != "__init__.py")
    assert flat == [], f"modules directly under runners/: {flat}; put each in the subpackage of its concern"
    for pkg in (ROOT / "runners").iterdir():
        if pkg.is_dir() and pkg.name != "__pycache__":
            assert (pkg / "__init__.py").exists(), pkg
    for name, path in project_modules().items():
        assert ast.get_docstring(ast.parse(path.read_text())), f"{name} says nothing of what it is for"


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
