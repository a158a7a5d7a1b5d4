"""How much guessing pays on each synthetic level: the pass@k of a question-blind guesser that draws answers from
the train answers' frequencies (``metrics.guesser_pass_at_k``), and the share of multi-step problems.

    python benchmarks/guesser.py [--k 96]

Prints one line per level and ``default_guesser_pass_at_k=`` for the default level (the default
task keeps it < 0.2 at k = 96: answer-only pass@96 above that floor says something about reasoning).
"""

from __future__ import annotations

import argparse

from mathrl.metrics import guesser_pass_at_k
from mathrl.tasks import load_task
from mathrl.tasks.synthetic import DEFAULT_LEVEL, LEVELS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=96)
    args = ap.parse_args()
    for level in sorted(LEVELS):
        task = load_task("synthetic", level=level)
        train = [p.answer for p in task.problems("train")]
        test = task.problems("test")
        answers = [p.answer for p in test]
        g, g1 = guesser_pass_at_k(train, answers, args.k), guesser_pass_at_k(train, answers, 1)
        multi = sum(p.difficulty > 1 for p in test) / len(test)
        mark = " (default)" if level == DEFAULT_LEVEL else ""
        print(f"level {level}{mark}: guesser pass@{args.k} {g:.3f}, pass@1 {g1:.4f}, {len(set(train))} distinct "
              f"train answers, multi-step problems {multi:.2f}")
        if level == DEFAULT_LEVEL:
            default = g
    print(f"default_guesser_pass_at_k={default:.3f}")


if __name__ == "__main__":
    main()
