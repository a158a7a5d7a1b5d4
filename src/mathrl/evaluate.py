"""Evaluation: sample, grade through the task, and compute the paper's metrics (definitions in ``metrics.py``).

``evaluate`` samples one greedy completion (maj@1) and K completions at a temperature per problem, grades every
completion with the task, and ``summarize`` turns the graded results into metrics:

- ``maj@1``, ``maj@k``, ``pass@k`` (k = 1, 2, 4, ... up to K, and K), ``rerank@k`` when reward-model scores exist;
- the same with ``_verified`` where the task checks steps (answer right *and* every step right), since small
  answer spaces let lucky guesses pass answer-only checks (docs/metrics.md: a question-blind guesser's pass@96);
- ``sample_accuracy`` (mean over all K samples), ``step_accuracy`` (fraction of written steps that are right),
  ``first_error_step`` (mean index of the first wrong step among process-wrong samples),
  ``lucky_fraction`` (answer-correct samples with a wrong step, over answer-correct samples);
- diversity per question among the K samples: ``distinct_answers``, ``distinct_solutions`` (any text, garbled
  ones included), ``distinct_correct_solutions`` (answer-correct texts) and ``distinct_verified_solutions``
  (answer and every step correct), the last two the diversity that counts;
- ``by_difficulty``: maj@1 / pass@K / counts per difficulty level.

With ``k_problems`` the K samples are drawn for the first ``k_problems`` problems only (greedy maj@1 on all of
them): the K-sample metrics are then over those problems, and ``n_sampled_questions`` says how many.

``mathrl score`` computes the same metrics for completions produced elsewhere.

Side by side (``mathrl eval`` and ``score``, tasks whose answers are read by an extraction mode: gsm8k, svamp, your
own data): every completion is also graded with each extraction of ``side_by_side`` (strict, flexible, boxed, and
math-verify when installed) and the answer metrics of each (maj@k, pass@k, rerank@k, sample_accuracy,
no_answer_rate) are reported under ``by_extraction``, as lm-evaluation-harness reports strict-match and
flexible-extract for GSM8K; the top-level metrics are the headline extraction's (the task's ``extract``).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from mathrl import distributed
from mathrl.metrics import auc, distinct_count, maj_at_k, normalize_solution, pass_at_k, rerank_at_k
from mathrl.sampler import sampling_params
from mathrl.tasks.answers import EXTRACTIONS, MATH_VERIFY, grade_text
from mathrl.tasks.base import Grade, Problem


@dataclass
class QuestionResult:
    """Graded completions of one problem. ``greedy`` is None when no greedy completion was sampled."""

    problem: Problem
    samples: list[Grade]
    texts: list[str]
    greedy: Grade | None = None
    greedy_text: str | None = None
    scores: list[float] | None = None  # reward-model score per sample (rerank@k)
    meta: dict = field(default_factory=dict)


def ks_up_to(k: int) -> list[int]:
    """1, 2, 4, ... below k, and k."""
    out, x = [], 1
    while x < k:
        out.append(x)
        x *= 2
    return out + [k]


def summarize(results: Sequence[QuestionResult], k: int | None = None) -> dict:
    """Metrics over graded results (see the module docstring). ``k`` defaults to the samples per question."""
    if not results:
        return {"n_questions": 0}
    all_results = results
    sampled = [r for r in results if r.samples]
    n = min((len(r.samples) for r in sampled), default=0)
    k = k or n
    m: dict = {"n_questions": len(results), "k": k, "n_samples": n, "n_sampled_questions": len(sampled)}
    has_greedy = all(r.greedy is not None for r in results)
    first = sampled[0].samples[0] if sampled else results[0].greedy
    has_steps = first is not None and first.steps is not None
    has_scores = n > 0 and all(r.scores is not None for r in sampled)

    def mean(xs):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else float("nan")

    if has_greedy:
        m["maj@1"] = mean(r.greedy.correct for r in results)
        if has_steps:
            m["maj@1_verified"] = mean(r.greedy.verified for r in results)
    results = sampled  # the K-sample metrics are over the problems that have K samples
    if n:
        for kk in ks_up_to(k):
            if kk > n:
                continue
            m[f"pass@{kk}"] = mean(pass_at_k(n, sum(g.correct for g in r.samples[:n]), kk) for r in results)
            if has_steps:
                m[f"pass@{kk}_verified"] = mean(
                    pass_at_k(n, sum(g.verified for g in r.samples[:n]), kk) for r in results)
            if kk > 1:
                m[f"maj@{kk}"] = mean(maj_at_k([g.answer for g in r.samples[:n]], r.problem.answer, kk)
                                      for r in results)
            if has_scores:
                m[f"rerank@{kk}"] = mean(rerank_at_k(r.scores[:n], [g.correct for g in r.samples[:n]], kk)
                                         for r in results)
        if has_scores:
            # pooled AUC: can the reward model tell right from wrong over all samples (question difficulty
            # helps); within-question AUC: among one question's samples, what reranking needs
            m["orm_auc"] = auc([s for r in results for s in r.scores[:n]],
                               [g.correct for r in results for g in r.samples[:n]])
            within = [auc(r.scores[:n], [g.correct for g in r.samples[:n]]) for r in results]
            within = [a for a in within if a == a]  # questions with both right and wrong samples
            m["orm_auc_within_question"] = mean(within) if within else float("nan")
        samples = [g for r in results for g in r.samples[:n]]
        m["sample_accuracy"] = mean(g.correct for g in samples)
        m["no_answer_rate"] = mean(g.answer is None for g in samples)
        if has_steps:
            m["sample_accuracy_verified"] = mean(g.verified for g in samples)
            m["step_accuracy"] = sum(g.steps.n_correct for g in samples) / max(1, sum(len(g.steps.steps) for g in samples))
            wrong = [g.steps.first_error for g in samples if g.steps.first_error is not None]
            m["first_error_step"] = mean(wrong) if wrong else float("nan")
            right = [g for g in samples if g.correct]
            m["lucky_fraction"] = mean(not g.verified for g in right) if right else 0.0
        m["distinct_answers"] = mean(distinct_count([g.answer for g in r.samples[:n]]) for r in results)
        m["distinct_solutions"] = mean(distinct_count([normalize_solution(t) for t in r.texts[:n]]) for r in results)
        m["distinct_correct_solutions"] = mean(distinct_count(
            [normalize_solution(t) for t, g in zip(r.texts[:n], r.samples[:n]) if g.correct]) for r in results)
        if has_steps:
            m["distinct_verified_solutions"] = mean(distinct_verified(r, n) for r in results)

    by: dict = {}
    for d in sorted({r.problem.difficulty for r in all_results}):
        group = [r for r in all_results if r.problem.difficulty == d]
        entry = {"n": len(group)}
        if has_greedy:
            entry["maj@1"] = mean(r.greedy.correct for r in group)
            if has_steps:
                entry["maj@1_verified"] = mean(r.greedy.verified for r in group)
        group = [r for r in group if r.samples]
        if n and group:
            entry[f"pass@{min(k, n)}"] = mean(pass_at_k(n, sum(g.correct for g in r.samples[:n]), min(k, n))
                                              for r in group)
            entry["sample_accuracy"] = mean(g.correct for r in group for g in r.samples[:n])
            if has_steps:
                entry[f"pass@{min(k, n)}_verified"] = mean(
                    pass_at_k(n, sum(g.verified for g in r.samples[:n]), min(k, n)) for r in group)
        by[str(d)] = entry
    m["by_difficulty"] = by
    return m


def distinct_verified(r: QuestionResult, n: int | None = None) -> int:
    """Distinct step-verified solutions among a question's first ``n`` samples (all by default): the texts whose
    answer and every step are right, counted up to whitespace and case (``metrics.normalize_solution``). The
    aggregate ``distinct_verified_solutions`` is its mean over the sampled questions; samples.jsonl records it per
    question (``question_record``) for the study's paired comparisons (finding F7)."""
    return distinct_count([normalize_solution(t) for t, g in zip(r.texts[:n], r.samples[:n]) if g.verified])


