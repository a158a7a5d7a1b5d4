"""The study's statistics: paired intervals with a small-sample seed correction, and the verdict rules (pure
functions).

**Data.** A *cell* is one model's (or one checkpoint's) per-question scores: an array of shape (S, Q), S seeds x
Q test questions, the same Q questions in the same order in every cell (the pairing). A cell measured once (the
shared SFT model, a one-seed reward variant) has S = 1 and is the same for every seed.

**Interval.** A statistic is any function of the cells' means written with numpy arithmetic (it is called once on
floats for the estimate and once on arrays of replicates). Its variance has two parts:

- *questions*: a paired bootstrap over the test questions of the seed-averaged cells (each replicate draws Q
  questions with replacement, the same draw for every cell, so question difficulty, which dominates the variance
  of one model's accuracy, cancels in a difference): ``v_q``, the variance of the replicates;
- *seeds*: the statistic computed on each seed alone (multi-seed cells at that seed, shared cells whole), d_1..d_S;
  their sample variance over S gives ``v_s = s_d^2 / S``, the variance of their mean.

The 95% interval is estimate +- sqrt((z * sqrt(v_q))^2 + (t * sqrt(v_s))^2): each part's half-width at its own
quantile, added in quadrature, z = 1.96 for the questions (Q ~ 1,000) and t the 97.5% quantile of Student's t with
S - 1 degrees of freedom for the seeds (4.30 with 3 seeds, 2.78 with 5): the seed variance is estimated from S
values, and a normal quantile on it does not cover. Resampling 3 seed values with normal percentiles (the
earlier crossed bootstrap) covered 0.93 / 0.88 at seed sd 0.017 / 0.025 in a simulation of the study's design;
one t on the pooled variance with Welch-Satterthwaite degrees of freedom covered 0.93-0.96 (below 0.95 with 3
seeds on both arms); this one 0.955-0.98. ``s_d`` includes the per-question noise of each seed, which ``v_q``
counts once more: the interval errs on the wide side. ``tests/test_stats.py`` checks its coverage by simulating the study's design (1,000
questions, 3 and 5 seeds, seed sd 0.017 and 0.025). With S = 1 the interval is the bootstrap's percentile interval
and has **no seed variance**: ``Interval.seeds`` says so and the report prints it beside every such interval.

**Verdicts.** Each of the paper's claims maps to one rule on an interval [lo, hi] of a difference A - B with a
margin m > 0 (the smallest difference that matters, fixed per claim before the data, printed in the report):

- ``at_least`` (A >= B): holds if lo > -m; contradicted if hi < -m; otherwise inconclusive.
- ``raises`` (A > B): holds if lo > 0; contradicted if hi < m (any gain is smaller than m); otherwise
  inconclusive.
- ``similar`` (|A - B| small): holds if -m < lo and hi < m; contradicted if lo > m or hi < -m; otherwise
  inconclusive.
- ``little`` (A - B stays below m; one-sided, for a claim that bounds a quantity from above only: F5's remaining
  gap, F6's questions beyond SFT): holds if hi < m; contradicted if lo > m; otherwise inconclusive.
- ``falls`` (A < B): ``raises`` of B over A.

``raises`` and ``falls`` are checked in that order: a significant change smaller than m (lo > 0 and hi < m)
holds — it is a change, if a small one. ``similar`` can hold only when the half-width is below m
(``reachable``): the report says so where it is not, rather than widening m to the precision reached (a margin
that grows with the noise would let a noisier study call more things similar).

A fourth verdict, *not testable* (``NOT_TESTABLE``), is given by a claim's gate, never by a rule: the arm it is
about did not learn (its gain over its start is not significant), or a reward model it rests on ranks no better
than chance. A claim made of several comparisons (``combine``) is contradicted when any part is, holds when all
its parts hold, is not testable when a required part is, and is inconclusive otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import numpy as np

HOLDS, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE = "holds", "contradicted", "inconclusive", "not testable"

RULES = {
    "at_least": "A >= B holds if lo > -m, contradicted if hi < -m, else inconclusive",
    "raises": "A > B holds if lo > 0, else contradicted if hi < m, else inconclusive",
    "similar": "|A - B| < m holds if -m < lo and hi < m, contradicted if lo > m or hi < -m, else inconclusive",
    "little": "A - B < m holds if hi < m, contradicted if lo > m, else inconclusive (one-sided)",
    "falls": "A < B holds if hi < 0, else contradicted if lo > -m, else inconclusive",
}


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% interval; ``seeds`` behind it (1: the interval has no seed variance)."""

    estimate: float
    lo: float
    hi: float
    seeds: int = 1

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def seed_variance(self) -> bool:
        return self.seeds > 1

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


