"""Checkpoints that survive crashes: written atomically, verified on load, resumed exactly.

Layout of a run directory::

    RUN/checkpoints/step-0000120/model/        Hugging Face model + tokenizer (save_pretrained)
    RUN/checkpoints/step-0000120/state.pt      optimizer, schedule, RNG states, data position, algorithm state
    RUN/checkpoints/step-0000120/manifest.json size and sha256 of every file above (written last)
    RUN/model/                                 the final model, for the next command

A checkpoint is first written to a temporary directory (every file fsync'ed), its manifest last, and then
renamed into place; a crash at any moment leaves either the previous checkpoints or the new complete one. On
load, a checkpoint whose manifest is missing or whose files do not match it is reported and skipped in favour of
the previous good one. A write that fails (disk full, read-only directory) raises ``RunError`` naming the last
good checkpoint, which is left intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from mathrl import distributed
from mathrl.errors import RunError

HASH_LIMIT = 1 << 30  # files larger than this are checked by size only (hashing a 14 GB model costs minutes)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(root: Path) -> dict:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            size = p.stat().st_size
            files[str(p.relative_to(root))] = {"size": size, "sha256": _digest(p) if size <= HASH_LIMIT else None}
    return files


def save_model_dir(model, tokenizer, out: Path) -> None:
    """Write a Hugging Face model directory atomically (used for RUN/model). Rank 0 only under torchrun."""
    weights = distributed.full_state_dict(model)  # FSDP: every rank takes part in gathering the weights
    if not distributed.is_main():
        distributed.barrier()  # the other ranks wait until the model is on disk
        return
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        _manifest(tmp)  # fsyncs every file
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        shutil.rmtree(old, ignore_errors=True)
        distributed.barrier()
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise RunError(f"could not write model to {out}: {e.strerror or e}") from None


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep_last: int = 2) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep_last`` checkpoints. Rank 0 only under
    torchrun (every rank holds the same weights and state)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step-{step:07d}"
    weights = distributed.full_state_dict(model)
    if not distributed.is_main():
        distributed.barrier()
        return final
    tmp = ckpt_root / f".tmp-step-{step:07d}-{os.getpid()}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp / "model", state_dict=weights)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(state, tmp / "state.pt")
        manifest = {"step": step, "files": _manifest(tmp)}
        with open(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run_dir, quiet=True)
        where = f"; the last good checkpoint is {last}" if last else ""
        raise RunError(f"could not write checkpoint {final}: {e.strerror or e}{where}") from None
    if keep_last > 0:
        # keep the newest keep_last *complete* checkpoints: one without a manifest does not count as a good one
        complete = [p for p in list_checkpoints(run_dir) if (p / "manifest.json").is_file()]
        for old in complete[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


ROUND = 100_000  # checkpoint numbers of round-based runs (EI, RCRL): round x ROUND + step inside the round


def round_tag(round_: int, step: int = 0, done: bool = False) -> int:
    """The checkpoint number inside round ``round_`` (0-based) of a round-based run: its collection (step 0), its
    fine-tuning step ``step``, or ``done`` (learned; then evaluated, under the same number, the later kept)."""
    return (round_ + 1) * ROUND + (ROUND - 1 if done else step)


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint matches its manifest, else what is wrong."""
    mf = path / "manifest.json"
    if not mf.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return "unreadable manifest"
    for rel, info in files.items():
        p = path / rel
        if not p.is_file():
            return f"missing {rel}"
        if p.stat().st_size != info["size"]:
            return f"{rel} has the wrong size"
        if info.get("sha256") and _digest(p) != info["sha256"]:
            return f"{rel} is corrupted (checksum mismatch)"
    return None


def latest_checkpoint(run_dir: Path, quiet: bool = False) -> Path | None:
    """The newest checkpoint that passes verification; bad ones are reported (stderr) and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        if not quiet:
            print(f"warning: skipping checkpoint {path}: {problem}; using the previous one", file=sys.stderr)
    return None


def load_state(path: Path) -> dict:
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)


def load_weights_into(model, path: Path) -> None:
    """Load a checkpoint's model weights into an existing model (keeps its device and dtype)."""
    from safetensors.torch import load_file

    files = sorted((path / "model").glob("*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    if hasattr(model, "peft_config"):
        # a LoRA run's checkpoint holds the adapters alone (PEFT's save_pretrained); the base is the start model
        from peft import set_peft_model_state_dict

        unexpected = set_peft_model_state_dict(model, state).unexpected_keys
        if unexpected:
            raise RunError(f"checkpoint {path} does not match the adapters (unexpected {unexpected[:3]})")
        return
    missing, unexpected = distributed.load_full_state_dict(model, state)
    # tied embeddings are saved once: a missing lm_head.weight is expected when it is tied
    missing = [m for m in missing if not (m == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise RunError(f"checkpoint {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def divergence_error(run_dir: Path, step: int, what: str) -> RunError:
    """The error a run stops with when training diverges (NaN/inf loss, KL beyond its bound)."""
    last = latest_checkpoint(run_dir, quiet=True)
    return RunError(f"{what} at step {step}: training diverged; last good checkpoint: {last or 'none'}")
