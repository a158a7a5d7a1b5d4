"""Synthetic problem generation speed, per level, on one core.

The foundation issue asks for >= 10,000 problems/s on one core (pretraining corpora and RL prompt streams are
generated on the fly). Generates ``--n`` train problems per level (``iter_problems``: drawing, the test-pool
exclusion and the reference solution) and prints problems/s per level, then ``min_problems_per_s=<x>``; the exit
code is 1 when that is under ``--target``. Timed here, not in a test: the shared machines stall processes 3-30x.

    python benchmarks/generation.py
    python benchmarks/generation.py --n 50000 --target 10000
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

from mathrl.tasks.synthetic import LEVELS, iter_problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="problems per level")
    ap.add_argument("--repeats", type=int, default=3, help="runs per level; the fastest is reported")
    ap.add_argument("--target", type=float, default=10000.0, help="problems/s every level must reach")
    args = ap.parse_args()
    rates = {}
    for level in sorted(LEVELS):
        best = 0.0
        for r in range(args.repeats):
            stream = iter_problems(level, r, "train")
            start = time.perf_counter()
            for _ in itertools.islice(stream, args.n):
                pass
            best = max(best, args.n / (time.perf_counter() - start))
        rates[level] = best
        print(f"level {level}: {best:,.0f} problems/s")
    low = min(rates.values())
    print(f"min_problems_per_s={low:.0f}")
    sys.exit(0 if low >= args.target else 1)


if __name__ == "__main__":
    main()
