"""The study's statistics: paired intervals by a crossed bootstrap, and the verdict rules (pure functions).

**Data.** A *cell* is one model's (or one checkpoint's) per-question scores: an array of shape (S, Q), S seeds x
Q test questions, the same Q questions in the same order in every cell (the pairing). A cell measured once (the
shared SFT model, a one-seed reward variant) has S = 1 and is the same in every seed draw.

**Interval.** Seeds and questions are crossed (every seed answers every question), so the bootstrap resamples
both axes independently: each replicate draws S seed indices with replacement and Q question weights from a
multinomial (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat.). The same draw is applied to every cell,
so differences between cells are paired over questions and seeds: question difficulty, which dominates the
variance of one model's accuracy, cancels in a difference. A statistic is any function of the cells' means;
the 95% interval is the 2.5 / 97.5 percentile of its replicates. With S = 3 the seed axis is resampled from 3
values, which understates the seed variance by (S-1)/S; the report states the seeds behind every interval.

**Verdicts.** Each of the paper's claims maps to one rule on an interval [lo, hi] of a difference A - B with a
margin m > 0 (the smallest difference that matters, printed in the report):

- ``at_least`` (A >= B): holds if lo > -m; contradicted if hi < -m; otherwise inconclusive.
- ``raises`` (A > B): holds if lo > 0; contradicted if hi < m (any gain is smaller than m); otherwise
  inconclusive.
- ``similar`` (|A - B| small): holds if -m < lo and hi < m; contradicted if lo > m or hi < -m; otherwise
  inconclusive.
- ``little`` (A adds little over B): holds if hi < m; contradicted if lo > m; otherwise inconclusive.
- ``falls`` (A < B): ``raises`` of B over A.

``raises`` and ``falls`` are checked in that order: a significant change smaller than m (lo > 0 and hi < m)
holds — it is a change, if a small one.

A claim made of several comparisons (F1's chain, F2's halves) holds when all parts hold, is contradicted when
any part is contradicted, and is inconclusive otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive"

RULES = {
    "at_least": "A >= B holds if lo > -m, contradicted if hi < -m, else inconclusive",
    "raises": "A > B holds if lo > 0, else contradicted if hi < m, else inconclusive",
    "similar": "|A - B| < m holds if -m < lo and hi < m, contradicted if lo > m or hi < -m, else inconclusive",
    "little": "A - B < m holds if hi < m, contradicted if lo > m, else inconclusive",
    "falls": "A < B holds if hi < 0, else contradicted if lo > -m, else inconclusive",
}


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% bootstrap interval."""

    estimate: float
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"


def as_cell(x) -> np.ndarray:
    """(Q,) or (S, Q) scores -> float array (S, Q)."""
    a = np.asarray(x, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[0] == 0:
        raise ValueError(f"a cell needs shape (seeds, questions), got {a.shape}")
    return a


def bootstrap(cells: Mapping[str, np.ndarray], stat: Callable[[Mapping[str, float]], float],
              n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Crossed (seeds x questions) paired bootstrap of ``stat(means)``, where ``means[name]`` is a cell's mean
    over its seeds and questions. Cells have shape (S, Q) with one S > 1 shared by all multi-seed cells, or
    S = 1; every cell has the same Q.

    >>> iv = bootstrap({"a": [[1, 1, 0, 0]], "b": [[0, 1, 0, 0]]}, lambda m: m["a"] - m["b"], n_boot=200)
    >>> iv.estimate
    0.25
    """
    arrays = {k: as_cell(v) for k, v in cells.items()}
    q = {a.shape[1] for a in arrays.values()}
    seeds = {a.shape[0] for a in arrays.values()} - {1}
    if len(q) != 1:
        raise ValueError(f"cells must share their questions, got question counts {sorted(q)}")
    if len(seeds) > 1:
        raise ValueError(f"multi-seed cells must share their seeds, got seed counts {sorted(seeds)}")
    n_q = q.pop()
    n_s = seeds.pop() if seeds else 1
    estimate = float(stat({k: float(a.mean()) for k, a in arrays.items()}))
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_q, np.full(n_q, 1.0 / n_q), size=n_boot) / n_q  # (B, Q), rows sum to 1
    seed_idx = rng.integers(0, n_s, size=(n_boot, n_s))  # (B, S)
    reps = {}
    for k, a in arrays.items():
        per_seed = a @ weights.T  # (S, B): each seed's question-weighted mean in each replicate
        if a.shape[0] == 1:
            reps[k] = per_seed[0]
        else:
            reps[k] = np.take_along_axis(per_seed.T, seed_idx, axis=1).mean(axis=1)
    values = np.array([stat({k: float(r[b]) for k, r in reps.items()}) for b in range(n_boot)])
    finite = values[np.isfinite(values)]
    if finite.size < 0.99 * n_boot:
        # the statistic is undefined in over 1% of the replicates (a ratio whose denominator can be 0): dropping
        # them would bias the interval, so it is undefined (verdict: inconclusive)
        return Interval(estimate, float("nan"), float("nan"))
    values = finite
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return Interval(estimate, float(lo), float(hi))


def verdict(rule: str, iv: Interval, margin: float) -> str:
    """The verdict of one comparison (rules in the module docstring)."""
    lo, hi, m = iv.lo, iv.hi, margin
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return INCONCLUSIVE
    if rule == "at_least":
        return HOLDS if lo > -m else CONTRADICTED if hi < -m else INCONCLUSIVE
    if rule == "raises":
        return HOLDS if lo > 0 else CONTRADICTED if hi < m else INCONCLUSIVE
    if rule == "falls":
        return HOLDS if hi < 0 else CONTRADICTED if lo > -m else INCONCLUSIVE
    if rule == "similar":
        return HOLDS if -m < lo and hi < m else CONTRADICTED if lo > m or hi < -m else INCONCLUSIVE
    if rule == "little":
        return HOLDS if hi < m else CONTRADICTED if lo > m else INCONCLUSIVE
    raise ValueError(f"unknown rule {rule!r} (known: {', '.join(RULES)})")


def combine(verdicts: Sequence[str]) -> str:
    """All parts hold -> holds; any part contradicted -> contradicted; else inconclusive."""
    if not verdicts:
        return INCONCLUSIVE
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE
