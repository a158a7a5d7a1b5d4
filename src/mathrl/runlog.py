"""Run logging: ``config.yaml`` (the run's settings), ``metrics.jsonl`` (one JSON object per logged step,
always), the experiment trackers of ``--report-to`` (TensorBoard event files in RUN/tb, Weights & Biases, trackio),
progress bars.

On resume the log is cut back to the resumed step, so a resumed run's metrics.jsonl reads like an
uninterrupted one.

Trackers get every numeric metric of each metrics.jsonl record at its step (TensorBoard the finite ones), not
``time`` (each keeps its own clock). Weights & Biases and trackio are optional extras, used through their own
packages (``pip install "mathrl[wandb]"`` / ``"mathrl[trackio]"``) and configured by their own environment
(``WANDB_MODE=offline``, ``WANDB_PROJECT``, ``WANDB_DIR``, ``TRACKIO_DIR``...); both get the run's config
(RUN/config.yaml) and provenance once, at the start. A W&B run writes under RUN/wandb unless ``$WANDB_DIR`` says
otherwise; trackio keeps its local store (``$TRACKIO_DIR``, else ``$HF_HOME/trackio``). Both runs are named after
the run directory in project ``mathrl`` (``$WANDB_PROJECT`` overrides W&B's); a resumed run continues its W&B run
(its id is kept in RUN/trackers.json) and its trackio run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from mathrl import distributed
from mathrl.config import save as save_config, to_dict
from mathrl.errors import UsageError
from mathrl.plots import metrics_vs_x
from mathrl.settings import parse_report_to

PROJECT = "mathrl"


def provenance() -> dict:
    """What produced a run: the command line, Python, the platform, the main packages' versions, the git commit of
    the source (when it is a checkout)."""
    import importlib.metadata as md

    out = {"command": " ".join(sys.argv), "python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("mathrl", "torch", "transformers", "tokenizers", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=src, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _start_wandb(run_dir: Path, config: dict, resuming: bool):
    import wandb

    ids_path = run_dir / "trackers.json"
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    kwargs = {"project": os.environ.get("WANDB_PROJECT") or PROJECT, "name": run_dir.resolve().name,
              "config": config}
    if not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = str(run_dir)  # RUN/wandb/ beside the run's other logs
    if resuming and ids.get("wandb"):
        kwargs.update(id=ids["wandb"], resume="allow")
    try:
        run = wandb.init(**kwargs)
    except Exception as e:  # noqa: BLE001 - not logged in, no network while online...: one line, the tracker's word
        raise UsageError(f"--report-to wandb: {_first_line(e)} (WANDB_MODE=offline logs without an account)") from None
    ids_path.write_text(json.dumps({**ids, "wandb": run.id}))
    return run


def _start_trackio(run_dir: Path, config: dict, resuming: bool):
    import trackio

    try:
        return trackio.init(project=PROJECT, name=run_dir.resolve().name, config=config,
                            resume="allow" if resuming else "never")
    except Exception as e:  # noqa: BLE001 - as above
        raise UsageError(f"--report-to trackio: {_first_line(e)}") from None


class RunLogger:
    """metrics.jsonl, and the trackers the run's config names (``cfg.run.report_to``, a ``settings.Run``); the
    trackers also get the config itself (its flat flag names, as in RUN/config.yaml) and the run's provenance."""

    def __init__(self, run_dir: Path, cfg, resume_step: int | None = None):
        self.active = distributed.is_main()  # under torchrun, rank 0 logs for all
        self.tb = self.wandb = self.trackio = None
        if not self.active:
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # written here, once the run has started (a resume has read its checkpoint back): a run that fails
        # before, a --resume with settings its checkpoint does not fit, leaves the directory's record as it was
        save_config(cfg, self.run_dir / "config.yaml")
        self.path = self.run_dir / "metrics.jsonl"
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _step_of(ln) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self.start = time.time()
        trackers = parse_report_to(cfg.run.report_to)
        if "tensorboard" in trackers:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
            except ImportError:  # pragma: no cover - tensorboard is a dependency, but stay usable without it
                self.tb = None
        if "wandb" in trackers or "trackio" in trackers:
            # the config and provenance, once: each tracker shows them beside the run
            tracked = {**to_dict(cfg), "provenance": provenance()}
            if "wandb" in trackers:
                self.wandb = _start_wandb(self.run_dir, tracked, resume_step is not None)
            if "trackio" in trackers:
                self.trackio = _start_trackio(self.run_dir, tracked, resume_step is not None)

    def log(self, step: int, **metrics) -> None:
        if not self.active:
            return
        record = {"step": step, "time": round(time.time() - self.start, 2)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items()
                   if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in scalars.items():
                if math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.trackio is not None:
            self.trackio.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.trackio is not None:
            self.trackio.finish()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, ValueError, AttributeError):
        return 1 << 62


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v


def progress(total: int, desc: str, unit: str = "it", initial: int = 0, disable: bool | None = None) -> tqdm:
    """A progress bar with ETA on stderr (hidden when stderr is not a terminal unless MATHRL_PROGRESS=1)."""
    import os

    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("MATHRL_PROGRESS") == "1") or not distributed.is_main()
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, dynamic_ncols=True,
                leave=False, mininterval=1.0)


def curve_keys(k: int) -> tuple[str, ...]:
    """The metrics an RL run plots against rollouts consumed."""
    return ("maj@1", f"maj@{k}", f"pass@{k}", "maj@1_verified", f"pass@{k}_verified")


def write_history(run_dir: Path, history: list, k: int, title: str) -> None:
    """RUN/history.json (one record per iteration or round) and RUN/sample_complexity.png (the evaluated metrics
    against rollouts consumed)."""
    if not distributed.is_main():
        return
    (Path(run_dir) / "history.json").write_text(json.dumps(history, indent=1))
    keys = [key for key in curve_keys(k) if any(key in h for h in history)]
    if keys:
        metrics_vs_x(history, "rollouts", keys, Path(run_dir) / "sample_complexity.png",
                     f"{title}: metrics vs rollouts consumed", "rollouts consumed (training samples)")
