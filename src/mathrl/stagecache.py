"""Whether a study stage's result on disk is current: computed by its command from what it reads now.

A finished stage leaves ``stage.json``: its command, its wall time, a run ``id`` (new each time the stage runs) and
its ``inputs``: the ``id`` of each stage it needs, and for each file or directory its command names outside the
study (a user's model, data directory or prompt template) the relative path, size and modification time of every
file in it. A stage is current when its command (``comparable``: without the flags that do not change a result)
and its inputs are what they were when it ran, and every stage it needs is current too. So a stage whose command
changed runs again, and so does everything downstream of it (its run id changed): an evaluation re-runs when the
model it evaluates, or the reward model it reranks with, was trained again, even though its own command names the
same path. The study runs a stage that is not current, and the report reads only current stages.

The code is an input too (``code_fingerprint``): mathrl's Python sources as parsed (comments and docstrings
left out, so a change of wording keeps the cache) and the versions of torch and transformers. A study continued
with other code runs its stages again; the stages it kept were computed by the code that renders the report.
The modules that only the study's own process runs (``STUDY_SIDE``: planning the stages, this cache, the findings
and the report) are left out: no stage command imports them, so a new verdict rule or report wording re-renders
the report from the same stages; what they decide about a stage reaches it through its command line.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import uuid
from importlib import metadata
from pathlib import Path

# flags whose value is a path a stage reads (its other paths are stages' outputs, covered by their run ids)
_PATH_FLAGS = ("--model", "--data-dir", "--prompt-template", "--orm", "--sorm", "--tokenizer")


def comparable(command: list[str]) -> list[str]:
    """A stage command without the flags that do not change its result (threads, output, resume)."""
    out, skip = [], False
    for a in command:
        if skip:
            skip = False
        elif a in ("--threads", "--out"):
            skip = True
        elif a != "--resume":
            out.append(a)
    return out


def read_json(path: Path):
    """A JSON file a stage wrote (None: missing, or cut by an interruption)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def record(stage_dir: Path) -> dict | None:
    """The stage's ``stage.json`` (None: it has not finished, or the file is unreadable)."""
    rec = read_json(stage_dir / "stage.json")
    return rec if isinstance(rec, dict) else None


def inputs(stage, root: Path, by_name: dict) -> dict:
    """What ``stage`` (a ``study.Stage``) reads besides its command, as it is now: each needed stage's run id
    (None when it has not run), a fingerprint of each path outside ``root`` that its command names, and the code
    that runs it (``code_fingerprint``)."""
    ups = {}
    for name in stage.needs:
        if name in by_name:
            rec = record(by_name[name].dir(root))
            ups[name] = rec.get("id") if rec else None
    files = {}
    root = root.resolve()
    for flag, value in zip(stage.command, stage.command[1:]):
        path = Path(value)
        if flag in _PATH_FLAGS and path.exists() and root not in path.resolve().parents:
            files[value] = _fingerprint(path)
    return {"stages": ups, "files": files, "code": code_fingerprint()}


# mathrl's modules that run only in the study's process, never in a stage's command (tests/test_study.py checks
# this against the imports, at any depth, of every command but the study): the grid and budgets (they reach a stage
# as its command line), the study's loop, this cache, the sweep's table, the findings, their statistics and the
# report. The launch layout the study chooses (threads, pretraining's ranks) changes results at the level of
# float rounding only, like ``--threads``, and is not an input.
STUDY_SIDE = ("budgets", "findings", "grid", "render", "report", "stagecache", "stats", "study", "studydata", "sweep")


@functools.lru_cache(maxsize=1)
def code_fingerprint(package: Path = Path(__file__).parent) -> str:
    """md5 of what computes a stage's result besides its command and inputs: every module of mathrl that a stage
    command can run (all but ``STUDY_SIDE``), as parsed (``ast.dump``: comments, docstrings and formatting left
    out), and the installed versions of torch and transformers. Computed once per process (0.2-0.5 s on the
    development machine). ``package``: mathrl's own directory (another is for tests)."""
    h = hashlib.md5()
    for name in ("torch", "transformers"):
        try:
            h.update(f"{name} {metadata.version(name)}\n".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{name} missing\n".encode())
    skip = {package / f"{name}.py" for name in STUDY_SIDE}
    for path in sorted(p for p in package.rglob("*.py") if p not in skip):
        h.update(path.relative_to(package).as_posix().encode())
        h.update(parsed(path.read_text(encoding="utf-8")).encode())
    return h.hexdigest()


def parsed(source: str) -> str:
    """A module's code as ``ast.dump`` shows it, its docstrings dropped: comments and formatting never reach the
    tree, so two sources that differ only in those give the same string."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _fingerprint(path: Path) -> list:
    """[relative path, size, modification time (ns)] of every file under ``path`` (or of the file itself)."""
    if path.is_file():
        st = path.stat()
        return [[".", st.st_size, st.st_mtime_ns]]
    out = []
    for dirpath, _, names in os.walk(path):
        for name in names:
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                continue  # a file removed while we walk: it is not read either
            out.append([str(p.relative_to(path)), st.st_size, st.st_mtime_ns])
    return sorted(out)


def finish(stage_dir: Path, command: list[str], seconds: float, stage_inputs: dict) -> None:
    """Write ``stage.json`` for a stage that just ran: with a new run id, so what needs it knows it changed."""
    rec = {"command": command, "seconds": round(seconds, 1), "id": uuid.uuid4().hex, "inputs": stage_inputs}
    (stage_dir / "stage.json").write_text(json.dumps(rec, indent=1))


def is_current(stage, root: Path, by_name: dict, memo: dict | None = None) -> bool:
    """True when ``stage``'s result on disk is current (module docstring). ``by_name``: the plan's stages by
    name (a need outside it, e.g. a skipped pretrain stage, is not checked)."""
    memo = {} if memo is None else memo
    if stage.name not in memo:
        rec = record(stage.dir(root))
        memo[stage.name] = bool(
            rec and comparable(list(rec.get("command", []))[1:]) == comparable(stage.command)
            and rec.get("inputs") == inputs(stage, root, by_name)
            and all(is_current(by_name[n], root, by_name, memo) for n in stage.needs if n in by_name))
    return memo[stage.name]