def side_by_side(task) -> tuple[str, ...]:
    """The extractions a task's completions are graded with side by side: strict, flexible and boxed, and
    math-verify where its package is installed, for tasks whose answers an extraction mode reads (gsm8k, svamp,
    your own data); none for the synthetic task, whose answer format is its own."""
    if getattr(task, "extract", None) is None:
        return ()
    return EXTRACTIONS + ((MATH_VERIFY,) if importlib.util.find_spec("math_verify") else ())


def regrade(results: Sequence[QuestionResult], mode: str) -> list[QuestionResult]:
    """The same completions graded by answer alone under extraction ``mode`` (``answers.grade_text``)."""
    def grade(r, text):
        return Grade(*grade_text(text, r.problem.answer, mode))

    return [replace(r, samples=[grade(r, t) for t in r.texts],
                    greedy=grade(r, r.greedy_text) if r.greedy_text is not None else None) for r in results]


def is_answer_metric(key: str) -> bool:
    """The metrics that depend on which extraction reads the answers (reported per extraction)."""
    return key.startswith(("maj@", "pass@", "rerank@")) or key in ("sample_accuracy", "no_answer_rate")


def by_extraction(results: Sequence[QuestionResult], modes: Sequence[str], headline_mode: str,
                  k: int | None = None) -> tuple[dict[str, list[QuestionResult]], dict[str, dict]]:
    """(the results graded under each of ``modes``, each one's answer metrics). ``results`` are already graded
    under ``headline_mode`` and are reused for it."""
    graded = {m: list(results) if m == headline_mode else regrade(results, m) for m in modes}
    metrics = {m: {key: v for key, v in summarize(g, k).items() if is_answer_metric(key)} for m, g in graded.items()}
    return graded, metrics


