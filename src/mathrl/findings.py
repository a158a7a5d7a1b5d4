"""The paper's findings, declared as data and tested on a study's records with paired 95% intervals.

Each finding of Havrilla et al. 2024 is a ``Claim``: its text and the comparisons that test it, each a difference
A - B of one metric between two ``Arm``s (a model's final evaluation, or a point of a run's in-run evaluations)
with a verdict rule and margin (``stats.RULES``). ``evaluate`` decides every claim the same way: the interval of
each comparison over the seeds and questions both arms share, its verdict (decided twice, on two bootstrap seeds:
a verdict that changes with the draw is inconclusive), and the claim's verdict combined from its parts
(``stats.combine``).

Every rule can come out either way, and a claim about an arm that did not learn says so instead of reading the
budget as the algorithm: an RL arm *learned* when its final maj@1 minus its start's is significantly above 0
(``learned``); a comparison whose arm did not learn is *not testable at this budget*, never contradicted. The
claims that need more than a table of comparisons (F3's rollouts to 90% of a dev plateau gain, F5's gap, F6's
learning half and the questions beyond SFT, F7's pairs of model sizes, F8's label-ratio gate) have a function of
their own beside the table.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from mathrl.grid import (
    BY_NAME,
    EI,
    EI_BACKTRANSLATED,
    EI_ORM,
    EI_PRETRAINED,
    PPO,
    PPO_BACKTRACK,
    PPO_DENSE,
    PPO_ORM,
    PPO_PLR,
    PPO_PRETRAINED,
    RCRL,
    RCRL_BALANCED,
    RCRL_DENSE,
    RCRL_PRETRAINED,
    SFT,
    SFT_MORE,
    SFT_MORE_BACKTRANSLATED,
    Run,
)
from mathrl.metrics import pass_at_k
from mathrl.plateau import dev_curve, plateaued, rollouts_to_fraction
from mathrl.settings import MODEL_SIZES
from mathrl.stats import (
    HOLDS,
    NOT_TESTABLE,
    Interval,
    bootstrap,
    combine,
    reachable,
    stable_verdict,
    t_interval,
    verdict,
)
from mathrl.studydata import Records, StudyData

# Margins (accuracy, absolute): the smallest difference that counts, fixed per claim before the data. 0.02 = 2
# points, the size of effects the paper reads as "similar" (its Table 1 rows within ~2 points); F3 compares
# sample complexities in log2 rollouts, "similar" within one doubling (the paper: EI and PPO both converge within
# ~60K samples; the log-spaced evaluation schedule doubles the rollouts between points, so a finer margin would
# be below the schedule's resolution); F5 is the paper's quantitative claim, a gap under 10 points after RL (GSM8K).
MARGIN = 0.02
F3_MARGIN = 1.0
F5_GAP = 0.10
# F7 counts distinct step-verified solutions per question among the final evaluation's K samples: a larger model
# "explores more" by at least one more distinct verified solution per question (the paper gives no number; at K=96
# SFT wrote ~20 distinct solutions per question in docs/results.md's studies, so 1 is ~5% of that)
F7_MARGIN = 1.0
# F8 is testable only where the natural ratio of good to bad labels is far from 1:1: a natural good fraction
# inside this range is near balanced already, and balancing would hardly change the data it compares
F8_NEAR_EVEN = (0.35, 0.65)
# sample complexity: the rollouts a run needs to reach this fraction of its gain over its start on its dev curve
# (``plateau.rollouts_to_fraction``); 0.9 rather than 1 because the best point of a plateau is its noisiest
FRACTION = 0.9
# the ORM's parts of F4 count only when it ranks a question's own samples better than chance: its held-out
# within-question AUC above 0.55 (the report.json carries a point estimate; 0.05 is about two standard errors of
# an AUC over a few hundred held-out questions)
ORM_MIN_AUC = 0.55
N_BOOT = 4000
BOOT_SEEDS = (0, 1)  # every verdict is decided on both; one that differs is inconclusive
# pass@k of F2 at a k where SFT is not saturated: the largest k of this ladder (<= the samples per question) at
# which SFT's (verified) pass@k is <= SATURATED
LADDER = (1, 2, 4, 8, 16, 32, 64, 96)
SATURATED = 0.9
PASS = "pass@K"  # a comparison's metric: pass@K at the K of its records, step-verified where the task checks steps
MAJ = "maj@K"  # majority vote over the K samples
PASS_UNSAT = "pass@k"  # pass@k at the k of ``unsaturated_k``
DISTINCT = "distinct_verified"  # distinct step-verified solutions per question among its K samples (F7)


@dataclass
class Part:
    """One comparison: ``label`` (what A - B is), its interval, the rule and margin, the seeds behind it.
    ``gate``: a check a claim rests on (did the arm learn? is the start live?), shown, not combined; ``required``:
    the claim needs it (an optional part that is not testable is left out); ``stable``: the verdict was the
    same on both bootstrap seeds."""

    label: str
    interval: Interval
    rule: str
    margin: float
    verdict: str
    seeds: int
    questions: int
    gate: bool = False
    required: bool = True
    stable: bool = True

    @property
    def reachable(self) -> bool:
        return reachable(self.rule, self.interval, self.margin)


@dataclass
class Finding:
    key: str
    claim: str
    verdict: str
    parts: list[Part] = field(default_factory=list)
    note: str = ""


def decide(parts: list[Part]) -> str:
    """A claim's verdict from its parts (gates left out: ``stats.combine``)."""
    ps = [p for p in parts if not p.gate]
    return combine([p.verdict for p in ps], [p.required for p in ps])


