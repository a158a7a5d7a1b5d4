"""Did any stage of a finished study slow down part-way? Each stage's rate over time, from its own logs.

    python benchmarks/stage_rates.py runs/study [--window 60] [--below 0.8]

A stage that shares the machine with another process, or whose threads stop running in step, slows down while
that lasts; a stage that stays slow long after (as a two-thread pretraining once did, at half its rate for the
rest of the run) is what this looks for. For every stage with a per-step or per-iteration log it prints the rate
of its first ``--window`` seconds, the lowest rate over any ``--window`` seconds, and the longest stretch during
which the windowed rate stayed below ``--below`` x the first window's rate.

What counts as the rate, from each stage's ``metrics.jsonl`` (its own clock, ``time``, in seconds):
- pretrain, SFT, continued SFT, the reward models: optimizer steps per second between logged steps (a step has a
  fixed batch, so steps/s is tokens/s up to the batch's length);
- PPO and GRPO: rollouts per second of ``iteration_seconds`` (sampling + learning, without the evaluations);
- Expert Iteration and RCRL: fine-tuning steps per second between the lines of their ``fine_tune.jsonl`` (every 20
  steps, within a round; their sampling is ~10% of an EI round and logs one number per round); an EI run from
  before that log, per round: ``train_steps`` / ``train_seconds``.
The evaluations log no rate (each takes under a minute): they are listed without one. A stage shorter than two
windows is reported with its overall rate only.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Segment:
    """``work`` units done in ``seconds`` of the stage's own time, ending at ``end`` (seconds since its start)."""

    end: float
    seconds: float
    work: float


def segments(records: list[dict], fine_tune: list[dict] | None = None) -> tuple[str, list[Segment]]:
    """(unit, segments) of one stage's metrics records (and its ``fine_tune.jsonl`` lines, if it has them); an
    empty list where the logs have no rate to read."""
    if fine_tune:  # EI, RCRL: between lines of the same round (the time between rounds samples and evaluates)
        t0 = fine_tune[0]["time"]
        return "fine-tuning steps/s", [Segment(b["time"] - t0, b["time"] - a["time"], b["step"] - a["step"])
                                       for a, b in zip(fine_tune, fine_tune[1:])
                                       if a["round"] == b["round"] and b["time"] > a["time"]]
    if any("iteration_seconds" in r for r in records):  # PPO, GRPO
        rows = [r for r in records if "iteration_seconds" in r]
        prev = [0] + [r["rollouts"] for r in rows[:-1]]
        return "rollouts/s", [Segment(r["time"], r["iteration_seconds"], r["rollouts"] - p)
                              for r, p in zip(rows, prev)]
    if any("train_steps" in r for r in records):  # Expert Iteration
        rows = [r for r in records if r.get("train_seconds") and r.get("train_steps")]
        return "fine-tuning steps/s", [Segment(r["time"], r["train_seconds"], r["train_steps"]) for r in rows]
    rows = [r for r in records if "step" in r and "loss" in r]
    if len(rows) < 3:
        return "", []
    # between consecutive records; the first record's time includes start-up (loading, compiling): skipped
    return "steps/s", [Segment(b["time"], b["time"] - a["time"], b["step"] - a["step"])
                       for a, b in zip(rows, rows[1:]) if b["time"] > a["time"] and b["step"] > a["step"]]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def windowed(segs: list[Segment], window: float) -> list[tuple[float, float]]:
    """(end, rate) over the last segments that add up to at least ``window`` seconds, at each segment's end."""
    out = []
    for i in range(len(segs)):
        seconds = work = 0.0
        j = i
        while j >= 0 and seconds < window:
            seconds, work = seconds + segs[j].seconds, work + segs[j].work
            j -= 1
        if seconds >= window:
            out.append((segs[i].end, work / seconds))
    return out


def first_window(segs: list[Segment], window: float) -> float | None:
    seconds = work = 0.0
    for s in segs:
        seconds, work = seconds + s.seconds, work + s.work
        if seconds >= window:
            return work / seconds
    return None


def longest_below(series: list[tuple[float, float]], threshold: float) -> float:
    """The longest stretch (seconds of the stage's clock) over which every windowed rate was below ``threshold``."""
    best, start, prev_end = 0.0, None, None
    for end, rate in series:
        if rate >= threshold:
            start = None
        else:
            if start is None:  # the stretch began after the last window at or above the threshold
                start = end if prev_end is None else prev_end
            best = max(best, end - start)
        prev_end = end
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="a study directory (shared/ and seed-N/ stage directories)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds per rate window")
    ap.add_argument("--below", type=float, default=0.8, help="report stretches below this fraction of the first window")
    args = ap.parse_args()
    print(f"| stage | seconds | unit | first {args.window:.0f} s | median | lowest {args.window:.0f} s "
          f"| longest below {args.below:.2f} x first (s) |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for stage_dir in sorted(p.parent for p in args.study.glob("*/*/stage.json")):
        name = f"{stage_dir.parent.name}/{stage_dir.name}"
        seconds = json.loads((stage_dir / "stage.json").read_text()).get("seconds", float("nan"))
        unit, segs = segments(read_jsonl(stage_dir / "metrics.jsonl"), read_jsonl(stage_dir / "fine_tune.jsonl"))
        series = windowed(segs, args.window)
        first = first_window(segs, args.window)
        if not segs:
            print(f"| {name} | {seconds:.0f} | (no rate logged) | | | | |")
            continue
        if first is None or len(series) < 2:
            overall = sum(s.work for s in segs) / sum(s.seconds for s in segs)
            print(f"| {name} | {seconds:.0f} | {unit} | (shorter than two windows: {overall:.3g} overall) | | | |")
            continue
        rates = sorted(r for _, r in series)
        below = longest_below(series, args.below * first)
        worst = max(worst, below)
        print(f"| {name} | {seconds:.0f} | {unit} | {first:.3g} | {rates[len(rates) // 2]:.3g} | {rates[0]:.3g} "
              f"| {below:.0f} |")
    print(f"longest_stretch_below={worst:.0f}")


if __name__ == "__main__":
    main()
