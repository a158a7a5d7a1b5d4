"""Small commands that are not training algorithms: data inspection, model creation, evaluation, scoring. Their
configs are in ``commands_config.py`` (torch-free, for the CLI's ``--help``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mathrl import engines
from mathrl.commands_config import DataConfig, DataStatsConfig, EvalConfig, ModelInitConfig, ScoreConfig
from mathrl.errors import UsageError
from mathrl.evaluate import (QuestionResult, by_extraction, evaluate, extraction_record, format_side_by_side,
                             format_table, headline, side_by_side, summarize, write_report)
from mathrl.models import count_parameters, init_model, load_model, load_tokenizer
from mathrl.record import ModelRecord, read_record
from mathrl.reward_model import load_reward_model
from mathrl.runlog import progress
from mathrl.runsetup import few_shot_examples, output_dir, resolve_device, setup_threads, task_for, write_record
from mathrl.tasks import load_task, task_options
from mathrl.tasks.answers import GRADERS, grader_audit
from mathrl.tasks.data_files import jsonl_lines


# ----------------------------------------------------------------------------------------------------------
# mathrl data show / stats


def data_show(cfg: DataConfig) -> None:
    task = load_task(cfg.task, level=cfg.level, data_dir=cfg.data_dir)
    for p in task.problems(cfg.split)[: max(0, cfg.n)]:
        print(f"--- {p.id} (difficulty {p.difficulty})")
        print(f"question: {p.question}")
        print(f"solution: {p.solution}")
        print(f"answer:   {p.answer}")


def data_stats(cfg: DataStatsConfig) -> None:
    task = load_task(cfg.task, level=cfg.level, data_dir=cfg.data_dir)
    problems = task.problems(cfg.split)
    if not problems:
        raise UsageError(f"split {cfg.split} of {cfg.task} is empty")
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
        unit = "tokens"
        q = [len(ids) for ids in tok([p.question for p in problems], add_special_tokens=False)["input_ids"]]
        s = [len(ids) for ids in tok([task.target(p) for p in problems], add_special_tokens=False)["input_ids"]]
    else:
        unit = "characters"
        q = [len(p.question) for p in problems]
        s = [len(p.solution) for p in problems]
    print(f"task {cfg.task}, split {cfg.split}: {len(problems)} problems")
    for name, xs in (("question", q), ("solution", s)):
        print(f"  {name} {unit}: mean {statistics.mean(xs):.1f}, median {statistics.median(xs):.0f}, "
              f"min {min(xs)}, max {max(xs)}")
    by = {}
    for p in problems:
        by[p.difficulty] = by.get(p.difficulty, 0) + 1
    print("  difficulty: " + ", ".join(f"{d}: {n}" for d, n in sorted(by.items())))


# ----------------------------------------------------------------------------------------------------------
# mathrl model init


def model_init(cfg: ModelInitConfig) -> None:
    out = Path(cfg.out)
    if out.is_file() or (out.is_dir() and any(out.glob("*.safetensors"))):
        # a fresh random model written over a trained one would lose it without a word
        raise UsageError(f"--out {cfg.out} already holds {'a file' if out.is_file() else 'a model'}; choose another "
                         "--out")
    task = load_task(cfg.task, level=cfg.level, data_dir=cfg.data_dir)
    model, tokenizer = init_model(task, cfg.out, size=cfg.size, seed=cfg.seed)
    write_record(cfg.out, ModelRecord(task=task_options(task), stage="init", shots=0, size=cfg.size))
    print(f"wrote {cfg.out}: {count_parameters(model) / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")


# ----------------------------------------------------------------------------------------------------------
# mathrl eval


def run_eval(cfg: EvalConfig) -> dict:
    setup_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    task = task_for(cfg.model, cfg.data, cfg.prompting)
    problems = task.problems(cfg.split)
    if cfg.n:
        problems = problems[: cfg.n]
    if not problems:
        raise UsageError(f"split {cfg.split} of {task.name} is empty")
    out = output_dir(cfg.out or Path(cfg.model).resolve().parent / f"eval-{cfg.split}")  # before the sampling
    condition = read_record(cfg.model).condition
    if condition and condition.get("dense") and cfg.sampling.engine == "vllm":
        raise UsageError(f"{cfg.model} is conditioned on dense returns (a marker forced after every step), which "
                         "--engine vllm cannot sample: use --engine mathrl")
    model, tokenizer = load_model(cfg.model, device=device, precision=cfg.run.precision, compute=cfg.compute)
    engine = engines.create(model, cfg.sampling, cfg.model)
    scorer = None
    if cfg.orm:
        scorer = load_reward_model(cfg.orm, tokenizer, device=device).score_texts
    shots = few_shot_examples(task, cfg.model, cfg.few_shot.shots, cfg.few_shot.exemplars)
    total = len(problems) + cfg.sampling.k * (min(cfg.k_problems, len(problems)) if cfg.k_problems else len(problems))
    bar = progress(total, "eval", "sample")
    results = evaluate(model, tokenizer, task, problems, cfg.sampling, engine=engine, shots=shots, seed=cfg.run.seed,
                       calculator=cfg.calculator, scorer=scorer, progress=bar.update, condition=condition,
                       k_problems=cfg.k_problems)
    bar.close()
    engine.close()
    metrics = summarize(results)
    graded = add_side_by_side(task, results, metrics)
    write_report(results, metrics, out, title=f"{cfg.model} on {task.name}/{cfg.split}", graded=graded)
    print(headline(metrics))
    print_side_by_side(metrics)
    warn_no_answer(task, metrics)
    print(f"wrote {out}/metrics.json, metrics.md, samples.jsonl")
    return metrics


# ----------------------------------------------------------------------------------------------------------
# mathrl score


def read_samples(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of each line of a ``mathrl score`` samples file, checked: a list of completions and a
    question or an id."""
    rows = []
    for lineno, row in jsonl_lines(path):
        comps = row.get("completions") if isinstance(row, dict) else None
        if not isinstance(comps, list) or not comps or not all(isinstance(c, str) for c in comps):
            raise UsageError(f"{path}:{lineno}: needs a non-empty list of strings under 'completions'")
        if "id" not in row and not isinstance(row.get("question"), str):
            raise UsageError(f"{path}:{lineno}: needs a 'question' or an 'id'")
        rows.append((lineno, row))
    return rows


def score_extraction(task_name: str, extract: str | None, rows: list[tuple[int, dict]], samples: str
                     ) -> tuple[str | None, str]:
    """The headline extraction of ``mathrl score`` and why: ``--extract`` when given; else the one every line
    records (``extract``: ``mathrl eval``'s samples.jsonl records the extraction it graded a model's completions
    with); else flexible, the last number, since completions written elsewhere rarely end in '#### N' (as
    ``mathrl eval`` grades a model mathrl did not train). The synthetic task has its own format: None."""
    if extract is not None or task_name == "synthetic":
        return extract, ""
    recorded = {row.get("extract") for _, row in rows}
    if len(recorded) == 1 and next(iter(recorded)) in GRADERS:
        mode = next(iter(recorded))
        return mode, f"as recorded in {samples} by mathrl eval"
    return "flexible", "completions from elsewhere: the last number; --extract strict reads '#### N'"


def add_side_by_side(task, results: list[QuestionResult], metrics: dict, k: int | None = None
                     ) -> dict[str, list[QuestionResult]] | None:
    """Grade ``results`` under every extraction of ``evaluate.side_by_side(task)`` too: adds ``extract`` (the
    headline's) and ``by_extraction`` to ``metrics``; returns the results under each extraction (None for a task
    without extraction modes)."""
    modes = side_by_side(task)
    if not modes:
        return None
    graded, table = by_extraction(results, modes, task.extract, k)
    metrics["extract"] = task.extract
    metrics["by_extraction"] = table
    return graded


def print_side_by_side(metrics: dict) -> None:
    if metrics.get("by_extraction"):
        print(f"answer metrics by extraction (headline: {metrics['extract']}):")
        print(format_side_by_side(metrics))


