"""The study report: the paper's findings re-tested with paired 95% intervals, results, curves and provenance.

``collect`` reads the stages' outputs into a ``StudyData``; ``findings`` turns it into one ``Finding`` per
claim of Havrilla et al. 2024, each decided by a printed rule on paired bootstrap intervals (``stats.py``);
``write_report`` writes ``report.md`` (PNGs beside it) and a self-contained ``report.html`` (PNGs embedded).

Per-question records come from every evaluation (``samples.jsonl`` of the final evaluations,
``eval_questions.jsonl`` of the RL runs' in-run evaluations, ``dev_questions.jsonl`` of SFT's epochs), so every
difference is paired over the same questions and, where runs have several seeds, over seeds.
"""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mathrl.metrics import guesser_pass_at_k, pass_at_k
from mathrl.plots import pyplot
from mathrl.stats import CONTRADICTED, HOLDS, INCONCLUSIVE, RULES, Interval, bootstrap, combine, verdict

FINDINGS = {
    "F1": "EI >= PPO >= RCRL on maj@1 (from SFT, sparse reward)",
    "F2": "RL raises maj@1 and pass@K together, while longer SFT trades them",
    "F3": "EI and PPO need a similar rollout budget for their gain",
    "F4": "dense and ORM rewards add little over sparse",
    "F5": "the pretrained-vs-SFT gap narrows after RL",
    "F6": "pass@K saturates early in RL training",
}
# Margins (accuracy, absolute): the smallest difference that counts. 0.02 = 2 points, the size of effects the
# paper reads as "similar" (its Table 1 rows within ~2 points); F3 compares fractions of a gain.
MARGIN = 0.02
F3_MARGIN = 0.25
N_BOOT = 2000


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


@dataclass
class StudyData:
    """What the report reads. ``evals[model][seed]``: per-question records of its final evaluation (seed None for a
    shared model); ``curves[run][seed][rollouts]``: records of in-run evaluations; ``sft_dev[epoch]``: SFT's dev
    records per epoch."""

    k: int = 0
    evals: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    histories: dict = field(default_factory=dict)
    sft_dev: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    orm: dict = field(default_factory=dict)
    times: dict = field(default_factory=dict)
    commands: dict = field(default_factory=dict)
    verified: bool = True  # the task checks steps (synthetic): pass@K findings use verified pass@K


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _jsonl(path: Path) -> list:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
    return out


def collect(root: Path, stages) -> StudyData:
    data = StudyData()
    for s in stages:
        d = s.dir(root)
        done = _load(d / "stage.json")
        if done:
            data.times[s.name] = done["seconds"]
            data.commands[s.name] = done["command"]
        if s.group == "eval":
            m = _load(d / "metrics.json") if done else None  # an evaluation that did not finish is not read
            if m:
                model, seed = s.meta["model"], s.meta["seed"]
                data.metrics.setdefault(model, {})[seed] = m
                data.evals.setdefault(model, {})[seed] = _jsonl(d / "samples.jsonl")
                data.k = data.k or m.get("k", 0)
                data.verified = data.verified and "maj@1_verified" in m
        elif s.group == "rl":
            data.meta[s.base] = s.meta
            h = _load(d / "history.json")
            if h:
                data.histories.setdefault(s.base, {})[s.seed] = h
            points = {}
            for row in _jsonl(d / "eval_questions.jsonl"):
                points[row["rollouts"]] = row["questions"]  # a resumed run may repeat a point: the last counts
            if points:
                data.curves.setdefault(s.base, {})[s.seed] = points
        elif s.group == "orm":
            r = _load(d / "report.json")
            if r:
                data.orm[s.base] = r
        elif s.base == "sft":
            for row in _jsonl(d / "dev_questions.jsonl"):
                data.sft_dev[row["epoch"]] = row["questions"]
    return data


# ----------------------------------------------------------------------------------------------------------
# per-question scores and paired comparisons


def _measured(records: list, metric: str) -> list:
    """The records a metric is measured on: every question for maj@1, those with >= K samples for pass@K."""
    if metric.startswith("pass@"):
        k = int(metric.split("@")[1].split("_")[0])
        return [r for r in records if r.get("n", 0) >= k]
    return records


def samples_per_question(*record_lists: list) -> int:
    """K of the evaluations behind these records: the fewest samples of a question that has any (0: greedy only)."""
    return min((r["n"] for records in record_lists for r in records if r.get("n")), default=0)


def scores(records: list, metric: str) -> list[float] | None:
    """Per-question scores of one evaluation: maj@1 (greedy), maj@1_verified, pass@K, pass@K_verified (the
    unbiased estimate per question, over the questions with >= K samples); None when not measured."""
    rows = _measured(records, metric)
    if metric in ("maj@1", "maj@1_verified"):
        key = "greedy_correct" if metric == "maj@1" else "greedy_verified"
        xs = [r.get(key) for r in rows]
        return None if not xs or any(x is None for x in xs) else [float(x) for x in xs]
    if metric.startswith("pass@"):
        k = int(metric.split("@")[1].split("_")[0])
        key = "c_verified" if metric.endswith("_verified") else "c"
        if not rows or any(r.get(key) is None for r in rows):
            return None
        return [pass_at_k(r["n"], r[key], k) for r in rows]
    raise ValueError(f"no per-question scores for {metric!r}")


def _cell(by_seed: dict, metric: str, seeds: list) -> tuple[np.ndarray, list] | None:
    """(S, Q) scores of one model: its shared evaluation (S = 1) or one row per seed in ``seeds``."""
    if not by_seed:
        return None
    picked = [by_seed[None]] if None in by_seed else [by_seed[s] for s in seeds if s in by_seed]
    if not picked or (None not in by_seed and len(picked) != len(seeds)):
        return None
    rows = [scores(r, metric) for r in picked]
    ids = [[r["id"] for r in _measured(recs, metric)] for recs in picked]
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


def _part(label, sources, metric, stat, rule, margin) -> Part | None:
    got = paired(sources, metric, stat)
    if got is None:
        return None
    iv, n_seeds, n_q = got
    return Part(label, iv, rule, margin, verdict(rule, iv, margin), n_seeds, n_q)


def _diff(a, b):
    return lambda m: m[a] - m[b]


def _curve_sources(data: StudyData, run: str) -> dict:
    """{rollouts: {seed: records}} of a run's in-run evaluations, at the rollout points every seed has."""
    by_seed = data.curves.get(run) or {}
    if not by_seed:
        return {}
    common = set.intersection(*(set(p) for p in by_seed.values()))
    return {r: {s: pts[r] for s, pts in by_seed.items()} for r in sorted(common)}


def pass_metric(data: StudyData, k: int) -> str:
    return f"pass@{k}_verified" if data.verified else f"pass@{k}"


def findings(data: StudyData) -> dict[str, Finding]:
    """Every finding whose runs exist, with its parts and verdict (rules: ``stats.RULES``)."""
    out: dict[str, Finding] = {}
    ev, k, m = data.evals, data.k, MARGIN
    pk = pass_metric(data, k)

    # F1: EI >= PPO and PPO >= RCRL, paired over seeds and test questions
    parts = [_part(f"{a} - {b}, maj@1", {a: ev.get(a), b: ev.get(b)}, "maj@1", _diff(a, b), "at_least", m)
             for a, b in (("ei-sparse-sft", "ppo-sparse-sft"), ("ppo-sparse-sft", "rcrl-sparse-sft"))]
    if all(parts):
        out["F1"] = Finding("F1", FINDINGS["F1"], combine([p.verdict for p in parts]), parts)

    # F2: each RL run raises maj@1 and pass@K over SFT; SFT's last epoch raises dev maj@1 and lowers dev pass@K
    parts = []
    for run in ("ei-sparse-sft", "ppo-sparse-sft"):
        for metric in ("maj@1", pk):
            parts.append(_part(f"{run} - sft, {metric}", {run: ev.get(run), "sft": ev.get("sft")}, metric,
                               _diff(run, "sft"), "raises", m))
    note = ""
    epochs = sorted(data.sft_dev)
    sft_half = []
    if len(epochs) >= 2:
        e1, e2 = epochs[-2], epochs[-1]
        dev_k = samples_per_question(data.sft_dev[e1], data.sft_dev[e2])
        src = {f"epoch{e2}": {None: data.sft_dev[e2]}, f"epoch{e1}": {None: data.sft_dev[e1]}}
        dev_pk = pass_metric(data, dev_k)
        sft_half.append(_part(f"SFT epoch {e2} - epoch {e1}, dev maj@1", src, "maj@1",
                              _diff(f"epoch{e2}", f"epoch{e1}"), "raises", m))
        if dev_k:
            sft_half.append(_part(f"SFT epoch {e2} - epoch {e1}, dev {dev_pk}", src, dev_pk,
                                  _diff(f"epoch{e2}", f"epoch{e1}"), "falls", m))
        sft_half = [p for p in sft_half if p]
        note = "SFT's epochs: one shared SFT run, so its interval is over dev questions only"
    if len(sft_half) < 2:
        note = f"SFT's trade-off not measured ({len(epochs)} epoch(s) with dev records), so F2 cannot hold"
    if parts and all(parts):
        parts += sft_half
        verdicts = [p.verdict for p in parts] + ([INCONCLUSIVE] if len(sft_half) < 2 else [])
        out["F2"] = Finding("F2", FINDINGS["F2"], combine(verdicts), parts, note)

    # F3: over the same rollout points, the fraction of the final gain reached at the middle point
    curves = {run: _curve_sources(data, run) for run in ("ei-sparse-sft", "ppo-sparse-sft")}
    shared = sorted(set(curves["ei-sparse-sft"]) & set(curves["ppo-sparse-sft"]))
    if len(shared) >= 3:
        r0, rmid, rend = shared[0], shared[len(shared) // 2], shared[-1]
        gains = []
        for run in curves:
            src = {f"{run}@{r}": curves[run][r] for r in (r0, rend)}
            gains.append(_part(f"{run} at {rend} - at {r0} rollouts, maj@1 (the gain)", src, "maj@1",
                               _diff(f"{run}@{rend}", f"{run}@{r0}"), "raises", m))
        if all(gains):
            if all(g.verdict == HOLDS for g in gains):
                src = {f"{run}@{r}": curves[run][r] for run in curves for r in (r0, rmid, rend)}

                def frac(mm, run):
                    g = mm[f"{run}@{rend}"] - mm[f"{run}@{r0}"]
                    return (mm[f"{run}@{rmid}"] - mm[f"{run}@{r0}"]) / g if abs(g) > 1e-9 else float("nan")

                part = _part(f"fraction of the gain reached at {rmid} rollouts, EI - PPO", src, "maj@1",
                             lambda mm: frac(mm, "ei-sparse-sft") - frac(mm, "ppo-sparse-sft"), "similar",
                             F3_MARGIN)
                if part:
                    out["F3"] = Finding("F3", FINDINGS["F3"], part.verdict, gains + [part],
                                        f"both runs evaluated at {shared} rollouts")
            else:
                out["F3"] = Finding("F3", FINDINGS["F3"], INCONCLUSIVE, gains,
                                    "cannot be tested: the gain of "
                                    + " and ".join(g.label.split(" at ")[0] for g in gains if g.verdict != HOLDS)
                                    + " is not significant, so there is no budget-to-gain to compare")

    # F4: each variant minus its sparse counterpart adds less than the margin
    parts = [_part(f"{a} - {b}, maj@1", {a: ev.get(a), b: ev.get(b)}, "maj@1", _diff(a, b), "little", m)
             for a, b in (("ppo-dense-sft", "ppo-sparse-sft"), ("ppo-orm-sft", "ppo-sparse-sft"),
                          ("ei-orm-sft", "ei-sparse-sft")) if ev.get(a) and ev.get(b)]
    parts = [p for p in parts if p]
    if parts:
        out["F4"] = Finding("F4", FINDINGS["F4"], combine([p.verdict for p in parts]), parts)

    # F5: (SFT - pretrained) - (EI from SFT - EI from pretrained) > 0; only testable from a live pretrained start
    pt = "pretrain" if "pretrain" in ev else "pretrained"
    names = {"sft": ev.get("sft"), "pt": ev.get(pt), "ei": ev.get("ei-sparse-sft"), "eipt": ev.get("ei-sparse-pretrained")}
    if all(names.values()):
        live = _part(f"{pt} start, {pk} (is it live?)", {"pt": names["pt"]}, pk, lambda mm: mm["pt"], "raises", m)
        gap = _part("(sft - pretrained) - (EI from sft - EI from pretrained), maj@1", names, "maj@1",
                    lambda mm: (mm["sft"] - mm["pt"]) - (mm["ei"] - mm["eipt"]), "raises", m)
        if live and gap:
            if live.verdict != HOLDS:
                out["F5"] = Finding("F5", FINDINGS["F5"], INCONCLUSIVE, [live, gap],
                                    f"cannot be tested: the pretrained start's {pk} is not above 0, so RL from it "
                                    "has no correct sample to reinforce")
            else:
                out["F5"] = Finding("F5", FINDINGS["F5"], gap.verdict, [live, gap])

    # F6: the second half of each RL run changes (verified) pass@K by less than the margin
    parts = []
    for run in ("ei-sparse-sft", "ppo-sparse-sft"):
        pts = _curve_sources(data, run)
        if len(pts) >= 3:
            rs = sorted(pts)
            rmid, rend = rs[len(rs) // 2], rs[-1]
            run_k = samples_per_question(next(iter(pts[rend].values())))
            if run_k:
                metric = pass_metric(data, run_k)
                parts.append(_part(f"{run} at {rend} - at {rmid} rollouts, {metric}",
                                   {"end": pts[rend], "mid": pts[rmid]}, metric, _diff("end", "mid"), "similar", m))
    parts = [p for p in parts if p]
    if parts:
        out["F6"] = Finding("F6", FINDINGS["F6"], combine([p.verdict for p in parts]), parts,
                            "in-run evaluations (test problems, fewer samples than the final evaluation)")
    return out


# ----------------------------------------------------------------------------------------------------------
# tables


def _mean_over_seeds(data: StudyData, model: str, key: str):
    xs = [m.get(key) for m in (data.metrics.get(model) or {}).values()]
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def _label(data: StudyData, model: str) -> str:
    meta = data.meta.get(model)
    if meta:
        name = f"GRPO loss as {meta['objective']}" if meta.get("objective") else meta["algorithm"]
        return f"{name} ({meta['reward']}, from {meta['start']})"
    return {"sft": "SFT", "pretrain": "pretrained start", "pretrained": "pretrained start"}.get(model, model)


def _order(data: StudyData) -> list[str]:
    first = [m for m in ("pretrain", "pretrained", "sft") if m in data.evals]
    return first + [m for m in data.meta if m in data.evals]


def results_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    k = data.k
    cols = ["model", "seeds", "maj@1 [95% CI]", "maj@1_verified", f"maj@{k}", f"rerank@{k}", f"pass@{k}",
            f"pass@{k}_verified", "distinct verified solutions", "distinct answers"]
    keys = ["maj@1_verified", f"maj@{k}", f"rerank@{k}", f"pass@{k}", f"pass@{k}_verified",
            "distinct_verified_solutions", "distinct_answers"]
    rows = []
    for model in _order(data):
        by_seed = data.evals[model]
        got = paired({"x": by_seed}, "maj@1", lambda mm: mm["x"])
        ci = f"{got[0].estimate:.3f} [{got[0].lo:.3f}, {got[0].hi:.3f}]" if got else "–"
        cells = [_fmt(_mean_over_seeds(data, model, key)) for key in keys]
        rows.append([_label(data, model), str(len(by_seed)), ci] + cells)
    return cols, rows


def _diff_cells(data: StudyData, model: str, base: str, metrics: list[str]) -> list[str]:
    """``model - base`` on each metric, paired over the same seeds and questions: its interval, or '–'."""
    cells = []
    for metric in metrics:
        got = paired({"a": data.evals[model], "b": data.evals[base]}, metric, _diff("a", "b"))
        cells.append(str(got[0]) if got else "–")
    return cells


def diff_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """Every RL model minus SFT (or minus the pretrained start, for RL from it), paired, with 95% intervals."""
    k = data.k
    metrics = ["maj@1", "maj@1_verified", f"pass@{k}", f"pass@{k}_verified"] if data.verified else ["maj@1", f"pass@{k}"]
    pt = "pretrain" if "pretrain" in data.evals else "pretrained"
    rows = []
    for model in data.meta:
        if model not in data.evals:
            continue
        base = pt if data.meta[model]["start"] == "pretrained" else "sft"
        if base not in data.evals:
            continue
        rows.append([f"{_label(data, model)} - {base}", str(len(data.evals[model]))]
                    + _diff_cells(data, model, base, metrics))
    return ["difference", "seeds"] + [f"Δ {m} [95% CI]" for m in metrics], rows


def objectives_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """``study --ablation objectives``: each objective minus GRPO's default loss (same start, budget, seeds and
    test questions), paired, with 95% intervals; PPO (value head) beside them for reference."""
    k = data.k
    metrics = ["maj@1", f"pass@{k}_verified"] if data.verified else ["maj@1", f"pass@{k}"]
    base = "grpo-sparse-sft"
    rows = []
    for model in [m for m in data.meta if data.meta[m].get("objective")] + ["ppo-sparse-sft"]:
        if model not in data.evals or base not in data.evals or (model == "ppo-sparse-sft" and not rows):
            continue
        rows.append([f"{_label(data, model)} - GRPO", str(len(data.evals[model]))]
                    + _diff_cells(data, model, base, metrics))
    return ["difference", "seeds"] + [f"Δ {m} [95% CI]" for m in metrics], rows


def difficulty_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    levels = sorted({d for ms in data.metrics.values() for m in ms.values() for d in (m.get("by_difficulty") or {})},
                    key=lambda x: (len(x), x))
    if not levels:
        return [], []
    rows = []
    for model in _order(data):
        cells = []
        for lv in levels:
            xs = [m["by_difficulty"][lv].get("maj@1") for m in data.metrics[model].values()
                  if lv in (m.get("by_difficulty") or {})]
            xs = [x for x in xs if x is not None]
            cells.append(_fmt(sum(xs) / len(xs)) if xs else "–")
        rows.append([_label(data, model)] + cells)
    counts = []
    for lv in levels:
        m = next(iter(next(iter(data.metrics.values())).values()))
        counts.append(str((m.get("by_difficulty") or {}).get(lv, {}).get("n", "")))
    return ["model"] + [f"maj@1, {lv} step(s) (n={n})" for lv, n in zip(levels, counts)], rows


def budget_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    rows = []
    for model, meta in data.meta.items():
        seeds = sorted(s for s in (data.histories.get(model) or {}))
        used = [h[-1].get("rollouts") for h in (data.histories.get(model) or {}).values() if h]
        rows.append([_label(data, model), str(meta.get("rollouts", "")), ", ".join(str(u) for u in sorted(set(used))),
                     "yes (marked good)" if meta.get("references") else "no", ", ".join(map(str, seeds))])
    return ["run", "rollout budget", "rollouts consumed", "trains on reference solutions", "seeds"], rows


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def guesser(cfg, data: StudyData) -> dict | None:
    """pass@1 and pass@K of the question-blind guesser on the questions that got K samples."""
    sft = (data.evals.get("sft") or {}).get(None)
    if not sft or not data.k:
        return None
    try:
        from mathrl.tasks import load_task

        task = load_task(cfg.task, level=cfg.level, data_dir=cfg.data_dir)
        train = [p.answer for p in task.problems("train")]
    except Exception:  # noqa: BLE001 - the report is still written without the guesser row
        return None
    sampled = [r for r in sft if r.get("n", 0) >= data.k and r.get("answer") is not None]
    if not sampled:
        return None
    answers = [r["answer"] for r in sampled]
    out = {"pass@1": guesser_pass_at_k(train, answers, 1), f"pass@{data.k}": guesser_pass_at_k(train, answers, data.k),
           "n": len(answers), "distinct_train_answers": len(set(train))}
    # the room SFT leaves above maj@1 on the same questions: what RL could reach by sharpening what SFT can sample
    pk = scores(sampled, pass_metric(data, data.k))
    greedy = scores(sampled, "maj@1")
    if pk and greedy:
        out["room"] = (sum(pk) - sum(greedy)) / len(sampled)
    # the pretrained start's profile on the same questions (the paper's: low maj@1, non-trivial pass@K), against
    # issue 22's criteria: maj@1 <= 0.10, verified pass@K >= 0.20, answer-only pass@K >= the guesser's + 0.20
    pt = (data.evals.get("pretrain") or data.evals.get("pretrained") or {}).get(None)
    if pt:
        ids = {r.get("id") for r in sampled}
        same = [r for r in pt if r.get("id") in ids and r.get("n", 0) >= data.k]
        got = {m: scores(same, m) for m in ("maj@1", f"pass@{data.k}", f"pass@{data.k}_verified")}
        if same and all(got.values()):
            out["pretrained"] = {m: sum(v) / len(v) for m, v in got.items()}
            out["pretrained"]["n"] = len(same)
    return out


def profile_line(guess: dict, k: int) -> str | None:
    """One sentence: is the pretrained start live (issue 22's criteria), with its numbers and the guesser's."""
    pt = guess.get("pretrained")
    if not pt:
        return None
    m1, pa, pv, g = pt["maj@1"], pt[f"pass@{k}"], pt[f"pass@{k}_verified"], guess[f"pass@{k}"]
    live = m1 <= 0.10 and pv >= 0.20 and pa >= g + 0.20
    return (f"Pretrained start on the same {pt['n']} questions: maj@1 {m1:.3f} (criterion <= 0.10), verified "
            f"pass@{k} {pv:.3f} (>= 0.20), answer-only pass@{k} {pa:.3f}, the guesser's {g:.3f} {pa - g:+.3f} "
            f"(>= +0.20): the paper's profile (low maj@1, non-trivial pass@K) is "
            + ("met." if live else "not met."))


# ----------------------------------------------------------------------------------------------------------
# plots


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _band(data: StudyData, run: str, metric: str):
    """(rollouts, mean, lo, hi) of a run's in-run metric over seeds: the crossed-bootstrap 95% interval per point."""
    xs, mean, lo, hi = [], [], [], []
    for r, src in _curve_sources(data, run).items():
        got = paired({"x": src}, metric, lambda mm: mm["x"], n_boot=400)
        if got:
            xs.append(r)
            mean.append(got[0].estimate)
            lo.append(got[0].lo)
            hi.append(got[0].hi)
    return xs, mean, lo, hi


def plot_curves(data: StudyData, root: Path) -> list[Path]:
    """Per algorithm: maj@1 and (verified) pass@k vs rollouts consumed, the mean over seeds with its 95% band."""
    plt = pyplot()
    by_alg = {}
    for run, meta in data.meta.items():
        if run in data.curves:
            by_alg.setdefault(meta["algorithm"], []).append(run)
    files = []
    for alg, runs in sorted(by_alg.items()):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
        for run in runs:
            run_k = samples_per_question(next(iter(next(iter(data.curves[run].values())).values())))
            for ax, metric in zip(axes, ("maj@1", pass_metric(data, run_k) if run_k else None)):
                if metric is None:
                    continue
                xs, mean, lo, hi = _band(data, run, metric)
                if xs:
                    line, = ax.plot(xs, mean, marker="o", label=f"{run} ({len(data.curves[run])} seeds)")
                    ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
                    ax.set_title(f"{alg}: {metric} vs rollouts (95% band)")
        for ax in axes:
            ax.set_xlabel("rollouts consumed")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        files.append(_save(plt, fig, root / f"curve-{alg.lower()}.png"))
    return files


def plot_training(data: StudyData, root: Path) -> Path | None:
    """Reward (sample accuracy), KL to the reference, completion length and entropy estimate vs rollouts, the
    mean over seeds, one line per run."""
    keys = [("reward", "reward / sample accuracy"), ("kl", "KL to the reference (per sequence)"),
            ("completion_tokens", "completion length (tokens)"), ("entropy_estimate", "entropy estimate (nats/token)")]
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), dpi=100)
    any_line = False
    for run, by_seed in sorted(data.histories.items()):
        for ax, (key, title) in zip(axes, keys):
            series = {}
            for h in by_seed.values():
                for row in h:
                    # EI and RCRL log no reward: their sample accuracy is the sparse reward's mean
                    v = row.get(key, row.get("sample_accuracy") if key == "reward" else None)
                    if isinstance(v, (int, float)) and math.isfinite(v) and "rollouts" in row:
                        series.setdefault(row["rollouts"], []).append(v)
            if series:
                xs = sorted(series)
                ax.plot(xs, [sum(series[x]) / len(series[x]) for x in xs], marker=".", label=run)
                ax.set_title(title, fontsize=9)
                any_line = True
    if not any_line:
        plt.close(fig)
        return None
    for ax in axes:
        ax.set_xlabel("rollouts consumed")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    return _save(plt, fig, root / "training.png")


