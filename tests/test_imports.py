"""The import graph of src/mathrl, read from the source: no cycle, function-local imports included.

Every ``import mathrl.x`` and ``from mathrl... import y`` anywhere in a module (at its top, inside a function, under
``if``/``try``) is an edge; relative imports are resolved against the module's package; ``from mathrl.pkg import
name`` is an edge to ``mathrl.pkg.name`` when that is a module, else to the package ``mathrl.pkg`` (its
``__init__``). Importing a submodule runs its packages' ``__init__`` first, so each package is an edge too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "mathrl").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The mathrl modules that module ``name`` (file ``path``) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in known else source)
    edges = set()
    for target in targets:
        if not (target == "mathrl" or target.startswith("mathrl.")):
            continue
        parts = target.split(".")
        # importing a.b.c runs a, a.b and a.b.c; a module's own packages have run before it (no edge)
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in known and prefix != name and not name.startswith(prefix + "."):
                edges.add(prefix)
    return edges


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_sees_local_relative_and_package_imports(tmp_path):
    # a.py imports b and a name of package pkg inside a function, b.py imports a relatively and a module of pkg,
    # pkg/c.py imports a and its own package
    pkg = tmp_path / "mathrl"
    (pkg / "pkg").mkdir(parents=True)
    for f in ("__init__.py", "pkg/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "a.py").write_text("def f():\n    from mathrl import b\n    from mathrl.pkg import thing\n")
    (pkg / "b.py").write_text("from . import a\nfrom .pkg import c\n")
    (pkg / "pkg" / "c.py").write_text("import mathrl.a\nfrom mathrl.pkg import thing\n")
    known = {"mathrl", "mathrl.a", "mathrl.b", "mathrl.pkg", "mathrl.pkg.c"}
    assert imported("mathrl.a", pkg / "a.py", known) == {"mathrl.b", "mathrl.pkg"}
    assert imported("mathrl.b", pkg / "b.py", known) == {"mathrl.a", "mathrl.pkg", "mathrl.pkg.c"}
    assert imported("mathrl.pkg.c", pkg / "pkg" / "c.py", known) == {"mathrl.a"}
    assert cycles({"mathrl.a": {"mathrl.b"}, "mathrl.b": {"mathrl.a"}, "mathrl.c": {"mathrl.a"}}) == [
        ["mathrl.a", "mathrl.b"]]


def test_no_import_cycle_in_mathrl():
    g = graph()
    assert "mathrl.settings" in g and g["mathrl.cli"], "the graph reader found no modules"
    found = cycles(g)
    assert not found, "import cycles (module-level and function-local imports):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_settings_is_a_leaf():
    # the shared settings import only config and errors: any module may compose them, and they import no torch
    assert graph()["mathrl.settings"] <= {"mathrl", "mathrl.config", "mathrl.errors"}