# ----------------------------------------------------------------------------------------------------------
# per-question scores and paired intervals


def _k_of(metric: str) -> int:
    return int(metric.split("@")[1].split("_")[0])


def _measured(records: Records, metric: str) -> Records:
    """The records a metric is measured on: every question for maj@1, those with >= k samples for pass@k,
    maj@k, rerank@k and solved@k, those that were sampled for distinct_verified."""
    if metric == DISTINCT:
        return [r for r in records if r.n]
    if metric.startswith(("pass@", "solved@", "rerank@")) or (metric.startswith("maj@") and _k_of(metric) > 1):
        return [r for r in records if r.n >= _k_of(metric)]
    return records


def samples_per_question(*record_lists: Records) -> int:
    """K of the evaluations behind these records: the fewest samples of a question that has any (0: greedy only)."""
    return min((r.n for records in record_lists for r in records if r.n), default=0)


def scores(records: Records, metric: str) -> list[float] | None:
    """Per-question scores of one evaluation: maj@1 (greedy), maj@1_verified, pass@k, pass@k_verified (the
    unbiased estimate per question), maj@k (the vote over exactly k samples), rerank@k (the reward model's top
    pick of exactly k samples), solved@k, solved@k_verified (any of the k samples correct), over the questions
    with >= k samples, distinct_verified (``DISTINCT``) over the sampled questions; None when not measured
    (records written before a field was recorded, or evaluated without a reward model, have none)."""
    rows = _measured(records, metric)
    if metric == DISTINCT:
        xs = [r.distinct_verified for r in rows]
        return None if not xs or any(x is None for x in xs) else [float(x) for x in xs]
    if metric in ("maj@1", "maj@1_verified"):
        xs = [r.greedy_correct if metric == "maj@1" else r.greedy_verified for r in rows]
        return None if not xs or any(x is None for x in xs) else [float(x) for x in xs]
    k = _k_of(metric)
    if metric.startswith(("maj@", "rerank@")):
        xs = [(r.maj if metric.startswith("maj@") else r.rerank) if r.n == k else None for r in rows]
        return None if not xs or any(x is None for x in xs) else [float(x) for x in xs]
    if metric.startswith(("pass@", "solved@")):
        cs = [r.c_verified if metric.endswith("_verified") else r.c for r in rows]
        if not rows or any(c is None for c in cs):
            return None
        if metric.startswith("solved@"):
            return [float(c > 0) if r.n == k else float("nan") for r, c in zip(rows, cs)]
        return [pass_at_k(r.n, c, k) for r, c in zip(rows, cs)]
    raise ValueError(f"no per-question scores for {metric!r}")


def _cell(by_seed: dict, metric: str, seeds: list) -> tuple[np.ndarray, list] | None:
    """(S, Q) scores of one model: its shared evaluation (S = 1) or one row per seed in ``seeds``."""
    if not by_seed:
        return None
    picked = [by_seed[None]] if None in by_seed else [by_seed[s] for s in seeds if s in by_seed]
    if not picked or (None not in by_seed and len(picked) != len(seeds)):
        return None
    rows = [scores(r, metric) for r in picked]
    ids = [[r.id for r in _measured(recs, metric)] for recs in picked]
    if any(x is None for x in rows) or any(i != ids[0] for i in ids) or not np.all(np.isfinite(rows)):
        return None
    return np.array(rows), ids[0]


def _seeds_of(*by_seeds: dict) -> list:
    """The seeds every multi-seed source has (shared sources do not constrain)."""
    sets = [set(b) for b in by_seeds if b and None not in b]
    return sorted(set.intersection(*sets)) if sets else [None]


def cells(sources: dict, metric: str) -> tuple[dict[str, np.ndarray], int, int] | None:
    """The (S, Q) cells of the named sources (each {seed: records}) over the seeds they share, paired on their
    questions; None if one is missing or they do not share their questions. Returns (cells, seeds, questions)."""
    seeds = _seeds_of(*sources.values())
    out, ids = {}, None
    for name, by_seed in sources.items():
        c = _cell(by_seed, metric, seeds)
        if c is None or (ids is not None and c[1] != ids):
            return None
        out[name], ids = c[0], c[1]
    return out, max(a.shape[0] for a in out.values()), len(ids)


def paired(sources: dict, metric: str, stat, n_boot: int = N_BOOT, seed: int = 0) -> tuple[Interval, int, int] | None:
    """The interval of ``stat(means)`` over the named sources (each {seed: records}); None if one is missing or
    they do not share their questions. Returns (interval, seeds, questions)."""
    got = cells(sources, metric)
    if got is None:
        return None
    cs, n_seeds, n_q = got
    return bootstrap(cs, stat, n_boot=n_boot, seed=seed), n_seeds, n_q


def metric_difference(by_seed: dict, a: str, b: str, n_boot: int = N_BOOT) -> tuple[Interval, int, int] | None:
    """The interval of metric ``a`` minus metric ``b`` of one model ({seed: records}), paired on its seeds and
    questions: two readings of the same samples, e.g. rerank@K - maj@K (the reward model's pick against the vote).
    None where either metric is missing or they cover other questions. Returns (interval, seeds, questions)."""
    seeds = _seeds_of(by_seed)
    got_a, got_b = _cell(by_seed, a, seeds), _cell(by_seed, b, seeds)
    if got_a is None or got_b is None or got_a[1] != got_b[1]:
        return None
    return bootstrap({"a": got_a[0], "b": got_b[0]}, diff("a", "b"), n_boot=n_boot), len(got_a[0]), len(got_a[1])


def from_cells(label: str, cs: dict, stat, rule: str, margin: float, n_q: int, **kw) -> Part:
    """A part decided on both bootstrap seeds (``stats.stable_verdict``)."""
    first, second = (bootstrap(cs, stat, n_boot=N_BOOT, seed=s) for s in BOOT_SEEDS)
    v, stable = stable_verdict(rule, first, second, margin)
    return Part(label, first, rule, margin, v, first.seeds, n_q, stable=stable, **kw)


def part(label: str, sources: dict, metric: str, stat, rule: str, margin: float, **kw) -> Part | None:
    got = cells(sources, metric)
    if got is None:
        return None
    return from_cells(label, got[0], stat, rule, margin, got[2], **kw)


def diff(a: str, b: str):
    return lambda m: m[a] - m[b]


def pass_metric(data: StudyData, k: int) -> str:
    return f"pass@{k}_verified" if data.verified else f"pass@{k}"


def final(data: StudyData, model: str) -> dict:
    """{seed: records} of a model's final evaluation ({} when it has none)."""
    e = data.evals.get(model)
    return e.records if e else {}


def curve_points(data: StudyData, run: str) -> dict[int, dict]:
    """{rollouts: {seed: records}} of a run's in-run evaluations (dev questions), at the rollout points every seed
    has; a seed that stopped at its plateau has its last point carried to its run's later points
    (``studydata.carry_forward``; ``RunResults.carried`` says which)."""
    by_seed = data.runs[run].curve if run in data.runs else {}
    if not by_seed:
        return {}
    common = set.intersection(*(set(p) for p in by_seed.values()))
    return {r: {s: pts[r] for s, pts in by_seed.items()} for r in sorted(common)}


@dataclass(frozen=True)
class SeedComplexity:
    """One seed of a run on its dev curve (``plateau.dev_curve`` of its history): the rollouts to FRACTION of its
    gain over its start (None: the curve never rose, the seed did not learn), where it stopped at its plateau
    (None: it reached its cap without one), and the rollouts it consumed."""

    to_fraction: float | None
    plateau_at: int | None
    rollouts: int


@dataclass(frozen=True)
class SampleComplexity:
    """A run's sample complexity over its seeds: ``seeds[seed]``, and ``interval``, the t-interval over the seeds
    that learned of their rollouts to FRACTION of the gain (``stats.t_interval``; one seed: no interval; None:
    no seed learned)."""

    run: str
    seeds: dict[int, SeedComplexity]

    @property
    def learned(self) -> dict[int, float]:
        return {s: c.to_fraction for s, c in self.seeds.items() if c.to_fraction is not None}

    @property
    def interval(self) -> Interval | None:
        """The t-interval of the mean of log2(rollouts) over the seeds, mapped back: a geometric mean and an
        interval that stays above 0 (budgets spread multiplicatively along the doubling schedule; on raw rollouts
        a 2-seed interval reached below 0)."""
        xs = [math.log2(max(1.0, x)) for x in self.learned.values()]
        if not xs:
            return None
        iv = t_interval(xs)
        return dataclasses.replace(iv, estimate=2 ** iv.estimate, lo=2 ** iv.lo, hi=2 ** iv.hi)


def sample_complexity(data: StudyData, run: str) -> SampleComplexity | None:
    """Each seed's rollouts to FRACTION of its dev gain and its plateau stop, from its history (the seeds with two
    or more evaluated points: the start and one after it); None when no seed has them."""
    r = data.runs.get(run)
    out = {}
    for seed, history in sorted((r.history if r else {}).items()):
        curve = dev_curve(history)
        if len(curve) < 2:
            continue
        out[seed] = SeedComplexity(rollouts_to_fraction(curve, FRACTION), history[-1].get("plateau_at"),
                                   history[-1].get("rollouts", curve[-1][0]))
    return SampleComplexity(run, out) if out else None


def start_of(data: StudyData, run: Run) -> str:
    """The shared model a run starts from: the SFT model of its size, or the pretrained start."""
    return run.start_model if run.start == "sft" else data.pretrained


