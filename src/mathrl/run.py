"""What every command does before and after its loop: run directory, device, threads, model metadata.

``mathrl.json`` beside a model's weights records what mathrl knows about it: the task it was trained for (so
``mathrl eval --model DIR`` needs no --task), the stage that produced it, and how many few-shot examples its
prompts need (2 for the pretrained checkpoint, 0 after SFT).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from mathrl import distributed
from mathrl.checkpoint import list_checkpoints
from mathrl.errors import UsageError


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


def read_meta(model_dir: str | os.PathLike) -> dict:
    p = Path(model_dir) / "mathrl.json"
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
