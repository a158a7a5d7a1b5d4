"""The study report: the paper's findings re-tested with paired 95% intervals, results, curves and provenance.

``studydata.collect`` reads the stages' outputs into a ``StudyData``; ``findings.findings`` decides each claim of
Havrilla et al. 2024 by a printed rule on paired bootstrap intervals (``stats.py``); ``sections`` builds the
report once, as data (``render.py``), and ``write_report`` writes it as ``report.md`` (PNGs beside it) and a
self-contained ``report.html`` (PNGs embedded) from those same sections.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from pathlib import Path

from mathrl.budgets import STUDY_LR, model_sizes, seed_counts, sizes_minutes
from mathrl.findings import (CLAIMS, DISTINCT, F3_MARGIN, F5_GAP, F7_MARGIN, F8_NEAR_EVEN, FRACTION, LADDER, MARGIN,
                             N_BOOT, ORM_MIN_AUC, SATURATED, Part, curve_points, diff, final, findings,
                             metric_difference, paired, pass_metric, sample_complexity, samples_per_question, scores,
                             size_pairs, stability, start_of, unsaturated_k)
from mathrl.grid import EI, GRPO, PPO, PPO_BACKTRACK, PPO_PLR, SFT, SHARED_LABELS
from mathrl.metrics import guesser_pass_at_k
from mathrl.plots import pyplot
from mathrl.render import Code, Figures, Item, Items, Para, Section, Table, markdown, page
from mathrl.settings import MODEL_SIZES
from mathrl.stats import RULES
from mathrl.studydata import StudyData, collect
from mathrl.tasks import load_task


# ----------------------------------------------------------------------------------------------------------
# tables


def _mean_over_seeds(data: StudyData, model: str, key: str):
    xs = [m.values.get(key) for m in data.evals[model].metrics.values()]
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def _label(data: StudyData, model: str) -> str:
    if model in data.runs:
        return data.runs[model].run.label
    size = model.removeprefix(f"{SFT}-")
    return SHARED_LABELS.get(model, f"SFT ({size} model)" if size in MODEL_SIZES else model)


def results_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    k = data.k
    cols = ["model", "seeds", "maj@1 [95% CI]", "maj@1_verified", f"maj@{k}", f"rerank@{k}", f"pass@{k}",
            f"pass@{k}_verified", "distinct verified solutions", "distinct answers"]
    keys = ["maj@1_verified", f"maj@{k}", f"rerank@{k}", f"pass@{k}", f"pass@{k}_verified",
            "distinct_verified_solutions", "distinct_answers"]
    rows = []
    for model in data.order():
        by_seed = data.evals[model].records
        got = paired({"x": by_seed}, "maj@1", lambda mm: mm["x"])
        ci = f"{got[0].estimate:.3f} [{got[0].lo:.3f}, {got[0].hi:.3f}]" if got else "–"
        cells = [_fmt(_mean_over_seeds(data, model, key)) for key in keys]
        rows.append([_label(data, model), str(len(by_seed)), ci] + cells)
    return cols, rows


def _diff_cells(data: StudyData, model: str, base: str, metrics: list[str]) -> list[str]:
    """``model - base`` on each metric, paired over the same seeds and questions: its interval, or '–'."""
    cells = []
    for metric in metrics:
        got = paired({"a": final(data, model), "b": final(data, base)}, metric, diff("a", "b"))
        cells.append(str(got[0]) if got else "–")
    return cells


def diff_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """Every RL model minus SFT (or minus the pretrained start, for RL from it), paired, with 95% intervals."""
    k = data.k
    metrics = ["maj@1", "maj@1_verified", f"pass@{k}", f"pass@{k}_verified"] if data.verified else ["maj@1", f"pass@{k}"]
    rows = []
    for model, r in data.runs.items():
        if model not in data.evals:
            continue
        base = start_of(data, r.run)
        if base not in data.evals:
            continue
        rows.append([f"{_label(data, model)} - {base}", str(len(final(data, model)))]
                    + _diff_cells(data, model, base, metrics))
    return ["difference", "seeds"] + [f"Δ {m} [95% CI]" for m in metrics], rows


def objectives_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """``study --ablation objectives``: each objective minus GRPO's default loss (same start, budget, seeds and
    test questions), paired, with 95% intervals; PPO (value head) beside them for reference."""
    k = data.k
    metrics = ["maj@1", f"pass@{k}_verified"] if data.verified else ["maj@1", f"pass@{k}"]
    base = GRPO.name
    rows = []
    for model in [m for m, r in data.runs.items() if r.run.objective] + [PPO.name]:
        if model not in data.evals or base not in data.evals or (model == PPO.name and not rows):
            continue
        rows.append([f"{_label(data, model)} - GRPO", str(len(final(data, model)))]
                    + _diff_cells(data, model, base, metrics))
    return ["difference", "seeds"] + [f"Δ {m} [95% CI]" for m in metrics], rows


def sizes_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """F7's models side by side (``study --sizes``): the SFT model and the EI and PPO runs of each model size, with
    their test maj@1 and distinct verified solutions per question among the K samples (means over seeds), and the
    runs' in-run dev curve of the same count (their history's distinct_verified_solutions at each rollout point,
    mean over the seeds that have it)."""
    runs = {}
    for pair in size_pairs(data):
        for run in pair:
            runs[run.name] = run
    if not runs:
        return [], []
    order = sorted(runs.values(), key=lambda r: (r.algorithm, MODEL_SIZES.index(r.size or data.grid_size)))
    key = "distinct_verified_solutions"
    histories = {r.name: [row for h in data.runs[r.name].history.values() for row in h] for r in order}
    points = sorted({row["rollouts"] for rows in histories.values() for row in rows
                     if isinstance(row.get(key), (int, float)) and "rollouts" in row})
    table = []
    sfts = sorted({(r.size or data.grid_size, r.start_model) for r in order}, key=lambda x: MODEL_SIZES.index(x[0]))
    for size, model in sfts:
        if model in data.evals:
            table.append([_label(data, model), size, _fmt(_mean_over_seeds(data, model, "maj@1")),
                          _fmt(_mean_over_seeds(data, model, key))] + ["–"] * len(points))
    for run in order:
        evaluated = run.name in data.evals
        cells = []
        for x in points:
            xs = [row[key] for row in histories[run.name]
                  if row.get("rollouts") == x and isinstance(row.get(key), (int, float))]
            cells.append(_fmt(sum(xs) / len(xs)) if xs else "–")
        table.append([_label(data, run.name), run.size or data.grid_size,
                      _fmt(_mean_over_seeds(data, run.name, "maj@1")) if evaluated else "–",
                      _fmt(_mean_over_seeds(data, run.name, key)) if evaluated else "–"] + cells)
    return (["model", "size", "test maj@1", f"test distinct verified solutions /{data.k}"]
            + [f"dev, {_rollouts(x)} rollouts" for x in points]), table


def difficulty_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    levels = sorted({d for e in data.evals.values() for m in e.metrics.values() for d in m.by_difficulty},
                    key=lambda x: (len(x), x))
    if not levels:
        return [], []
    rows = []
    for model in data.order():
        cells = []
        for lv in levels:
            xs = [m.by_difficulty[lv].maj1 for m in data.evals[model].metrics.values() if lv in m.by_difficulty]
            xs = [x for x in xs if x is not None]
            cells.append(_fmt(sum(xs) / len(xs)) if xs else "–")
        rows.append([_label(data, model)] + cells)
    first = next(iter(next(iter(data.evals.values())).metrics.values()))  # the level sizes of the first evaluation
    counts = [str(first.by_difficulty[lv].n) if lv in first.by_difficulty and first.by_difficulty[lv].n is not None
              else "" for lv in levels]
    return ["model"] + [f"maj@1, {lv} step(s) (n={n})" for lv, n in zip(levels, counts)], rows


def budget_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    rows = []
    for model, r in data.runs.items():
        # the seeds that finished (continued SFT writes no history.json)
        seeds = sorted(set(r.history) | {int(n.rsplit("@", 1)[1]) for n in data.finished
                                         if n.rsplit("@", 1)[0] == model and "@" in n})
        used = [h[-1].get("rollouts") for h in r.history.values() if h]
        # continued SFT trains on reference solutions alone, as many as the budget; an RL run on its own samples
        # unless its flags add the references (RCRL's default, which the study turns off)
        refs = ("only" if r.run.algorithm == "SFT"
                else "yes (marked good)" if r.run.algorithm == "RCRL" and "--no-include-references" not in r.run.flags
                else "no")
        rows.append([_label(data, model), str(r.rollouts), ", ".join(str(u) for u in sorted(set(used))), refs,
                     _learning_rate(data, model, seeds), ", ".join(map(str, seeds))])
    return ["run", "rollout budget", "rollouts consumed", "trains on reference solutions", "learning rate",
            "seeds"], rows


def _learning_rate(data: StudyData, model: str, seeds: list) -> str:
    """The ``--lr`` of a run's stage commands (the same for every seed), or "default" where they pass none."""
    rates = set()
    for seed in seeds:
        finished = data.finished.get(f"{model}@{seed}")
        if finished is not None:
            cmd = list(finished.command)
            rates.add(cmd[cmd.index("--lr") + 1] if "--lr" in cmd else "default")
    return ", ".join(sorted(rates))


def sample_complexity_table(data: StudyData) -> tuple[list[str], list[list[str]]]:
    """Per RL run: its seeds' rollouts to FRACTION of the dev plateau gain, their mean with a t-interval over the
    seeds that learned, each seed's value and where it stopped (its plateau, or the cap), and how many of its
    curve's points were carried forward from a plateau stop (``studydata.carry_forward``)."""
    rows = []
    for name, r in data.runs.items():
        sc = sample_complexity(data, name)
        if sc is None:
            continue
        learned, iv = sc.learned, sc.interval
        if iv is None:
            mean = "did not learn"
        elif iv.seeds == 1:
            mean = f"{iv.estimate:,.0f} (one seed, no interval)"
        else:
            mean = f"{iv.estimate:,.0f} [{iv.lo:,.0f}, {iv.hi:,.0f}]"
        per_seed = "; ".join(
            f"seed {s}: " + ("did not learn" if c.to_fraction is None else f"{c.to_fraction:,.0f}") + ", "
            + ("cap reached, no plateau" if c.plateau_at is None else f"plateau at {c.plateau_at:,}")
            for s, c in sc.seeds.items())
        carried = sum(len(v) for v in r.carried.values())
        rows.append([_label(data, name), f"{len(learned)} of {len(sc.seeds)}", mean, per_seed,
                     f"{carried} of {sum(len(v) for v in r.curve.values())}"])
    return ["run", "seeds that learned", f"rollouts to {FRACTION:.0%} of the dev plateau gain, geometric mean [95% CI]",
            f"per seed: rollouts to {FRACTION:.0%}, where it stopped", "curve points carried forward"], rows


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def guesser(cfg, data: StudyData) -> dict | None:
    """pass@1 and pass@K of the question-blind guesser on the questions that got K samples."""
    sft = final(data, SFT).get(None)
    if not sft or not data.k:
        return None
    try:
        task = load_task(cfg.task, level=cfg.level, data_dir=cfg.data_dir)
        train = [p.answer for p in task.problems("train")]
    except Exception:  # noqa: BLE001 - the report is still written without the guesser row
        return None
    sampled = [r for r in sft if r.n >= data.k and r.answer is not None]
    if not sampled:
        return None
    answers = [r.answer for r in sampled]
    out = {"pass@1": guesser_pass_at_k(train, answers, 1), f"pass@{data.k}": guesser_pass_at_k(train, answers, data.k),
           "n": len(answers), "distinct_train_answers": len(set(train))}
    # the room SFT leaves above maj@1 on the same questions: what RL could reach by sharpening what SFT can sample
    pk = scores(sampled, pass_metric(data, data.k))
    greedy = scores(sampled, "maj@1")
    if pk and greedy:
        out["room"] = (sum(pk) - sum(greedy)) / len(sampled)
    # the pretrained start's profile on the same questions (the paper's: low maj@1, non-trivial pass@K), against
    # the criteria of a live start (docs/results.md, "A live pretrained start"): maj@1 <= 0.10, verified
    # pass@K >= 0.20, answer-only pass@K >= the guesser's + 0.20
    pt = final(data, data.pretrained).get(None)
    if pt:
        ids = {r.id for r in sampled}
        same = [r for r in pt if r.id in ids and r.n >= data.k]
        got = {m: scores(same, m) for m in ("maj@1", f"pass@{data.k}", f"pass@{data.k}_verified")}
        if same and all(got.values()):
            out["pretrained"] = {m: sum(v) / len(v) for m, v in got.items()}
            out["pretrained"]["n"] = len(same)
    return out