def learned(data: StudyData, run: Run) -> Part | None:
    """Did the run learn? Its final maj@1 minus its start's, rule ``raises`` (holds: lo > 0); a gate part. None
    when either is not evaluated."""
    start = start_of(data, run)
    return part(f"{run.name} - {start}, maj@1 (did it learn?)", {"a": final(data, run.name), "b": final(data, start)},
                "maj@1", diff("a", "b"), "raises", MARGIN, gate=True)


def unsaturated_k(data: StudyData) -> tuple[int, float] | None:
    """(k, SFT's pass@k): the largest k of LADDER, at most the final evaluation's K, at which SFT's (verified)
    pass@k is <= SATURATED; None when SFT is saturated at every k or not sampled."""
    sft = final(data, SFT).get(None)
    best = None
    for k in LADDER:
        if not sft or k > data.k:
            break
        xs = scores(sft, pass_metric(data, k))
        if xs and sum(xs) / len(xs) <= SATURATED:
            best = (k, sum(xs) / len(xs))
    return best


# ----------------------------------------------------------------------------------------------------------
# the claims as data


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: ``Final`` a model's final evaluation (a run's name or a shared model)."""

    kind: Literal["final"]
    name: str = ""  # the model or run


def Final(model: str | Run) -> Arm:  # noqa: N802 - reads as a constructor in the table below
    return Arm("final", model.name if isinstance(model, Run) else model)


@dataclass(frozen=True)
class Comparison:
    """A - B on ``metric`` (maj@1, MAJ, PASS or PASS_UNSAT) decided by ``rule``. ``learn``: the sides whose RL
    run must have learned (``learned``), else the part is not testable. A required comparison that cannot be
    measured leaves its claim out of the report (its runs are missing); an optional one is left out of the claim.
    ``orm``: it rests on the ORM ranking a question's samples (F4's ORM reward)."""

    a: Arm
    b: Arm
    metric: str
    rule: str
    required: bool = True
    learn: tuple[str, ...] = ("a", "b")
    orm: bool = False


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    comparisons: tuple[Comparison, ...] = ()
    margin: float = MARGIN
    note: str = ""
    own: Callable[[StudyData, "Claim"], Finding | None] | None = None  # decided by a function of its own
    ablation: str = ""  # the --ablation whose runs it compares ("": the paper's grid); reported only when run


def _metric(data: StudyData, c: Comparison) -> str | None:
    if c.metric == PASS:
        return pass_metric(data, data.k) if data.k else None
    if c.metric == MAJ:
        return f"maj@{data.k}" if data.k else None
    if c.metric == PASS_UNSAT:
        got = unsaturated_k(data)
        return pass_metric(data, got[0]) if got else None
    return c.metric


def orm_ranks(data: StudyData) -> bool:
    """Whether the ORM ranks a question's own samples better than chance (within-question AUC > ORM_MIN_AUC)."""
    orm = data.reward_models.get("orm")
    return bool(orm and orm.auc_within_question is not None and orm.auc_within_question > ORM_MIN_AUC)


def compare(data: StudyData, c: Comparison, margin: float, gates: dict) -> Part | None:
    """The part of one comparison: its interval, verdict and label (None when an arm or its metric is missing);
    not testable when an arm it needs did not learn (``gates``: run name -> its ``learned`` part, filled here)
    or, for an ORM comparison, when the ORM does not rank within a question."""
    a, b = final(data, c.a.name), final(data, c.b.name)
    metric = _metric(data, c)
    if not (a and b and metric):
        return None
    p = part(f"{c.a.name} - {c.b.name}, {metric}", {"a": a, "b": b}, metric, diff("a", "b"), c.rule, margin,
             required=c.required)
    if p is None:
        return None
    for side in c.learn:
        run = BY_NAME.get(getattr(c, side).name)
        if run is None:
            continue
        if run.name not in gates:
            gates[run.name] = learned(data, run)
        g = gates[run.name]
        if g is None or g.verdict != HOLDS:
            p.verdict = NOT_TESTABLE
    if c.orm and not orm_ranks(data):
        p.verdict = NOT_TESTABLE
    return p


def evaluate(data: StudyData, claim: Claim) -> Finding | None:
    """A claim's finding: every comparison's part, the learning gates behind them, and their combined verdict;
    None when a required comparison cannot be measured or none can."""
    if claim.own:
        return claim.own(data, claim)
    measured, gates = [], {}
    for c in claim.comparisons:
        p = compare(data, c, claim.margin, gates)
        if p is None and c.required:
            return None
        measured += [p] if p else []
    if not measured:
        return None
    shown = [g for g in gates.values() if g is not None]
    notes = [claim.note] if claim.note else []
    not_learned = [g.label.split(" - ")[0] for g in shown if g.verdict != HOLDS]
    if not_learned:
        notes.append(f"not testable at this budget where {', '.join(not_learned)} did not learn (its maj@1 gain over "
                     "its start is not significant)")
    if any(c.orm for c in claim.comparisons) and not orm_ranks(data):
        auc = data.reward_models.get("orm")
        notes.append("the ORM's parts are not testable: its within-question AUC is "
                     + (f"{auc.auc_within_question:.3f}" if auc and auc.auc_within_question is not None else "not recorded")
                     + f" (needs > {ORM_MIN_AUC}: ranking a question's own samples better than chance)")
    return Finding(claim.key, claim.text, decide(measured), shown + measured, "; ".join(notes))