def run_score(cfg: ScoreConfig) -> dict:
    d = cfg.data
    path = Path(cfg.samples)
    rows = read_samples(path)
    out = output_dir(cfg.out)
    extract, why = score_extraction(d.task, d.extract, rows, cfg.samples)
    task = load_task(d.task, level=d.level, data_dir=d.data_dir, extract=extract, surface=cfg.surface, **d.fields())
    if why:
        print(f"{task.name} answers graded with --extract {extract} ({why}); every extraction side by side below")
    problems = task.problems(cfg.split)
    by_id = {p.id: p for p in problems}
    by_question = {" ".join(p.question.split()): p for p in problems}
    results: list[QuestionResult] = []
    unmatched: list[str] = []
    n_min = None
    for lineno, row in rows:
        comps = row["completions"]
        if "id" in row:
            problem = by_id.get(str(row["id"]))
        else:
            problem = by_question.get(" ".join(row["question"].split()))
        if problem is None:
            unmatched.append(str(row.get("id", row.get("question", "")))[:80])
            continue
        grades = [task.grade(problem, c) for c in comps]
        results.append(QuestionResult(problem=problem, samples=grades, texts=list(comps)))
        n_min = len(comps) if n_min is None else min(n_min, len(comps))
    if not results:
        raise UsageError(f"no line of {path} matched a problem of {task.name}/{cfg.split}")
    k = cfg.k or n_min
    if k > n_min:
        raise UsageError(f"k={k} is larger than the fewest completions on a line ({n_min})")
    if cfg.orm:
        rm = load_reward_model(cfg.orm, None, device=resolve_device(cfg.device))
        # the same questions, prompted as the reward model's samples were (its mathrl.json)
        rm_task = task_for(cfg.orm, cfg.data, teaching=True, surface=cfg.surface)
        for r in results:
            r.scores = rm.score_texts([rm_task.prompt(r.problem)] * len(r.texts), r.texts)
    metrics = summarize(results, k=k)
    metrics["n_unmatched"] = len(unmatched)
    graded = add_side_by_side(task, results, metrics, k)
    # maj@1 from samples: with one completion per line, the vote is that completion; with several, pass@1 is the
    # mean sample accuracy, neither a greedy answer nor a vote, and maj@1 is left out
    for m in (metrics, *(metrics.get("by_extraction") or {}).values()):
        if "maj@1" not in m and "pass@1" in m and n_min == 1:
            m["maj@1"] = m["pass@1"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "metrics.md").write_text(format_table(metrics, f"{cfg.samples} on {task.name}/{cfg.split}"))
    with open(out / "scored.jsonl", "w") as f:
        for i, r in enumerate(results):
            row = {"id": r.problem.id, "reference": r.problem.answer, "answers": [g.answer for g in r.samples],
                   "correct": [g.correct for g in r.samples]}
            if r.samples[0].steps is not None:
                row["verified"] = [g.verified for g in r.samples]
            if r.scores is not None:
                row["scores"] = r.scores
            if graded:
                row["extract"] = metrics["extract"]
                row["by_extraction"] = extraction_record(graded, i)
            f.write(json.dumps(row) + "\n")
    if cfg.audit:
        audit = grader_audit([(t, r.problem.answer, r.problem.id) for r in results for t in r.texts])
        (out / "audit.json").write_text(json.dumps(audit, indent=1))
        print(format_audit(audit))
    if unmatched:
        print(f"warning: {len(unmatched)} line(s) matched no problem, e.g. {unmatched[0]!r}")
    print(headline(metrics, k))
    print_side_by_side(metrics)
    warn_no_answer(task, metrics)
    print(f"wrote {out}/metrics.json and {out}/scored.jsonl")
    return metrics


def warn_no_answer(task, metrics: dict) -> None:
    """One line when most completions have no answer under strict extraction (e.g. an instruct model that ends
    with 'A: 26', not '#### 26'): every one of them scores 0, and the other extraction may tell another story."""
    rate = metrics.get("no_answer_rate")
    if rate is not None and rate > 0.5 and getattr(task, "extract", None) == "strict":
        print(f"warning: {rate:.0%} of completions have no '#### N' answer under --extract strict (they score 0); "
              "--extract flexible reads the last number instead")


def format_audit(audit: dict) -> str:
    """The graders' agreement table of ``answers.grader_audit``, as printed by ``score --audit``."""
    lines = [f"grader audit over {audit['n_completions']} completions",
             "| extraction | accuracy |", "|---|---|"]
    lines += [f"| {m} | {a:.3f} |" for m, a in audit["accuracy"].items()]
    lines += ["", "| pair | agree on correctness |", "|---|---|"]
    lines += [f"| {pair} | {a:.3f} |" for pair, a in audit["agreement"].items()]
    lines += ["", "| verdicts | completions |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(audit["patterns"].items(), key=lambda kv: -kv[1])]
    for pair, examples in audit["examples"].items():
        for e in examples[:1]:
            lines.append(f"e.g. {pair} differ on {e['name']}: answers {e['answers']}, reference {e['reference']}, "
                         f"ending {e['tail'][-60:]!r}")
    return "\n".join(lines)
