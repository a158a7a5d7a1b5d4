"""One PPO iteration, one EI round and one evaluation at the study's shapes, two source trees side by side.

    python benchmarks/iteration_ab.py --base OLD_CHECKOUT --new . --model SFT_MODEL [--repeats 3] [--threads 1]

Runs the command line of each tree (``PYTHONPATH=TREE/src python -m mathrl ...``; the flags below exist in both),
alternating the trees and flipping which goes first every repeat, and prints medians over repeats and their
ratios base / new. The shapes are the study's (``benchmarks/phases.py``): PPO 64 prompts x K=4, <= 96 new tokens,
sparse reward, value head, KL reference 0.05, GAE lambda 1, 2 epochs of 4 minibatches; an EI round of 512
questions x K=4 and its fine-tune; an evaluation of 200 test problems, greedy + 16 samples each. ``--new-flags``
are added to the new tree's training commands only (default ``--compile``; the old tree may not have them).

- PPO: each run does 4 iterations; ``ppo_iteration`` is the median of iterations 2-4 (``iteration_seconds`` in
  metrics.jsonl), ``ppo_first`` iteration 1 (with --compile it includes compiling the blocks).
- EI: one round; ``ei_round`` = its sampling + grading (``sample_seconds``) + fine-tune (``train_seconds``).
- eval: ``mathrl eval``'s wall time, model loading included (the same in both trees).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PPO = ["--iterations", "4", "--prompts", "64", "-k", "4", "--max-new-tokens", "96", "--lam", "1.0", "--kl-coef",
       "0.05", "--eval-size", "0", "--checkpoint-every", "100"]
EI = ["--rounds", "1", "--questions", "512", "-k", "4", "--max-new-tokens", "96", "--eval-size", "0",
      "--patience", "0"]
EVAL = ["--split", "test", "-n", "200", "-k", "16", "--max-new-tokens", "96"]


def mathrl(tree: str, argv: list[str], threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve() / "src")}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mathrl", *argv, "--threads", str(threads), "--device", "cpu"],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{tree}: mathrl {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def one(tree: str, model: str, threads: int, extra: list[str]) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="mathrl-ab-"))
    mathrl(tree, ["ppo", "--model", model, "--out", str(out / "ppo"), *PPO, *extra], threads)
    its = [r["iteration_seconds"] for r in records(out / "ppo") if "iteration_seconds" in r]
    mathrl(tree, ["ei", "--model", model, "--out", str(out / "ei"), *EI, *extra], threads)
    rnd = [r for r in records(out / "ei") if "train_seconds" in r or "sample_seconds" in r]
    ei = sum(r.get("sample_seconds", 0) + r.get("train_seconds", 0) for r in rnd)
    ev = mathrl(tree, ["eval", "--model", model, *EVAL], threads)
    return {"ppo_first": its[0], "ppo_iteration": statistics.median(its[1:]), "ei_round": ei, "eval": ev}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the old source tree (a checkout)")
    ap.add_argument("--new", default=".", help="the new source tree")
    ap.add_argument("--model", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-flags", default="--compile", help="flags for the new tree's training commands")
    args = ap.parse_args()
    got: dict[str, list[dict]] = {"base": [], "new": []}
    for rep in range(args.repeats):
        order = ["base", "new"] if rep % 2 == 0 else ["new", "base"]
        for side in order:
            tree = args.base if side == "base" else args.new
            got[side].append(one(tree, args.model, args.threads, args.new_flags.split() if side == "new" else []))
            print(f"repeat {rep + 1} {side}: " + ", ".join(f"{k} {v:.2f}s" for k, v in got[side][-1].items()),
                  flush=True)
    print(f"\n{'phase':14s} {'base s':>8s} {'new s':>8s} {'base/new':>9s}")
    for name in got["base"][0]:
        b = statistics.median(r[name] for r in got["base"])
        n = statistics.median(r[name] for r in got["new"])
        print(f"{name:14s} {b:8.2f} {n:8.2f} {b / n:9.2f}")
        print(f"speedup_{name}={b / n:.2f}")


if __name__ == "__main__":
    main()