def _t_pdf(x: np.ndarray, df: float) -> np.ndarray:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The p quantile (p > 0.5) of Student's t with ``df`` > 0 degrees of freedom: bisection on its CDF,
    integrated by Simpson's rule (no scipy in the dependencies); df = inf gives the normal quantile.

    >>> round(t_quantile(0.975, 2.0), 3)
    4.303
    """
    if not 0.5 < p < 1 or not df > 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df > 0, got p={p}, df={df}")
    if math.isinf(df) or df > 1e7:
        df = 1e7  # the normal limit, to better than 1e-6

    def cdf_above_half(x: float) -> float:  # P(0 < T < x)
        grid = np.linspace(0.0, x, 4001)
        f = _t_pdf(grid, df)
        h = x / 4000
        return h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf_above_half(hi) < p - 0.5:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf_above_half(mid) < p - 0.5 else (lo, mid)
    return (lo + hi) / 2


def _weights(rng: np.random.Generator, n_boot: int, n_q: int) -> np.ndarray:
    """(B, Q) bootstrap weights: each row the counts of Q questions drawn with replacement, divided by Q."""
    idx = rng.integers(0, n_q, size=(n_boot, n_q)) + (np.arange(n_boot) * n_q)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n_q).reshape(n_boot, n_q) / n_q


def bootstrap(cells: Mapping[str, np.ndarray], stat: Callable[[Mapping], float], n_boot: int = 4000,
              seed: int = 0, level: float = 0.95) -> Interval:
    """The interval of ``stat(means)``, where ``means[name]`` is a cell's mean over its seeds and questions:
    a paired question bootstrap plus the t-based seed term of the module docstring. Cells have shape (S, Q) with
    one S > 1 shared by all multi-seed cells, or S = 1; every cell has the same Q. ``stat`` takes floats or
    arrays (numpy arithmetic).

    >>> iv = bootstrap({"a": [[1, 1, 0, 0]], "b": [[0, 1, 0, 0]]}, lambda m: m["a"] - m["b"], n_boot=200)
    >>> iv.estimate, iv.seeds
    (0.25, 1)
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
    weights = _weights(rng, n_boot, n_q)  # (B, Q)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.broadcast_to(np.asarray(stat({k: weights @ a.mean(axis=0) for k, a in arrays.items()}),
                                            dtype=float), (n_boot,))
    finite = values[np.isfinite(values)]
    if finite.size < 0.99 * n_boot or not math.isfinite(estimate):
        # the statistic is undefined in over 1% of the replicates (a ratio whose denominator can be 0): dropping
        # them would bias the interval, so it is undefined (verdict: inconclusive)
        return Interval(estimate, float("nan"), float("nan"), n_s)
    tail = (1 - level) / 2
    if n_s == 1:
        lo, hi = np.percentile(finite, [100 * tail, 100 * (1 - tail)])
        return Interval(estimate, float(lo), float(hi), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_seed = np.array([stat({k: float(a[s].mean() if a.shape[0] > 1 else a.mean()) for k, a in arrays.items()})
                             for s in range(n_s)], dtype=float)
    if not np.all(np.isfinite(per_seed)):
        return Interval(estimate, float("nan"), float("nan"), n_s)
    v_q = float(finite.var(ddof=1))
    v_s = float(per_seed.var(ddof=1)) / n_s
    # each part at its own quantile: the question part at the normal's (Q ~ 1,000), the seed part at Student's t
    # with S - 1 degrees of freedom; their half-widths add in quadrature
    half = math.hypot(t_quantile(1 - tail, math.inf) * math.sqrt(v_q), t_quantile(1 - tail, n_s - 1) * math.sqrt(v_s))
    return Interval(estimate, estimate - half, estimate + half, n_s)


def t_interval(xs: Sequence[float], level: float = 0.95) -> Interval:
    """The interval of the mean of ``xs``, one value per seed: mean +- t_{n-1} * sd / sqrt(n) (Student's t with
    n - 1 degrees of freedom, sd the sample standard deviation). One value has no seed variance and no interval
    (lo = hi = nan: its verdict is inconclusive). For per-seed quantities that have no per-question part, such as
    a run's rollouts to 90% of its plateau gain.

    >>> round(t_interval([1.0, 2.0, 3.0]).hi, 3)  # 2 + 4.303 * 1 / sqrt(3)
    4.484
    """
    a = np.asarray(xs, dtype=float)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"t_interval needs one or more finite values, got {list(xs)}")
    mean = float(a.mean())
    if a.size == 1:
        return Interval(mean, float("nan"), float("nan"), 1)
    half = t_quantile(1 - (1 - level) / 2, a.size - 1) * float(a.std(ddof=1)) / math.sqrt(a.size)
    return Interval(mean, mean - half, mean + half, int(a.size))


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


def reachable(rule: str, iv: Interval, margin: float) -> bool:
    """Whether the rule can hold at this interval's precision: ``similar`` needs the interval inside (-m, m), so a
    half-width below m; the other rules can hold at any width."""
    return rule != "similar" or iv.half_width < margin


def stable_verdict(rule: str, first: Interval, second: Interval, margin: float) -> tuple[str, bool]:
    """The verdict of a comparison decided twice, on two bootstrap seeds: (the verdict, whether both agree). A
    verdict that changes with the bootstrap's Monte-Carlo draw is not one the data decide: it is inconclusive."""
    a, b = verdict(rule, first, margin), verdict(rule, second, margin)
    return (a, True) if a == b else (INCONCLUSIVE, False)


def combine(verdicts: Sequence[str], required: Sequence[bool] | None = None) -> str:
    """A claim's verdict from its parts': any contradicted -> contradicted; else all hold -> holds; else a
    required part not testable -> not testable; else inconclusive. An optional part that is not testable is left
    out; no part left -> not testable. ``required``: one flag per verdict (default: all required)."""
    required = list(required) if required is not None else [True] * len(verdicts)
    kept = [(v, r) for v, r in zip(verdicts, required) if r or v != NOT_TESTABLE]
    if not kept:
        return NOT_TESTABLE
    vs = [v for v, _ in kept]
    if CONTRADICTED in vs:
        return CONTRADICTED
    if all(v == HOLDS for v in vs):
        return HOLDS
    return NOT_TESTABLE if NOT_TESTABLE in vs else INCONCLUSIVE