def format_side_by_side(metrics: dict) -> str:
    """The extractions' answer metrics as a table, the headline extraction starred ('' when there are none)."""
    table = metrics.get("by_extraction") or {}
    if not table:
        return ""
    cols = list(next(iter(table.values())))
    lines = ["| extraction | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for mode, row in table.items():
        name = f"{mode} (headline)" if mode == metrics.get("extract") else mode
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if isinstance(row.get(c), float)
                                                 else str(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def extraction_record(graded: dict[str, list[QuestionResult]], i: int) -> dict:
    """Question ``i``'s answer and verdict under each extraction, per completion (and for the greedy one)."""
    out = {}
    for mode, results in graded.items():
        r = results[i]
        out[mode] = {"answers": [g.answer for g in r.samples], "correct": [g.correct for g in r.samples]}
        if r.greedy is not None:
            out[mode].update(greedy_answer=r.greedy.answer, greedy_correct=r.greedy.correct)
    return out


def evaluate(model, tokenizer, task, problems: Sequence[Problem], sampling, *, engine, shots: Sequence[Problem] = (),
             seed: int = 0, greedy: bool = True, calculator: bool = False, scorer: Callable | None = None,
             progress=None, condition: dict | None = None, k_problems: int = 0) -> list[QuestionResult]:
    """Sample with ``engine`` (``engines.create``) and grade: ``sampling`` (a ``settings.Sampling``) gives K, the
    temperature of the K samples, the completion length and the token budget. ``scorer(prompts, texts) -> scores``
    (a reward model) adds rerank scores. ``k_problems`` > 0: the K samples for the first ``k_problems`` problems
    only (the greedy one for all).

    ``condition`` (return-conditioned models): ``{"token": "[GOOD]", "dense": bool}`` appends the good-return
    token to each prompt and, when dense, forces it after every step too."""
    k = sampling.k
    prompts = [task.prompt(p, shots) for p in problems]
    keys = [p.id for p in problems]
    fields = dict(calculator=calculator, seed=seed)
    sample_prompts = prompts
    if condition:
        good = tokenizer.convert_tokens_to_ids(condition["token"])
        sample_prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] + [good] for p in prompts]
        if condition.get("dense"):
            fields.update(step_end=task.step_end, step_marker=(good,))
    greedy_rollouts = engine.sample(model, tokenizer, sample_prompts, 1,
                                    sampling_params(sampling, task.stop_strings, **fields, temperature=0.0),
                                    keys=keys, progress=progress) if greedy else None
    n_k = min(k_problems, len(problems)) if k_problems > 0 else len(problems)
    # per-question sampling streams are keyed by the problem id, so the K samples of a problem are the same
    # whichever subset is sampled
    rollouts = engine.sample(model, tokenizer, sample_prompts[:n_k], k, sampling_params(sampling, task.stop_strings,
                                                                                          **fields),
                             keys=keys[:n_k], progress=progress) if k > 0 and n_k > 0 else []
    results = []
    for i, p in enumerate(problems):
        texts = [r.text for r in rollouts[i * k : (i + 1) * k]] if i < n_k else []
        res = QuestionResult(problem=p, samples=[task.grade(p, t) for t in texts], texts=texts)
        if greedy_rollouts is not None:
            res.greedy_text = greedy_rollouts[i].text
            res.greedy = task.grade(p, res.greedy_text)
        results.append(res)
    if scorer is not None and k > 0 and n_k > 0:
        scores = scorer([prompts[i] for i in range(n_k) for _ in range(k)], [t for r in results[:n_k] for t in r.texts])
        for i, r in enumerate(results[:n_k]):
            r.scores = list(scores[i * k : (i + 1) * k])
    return results


