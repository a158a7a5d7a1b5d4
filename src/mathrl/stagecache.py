"""Whether a study stage's result on disk is current: computed by its command from what it reads now.

A finished stage leaves ``stage.json``: its command, its wall time, a run ``id`` (new each time the stage runs) and
its ``inputs``: the ``id`` of each stage it needs, and for each file or directory its command names outside the
study (a user's model, data directory or prompt template) the relative path, size and modification time of every
file in it. A stage is current when its command (``comparable``: without the flags that do not change a result)
and its inputs are what they were when it ran, and every stage it needs is current too. So a stage whose command
changed runs again, and so does everything downstream of it (its run id changed): an evaluation re-runs when the
model it evaluates, or the reward model it reranks with, was trained again, even though its own command names the
same path. The study runs a stage that is not current, and the report reads only current stages.

Not covered: mathrl's own code. A study continued with another version of mathrl reuses what the earlier one
computed; the report's provenance names the commit that rendered it.
"""

from __future__ import annotations

import json
import os
import uuid
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
    (None when it has not run) and a fingerprint of each path outside ``root`` that its command names."""
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
    return {"stages": ups, "files": files}


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