def profile_line(guess: dict, k: int) -> str | None:
    """One sentence: is the pretrained start live (maj@1 <= 0.10, verified pass@K >= 0.20, answer-only pass@K >=
    the guesser's + 0.20, as in ``guesser``), with its numbers and the guesser's."""
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
    for r, src in curve_points(data, run).items():
        got = paired({"x": src}, metric, lambda mm: mm["x"], n_boot=400)
        if got:
            xs.append(r)
            mean.append(got[0].estimate)
            lo.append(got[0].lo)
            hi.append(got[0].hi)
    return xs, mean, lo, hi


def _rollouts(x: float) -> str:
    return f"{x / 1024:g}K" if x >= 1024 else f"{x:g}"


def plot_curves(data: StudyData, root: Path) -> list[Path]:
    """Per algorithm: dev maj@1 and (verified) pass@k vs rollouts consumed, the mean over seeds with its 95% band,
    on a log2 rollouts axis (the evaluations are log-spaced: 0, N, 2N, 4N, ...; symlog keeps the start at 0 on
    it, linear up to the first point). Points carried forward from a plateau stop count in the legend."""
    plt = pyplot()
    by_alg = {}
    for run, r in data.runs.items():
        if r.curve:
            by_alg.setdefault(r.run.algorithm, []).append(run)
    files = []
    for alg, runs in sorted(by_alg.items()):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
        ticks = set()
        for run in runs:
            r = data.runs[run]
            run_k = samples_per_question(next(iter(next(iter(r.curve.values())).values())))
            carried = sum(len(v) for v in r.carried.values())
            n = len(r.curve)
            label = (f"{run} ({n} seed{'s' * (n != 1)}"
                     + (f", {carried} point{'s' * (carried != 1)} carried" if carried else "") + ")")
            for ax, metric in zip(axes, ("maj@1", pass_metric(data, run_k) if run_k else None)):
                if metric is None:
                    continue
                xs, mean, lo, hi = _band(data, run, metric)
                if xs:
                    line, = ax.plot(xs, mean, marker="o", label=label)
                    ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
                    ax.set_title(f"{alg}: dev {metric} vs rollouts (95% band over seeds)", fontsize=9)
                    ax.set_ylabel(f"dev {metric}")
                    ticks.update(xs)
        positive = sorted(x for x in ticks if x > 0)
        for ax in axes:
            if positive:
                ax.set_xscale("symlog", base=2, linthresh=positive[0])
                ax.set_xticks(sorted(ticks), [_rollouts(x) for x in sorted(ticks)], fontsize=7)
                ax.minorticks_off()
            ax.set_xlabel("rollouts consumed (log2 axis)")
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
    for run, r in sorted(data.runs.items()):
        for ax, (key, title) in zip(axes, keys):
            series = {}
            for h in r.history.values():
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


def provenance() -> list[str]:
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
    sft = final(data, SFT).get(None) or []
    for i, row in enumerate(sft[:n]):
        per_model = []
        for model in data.order():
            by_seed = final(data, model)
            recs = by_seed[None] if None in by_seed else by_seed[min(by_seed)]
            if i < len(recs) and recs[i].id == row.id:
                per_model.append((_label(data, model), (recs[i].greedy or "").strip(), bool(recs[i].greedy_correct)))
        title = f"{row.id}: {row.question} (answer {row.answer})" if row.question else row.id
        out.append((title, per_model))
    return out


# ----------------------------------------------------------------------------------------------------------
# the report


def part_line(p: Part) -> str:
    """One comparison as the report prints it: interval, rule, margin, what it rests on, verdict, and what limits
    it (no seed variance, a verdict that changed with the bootstrap seed, similar out of reach)."""
    seeds = f"{p.seeds} seed(s) x {p.questions} questions" + ("; no seed variance" if p.seeds == 1 else "")
    flags = [] if p.stable else ["changed with the bootstrap seed, so inconclusive"]
    if not p.reachable:
        flags.append(f"similar out of reach at this precision: half-width {p.interval.half_width:.3f} >= m")
    line = f"{'gate: ' if p.gate else ''}{p.label}: {p.interval} (rule {p.rule}, m = {p.margin}; {seeds}) -> {p.verdict}"
    return line + (f" ({'; '.join(flags)})" if flags else "")


def not_measured(key: str, cfg, data: StudyData) -> str:
    """Why a finding is not measured: the flag that adds its runs where the study was not asked for them (F7's
    with the minutes it would add, ``budgets.sizes_minutes``), or what is missing."""
    if key == "F7" and cfg.task != "synthetic":
        return "model sizes are the synthetic study's (--sizes)"
    if key == "F7" and len(model_sizes(cfg)) == 1:
        grid = model_sizes(cfg)[0]
        other = next(s for s in reversed(MODEL_SIZES) if s != grid)  # the largest other size
        measured = {name: f.seconds / 60 for name, f in data.finished.items()}
        return f"run with --sizes {grid},{other} (adds ~{sizes_minutes(cfg, [other], measured):.0f} minutes)"
    evaluated = [records for pair in size_pairs(data) for r in pair for records in final(data, r.name).values()]
    if key == "F7" and any(scores(records, DISTINCT) is None for records in evaluated):
        return ("the evaluations of its runs have no per-question distinct_verified in samples.jsonl (written by "
                "an earlier mathrl): run their eval stages again")
    if key == "F8" and cfg.ablation != "label-ratio":
        return "run with --ablation label-ratio (adds two RCRL runs from the pretrained start per variant seed)"
    return "its runs are missing"


def _finding_items(data: StudyData, cfg) -> tuple[Items, tuple[int, int]]:
    found = findings(data)
    items = []
    for claim in CLAIMS:
        f = found.get(claim.key)
        if f is None:
            if not claim.ablation:  # an ablation's claims appear when it ran (--ablation NAME)
                items.append(Item(f"{not_measured(claim.key, cfg, data)}.",
                                  head=f"{claim.key} {claim.text}: not measured"))
            continue
        items.append(Item(f"{f.note.rstrip('.')}." if f.note else "", head=f"{f.key} {f.claim}: {f.verdict}.",
                          status=f.verdict, children=tuple(part_line(p) for p in f.parts)))
    return Items(items), stability(found)


def _power(data: StudyData) -> Items:
    """The half-width of the main differences' intervals: the smallest effect this study can resolve."""
    lines = []
    for a, b in ((EI.name, SFT), (PPO.name, SFT), (EI.name, PPO.name)):
        got = paired({"a": final(data, a), "b": final(data, b)}, "maj@1", diff("a", "b"))
        if got:
            hw = got[0].half_width
            # the half-width shrinks about as 1 / sqrt(data): "similar" (inside +-m) needs hw < m
            need = "" if hw < MARGIN else f"; similar needs < {MARGIN}: about {(hw / MARGIN) ** 2:.1f}x the data"
            lines.append(f"{a} - {b}, maj@1: {got[0]}, half-width {hw:.3f} ({got[1]} seed(s) x {got[2]} questions"
                         f"{'; no seed variance' if got[1] == 1 else ''}{need})")
    return Items([Item(x) for x in lines or ["not measured"]])


def _reward_models(data: StudyData) -> list[Item]:
    items = []
    for name, r in data.reward_models.items():
        line = (f"{name.upper()}: held-out AUC {_auc(r.auc)} (within a question's samples "
                f"{_auc(r.auc_within_question)}), {r.n_train_samples if r.n_train_samples is not None else '?'} "
                "training samples")
        if r.n_train_step_labelled is not None:
            line += f", {r.n_train_step_labelled} of them with rollout step labels"
        if r.step_precision is not None:
            line += f"; bad-step precision {r.step_precision:.3f} / recall {r.step_recall:.3f} vs the exact checker"
        items.append(Item(line))
    orm = data.reward_models.get("orm")
    if orm is not None and not (orm.auc_within_question is not None and orm.auc_within_question > ORM_MIN_AUC):
        items.append(Item(
            f"At a within-question AUC of {_auc(orm.auc_within_question)} (needs > {ORM_MIN_AUC}) the ORM ranks a "
            "question's own samples about as well as chance: its held-out AUC comes from telling easy questions "
            f"from hard ones, so rerank@{data.k} picks an arbitrary sample of a question (often a wrong one) and is "
            "no evidence about reward models, and F4's ORM parts are not testable. On the embedded default, "
            "training it to rank within a question (a within-question pairwise loss, 16 samples per question, 4x "
            "the questions) reached 0.515-0.567 on dev (docs/results.md, \"A reward model that ranks within a "
            "question\"): a question's samples differ in one misread operand or one wrong sum, and ranking them "
            "means redoing the arithmetic that the same small trunk gets wrong."))
    k = data.k
    for model in (SFT, EI.name, PPO.name):
        got = metric_difference(final(data, model), f"rerank@{k}", f"maj@{k}")  # None without that evaluation
        if got:
            items.append(Item(f"{_label(data, model)}: rerank@{k} - maj@{k} {got[0]} ({got[1]} seed(s) x {got[2]} "
                              f"questions{'; no seed variance' if got[1] == 1 else ''})"))
    return items


def _seeds_evaluated(data: StudyData, cfg) -> str:
    """Where the runs evaluated on test have fewer seeds than the study plans (a study still running, or an
    ``--only`` run of some of its stages), the seeds each has, so that the planned counts are not read as the
    data's; empty when every planned run has them all."""
    short, none = [], []
    for name, r in data.runs.items():
        planned = seed_counts(cfg)[0 if r.run.seeds == "seeds" else 1]
        got = len(final(data, name))
        if got == 0:
            none.append(name)
        elif got < planned:
            short.append(f"{name} {got} of {planned}")
    text = "; ".join(([f"seeds evaluated on test where fewer than planned: {', '.join(short)}"] if short else [])
                     + ([f"not evaluated on test: {', '.join(none)}"] if none else []))
    return f" {text[:1].upper()}{text[1:]}." if text else ""


def sections(root: Path, cfg, data: StudyData, wall_seconds: float) -> list[Section]:
    """The whole report, once: what report.md and report.html both show."""
    k = data.k
    guess = guesser(cfg, data)
    sft = final(data, SFT).get(None) or []
    n_k = sum(1 for r in sft if r.n >= (k or 1))
    quick = " (quick: a pipeline check, its numbers are not results)" if cfg.quick else ""
    evaluation = (f"Final evaluation: greedy maj@1 on {len(sft)} test problems, K={k} samples on the first {n_k} of "
                  "them, the same problems and per-question sampling streams for every model." if sft else
                  "Final evaluation: not run yet (the SFT model's, which sets the test problems, is missing).")
    shared = "SFT, ORM and SORM" if "sorm" in data.reward_models else "SFT and ORM"
    grpo = ", GRPO with the objectives ablation" if GRPO.name in data.runs else ""
    seeds, variant_seeds = seed_counts(cfg)  # a count left at 0 is the budget's default
    intro = (f"Re-testing Havrilla et al. 2024 at the scale at hand{quick}. {evaluation} RL seeds: {seeds} for "
             f"EI/PPO/RCRL (sparse, from SFT) and continued SFT{grpo}, {variant_seeds} for the reward variants and "
             f"the pretrained start; one shared pretrain, {shared}.{_seeds_evaluated(data, cfg)} Wall time "
             f"{wall_seconds / 60:.1f} min.")
    items, (checked, flipped) = _finding_items(data, cfg)
    unsat = unsaturated_k(data)
    method = ("Intervals: 95%, paired over test questions and seeds (stats.py): a bootstrap over questions (the "
              "same draw for every model) for the question part, Student's t with seeds - 1 degrees of freedom on "
              "the spread of the per-seed statistic for the seed part, their half-widths added in quadrature; "
              "an interval over one seed has no seed variance and says so. "
              f"{N_BOOT} replicates (400 per point for the plots' bands); every verdict is decided again on a second "
              f"bootstrap seed: {checked} verdicts checked, {flipped} changed (one that changes is called "
              f"inconclusive). Verdict rules, margin m = {MARGIN} (accuracy) unless stated (F3 {F3_MARGIN} in log2 "
              f"rollouts, one doubling, on a t-interval over seeds; F5's gap after RL {F5_GAP}; F7 {F7_MARGIN:g} "
              "distinct verified solution(s) per question), fixed before the data: "
              + "; ".join(f"{name}: {text}" for name, text in RULES.items())
              + ". Where both a rule's holds and contradicted conditions are met (a significant change smaller than m), "
                "holds wins. 'similar' can hold only at a half-width below m: where it is not reachable the part says "
                "so (the margin is not widened to the precision reached: that would let noise make things similar). "
                "Not testable: the arm a comparison is about did not learn (gate: its final maj@1 minus its start's "
                "is not significantly above 0; F3's gate: its dev maj@1 at its last in-run point minus at 0 "
                "rollouts), or the ORM ranks a question's own samples no better than chance "
                f"(within-question AUC <= {ORM_MIN_AUC}), or (F8) the natural ratio of RCRL's labels is near 1:1 "
                f"(its good fraction within [{F8_NEAR_EVEN[0]}, {F8_NEAR_EVEN[1]}]). A finding holds when all its "
                "parts hold, is contradicted when any is, is not testable when a required part is, and is inconclusive otherwise. F2 tests pass@k "
                f"at the largest k of {', '.join(map(str, LADDER))} where SFT's pass@k <= {SATURATED}"
              + (f" (here k = {unsat[0]}: SFT's {unsat[1]:.3f})." if unsat else " (none here)."))
    if data.verified:
        method += (f" Findings about pass@K use step-verified pass@K: answer-only pass@{k} is compared with a "
                   "question-blind guesser below.")
    results = [Table(*results_table(data)),
               Para("maj@1 is greedy; its interval is over seeds and questions. `_verified` counts a sample correct only "
                    "if every step checks out. Other cells: mean over seeds.")]
    if guess:
        results.append(Para(
            f"Question-blind guesser (samples the {guess['distinct_train_answers']} distinct train answers by their "
            f"frequency), on the same {guess['n']} questions: pass@1 {guess['pass@1']:.3f}, pass@{k} "
            f"{guess[f'pass@{k}']:.3f}; its verified pass@{k} is 0. Answer-only pass@{k} at or below this floor "
            "says nothing about reasoning."))
        if "room" in guess:
            results.append(Para(f"Room above maj@1: SFT's {pass_metric(data, k)} - maj@1 on those {guess['n']} "
                                f"questions is {guess['room']:+.3f}."))
        profile = profile_line(guess, k)
        results += [Para(profile)] if profile else []
    out = [Section(f"mathrl study: {cfg.task}{' (quick)' if cfg.quick else ''}", [Para(intro)], level=1),
           Section("Findings", [Para(method, small=True), items]),
           Section("Results (test split)", results),
           Section("Differences (paired, 95% CI)", [Table(*diff_table(data))])]
    sizes = sizes_table(data)
    if sizes[1]:
        out.append(Section("Model sizes (F7)", [
            Para("The grid's EI and PPO beside the same runs at another embedded model size (`mathrl study --sizes`: "
                 "each size its own pretrain and SFT at the grid's budgets and learning rates, the runs at the "
                 "grid's rollout cap and dev schedule). Distinct verified solutions: per question, the distinct texts "
                 "(up to whitespace and case) among its samples whose answer and every step are right; test: the final "
                 "evaluation's K samples; dev: the in-run evaluations' samples, at each rollout point."),
            Table(*sizes)]))
    complexity = sample_complexity_table(data)
    if complexity[1]:
        out.append(Section("Sample complexity", [
            Para(f"Per RL run, on each seed's dev maj@1 curve (its in-run evaluations on dev questions, log-spaced "
                 f"in rollouts): the rollouts to reach its start plus {FRACTION:.0%} of its gain (its best point "
                 "minus its start), interpolated linearly between the points around it; their mean over the seeds "
                 "that learned with a 95% t-interval (mean +- t(n-1) sd / sqrt(n); one seed has no interval); a seed "
                 "whose curve never rose did not learn. Where each seed stopped: at its plateau (the best of its "
                 "last two evaluations no more than the plateau margin above the best before them, after a rise "
                 "above its start), or at its cap without one. A seed that stopped at its plateau produces its stop "
                 "model for any larger budget, so its curve is carried forward to its run's later points (its last "
                 "evaluation's records repeated): the last column counts those points among the curve's."),
            Table(*complexity)]))
    objectives = objectives_table(data)
    if objectives[1]:
        out.append(Section("Objectives (ablation, paired, 95% CI)", [
            Para("Each of GRPO's loss variants minus the default GRPO run, same start, rollout budget, seeds and test "
                 "questions (`mathrl study --ablation objectives`)."), Table(*objectives)]))
    curriculum = curriculum_lines(data)
    if curriculum:
        out.append(Section("What the curriculum ablation did", [
            Para("The runs of `mathrl study --ablation curriculum` (findings N1-N3 above), from their histories."),
            Items([Item(x) for x in curriculum])]))
    out += [Section("Power", [_power(data)]),
            Section("Per difficulty (test split, maj@1, mean over seeds)", [Table(*difficulty_table(data))]),
            Section("Budgets", [Para("Every RL run from either start has the same rollout budget (samples drawn for "
                                     "training; in-run evaluations not counted), its cap: a run that stops at its "
                                     "dev plateau consumes fewer. " + _rates_line(cfg)), Table(*budget_table(data))])]
    swept = _sweep_table(root)
    if swept:
        out.append(Section("Tuning sweep (dev split)", [Para(f"From {root / 'sweep.json'}: the final dev maj@1 of "
                                                             "each swept run (one seed)."), Table(*swept)]))
    orm = _reward_models(data)
    if orm:
        out.append(Section("Reward models", [Items(orm)]))
    plots = [p for p in [plot_sft(data, root), *plot_curves(data, root), plot_training(data, root)] if p]
    out.append(Section("Plots", [Figures(plots)]))
    ex = examples(data)
    if ex:
        blocks = []
        for qid, per_model in ex:
            blocks += [Para(qid, bold=True), Table(["model", "greedy completion", "correct"],
                                                   [[m, t, "yes" if ok else "no"] for m, t, ok in per_model])]
        out.append(Section("Three test questions, greedy completions", blocks))
    times = sorted(data.finished.items(), key=lambda x: -x[1].seconds)
    out.append(Section("Time per stage", [Table(["stage", "minutes"], [[n, f"{f.seconds / 60:.1f}"] for n, f in times])]))
    out.append(Section("Provenance", [Items([Item(x) for x in provenance()]), Para("Stage commands:"),
                                      Code([" ".join(f.command) for f in data.finished.values()])]))
    return out


