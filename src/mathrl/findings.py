"""The paper's findings, declared as data and tested on a study's records with paired 95% intervals.

Each finding of Havrilla et al. 2024 is a ``Claim``: its text and the comparisons that test it, each a difference
A - B of one metric between two ``Arm``s (a model's final evaluation, a point of a run's in-run evaluations, an
epoch of SFT's dev evaluations) with a verdict rule and margin (``stats.RULES``). ``evaluate`` decides every
claim the same way: the interval of each comparison over the seeds and questions both arms share, its verdict,
and the claim's verdict combined from its parts (all hold: holds; any contradicted: contradicted). A claim that
needs a gate (F2's SFT half, F3's significant gains before their fractions, F5's live start) has a small
function of its own beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from mathrl.grid import EI, EI_ORM, EI_PRETRAINED, PPO, PPO_DENSE, PPO_ORM, RCRL, SFT, Run
from mathrl.metrics import pass_at_k
from mathrl.stats import HOLDS, INCONCLUSIVE, Interval, bootstrap, combine, verdict
from mathrl.studydata import Records, StudyData

# Margins (accuracy, absolute): the smallest difference that counts. 0.02 = 2 points, the size of effects the
# paper reads as "similar" (its Table 1 rows within ~2 points); F3 compares fractions of a gain.
MARGIN = 0.02
F3_MARGIN = 0.25
N_BOOT = 2000
PASS = "pass@K"  # a comparison's metric: pass@K at the K of its records, step-verified where the task checks steps


@dataclass
class Part:
    """One comparison: ``label`` (what A - B is), its interval, the rule and margin, the seeds behind it."""

    label: str
    interval: Interval
    rule: str
    margin: float
    verdict: str
    seeds: int
    questions: int


@dataclass
class Finding:
    key: str
    claim: str
    verdict: str
    parts: list[Part] = field(default_factory=list)
    note: str = ""


# ----------------------------------------------------------------------------------------------------------
# per-question scores and paired intervals


def _measured(records: Records, metric: str) -> Records:
    """The records a metric is measured on: every question for maj@1, those with >= K samples for pass@K."""
    if metric.startswith("pass@"):
        k = int(metric.split("@")[1].split("_")[0])
        return [r for r in records if r.n >= k]
    return records


def samples_per_question(*record_lists: Records) -> int:
    """K of the evaluations behind these records: the fewest samples of a question that has any (0: greedy only)."""
    return min((r.n for records in record_lists for r in records if r.n), default=0)


def scores(records: Records, metric: str) -> list[float] | None:
    """Per-question scores of one evaluation: maj@1 (greedy), maj@1_verified, pass@K, pass@K_verified (the
    unbiased estimate per question, over the questions with >= K samples); None when not measured."""
    rows = _measured(records, metric)
    if metric in ("maj@1", "maj@1_verified"):
        xs = [r.greedy_correct if metric == "maj@1" else r.greedy_verified for r in rows]
        return None if not xs or any(x is None for x in xs) else [float(x) for x in xs]
    if metric.startswith("pass@"):
        k = int(metric.split("@")[1].split("_")[0])
        cs = [r.c_verified if metric.endswith("_verified") else r.c for r in rows]
        if not rows or any(c is None for c in cs):
            return None
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
    if any(x is None for x in rows) or any(i != ids[0] for i in ids):
        return None
    return np.array(rows), ids[0]


def _seeds_of(*by_seeds: dict) -> list:
    """The seeds every multi-seed source has (shared sources do not constrain)."""
    sets = [set(b) for b in by_seeds if b and None not in b]
    return sorted(set.intersection(*sets)) if sets else [None]


def paired(sources: dict, metric: str, stat, n_boot: int = N_BOOT) -> tuple[Interval, int, int] | None:
    """The interval of ``stat(means)`` over the named sources (each {seed: records}); None if one is missing or
    they do not share their questions. Returns (interval, seeds, questions)."""
    seeds = _seeds_of(*sources.values())
    cells = {}
    ids = None
    for name, by_seed in sources.items():
        c = _cell(by_seed, metric, seeds)
        if c is None:
            return None
        if ids is not None and c[1] != ids:
            return None
        cells[name], ids = c[0], c[1]
    n_seeds = max(a.shape[0] for a in cells.values())
    return bootstrap(cells, stat, n_boot=n_boot), n_seeds, len(ids)


def part(label: str, sources: dict, metric: str, stat, rule: str, margin: float) -> Part | None:
    got = paired(sources, metric, stat)
    if got is None:
        return None
    iv, n_seeds, n_q = got
    return Part(label, iv, rule, margin, verdict(rule, iv, margin), n_seeds, n_q)


def diff(a: str, b: str):
    return lambda m: m[a] - m[b]


def pass_metric(data: StudyData, k: int) -> str:
    return f"pass@{k}_verified" if data.verified else f"pass@{k}"


def final(data: StudyData, model: str) -> dict:
    """{seed: records} of a model's final evaluation ({} when it has none)."""
    e = data.evals.get(model)
    return e.records if e else {}


