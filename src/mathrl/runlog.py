"""Run logging: ``metrics.jsonl`` (one JSON object per logged step), tensorboard event files, progress bars.

On resume the log is cut back to the resumed step, so a resumed run's metrics.jsonl reads like an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from mathrl import distributed
from mathrl.plots import metrics_vs_x


class RunLogger:
    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.active = distributed.is_main()  # under torchrun, rank 0 logs for all
        if not self.active:
            self.tb = None
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _step_of(ln) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self.start = time.time()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
            except ImportError:  # pragma: no cover - tensorboard is a dependency, but stay usable without it
                self.tb = None

    def log(self, step: int, **metrics) -> None:
        if not self.active:
            return
        record = {"step": step, "time": round(time.time() - self.start, 2)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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
