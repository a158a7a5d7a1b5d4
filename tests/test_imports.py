"""The import graph of src/mathrl, read from the source: no cycle, function-local imports included; and the CLI's
``--help`` and ``--version`` import no torch.

Every ``import mathrl.x`` and ``from mathrl... import y`` anywhere in a module (at its top, inside a function, under
``if``/``try``) is an edge; relative imports are resolved against the module's package; ``from mathrl.pkg import
name`` is an edge to ``mathrl.pkg.name`` when that is a module, else to the package ``mathrl.pkg`` (its
``__init__``). Importing a submodule runs its packages' ``__init__`` first, so each package is an edge too.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


# The commands whose Config lives in a module that imports no torch: every one (commands_config.py, study.py, and
# each algorithm's algorithms/NAME_config.py beside its loop), so that no `mathrl CMD --help` imports torch
# (test_heavy_configs_are_known reads which Config modules would).
TORCH_FREE_HELP = ("study", "data show", "data stats", "model init", "pretrain", "sft", "ei", "orm train", "ppo",
                   "grpo", "rcrl", "backtranslate", "eval", "score")
HEAVY = ("torch", "transformers")


def _help_imports(argv: list[str]) -> list[str]:
    """The heavy modules ``mathrl ARGV`` has imported when it returns (run in a fresh interpreter)."""
    code = ("import contextlib, io, sys\n"
            "from mathrl.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    code = main({argv!r})\n"
            "assert code == 0 and out.getvalue(), (code, out.getvalue())\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("argv", [["--help"], ["--version"], *([*c.split(), "--help"] for c in TORCH_FREE_HELP)])
def test_help_and_version_import_no_torch(argv):
    assert _help_imports(argv) == []


def _imports_at_load(path: Path) -> set[str]:
    """The modules ``path`` imports when it is loaded: its imports outside function bodies, absolute names."""
    out, todo = set(), list(ast.parse(path.read_text(encoding="utf-8")).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.update(f"{node.module}.{a.name}" for a in node.names)
            out.add(node.module)
        todo.extend(ast.iter_child_nodes(node))
    return out


def test_every_command_has_a_torch_free_help():
    from mathrl.cli import COMMANDS

    assert set(TORCH_FREE_HELP) == set(COMMANDS)


def test_heavy_configs_are_known():
    # which commands' Config modules import torch or transformers when loaded (through mathrl's own imports):
    # exactly those not in TORCH_FREE_HELP (none). A Config that moves beside code needing torch fails here.
    from mathrl.cli import COMMANDS

    mods = modules()
    loads = {name: {m for m in _imports_at_load(path)} for name, path in mods.items()}

    def heavy(name: str, seen: set) -> bool:
        if name in seen:
            return False
        seen.add(name)
        found = loads[name]
        if any(m.split(".")[0] in HEAVY for m in found):
            return True
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        return any(heavy(m, seen) for m in (found & set(mods)) | (parents & set(mods)))

    heavy_commands = {c for c, spec in COMMANDS.items() if heavy(spec.config.split(":")[0], set())}
    assert heavy_commands == set(COMMANDS) - set(TORCH_FREE_HELP)


def test_the_readme_layout_names_every_module():
    readme = (SRC.parent / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("benchmarks/")]
    names = [p.name for p in (SRC / "mathrl").iterdir() if p.suffix == ".py" and p.name != "__init__.py"]
    names += [p.name + "/" for p in (SRC / "mathrl").iterdir() if (p / "__init__.py").is_file()]
    assert not [n for n in names if n not in layout], "README.md's Layout omits these modules"