def curve_points(data: StudyData, run: str) -> dict[int, dict]:
    """{rollouts: {seed: records}} of a run's in-run evaluations, at the rollout points every seed has."""
    by_seed = data.runs[run].curve if run in data.runs else {}
    if not by_seed:
        return {}
    common = set.intersection(*(set(p) for p in by_seed.values()))
    return {r: {s: pts[r] for s, pts in by_seed.items()} for r in sorted(common)}


# ----------------------------------------------------------------------------------------------------------
# the claims as data


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: ``Final`` a model's final evaluation (a run's name or a shared model),
    ``Point`` a run's in-run evaluation at its middle or last rollout point (of three or more), ``Dev`` SFT's
    last epoch or the one before on the dev split."""

    kind: Literal["final", "point", "dev"]
    name: str = ""  # the model or run
    at: Literal["mid", "last", "before"] | None = None


def Final(model: str | Run) -> Arm:  # noqa: N802 - reads as a constructor in the table below
    return Arm("final", model.name if isinstance(model, Run) else model)


def Point(run: Run, at: Literal["mid", "last"]) -> Arm:  # noqa: N802
    return Arm("point", run.name, at)


def Dev(at: Literal["last", "before"]) -> Arm:  # noqa: N802
    return Arm("dev", SFT, at)


@dataclass(frozen=True)
class Comparison:
    """A - B on ``metric`` (maj@1 or PASS) decided by ``rule``. A required comparison that cannot be measured
    leaves its claim out of the report (its runs are missing); an optional one is left out of the claim."""

    a: Arm
    b: Arm
    metric: str
    rule: str
    required: bool = True


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    comparisons: tuple[Comparison, ...] = ()
    margin: float = MARGIN
    note: str = ""
    # gate(data, claim, [(comparison, its part)]) -> (extra verdicts, note)
    gate: Callable[[StudyData, "Claim", list[tuple[Comparison, Part]]], tuple[list[str], str]] | None = None
    own: Callable[[StudyData, "Claim"], Finding | None] | None = None  # decided by a function of its own


def _resolve(data: StudyData, arm: Arm) -> tuple[dict, str, Records] | None:
    """(sources {seed: records}, its place in a label, the records that tell K) of an arm; None when missing."""
    if arm.kind == "final":
        src = final(data, arm.name)
        return (src, arm.name, []) if src else None
    if arm.kind == "point":
        pts = curve_points(data, arm.name)
        if len(pts) < 3:
            return None
        rs = sorted(pts)
        r = rs[len(rs) // 2] if arm.at == "mid" else rs[-1]
        return pts[r], f"at {r}", next(iter(pts[r].values()))
    epochs = sorted(data.sft_dev)
    if len(epochs) < 2:
        return None
    e = epochs[-1] if arm.at == "last" else epochs[-2]
    return {None: data.sft_dev[e]}, f"epoch {e}", data.sft_dev[e]


def compare(data: StudyData, c: Comparison, margin: float) -> Part | None:
    """The part of one comparison: its interval, verdict and label (None when an arm or its metric is missing)."""
    a, b = _resolve(data, c.a), _resolve(data, c.b)
    if a is None or b is None:
        return None
    metric = c.metric
    if metric == PASS:
        # the final evaluations' K; an in-run or dev evaluation's own (fewer samples than the final evaluation)
        k = data.k if c.a.kind == "final" else samples_per_question(a[2], *([b[2]] if c.a.kind == "dev" else []))
        if not k:
            return None
        metric = pass_metric(data, k)
    if c.a.kind == "final":
        label = f"{a[1]} - {b[1]}, {metric}"
    elif c.a.kind == "point":
        label = f"{c.a.name} {a[1]} - {b[1]} rollouts, {metric}"
    else:
        label = f"SFT {a[1]} - {b[1]}, dev {metric}"
    return part(label, {"a": a[0], "b": b[0]}, metric, diff("a", "b"), c.rule, margin)


def evaluate(data: StudyData, claim: Claim) -> Finding | None:
    """A claim's finding: every comparison's part and their combined verdict; None when a required comparison
    cannot be measured or none can."""
    if claim.own:
        return claim.own(data, claim)
    measured = []
    for c in claim.comparisons:
        p = compare(data, c, claim.margin)
        if p is None and c.required:
            return None
        measured += [(c, p)] if p else []
    if not measured:
        return None
    parts = [p for _, p in measured]
    extra, note = claim.gate(data, claim, measured) if claim.gate else ([], claim.note)
    return Finding(claim.key, claim.text, combine([p.verdict for p in parts] + extra), parts, note)


def findings(data: StudyData) -> dict[str, Finding]:
    """Every finding whose runs exist, with its parts and verdict (rules: ``stats.RULES``)."""
    out = {}
    for claim in CLAIMS:
        f = evaluate(data, claim)
        if f:
            out[claim.key] = f
    return out


# ----------------------------------------------------------------------------------------------------------
# the gates


def _sft_tradeoff(data: StudyData, claim: Claim, measured: list) -> tuple[list[str], str]:
    """F2's SFT half: both of its dev comparisons must be measured (two epochs with dev records, sampled), or the
    claim cannot hold."""
    if sum(c.a.kind == "dev" for c, _ in measured) < 2:
        return [INCONCLUSIVE], (f"SFT's trade-off not measured ({len(data.sft_dev)} epoch(s) with dev records), so "
                                "F2 cannot hold")
    return [], "SFT's epochs: one shared SFT run, so its interval is over dev questions only"


def _budget_to_gain(data: StudyData, claim: Claim) -> Finding | None:
    """F3: over the rollout points both runs share (three or more), each run's gain (last - first point) must
    be significant; then the fraction of it reached at the middle point, EI - PPO, is compared."""
    curves = {run.name: curve_points(data, run.name) for run in (EI, PPO)}
    shared = sorted(set(curves[EI.name]) & set(curves[PPO.name]))
    if len(shared) < 3:
        return None
    r0, rmid, rend = shared[0], shared[len(shared) // 2], shared[-1]
    gains = []
    for run in curves:
        src = {f"{run}@{r}": curves[run][r] for r in (r0, rend)}
        gains.append(part(f"{run} at {rend} - at {r0} rollouts, maj@1 (the gain)", src, "maj@1",
                          diff(f"{run}@{rend}", f"{run}@{r0}"), "raises", claim.margin))
    if not all(gains):
        return None
    if not all(g.verdict == HOLDS for g in gains):
        return Finding(claim.key, claim.text, INCONCLUSIVE, gains,
                       "cannot be tested: the gain of "
                       + " and ".join(g.label.split(" at ")[0] for g in gains if g.verdict != HOLDS)
                       + " is not significant, so there is no budget-to-gain to compare")
    src = {f"{run}@{r}": curves[run][r] for run in curves for r in (r0, rmid, rend)}

    def frac(mm, run):
        g = mm[f"{run}@{rend}"] - mm[f"{run}@{r0}"]
        return (mm[f"{run}@{rmid}"] - mm[f"{run}@{r0}"]) / g if abs(g) > 1e-9 else float("nan")

    p = part(f"fraction of the gain reached at {rmid} rollouts, EI - PPO", src, "maj@1",
             lambda mm: frac(mm, EI.name) - frac(mm, PPO.name), "similar", F3_MARGIN)
    if not p:
        return None
    return Finding(claim.key, claim.text, p.verdict, gains + [p], f"both runs evaluated at {shared} rollouts")


def _gap_narrows(data: StudyData, claim: Claim) -> Finding | None:
    """F5: (SFT - pretrained) - (EI from SFT - EI from pretrained) > 0, testable only from a live pretrained start
    (its pass@K above 0: RL from it has a correct sample to reinforce)."""
    pt = data.pretrained
    pk = pass_metric(data, data.k)
    names = {"sft": final(data, SFT), "pt": final(data, pt), "ei": final(data, EI.name),
             "eipt": final(data, EI_PRETRAINED.name)}
    if not all(names.values()):
        return None
    live = part(f"{pt} start, {pk} (is it live?)", {"pt": names["pt"]}, pk, lambda mm: mm["pt"], "raises",
                claim.margin)
    gap = part("(sft - pretrained) - (EI from sft - EI from pretrained), maj@1", names, "maj@1",
               lambda mm: (mm["sft"] - mm["pt"]) - (mm["ei"] - mm["eipt"]), "raises", claim.margin)
    if not (live and gap):
        return None
    if live.verdict != HOLDS:
        return Finding(claim.key, claim.text, INCONCLUSIVE, [live, gap],
                       f"cannot be tested: the pretrained start's {pk} is not above 0, so RL from it has no correct "
                       "sample to reinforce")
    return Finding(claim.key, claim.text, gap.verdict, [live, gap])


CLAIMS = (
    # F1: EI >= PPO and PPO >= RCRL, paired over seeds and test questions
    Claim("F1", "EI >= PPO >= RCRL on maj@1 (from SFT, sparse reward)", (
        Comparison(Final(EI), Final(PPO), "maj@1", "at_least"),
        Comparison(Final(PPO), Final(RCRL), "maj@1", "at_least"))),
    # F2: each RL run raises maj@1 and pass@K over SFT; SFT's last epoch raises dev maj@1 and lowers dev pass@K
    Claim("F2", "RL raises maj@1 and pass@K together, while longer SFT trades them", (
        Comparison(Final(EI), Final(SFT), "maj@1", "raises"),
        Comparison(Final(EI), Final(SFT), PASS, "raises"),
        Comparison(Final(PPO), Final(SFT), "maj@1", "raises"),
        Comparison(Final(PPO), Final(SFT), PASS, "raises"),
        Comparison(Dev("last"), Dev("before"), "maj@1", "raises", required=False),
        Comparison(Dev("last"), Dev("before"), PASS, "falls", required=False)), gate=_sft_tradeoff),
    Claim("F3", "EI and PPO need a similar rollout budget for their gain", own=_budget_to_gain),
    # F4: each variant minus its sparse counterpart adds less than the margin (the variants that ran)
    Claim("F4", "dense and ORM rewards add little over sparse", (
        Comparison(Final(PPO_DENSE), Final(PPO), "maj@1", "little", required=False),
        Comparison(Final(PPO_ORM), Final(PPO), "maj@1", "little", required=False),
        Comparison(Final(EI_ORM), Final(EI), "maj@1", "little", required=False))),
    Claim("F5", "the pretrained-vs-SFT gap narrows after RL", own=_gap_narrows),
    # F6: the second half of each RL run changes (verified) pass@K by less than the margin
    Claim("F6", "pass@K saturates early in RL training", (
        Comparison(Point(EI, "last"), Point(EI, "mid"), PASS, "similar", required=False),
        Comparison(Point(PPO, "last"), Point(PPO, "mid"), PASS, "similar", required=False)),
        note="in-run evaluations (test problems, fewer samples than the final evaluation)"),
)