def curriculum_lines(data: StudyData) -> list[str]:
    """What the curriculum ablation's runs did, from their histories (means over seeds): backtracking's revealed
    reference steps per quarter of the run, the questions drawn per difficulty level by PLR and by plain PPO, how
    often PLR replayed, and the backtranslate stage's counts."""
    lines = []
    bt = data.runs.get(PPO_BACKTRACK.name)
    if bt and bt.history:
        quarters = []
        for h in bt.history.values():
            steps = [r["backtrack_steps"] for r in h if "backtrack_steps" in r]
            if steps:
                n = len(steps)
                # a quarter without iterations (a run of fewer than 4) is None, shown as "-"
                quarters.append([sum(part) / len(part) if (part := steps[i * n // 4:(i + 1) * n // 4]) else None
                                 for i in range(4)])
        if quarters:
            mean = [None if any(q[i] is None for q in quarters) else sum(q[i] for q in quarters) / len(quarters)
                    for i in range(4)]
            lines.append("backtracking: mean revealed reference steps per prompt, by quarter of the run's iterations: "
                         + ", ".join("-" if m is None else f"{m:.2f}" for m in mean) + f" ({len(quarters)} seed(s))")

    def draws(run: str) -> dict[str, float]:
        r = data.runs.get(run)
        total: dict[str, float] = {}
        for h in (r.history.values() if r else []):
            for row in h:
                for key, v in row.items():
                    if key.startswith("plr_draws_level_"):
                        total[key.removeprefix("plr_draws_level_")] = total.get(key.removeprefix("plr_draws_level_"), 0) + v
        n = sum(total.values())
        return {level: v / n for level, v in sorted(total.items(), key=lambda kv: int(kv[0]))} if n else {}

    plr, plain = draws(PPO_PLR.name), draws(PPO.name)
    if plr:
        replayed = [row.get("plr_replayed", 0) for h in data.runs[PPO_PLR.name].history.values() for row in h]
        drawn = sum(sum(v for k, v in row.items() if k.startswith("plr_draws_level_"))
                    for h in data.runs[PPO_PLR.name].history.values() for row in h)
        lines.append("prioritized level replay: questions drawn per difficulty level (steps): "
                     + ", ".join(f"{lv}: {f:.3f}" for lv, f in plr.items())
                     + (" (plain PPO: " + ", ".join(f"{lv}: {f:.3f}" for lv, f in plain.items()) + ")" if plain else "")
                     + f"; replayed {sum(replayed) / max(1, drawn):.3f} of its draws")
    if data.backtranslated:
        lines.append("backtranslated pairs: " + ", ".join(f"{k.replace('_', ' ')} {v:,}"
                                                           for k, v in data.backtranslated.items()))
    return lines


def _rates_line(cfg) -> str:
    """Where the runs' learning rates come from: the tuning sweep's selection (budgets.STUDY_LR) or, before one was
    recorded, each command's default; a real model's from published recipes."""
    if cfg.task != "synthetic":
        return ("Learning rates: starting points from published recipes for models of this size (study.REAL_MODEL; "
                "docs/algorithms.md, \"Real models\"), not tuned here.")
    if not STUDY_LR:
        return ("Learning rates: each command's default (no tuning sweep recorded in budgets.STUDY_LR; `mathrl study "
                "--sweep` runs one).")
    return ("Learning rates: those the tuning sweep selected on dev (`mathrl study --sweep`: each compared algorithm "
            "at its default rate x 0.3, 1 and 3, one seed, the study's cap; docs/results.md, \"Tuning sweep\"); "
            "epochs, PPO's epochs and KL at their defaults; the reward variants, the ablations and the pretrained "
            "start at their algorithm's rate.")


def _sweep_table(root: Path) -> tuple[list[str], list[list[str]]] | None:
    """The tuning sweep's rows where ``mathrl study --sweep`` ran in this study's directory (sweep.json)."""
    path = root / "sweep.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    rows = [[r["algorithm"], r["lr"], f"{r['final']:.3f}", f"{r['best']:.3f}", f"{r['consumed']:,}",
             "yes" if saved["selected"].get(r["algorithm"]) == r["lr"] else ""] for r in saved["rows"]]
    return ["algorithm", "learning rate", "final dev maj@1", "best dev maj@1", "consumed", "selected"], rows


def write_report(root: Path, cfg, stages, wall_seconds: float) -> Path:
    report = sections(root, cfg, collect(root, stages), wall_seconds)
    (root / "report.md").write_text(markdown(report))
    (root / "report.html").write_text(page(report, "mathrl study"))
    return root / "report"


def _auc(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"
