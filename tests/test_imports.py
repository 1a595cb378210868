"""The import graph of `ssl_zoo/` has no circle.

Every `import` statement counts, wherever it stands: at module level, inside a function (a lazy
import only postpones a circle to the first call, it does not remove it) or under `if
TYPE_CHECKING:`. An edge goes from a module to the module it names: `import a.b` -> `a.b`;
`from a import b` -> `a.b` when `b` is a submodule, else `a`; relative imports are resolved
against the importing module's package.

Package `__init__` modules: an `__init__` that imports its own submodules to re-export them
(`ssl_zoo/methods/__init__.py` building the registry) is an ordinary edge and is counted. What
is not counted is the implicit import of the parent packages that Python performs before running
`a.b.c` (`a`, then `a.b`): with it, every re-exporting `__init__` would form a circle with each
submodule it imports, and no module could be told apart from its package. A submodule that
names its own package explicitly (`from ssl_zoo.methods import METHODS` inside
`ssl_zoo/methods/rotnet.py`) is a real circle and fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "ssl_zoo"


def module_names(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for every .py file under the package folder `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve(name: str, modules) -> str | None:
    """The longest prefix of `name` that is one of `modules` (`a.b.func` -> `a.b`)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules) -> set[str]:
    """The modules of `modules` that `module` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved and resolved != module:
                found.add(resolved)
    return found


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    modules = module_names(root)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle as [a, b, ..., a], or None. Depth-first search, white/grey/black."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_ssl_zoo_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 20 and "ssl_zoo.preset" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_preset_format_owner_imports_no_release_module():
    """keras-hub's preset_utils shape: every release module depends on ssl_zoo.preset, never back."""
    graph = import_graph()
    release = {"ssl_zoo.export", "ssl_zoo.loader", "ssl_zoo.hub", "ssl_zoo.zoo", "ssl_zoo.cards", "ssl_zoo.cli",
               "ssl_zoo.finetune"}
    assert not graph["ssl_zoo.preset"] & (release | {"ssl_zoo"}), graph["ssl_zoo.preset"]
    for module in ("ssl_zoo.export", "ssl_zoo.loader", "ssl_zoo.hub", "ssl_zoo.zoo", "ssl_zoo.cards"):
        assert "ssl_zoo.preset" in graph[module], module
    assert "ssl_zoo.export" not in graph["ssl_zoo.cards"]  # the card writer is called by export, not back


def test_evaluation_sees_only_backbones():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("ssl_zoo.evaluation"):
            assert not {t for t in targets if t.startswith("ssl_zoo.methods")}, (module, targets)


def test_the_checker_finds_a_lazy_circle_through_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import b  # re-export: counted, no circle by itself\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from .sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("X = 1\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg"] == {"pkg.sub.b"}
    assert find_cycle(graph) is None
    for lazy_back in ("def g():\n    from pkg import a\n    return a\n", "from .. import a  # noqa\n",
                      "def g():\n    import pkg.a\n"):
        (pkg / "sub" / "b.py").write_text(lazy_back)
        cycle = find_cycle(import_graph(pkg))
        assert cycle[0] == cycle[-1] and sorted(cycle[1:]) == ["pkg.a", "pkg.sub.b"], lazy_back
