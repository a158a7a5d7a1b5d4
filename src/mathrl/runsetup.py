"""Run setup, in one place: what every command does before and after its loop (run directory, device, threads,
seeds and RNG state, the task recorded with a model and its few-shot examples, model metadata).

``mathrl.json`` beside a model's weights records what mathrl knows about it: the task it was trained for (so
``mathrl eval --model DIR`` needs no --task), the stage that produced it, and how many few-shot examples its
prompts need (2 for the pretrained checkpoint, 0 after SFT).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mathrl import distributed
from mathrl.checkpoint import list_checkpoints
from mathrl.errors import UsageError
from mathrl.tasks import recorded_level, task_from_options


def prepare_run_dir(out: str, resume: bool) -> Path:
    """Create the run directory; refuse to overwrite a run that has checkpoints unless resuming."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if not resume and list_checkpoints(path):
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not path.exists():
        raise UsageError(f"--resume: no run at {out}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to {out}: {e.strerror or e}") from None
    return path


def resolve_device(device: str) -> str:
    if device in ("", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise UsageError(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)")
    return distributed.setup(device)  # under torchrun: join the process group, one GPU per rank


def read_meta(model: str | os.PathLike) -> dict:
    """What mathrl.json beside a model's weights records ({} when there is none). ``model``: a directory or a
    hub id in the local cache."""
    from mathrl.models import model_dir

    try:
        p = model_dir(model) / "mathrl.json"
    except UsageError:
        return {}
    if not p.is_file():
        return {}
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def write_meta(model_dir: str | os.PathLike, **meta) -> None:
    if not distributed.is_main():
        return
    Path(model_dir, "mathrl.json").write_text(json.dumps(meta, indent=1))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def task_for_model(model_dir: str, task: str, level, data_dir, extract, fields: dict | None = None):
    """The task a command should use: explicit options, else those recorded with the model. For a model mathrl
    did not train (no task recorded), gsm8k/svamp answers are read with flexible extraction unless --extract says
    otherwise (such a model has no reason to write mathrl's '#### N'), and the choice is printed."""
    from mathrl.models import model_dir as local_dir

    # resolved once: a clear error for a missing directory or an uncached hub id
    meta = read_meta(local_dir(model_dir)).get("task", {})
    name = task or meta.get("name")
    if not name:
        raise UsageError(f"{model_dir} records no task; pass --task")
    if name == "synthetic" and level is None:
        level = recorded_level(meta)
    if name != "synthetic" and extract is None and meta.get("name") == name:
        extract = meta.get("extract")
    elif name != "synthetic" and extract is None and not meta:
        extract = "flexible"
        print(f"{model_dir}: no task recorded with this model; {name} answers read with --extract flexible (the last "
              "number; pass --extract strict for '#### N')")
    # the surface (synthetic: qa or prose) a model was trained to write is part of its task
    surface = meta.get("surface") if name == "synthetic" and meta.get("name") == name else None
    if name.startswith("jsonl:") and meta.get("name") == name and not any((fields or {}).values()):
        fields = {k: meta.get(k) for k in ("question_field", "answer_field", "solution_field")}
    return task_from_options(name, level=level, data_dir=data_dir, extract=extract, surface=surface, fields=fields)


def few_shot_examples(task, model_dir: str, shots: int):
    if shots < 0:
        shots = int(read_meta(model_dir).get("shots", 0))
    return task.problems("train")[:shots]


# ----------------------------------------------------------------------------------------------------------
# Threads, seeds and RNG state


def default_threads() -> int:
    """The cores this process may use (its CPU affinity mask, as a scheduler or ``taskset`` sets it).

    Not a sample of idle time: measured over a moment, a package download in the background made a whole study
    run on one thread (docs/results.md, 2026-12-01). A busy neighbour slows the run; it does not change the
    plan of the run."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def setup_threads(threads: int) -> int:
    n = threads if threads > 0 else default_threads()
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class RunContext:
    """Where a training run writes (``dir``) and what it runs on."""

    dir: Path
    device: str
    threads: int


def start_run(out: str, resume: bool, run) -> RunContext:
    """The first lines of every training command: the run directory (refusing to overwrite a run unless
    resuming), torch threads, the device (joining the process group under torchrun), the seeds."""
    run_dir = prepare_run_dir(out, resume)
    threads = setup_threads(run.threads)
    device = resolve_device(run.device)
    seed_everything(run.seed)
    return RunContext(run_dir, device, threads)


def task_of(model_dir: str, data):
    """``task_for_model`` with a ``settings.Data`` group."""
    return task_for_model(model_dir, data.task, data.level, data.data_dir, data.extract, data.fields())