def plot_sft(data: StudyData, root: Path) -> Path | None:
    if not data.sft_dev:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    epochs = sorted(data.sft_dev)
    dev_k = samples_per_question(data.sft_dev[epochs[-1]])
    metrics = ["maj@1", "maj@1_verified"] + ([f"pass@{dev_k}", f"pass@{dev_k}_verified"] if dev_k else [])
    for metric in metrics:
        pts = [(e, scores(data.sft_dev[e], metric)) for e in epochs]
        pts = [(e, sum(x) / len(x)) for e, x in pts if x]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=metric)
    ax.set_xlabel("SFT epoch")
    ax.set_ylabel("dev accuracy")
    ax.set_title("SFT: maj@1 and pass@K per epoch (dev split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, root / "sft-epochs.png")


# ----------------------------------------------------------------------------------------------------------
# provenance and examples


def provenance(data: StudyData) -> list[str]:
    import importlib.metadata as md

    lines = [f"python {platform.python_version()} on {platform.platform()}"]
    for pkg in ("mathrl", "torch", "transformers", "tokenizers", "numpy"):
        try:
            lines.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    try:
        src = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=src, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            lines.append(f"git commit {commit.stdout.strip()}" + (" (with uncommitted changes)" if dirty.stdout.strip()
                                                                  else ""))
    except (OSError, subprocess.SubprocessError):
        pass
    return lines


def examples(data: StudyData, n: int = 3) -> list[tuple[str, list[tuple[str, str, bool]]]]:
    """The first n test questions (with the reference answer) and each model's greedy completion (seed 0 or the
    shared run)."""
    out = []
    sft = (data.evals.get("sft") or {}).get(None) or []
    for i, row in enumerate(sft[:n]):
        per_model = []
        for model in _order(data):
            by_seed = data.evals[model]
            recs = by_seed[None] if None in by_seed else by_seed[min(by_seed)]
            if i < len(recs) and recs[i].get("id") == row["id"]:
                per_model.append((_label(data, model), (recs[i].get("greedy") or "").strip(),
                                  bool(recs[i].get("greedy_correct"))))
        title = f"{row['id']}: {row['question']} (answer {row.get('answer')})" if row.get("question") else row["id"]
        out.append((title, per_model))
    return out


# ----------------------------------------------------------------------------------------------------------
# the report


def _md_table(cols, rows) -> list[str]:
    if not rows:
        return []
    return ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def _html_table(cols, rows) -> str:
    if not rows:
        return ""
    return ("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def write_report(root: Path, cfg, stages, wall_seconds: float) -> Path:
    data = collect(root, stages)
    found = findings(data)
    k = data.k
    guess = guesser(cfg, data)
    room = (f"Room above maj@1: SFT's {pass_metric(data, k)} - maj@1 on those {guess['n']} questions is "
            f"{guess['room']:+.3f}." if guess and "room" in guess else None)
    profile = profile_line(guess, k) if guess else None
    tables = {"results": results_table(data), "diff": diff_table(data), "difficulty": difficulty_table(data),
              "budget": budget_table(data), "objectives": objectives_table(data)}
    plots = [p for p in [plot_sft(data, root), *plot_curves(data, root), plot_training(data, root)] if p]
    times = sorted(data.times.items(), key=lambda x: -x[1])
    n_eval = len((data.evals.get("sft") or {}).get(None) or [])
    n_k = sum(1 for r in (data.evals.get("sft") or {}).get(None) or [] if r.get("n", 0) >= (k or 1))
    quick = " (quick: a pipeline check, its numbers are not results)" if cfg.quick else ""
    intro = (f"Re-testing Havrilla et al. 2024 at the scale at hand{quick}. Final evaluation: greedy maj@1 on "
             f"{n_eval} test problems, K={k} samples on the first {n_k} of them, the same problems and per-question "
             f"sampling streams for every model. RL seeds: {cfg.seeds} for EI/PPO/GRPO/RCRL (sparse, from SFT), "
             f"{cfg.variant_seeds} for the reward variants and the pretrained start; one shared pretrain, SFT, ORM "
             f"and SORM. Wall time {wall_seconds / 60:.1f} min.")
    method = ("Intervals: 95% crossed bootstrap over seeds and test questions (stats.py: each replicate resamples "
              "seeds and questions with replacement, the same draw for every model, so differences are paired), "
              f"{N_BOOT} replicates for the findings and tables (400 per point for the plots' bands). Verdict rules, margin m = {MARGIN} (accuracy) unless stated: "
              + "; ".join(f"{name}: {text}" for name, text in RULES.items())
              + ". Where both a rule's holds and contradicted conditions are met (a significant change smaller than m), "
                "holds wins. A finding made of several comparisons holds when all hold, is contradicted when any is, and is "
                "inconclusive otherwise.")
    if data.verified:
        method += (f" Findings about pass@K use step-verified pass@K: answer-only pass@{k} is compared with a "
                   "question-blind guesser below.")

    md = [f"# mathrl study: {cfg.task}{' (quick)' if cfg.quick else ''}", "", intro, "", "## Findings", "", method, ""]
    for key, claim in FINDINGS.items():
        f = found.get(key)
        if f is None:
            md.append(f"- **{key} {claim}: not measured** (its runs are missing).")
            continue
        md.append(f"- **{key} {claim}: {f.verdict}.**" + (f" {f.note.rstrip('.')}." if f.note else ""))
        for p in f.parts:
            md.append(f"  - {p.label}: {p.interval} (rule {p.rule}, m = {p.margin}; {p.seeds} seed(s) x "
                      f"{p.questions} questions) -> {p.verdict}")
    md += ["", "## Results (test split)", ""] + _md_table(*tables["results"])
    md += ["", "maj@1 is greedy; its interval is over seeds and questions. `_verified` counts a sample correct only "
           "if every step checks out. Other cells: mean over seeds."]
    if guess:
        md += ["", f"Question-blind guesser (samples the {guess['distinct_train_answers']} distinct train answers by "
               f"their frequency), on the same {guess['n']} questions: pass@1 {guess['pass@1']:.3f}, pass@{k} "
               f"{guess[f'pass@{k}']:.3f}; its verified pass@{k} is 0. Answer-only pass@{k} at or below this floor "
               "says nothing about reasoning."]
        md += [x for line in (room, profile) if line for x in ("", line)]
    md += ["", "## Differences (paired, 95% CI)", ""] + _md_table(*tables["diff"])
    if tables["objectives"][1]:
        md += ["", "## Objectives (ablation, paired, 95% CI)", "", "Each of GRPO's loss variants minus the default "
               "GRPO run, same start, rollout budget, seeds and test questions (`mathrl study --ablation "
               "objectives`).", ""] + _md_table(*tables["objectives"])
    md += ["", "## Power", ""]
    power = []
    for a, b in (("ei-sparse-sft", "sft"), ("ppo-sparse-sft", "sft"), ("ei-sparse-sft", "ppo-sparse-sft")):
        got = paired({"a": data.evals.get(a), "b": data.evals.get(b)}, "maj@1", _diff("a", "b"))
        if got:
            power.append(f"- {a} - {b}, maj@1: {got[0]}, half-width {got[0].half_width:.3f} ({got[1]} seed(s) x "
                         f"{got[2]} questions)")
    md += power or ["- not measured"]
    md += ["", "## Per difficulty (test split, maj@1, mean over seeds)", ""] + _md_table(*tables["difficulty"])
    md += ["", "## Budgets", "", "Every RL run from either start has the same rollout budget (samples drawn for "
           "training; in-run evaluations not counted).", ""] + _md_table(*tables["budget"])
    orm_lines = []
    for name, r in data.orm.items():
        line = (f"- {name.upper()}: held-out AUC {_auc(r.get('auc'))} (within a question's samples "
                f"{_auc(r.get('auc_within_question'))}), {r.get('n_train_samples', '?')} training samples")
        if "n_train_step_labelled" in r:
            line += f", {r['n_train_step_labelled']} of them with rollout step labels"
        if "step_precision" in r:
            line += f"; bad-step precision {r['step_precision']:.3f} / recall {r['step_recall']:.3f} vs the exact checker"
        orm_lines.append(line)
    if orm_lines:
        md += ["", "## Reward models", ""] + orm_lines
    md += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    ex = examples(data)
    if ex:
        md += ["", "## Three test questions, greedy completions", ""]
        for qid, per_model in ex:
            md += [f"**{qid}**", ""] + _md_table(["model", "greedy completion", "correct"],
                                                 [[m, t.replace("\n", " ").replace("|", "\\|"), "yes" if ok else "no"]
                                                  for m, t, ok in per_model]) + [""]
    md += ["", "## Time per stage", "", "| stage | minutes |", "|---|---|"]
    md += [f"| {n} | {t / 60:.1f} |" for n, t in times]
    prov = provenance(data)
    md += ["", "## Provenance", ""] + [f"- {x}" for x in prov] + ["", "Stage commands:", "", "```"]
    md += [" ".join(c) for c in data.commands.values()] + ["```"]
    (root / "report.md").write_text("\n".join(md) + "\n")

    def img(p: Path) -> str:
        b64 = base64.b64encode(p.read_bytes()).decode()
        return f'<figure><img alt="{p.stem}" src="data:image/png;base64,{b64}"><figcaption>{p.stem}</figcaption></figure>'

    css = {HOLDS: "ok", CONTRADICTED: "no", INCONCLUSIVE: "inc"}
    body = [f"<h1>mathrl study: {html.escape(cfg.task)}{' (quick)' if cfg.quick else ''}</h1>",
            f"<p>{html.escape(intro)}</p>", "<h2>Findings</h2>", f"<p class='small'>{html.escape(method)}</p><ul>"]
    for key, claim in FINDINGS.items():
        f = found.get(key)
        if f is None:
            body.append(f"<li><b>{key} {html.escape(claim)}: not measured.</b></li>")
            continue
        body.append(f'<li class="{css[f.verdict]}"><b>{key} {html.escape(claim)}: {f.verdict}.</b> '
                    f"{html.escape(f.note)}<ul>"
                    + "".join(f"<li>{html.escape(p.label)}: {html.escape(str(p.interval))} (rule {p.rule}, m = "
                              f"{p.margin}; {p.seeds} seed(s) x {p.questions} questions) &rarr; {p.verdict}</li>"
                              for p in f.parts) + "</ul></li>")
    body.append("</ul><h2>Results (test split)</h2>" + _html_table(*tables["results"]))
    if guess:
        body.append(f"<p>Question-blind guesser on the same {guess['n']} questions: pass@1 {guess['pass@1']:.3f}, "
                    f"pass@{k} {guess[f'pass@{k}']:.3f} (verified: 0).</p>")
        body += [f"<p>{html.escape(line)}</p>" for line in (room, profile) if line]
    body.append("<h2>Differences (paired, 95% CI)</h2>" + _html_table(*tables["diff"]))
    if tables["objectives"][1]:
        body.append("<h2>Objectives (ablation, paired, 95% CI)</h2>" + _html_table(*tables["objectives"]))
    body.append("<h2>Power</h2><ul>" + "".join(f"<li>{html.escape(x[2:])}</li>" for x in power) + "</ul>")
    body.append("<h2>Per difficulty</h2>" + _html_table(*tables["difficulty"]))
    body.append("<h2>Budgets</h2>" + _html_table(*tables["budget"]))
    if orm_lines:
        body.append("<h2>Reward models</h2><ul>" + "".join(f"<li>{html.escape(x[2:])}</li>" for x in orm_lines) + "</ul>")
    body.append("<h2>Plots</h2>" + "".join(img(p) for p in plots))
    if ex:
        body.append("<h2>Three test questions, greedy completions</h2>")
        for qid, per_model in ex:
            body.append(f"<p><b>{html.escape(qid)}</b></p>" + _html_table(
                ["model", "greedy completion", "correct"], [[m, t, "yes" if ok else "no"] for m, t, ok in per_model]))
    body.append("<h2>Time per stage</h2>" + _html_table(["stage", "minutes"], [[n, f"{t / 60:.1f}"] for n, t in times]))
    body.append("<h2>Provenance</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in prov) + "</ul><pre>"
                + html.escape("\n".join(" ".join(c) for c in data.commands.values())) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%}.small{font-size:12px}"
             "li.ok>b{color:#176b17}li.no>b{color:#9b1c1c}li.inc>b{color:#8a6d00}figure{margin:1em 0}"
             "pre{font-size:11px;white-space:pre-wrap}")
    (root / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>mathrl study</title>"
                                      f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return root / "report"


def _auc(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"