def write_report(results: Sequence[QuestionResult], metrics: dict, out: Path, title: str = "evaluation",
                 graded: dict[str, list[QuestionResult]] | None = None) -> None:
    """metrics.json, a readable metrics.md table, and samples.jsonl (one line per question). ``graded``: the
    results under each extraction (``by_extraction``), written per question beside the headline's; each line then
    records the headline extraction (``extract``), which ``mathrl score`` reads back."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "metrics.md").write_text(format_table(metrics, title))
    with open(out / "samples.jsonl", "w") as f:
        for i, r in enumerate(results):
            row = {**question_record(r), "question": r.problem.question, "answer": r.problem.answer,
                   "greedy": r.greedy_text, "greedy_answer": r.greedy.answer if r.greedy else None, "completions": r.texts,
                   "answers": [g.answer for g in r.samples], "correct": [g.correct for g in r.samples]}
            if r.samples and r.samples[0].steps is not None:
                row["verified"] = [g.verified for g in r.samples]
                row["first_error"] = [g.steps.first_error for g in r.samples]
            if r.scores is not None:
                row["scores"] = r.scores
            if graded:
                row["extract"] = metrics.get("extract")
                row["by_extraction"] = extraction_record(graded, i)
            f.write(json.dumps(row) + "\n")


def question_record(r: QuestionResult) -> dict:
    """What the study's statistics need of one graded question: greedy correctness, the counts behind
    pass@k (n samples, c answer-correct, c_verified step-verified) and distinct_verified, the distinct
    step-verified solutions among the n samples (``distinct_verified``); None where not measured (no step checker,
    or no samples)."""
    verified = r.samples[0].steps is not None if r.samples else (r.greedy is not None and r.greedy.steps is not None)
    return {"id": r.problem.id, "difficulty": r.problem.difficulty,
            "greedy_correct": r.greedy.correct if r.greedy else None,
            "greedy_verified": r.greedy.verified if r.greedy and verified else None,
            "n": len(r.samples), "c": sum(g.correct for g in r.samples),
            "c_verified": sum(g.verified for g in r.samples) if verified else None,
            "distinct_verified": distinct_verified(r) if verified and r.samples else None}


def append_question_records(results: Sequence[QuestionResult], path: Path, **tags) -> None:
    """Append one JSON line ``{**tags, "questions": [question_record, ...]}`` (an evaluation during training,
    tagged e.g. with the rollouts consumed), for the study's paired intervals over learning curves."""
    with open(path, "a") as f:
        f.write(json.dumps({**tags, "questions": [question_record(r) for r in results]}) + "\n")


def format_table(metrics: dict, title: str = "evaluation") -> str:
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if isinstance(value, dict):  # by_difficulty, by_extraction: their own tables below
            continue
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    by = metrics.get("by_difficulty") or {}
    if by:
        cols = sorted({c for e in by.values() for c in e})
        lines += ["", "| difficulty | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for d, e in by.items():
            cells = [f"{e[c]:.3f}" if isinstance(e.get(c), float) else str(e.get(c, "")) for c in cols]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
    if metrics.get("by_extraction"):
        lines += ["", "The answer metrics under each extraction:", "", format_side_by_side(metrics)]
    return "\n".join(lines) + "\n"


def headline(metrics: dict, k: int | None = None) -> str:
    """One line with the main metrics, for logs."""
    k = k or metrics.get("k")
    keys = ["maj@1", "maj@1_verified", f"maj@{k}", f"pass@{k}", f"pass@{k}_verified", f"rerank@{k}", "sample_accuracy"]
    return "  ".join(f"{key}={metrics[key]:.3f}" for key in keys if isinstance(metrics.get(key), float))


def evaluate_in_run(policy, tokenizer, task, problems: Sequence[Problem], ev, sampling, *, engine, seed: int,
                    run_dir: Path, rollouts: int, when: str, shots: Sequence[Problem] = (),
                    condition: dict | None = None) -> dict:
    """An RL run's evaluation: ``evaluate`` with ``engine``, the run's ``settings.Evaluation`` (K, temperature)
    and sampling limits, per-question records appended to RUN/eval_questions.jsonl (tagged with the rollouts
    consumed, what the study pairs on), the headline printed; returns the float metrics for the run's history."""
    policy.eval()
    sampling = replace(sampling, k=ev.eval_k, temperature=ev.eval_temperature)
    results = evaluate(policy, tokenizer, task, problems, sampling, engine=engine, shots=shots, seed=seed,
                       condition=condition)
    metrics = summarize(results)
    if distributed.is_main():
        append_question_records(results, Path(run_dir) / "eval_questions.jsonl", rollouts=rollouts)
    print(f"  eval {when}: {headline(metrics)}", flush=True)
    return {k: v for k, v in metrics.items() if isinstance(v, float)}
