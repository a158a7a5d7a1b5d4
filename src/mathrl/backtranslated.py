"""Backtranslated pairs in a fine-tuning set: ``sft`` and ``ei`` with ``--backtranslated PATH
--backtranslated-ratio R`` (``settings.Backtranslated``) add synthetic (question, solution) pairs that ``mathrl
backtranslate`` wrote (``algorithms/backtranslate.py``) to the real examples they train on.

``read_pairs`` reads the file (the task's jsonl format, ``tasks/jsonl.py``) and checks each pair with the task
that will train on it; ``added_count`` is how many to add to ``n`` real examples; ``select_pairs`` picks them, a
pure function of the seed and the count, so a resumed run picks the same ones and a larger count extends a smaller
one's pick (EI's D_i grows round after round, and so does its share of pairs). Shared here because the two
algorithms never import each other.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

from mathrl.errors import UsageError
from mathrl.tasks.base import Problem
from mathrl.tasks.jsonl import read_rows


def read_pairs(task, path: str) -> list[Problem]:
    """The pairs of ``path`` as Problems of ``task`` (none for an empty file, said in one line). One line of error
    for a missing or malformed file and a pair whose own solution the task does not read as reaching its answer (pairs made for another task or
    answer format: ``task.grade`` of the pair's target)."""
    if getattr(task, "surface", "qa") != "qa":
        # synthetic prose targets are written from a problem's dependency graph, which a pair does not have
        raise UsageError(f"--backtranslated: the synthetic task's {task.surface} surface writes its targets from a "
                         "problem's graph, which backtranslated pairs lack (train a qa-surface model: an SFT one)")
    try:
        pairs = read_rows(path)
    except UsageError as e:
        raise UsageError(f"--backtranslated: {e}") from None
    if not pairs:
        # backtranslate keeps no pair when none survives its round trip (a weak forward model): said, not refused,
        # so that a study's ablation runs and reports it (its finding is then not testable)
        print(f"--backtranslated {path}: the file holds no pairs (none survived backtranslate's round trip): "
              "training on the real data alone", flush=True)
        return []
    for n, p in enumerate(pairs, 1):
        if not task.grade(p, task.target(p)).correct:
            raise UsageError(f"--backtranslated {path}: row {n}: task {task.name} does not read answer {p.answer} "
                             "from the pair's solution (pairs made for another task or answer format?)")
    return pairs


def added_count(n_real: int, ratio: float) -> int:
    """Backtranslated examples added to ``n_real`` real ones at ``ratio`` per real one: ratio x n_real rounded half
    up (0.5 x 7 = 3.5 -> 4; half up rather than Python's round, which rounds 2.5 to 2)."""
    return math.floor(ratio * n_real + 0.5)


def select_pairs(pairs: Sequence[Problem], n: int, seed: int) -> list[Problem]:
    """The first ``n`` pairs of one pass over ``pairs`` shuffled with ``seed``, the pass repeated in the same order
    when ``n`` exceeds the file (each pair then appears n // len or n // len + 1 times), so the ratio asked for
    is the ratio trained on rather than capped at what the file holds. Repeating one source to hold a mixing
    ratio is upsampling as in Edunov et al. 2018 ("Understanding back-translation at scale"), who upsample the
    real data against more synthetic data; here the synthetic side is the one repeated."""
    if n <= 0 or not pairs:  # an empty file (backtranslate kept none) adds nothing
        return []
    order = list(range(len(pairs)))
    random.Random(f"{seed}/backtranslated").shuffle(order)
    return [pairs[order[j % len(order)]] for j in range(n)]