def findings(data: StudyData) -> dict[str, Finding]:
    """Every finding whose runs exist, with its parts and verdict (rules: ``stats.RULES``)."""
    out = {}
    for claim in CLAIMS:
        f = evaluate(data, claim)
        if f:
            out[claim.key] = f
    return out


def stability(found: dict[str, Finding]) -> tuple[int, int]:
    """(verdicts decided on both bootstrap seeds, how many of them changed)."""
    parts = [p for f in found.values() for p in f.parts]
    return len(parts), sum(not p.stable for p in parts)


# ----------------------------------------------------------------------------------------------------------
# the claims with a function of their own


def _budget_to_converge(data: StudyData, claim: Claim) -> Finding | None:
    """F3: EI and PPO need a similar rollout budget to converge. Gate: each run learned on its dev curve (its maj@1
    at the last point every seed has, carried forward from a plateau stop, minus at 0 rollouts, significantly above
    0); else not testable at this budget. Then, paired by seed where both runs' dev curves rose, the difference EI -
    PPO of log2 of the rollouts to FRACTION of the plateau gain (``sample_complexity``), its t-interval over those
    seeds (``stats.t_interval``), rule ``similar`` with a margin of one doubling (|log2 ratio| < F3_MARGIN)."""
    curves = {run.name: curve_points(data, run.name) for run in (EI, PPO)}
    both = {run.name: sample_complexity(data, run.name) for run in (EI, PPO)}
    if not all(len(c) >= 2 for c in curves.values()) or not all(both.values()):
        return None
    gains = []
    for run, pts in curves.items():
        r0, rend = min(pts), max(pts)
        gains.append(part(f"{run} at {rend} - at {r0} rollouts, dev maj@1 (did it learn?)",
                          {"end": pts[rend], "start": pts[r0]}, "maj@1", diff("end", "start"), "raises", MARGIN,
                          gate=True))
    if not all(gains):
        return None
    if not all(g.verdict == HOLDS for g in gains):
        return Finding(claim.key, claim.text, NOT_TESTABLE, gains,
                       "not testable at this budget: the dev gain of "
                       + " and ".join(g.label.split(" at ")[0] for g in gains if g.verdict != HOLDS)
                       + " is not significant, so there is no budget to converge to compare")
    ei, ppo = both[EI.name].learned, both[PPO.name].learned
    paired_seeds = sorted(set(ei) & set(ppo))
    if not paired_seeds:
        return Finding(claim.key, claim.text, NOT_TESTABLE, gains,
                       "not testable at this budget: no seed on which both dev curves rose")
    d = [math.log2(ei[s]) - math.log2(ppo[s]) for s in paired_seeds]
    iv = t_interval(d)
    n_q = len(next(iter(curves[EI.name][min(curves[EI.name])].values())))
    p = Part(f"log2 rollouts to {FRACTION:.0%} of the dev plateau gain, EI - PPO (paired by seed)", iv, "similar",
             F3_MARGIN, verdict("similar", iv, F3_MARGIN), len(d), n_q)
    notes = [f"seeds {', '.join(map(str, paired_seeds))}; EI / PPO rollouts to {FRACTION:.0%}: "
             + ", ".join(f"{ei[s]:,.0f} / {ppo[s]:,.0f}" for s in paired_seeds)]
    if len(d) == 1:
        notes.append("one seed, no interval")
    # converged: stopped at its plateau, or its curve has plateaued at its last point by the same rule
    # (plateau.plateaued) though the run went on (no stop, or before --plateau-min). A seed still rising at its cap
    # has no budget to converge, only a lower bound on it: the claim about convergence is then not testable at
    # this budget (a verdict on lower bounds would describe the cap, not the algorithms)
    rising = [f"{run} seed {s}" for run, sc in both.items() for s, c in sc.seeds.items()
              if s in paired_seeds and c.plateau_at is None
              and not plateaued(dev_curve(data.runs[run].history[s]), MARGIN)]
    if rising:
        notes.append(f"{', '.join(rising)} reached the cap without a plateau on its dev curve: its rollouts to "
                     f"{FRACTION:.0%} of the gain reached by the cap are a lower bound on the budget to converge")
        return Finding(claim.key, claim.text, NOT_TESTABLE, gains + [p],
                       "not testable at this budget: " + "; ".join(notes))
    return Finding(claim.key, claim.text, decide([p]), gains + [p], "; ".join(notes))


