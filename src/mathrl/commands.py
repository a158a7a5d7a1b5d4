"""Small commands that are not training algorithms: data inspection, model creation, evaluation, scoring."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from mathrl.config import field
from mathrl.errors import UsageError
from mathrl.evaluate import QuestionResult, evaluate, format_table, headline, summarize, write_report
from mathrl.models import SIZES, count_parameters, init_model, load_model, load_tokenizer
from mathrl.run import read_meta, resolve_device
from mathrl.runlog import progress
from mathrl.tasks import recorded_level, task_from_options
from mathrl.training import setup_threads


# ----------------------------------------------------------------------------------------------------------
# mathrl data show / stats


@dataclass
class DataConfig:
    task: str = field("synthetic", "task: synthetic, gsm8k or svamp")
    split: str = field("test", "split")
    n: int = field(3, "problems to show")
    level: int | None = field(None, "synthetic task level")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    tokenizer: str | None = field(None, "model directory whose tokenizer counts tokens (stats)")


def data_show(cfg: DataConfig) -> None:
    task = task_from_options(cfg.task, level=cfg.level, data_dir=cfg.data_dir)
    for p in task.problems(cfg.split)[: max(0, cfg.n)]:
        print(f"--- {p.id} (difficulty {p.difficulty})")
        print(f"question: {p.question}")
        print(f"solution: {p.solution}")
        print(f"answer:   {p.answer}")


def data_stats(cfg: DataConfig) -> None:
    task = task_from_options(cfg.task, level=cfg.level, data_dir=cfg.data_dir)
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


@dataclass
class ModelInitConfig:
    out: str = field("runs/model-init", "directory to write the model and tokenizer to")
    task: str = field("synthetic", "task whose text the tokenizer is trained on")
    size: str = field("tiny", "model size: " + ", ".join(SIZES))
    level: int | None = field(None, "synthetic task level")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    seed: int = field(0, "initialisation seed")

    def validate(self) -> None:
        if self.size not in SIZES:
            raise UsageError(f"unknown size {self.size!r} (known: {', '.join(SIZES)})")


def model_init(cfg: ModelInitConfig) -> None:
    from mathrl.run import write_meta
    from mathrl.tasks import task_options

    task = task_from_options(cfg.task, level=cfg.level, data_dir=cfg.data_dir)
    model, tokenizer = init_model(task, cfg.out, size=cfg.size, seed=cfg.seed)
    write_meta(cfg.out, task=task_options(task), stage="init", shots=0, size=cfg.size)
    print(f"wrote {cfg.out}: {count_parameters(model) / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")


# ----------------------------------------------------------------------------------------------------------
# mathrl eval


@dataclass
class EvalConfig:
    model: str = field("", "model directory (required)")
    task: str = field("", "task (default: the one recorded with the model)")
    level: int | None = field(None, "synthetic task level (default: the model's)")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    extract: str | None = field(None, "gsm8k/svamp answer extraction: strict or flexible")
    split: str = field("test", "split to evaluate")
    n: int = field(0, "evaluate the first N problems (0: all)")
    k: int = field(96, "samples per problem for maj@K, pass@K and rerank@K")
    k_problems: int = field(0, "draw the K samples for the first N problems only, greedy maj@1 for all (0: all)")
    temperature: float = field(1.0, "sampling temperature for the K samples")
    max_new_tokens: int = field(128, "completion length limit")
    shots: int = field(-1, "few-shot examples in the prompt (-1: as recorded with the model, else 0)")
    calculator: bool = field(False, "insert calculator results after '<<expr=' (GSM8K annotations)")
    orm: str = field("", "reward-model directory for rerank@K")
    token_budget: int = field(1 << 17, "sampler cache budget in tokens (bounds memory)")
    seed: int = field(0, "sampling seed")
    threads: int = field(0, "torch threads (0: the cores this process may use)")
    device: str = field("auto", "cpu, cuda, cuda:N or auto")
    out: str = field("", "directory for metrics.json, metrics.md and samples.jsonl (default: MODEL/../eval-SPLIT)")

    def validate(self) -> None:
        if not self.model:
            raise UsageError("--model is required")
        if self.k < 0 or self.n < 0 or self.k_problems < 0:
            raise UsageError("k, n and k_problems must be >= 0")
        if self.max_new_tokens < 1:
            raise UsageError("max_new_tokens must be >= 1")


def task_for_model(model_dir: str, task: str, level, data_dir, extract):
    """The task a command should use: explicit options, else those recorded with the model."""
    if not Path(model_dir).is_dir():
        raise UsageError(f"model directory not found: {model_dir}")
    meta = read_meta(model_dir).get("task", {})
    name = task or meta.get("name")
    if not name:
        raise UsageError(f"{model_dir} records no task; pass --task")
    if name == "synthetic" and level is None:
        level = recorded_level(meta)
    if name != "synthetic" and extract is None and meta.get("name") == name:
        extract = meta.get("extract")
    # the surface (synthetic: qa or prose) a model was trained to write is part of its task
    surface = meta.get("surface") if name == "synthetic" and meta.get("name") == name else None
    return task_from_options(name, level=level, data_dir=data_dir, extract=extract, surface=surface)


def few_shot_examples(task, model_dir: str, shots: int):
    if shots < 0:
        shots = int(read_meta(model_dir).get("shots", 0))
    return task.problems("train")[:shots]


def run_eval(cfg: EvalConfig) -> dict:
    setup_threads(cfg.threads)
    device = resolve_device(cfg.device)
    task = task_for_model(cfg.model, cfg.task, cfg.level, cfg.data_dir, cfg.extract)
    problems = task.problems(cfg.split)
    if cfg.n:
        problems = problems[: cfg.n]
    if not problems:
        raise UsageError(f"split {cfg.split} of {task.name} is empty")
    model, tokenizer = load_model(cfg.model, device=device)
    scorer = None
    if cfg.orm:
        from mathrl.reward_model import load_reward_model

        scorer = load_reward_model(cfg.orm, tokenizer, device=device).score_texts
    shots = few_shot_examples(task, cfg.model, cfg.shots)
    total = len(problems) + cfg.k * (min(cfg.k_problems, len(problems)) if cfg.k_problems else len(problems))
    bar = progress(total, "eval", "sample")
    results = evaluate(model, tokenizer, task, problems, k=cfg.k, temperature=cfg.temperature,
                       max_new_tokens=cfg.max_new_tokens, shots=shots, seed=cfg.seed, calculator=cfg.calculator,
                       token_budget=cfg.token_budget, scorer=scorer, progress=bar.update,
                       condition=read_meta(cfg.model).get("condition"), k_problems=cfg.k_problems)
    bar.close()
    metrics = summarize(results)
    out = Path(cfg.out) if cfg.out else Path(cfg.model).resolve().parent / f"eval-{cfg.split}"
    write_report(results, metrics, out, title=f"{cfg.model} on {task.name}/{cfg.split}")
    print(headline(metrics))
    print(f"wrote {out}/metrics.json, metrics.md, samples.jsonl")
    return metrics


# ----------------------------------------------------------------------------------------------------------
# mathrl score


@dataclass
class ScoreConfig:
    samples: str = field("", "jsonl of {\"question\" or \"id\": ..., \"completions\": [...]} (required)")
    task: str = field("synthetic", "task the questions belong to")
    level: int | None = field(None, "synthetic task level")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    extract: str | None = field(None, "gsm8k/svamp answer extraction: strict or flexible")
    surface: str | None = field(None, "synthetic: the format the completions are in, qa (default) or prose")
    split: str = field("test", "split the questions come from")
    k: int = field(0, "k for maj@k / pass@k (0: the number of completions per line)")
    orm: str = field("", "reward-model directory for rerank@k")
    device: str = field("auto", "device for the reward model")
    out: str = field("", "output directory (required)")

    def validate(self) -> None:
        if not self.samples or not self.out:
            raise UsageError("--samples and --out are required")


def run_score(cfg: ScoreConfig) -> dict:
    task = task_from_options(cfg.task, level=cfg.level, data_dir=cfg.data_dir, extract=cfg.extract,
                             surface=cfg.surface)
    problems = task.problems(cfg.split)
    by_id = {p.id: p for p in problems}
    by_question = {" ".join(p.question.split()): p for p in problems}
    path = Path(cfg.samples)
    if not path.is_file():
        raise UsageError(f"file not found: {cfg.samples}")
    results: list[QuestionResult] = []
    unmatched: list[str] = []
    n_min = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            comps = row.get("completions") if isinstance(row, dict) else None
            if not isinstance(comps, list) or not comps or not all(isinstance(c, str) for c in comps):
                raise UsageError(f"{path}:{lineno}: needs a non-empty list of strings under 'completions'")
            if "id" in row:
                problem = by_id.get(str(row["id"]))
            elif isinstance(row.get("question"), str):
                problem = by_question.get(" ".join(row["question"].split()))
            else:
                raise UsageError(f"{path}:{lineno}: needs a 'question' or an 'id'")
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
        from mathrl.reward_model import load_reward_model

        rm = load_reward_model(cfg.orm, None, device=resolve_device(cfg.device))
        for r in results:
            r.scores = rm.score_texts([task.prompt(r.problem)] * len(r.texts), r.texts)
    metrics = summarize(results, k=k)
    # maj@1 from samples: with one completion per line, the vote is that completion
    if "maj@1" not in metrics and "pass@1" in metrics:
        metrics["maj@1"] = metrics["pass@1"]
    metrics["n_unmatched"] = len(unmatched)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "metrics.md").write_text(format_table(metrics, f"{cfg.samples} on {task.name}/{cfg.split}"))
    with open(out / "scored.jsonl", "w") as f:
        for r in results:
            row = {"id": r.problem.id, "reference": r.problem.answer, "answers": [g.answer for g in r.samples],
                   "correct": [g.correct for g in r.samples]}
            if r.samples[0].steps is not None:
                row["verified"] = [g.verified for g in r.samples]
            if r.scores is not None:
                row["scores"] = r.scores
            f.write(json.dumps(row) + "\n")
    if unmatched:
        print(f"warning: {len(unmatched)} line(s) matched no problem, e.g. {unmatched[0]!r}")
    print(headline(metrics, k))
    print(f"wrote {out}/metrics.json and {out}/scored.jsonl")
    return metrics