def _gap_closes(data: StudyData, claim: Claim) -> Finding | None:
    """F5, for EI and PPO: from a live pretrained start (its pass@K above 0: RL from it has a correct sample to
    reinforce) and an RL run from it that learned, the gap narrows ((SFT - pretrained) - (RL from SFT - RL from
    pretrained) > 0) and what remains after RL (RL from SFT - RL from pretrained) is under F5_GAP. Only the
    pretrained start's run must learn: RL from SFT may rightly gain little (SFT is near where RL ends)."""
    pt = data.pretrained
    pk = pass_metric(data, data.k)
    live = part(f"{pt} start, {pk} (is it live?)", {"pt": final(data, pt)}, pk, lambda mm: mm["pt"], "raises",
                MARGIN, gate=True)
    if live is None or not final(data, SFT):
        return None
    parts, gates = [live], []
    for sft_run, pt_run in ((EI, EI_PRETRAINED), (PPO, PPO_PRETRAINED)):
        src = {"sft": final(data, SFT), "pt": final(data, pt), "rl": final(data, sft_run.name),
               "rlpt": final(data, pt_run.name)}
        if not (src["rl"] and src["rlpt"]):
            if sft_run is EI:
                return None  # EI's pair is required; PPO's is counted where it ran
            continue
        gate = learned(data, pt_run)
        narrows = part(f"(sft - pretrained) - ({sft_run.algorithm} from sft - from pretrained), maj@1", src, "maj@1",
                       lambda mm: (mm["sft"] - mm["pt"]) - (mm["rl"] - mm["rlpt"]), "raises", MARGIN)
        remains = part(f"{sft_run.algorithm} from sft - from pretrained, maj@1 (the gap after RL)", src, "maj@1",
                       diff("rl", "rlpt"), "little", F5_GAP)
        if not (gate and narrows and remains):
            return None
        if gate.verdict != HOLDS:
            narrows.verdict = remains.verdict = NOT_TESTABLE
            gates.append(pt_run.name)
        parts += [gate, narrows, remains]
    note = ""
    if live.verdict != HOLDS:
        for p in parts[1:]:
            p.verdict = p.verdict if p.gate else NOT_TESTABLE
        note = f"not testable: the pretrained start's {pk} is not above 0, so RL from it has no correct sample to reinforce"
    elif gates:
        note = f"not testable at this budget where {', '.join(gates)} did not learn"
    return Finding(claim.key, claim.text, decide(parts), parts, note)


def _saturates(data: StudyData, claim: Claim) -> Finding | None:
    """F6, for EI and PPO: (1) over the second half of the run (middle to last in-run point), in which maj@1 still
    rises significantly (else not testable: a run that stopped learning says nothing about pass@K saturating
    first), pass@K changes by less than the margin; (2) beyond SFT: the share of the K-sampled test questions the
    final model solves with any of its K samples (verified where the task checks steps) and SFT does not,
    rule ``little``, only for a run that learned."""
    parts = []
    sft = final(data, SFT)
    for run in (EI, PPO):
        pts = curve_points(data, run.name)
        if len(pts) >= 3:
            rs = sorted(pts)
            rmid, rend = rs[len(rs) // 2], rs[-1]
            src = {"mid": pts[rmid], "end": pts[rend]}
            rising = part(f"{run.name} at {rend} - at {rmid} rollouts, maj@1 (still learning?)", src, "maj@1",
                          diff("end", "mid"), "raises", MARGIN, gate=True)
            k = samples_per_question(*pts[rend].values())
            flat = part(f"{run.name} at {rend} - at {rmid} rollouts, {pass_metric(data, k)}", src,
                        pass_metric(data, k), diff("end", "mid"), "similar", MARGIN, required=False) if k else None
            if rising and flat:
                if rising.verdict != HOLDS:
                    flat.verdict = NOT_TESTABLE
                parts += [rising, flat]
        solved = f"solved@{data.k}_verified" if data.verified else f"solved@{data.k}"
        got = cells({"rl": final(data, run.name), "sft": sft}, solved) if data.k and sft else None
        gate = learned(data, run) if got else None
        if got and gate:
            cs = {"new": got[0]["rl"] * (1 - got[0]["sft"])}  # (S, Q): solved by the run's seed, not by SFT
            beyond = from_cells(f"questions {run.name} solves (any of {data.k}) that sft does not", cs,
                                lambda mm: mm["new"], "little", MARGIN, got[2], required=False)
            if gate.verdict != HOLDS:
                beyond.verdict = NOT_TESTABLE
            parts += [gate, beyond]
    if not parts:
        return None
    return Finding(claim.key, claim.text, decide(parts), parts, claim.note)


def _backtranslated(data: StudyData, claim: Claim) -> Finding | None:
    """N3 as its comparisons decide it, except where the backtranslate stage kept no pair (none survived its round
    trip): the runs with backtranslated data then trained on the real data alone, and the claim is not testable."""
    f = evaluate(data, dataclasses.replace(claim, own=None))
    if f is None or data.backtranslated.get("kept", 1) > 0:
        return f
    for p in f.parts:
        if not p.gate:
            p.verdict = NOT_TESTABLE
    return Finding(f.key, f.claim, NOT_TESTABLE, f.parts,
                   "not testable at this budget: backtranslate kept no pair (none of its "
                   f"{data.backtranslated.get('generated', 0)} generated pairs survived the round trip), so the runs "
                   "with backtranslated data trained on the real data alone")


def size_pairs(data: StudyData) -> list[tuple[Run, Run]]:
    """F7's pairs (larger, smaller): each run of another model size than the grid's (``grid.size_runs``, --sizes)
    that the study has, with the grid's run of its algorithm, ordered by size (MODEL_SIZES lists them smallest
    first)."""
    pairs = []
    for r in data.runs.values():
        if not r.run.size or r.run.size == data.grid_size:
            continue
        base = EI if r.run.algorithm == "EI" else PPO
        bigger = MODEL_SIZES.index(r.run.size) > MODEL_SIZES.index(data.grid_size)
        pairs.append((r.run, base) if bigger else (base, r.run))
    return pairs


def _larger_explores_more(data: StudyData, claim: Claim) -> Finding | None:
    """F7, for EI and PPO: the larger model minus the smaller on distinct step-verified solutions per question
    among the final evaluation's K samples (``DISTINCT``, paired over seeds and questions), rule ``raises`` with
    margin F7_MARGIN (solutions per question). Gate: both runs learned (their maj@1 over their own size's SFT),
    else not testable. None (not measured) when no pair has both evaluations with per-question distinct_verified
    (evaluations written before it was recorded have none)."""
    parts, gates = [], {}
    for larger, smaller in size_pairs(data):
        a, b = final(data, larger.name), final(data, smaller.name)
        if not (a and b):
            continue
        p = part(f"{larger.name} - {smaller.name}, distinct verified solutions per question (of {data.k})",
                 {"a": a, "b": b}, DISTINCT, diff("a", "b"), "raises", F7_MARGIN)
        if p is None:
            continue
        for run in (larger, smaller):
            if run.name not in gates:
                gates[run.name] = learned(data, run)
            if gates[run.name] is None or gates[run.name].verdict != HOLDS:
                p.verdict = NOT_TESTABLE
        parts.append(p)
    if not parts:
        return None
    shown = [g for g in gates.values() if g is not None]
    unknown = [name for name, g in gates.items() if g is None or g.verdict != HOLDS]
    note = (f"not testable at this budget where {', '.join(unknown)} did not learn (its maj@1 gain over its own "
            "size's SFT is not significant, or its SFT is not evaluated)" if unknown else "")
    return Finding(claim.key, claim.text, decide(parts), shown + parts, note)


def good_fractions(data: StudyData, run: Run) -> dict[int, float]:
    """Per seed, the share of a RCRL run's labelled samples marked good before any balancing (its history's
    ``good_fraction``, averaged over its rounds: the study's RCRL trains one); seeds without it are left out."""
    r = data.runs.get(run.name)
    out = {}
    for seed, history in sorted((r.history if r else {}).items()):
        xs = [row["good_fraction"] for row in history if isinstance(row.get("good_fraction"), (int, float))]
        if xs:
            out[seed] = sum(xs) / len(xs)
    return out


def _balanced_labels(data: StudyData, claim: Claim) -> Finding | None:
    """F8: RCRL with balanced labels minus RCRL with the natural ratio, from the pretrained start, on maj@1, rule
    ``falls``. Gates: the natural ratio is far from 1:1 (the natural run's good fraction, mean over its seeds,
    outside F8_NEAR_EVEN: else balancing hardly changes the labels, and the claim is not testable; not recorded:
    not testable), and the natural run learned (its maj@1 over the pretrained start), else not testable."""
    natural, balanced = final(data, RCRL_PRETRAINED.name), final(data, RCRL_BALANCED.name)
    if not (natural and balanced):
        return None
    p = part(f"{RCRL_BALANCED.name} - {RCRL_PRETRAINED.name}, maj@1", {"a": balanced, "b": natural}, "maj@1",
             diff("a", "b"), "falls", MARGIN)
    if p is None:
        return None
    gate = learned(data, RCRL_PRETRAINED)
    fractions = good_fractions(data, RCRL_PRETRAINED)
    lo, hi = F8_NEAR_EVEN
    notes = []
    if not fractions:
        p.verdict = NOT_TESTABLE
        notes.append(f"not testable: {RCRL_PRETRAINED.name} recorded no good_fraction, so whether its natural ratio "
                     "is far from 1:1 is unknown")
    else:
        mean = sum(fractions.values()) / len(fractions)
        per_seed = ", ".join(f"seed {s}: {g:.3f}" for s, g in fractions.items())
        if lo <= mean <= hi:
            p.verdict = NOT_TESTABLE
            notes.append(f"not testable: the natural good fraction {mean:.3f} ({per_seed}) is within [{lo}, {hi}], "
                         "near 1:1, so balancing hardly changes the labels")
        else:
            notes.append(f"natural good fraction {mean:.3f} ({per_seed}): far from 1:1 (outside [{lo}, {hi}])")
    if gate is None or gate.verdict != HOLDS:
        p.verdict = NOT_TESTABLE
        notes.append(f"not testable at this budget: {RCRL_PRETRAINED.name} did not learn (its maj@1 gain over the "
                     "pretrained start is not significant)")
    return Finding(claim.key, claim.text, decide([p]), ([gate] if gate else []) + [p], "; ".join(notes))


CLAIMS = (
    # F1: EI >= PPO >= RCRL, paired over seeds and test questions, on greedy maj@1, the vote and pass over K
    # samples, and EI >= PPO from the pretrained start too ("EI best across metrics and starts")
    Claim("F1", "EI >= PPO >= RCRL on maj@1, maj@K and pass@K, from SFT and from the pretrained start", (
        Comparison(Final(EI), Final(PPO), "maj@1", "at_least"),
        Comparison(Final(PPO), Final(RCRL), "maj@1", "at_least"),
        Comparison(Final(EI), Final(PPO), MAJ, "at_least", required=False),
        Comparison(Final(PPO), Final(RCRL), MAJ, "at_least", required=False),
        Comparison(Final(EI), Final(PPO), PASS, "at_least", required=False),
        Comparison(Final(PPO), Final(RCRL), PASS, "at_least", required=False),
        Comparison(Final(EI_PRETRAINED), Final(PPO_PRETRAINED), "maj@1", "at_least", required=False))),
    # F2 (a): an RL run that raised maj@1 (its gate) keeps pass@k at a k where SFT is not saturated (the paper:
    # RL "maintains or improves" pass@96)
    Claim("F2a", "RL raises maj@1 and does not lower pass@k (k where SFT is not saturated)", (
        Comparison(Final(EI), Final(SFT), PASS_UNSAT, "at_least", learn=("a",)),
        Comparison(Final(PPO), Final(SFT), PASS_UNSAT, "at_least", learn=("a",)))),
    # F2 (b): SFT trained on from the SFT model with an RL run's budget raises maj@1 (its gate) and lowers pass@k
    Claim("F2b", "continued SFT trades them: it raises maj@1 and lowers pass@k", (
        Comparison(Final(SFT_MORE), Final(SFT), PASS_UNSAT, "falls", learn=("a",)),)),
    # F3: the paper's "similar sample complexity" (both converge within ~60K samples), as rollouts to 90% of the
    # dev plateau gain within one doubling
    Claim("F3", f"EI and PPO need a similar rollout budget to converge ({FRACTION:.0%} of the dev plateau gain, "
          "within a factor of 2)", own=_budget_to_converge),
    # F4: each variant minus its sparse counterpart, two-sided (a reward that hurts is not "little difference");
    # the sparse run must have learned; the ORM's parts count only when it ranks within a question
    Claim("F4", "dense and ORM rewards make little difference over sparse (either way)", (
        Comparison(Final(PPO_DENSE), Final(PPO), "maj@1", "similar", required=False, learn=("b",)),
        Comparison(Final(RCRL_DENSE), Final(RCRL), "maj@1", "similar", required=False, learn=("b",)),
        Comparison(Final(PPO_ORM), Final(PPO), "maj@1", "similar", required=False, learn=("b",), orm=True),
        Comparison(Final(EI_ORM), Final(EI), "maj@1", "similar", required=False, learn=("b",), orm=True))),
    Claim("F5", f"after RL the pretrained-vs-SFT gap narrows, to under {F5_GAP:.2f} on maj@1 (EI and PPO)",
          own=_gap_closes),
    Claim("F6", "pass@K saturates while RL still learns, and RL solves few questions SFT cannot", own=_saturates,
          note="the saturation half on in-run evaluations (dev problems, fewer samples than the final evaluation)"),
    # F7 (--sizes): "larger models engage in more diverse exploration", as distinct verified solutions per question
    # among the final evaluation's K samples, the larger model minus the smaller, EI and PPO
    Claim("F7", "larger models explore more diversely: more distinct verified solutions per question among K "
          "samples (EI and PPO)", own=_larger_explores_more),
    # F8 (--ablation label-ratio): "a balanced ratio of positive to negative labels leads to poorer performance in
    # RCRL", from a start whose natural ratio is far from 1:1
    Claim("F8", "balanced good/bad labels lower RCRL's maj@1 (from the pretrained start)", own=_balanced_labels),
    # the paper's negative results (--ablation curriculum). N1, N2: a curriculum gives PPO no gain: the curriculum
    # run minus plain PPO, rule ``little`` (holds when the gain's upper end is below the margin; a curriculum that
    # hurts also holds: "no gain"), plain PPO must have learned. N3: backtranslated data degrades: with minus
    # without, rule ``falls``, for EI and for continued SFT; the run without must have learned
    Claim("N1", "backtracking (a reverse curriculum) gives PPO no gain on maj@1", (
        Comparison(Final(PPO_BACKTRACK), Final(PPO), "maj@1", "little", learn=("b",)),), ablation="curriculum"),
    Claim("N2", "prioritized level replay gives PPO no gain on maj@1", (
        Comparison(Final(PPO_PLR), Final(PPO), "maj@1", "little", learn=("b",)),), ablation="curriculum"),
    Claim("N3", "backtranslated training data lowers maj@1 (EI and continued SFT)", own=_backtranslated, comparisons=(
        Comparison(Final(EI_BACKTRANSLATED), Final(EI), "maj@1", "falls", required=False, learn=("b",)),
        Comparison(Final(SFT_MORE_BACKTRANSLATED), Final(SFT_MORE), "maj@1", "falls", required=False,
                   learn=("b",))), ablation="curriculum"),
)
