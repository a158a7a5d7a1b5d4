"""Small commands that are not training algorithms: data inspection, model creation, evaluation, scoring."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from mathrl import engines
from mathrl.config import field, group, refuse
from mathrl.errors import UsageError
from mathrl.evaluate import QuestionResult, evaluate, format_table, headline, summarize, write_report
from mathrl.models import SIZES, count_parameters, init_model, load_model, load_tokenizer
from mathrl.runsetup import few_shot_examples, formatted_task, read_meta, resolve_device, setup_threads, task_of
from mathrl.settings import Compute, Data, FewShot, Prompting, Run, Sampling, validate_groups
from mathrl.runlog import progress
from mathrl.tasks import task_from_options
from mathrl.tasks.answers import grader_audit


# ----------------------------------------------------------------------------------------------------------
# mathrl data show / stats


def _data_task():
    return field("synthetic", "task: synthetic, gsm8k or svamp")


def _data_split():
    return field("test", "split")


def _data_level():
    return field(None, "synthetic task level")


def _data_dir():
    return field(None, "gsm8k/svamp data directory")


@dataclass
class DataConfig:
    """``data show``: the first problems of a split."""

    task: str = _data_task()
    split: str = _data_split()
    n: int = field(3, "problems to show")
    level: int | None = _data_level()
    data_dir: str | None = _data_dir()


@dataclass
class DataStatsConfig:
    """``data stats``: counts and lengths of a whole split (``n`` would not apply; ``tokenizer`` does not to show)."""

    task: str = _data_task()
    split: str = _data_split()
    level: int | None = _data_level()
    data_dir: str | None = _data_dir()
    tokenizer: str | None = field(None, "model directory whose tokenizer counts tokens (default: characters)")


def data_show(cfg: DataConfig) -> None:
    task = task_from_options(cfg.task, level=cfg.level, data_dir=cfg.data_dir)
    for p in task.problems(cfg.split)[: max(0, cfg.n)]:
        print(f"--- {p.id} (difficulty {p.difficulty})")
        print(f"question: {p.question}")
        print(f"solution: {p.solution}")
        print(f"answer:   {p.answer}")


def data_stats(cfg: DataStatsConfig) -> None:
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
    from mathrl.runsetup import write_meta
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
    data: Data = group(Data)
    prompting: Prompting = group(Prompting)
    split: str = field("test", "split to evaluate")
    n: int = field(0, "evaluate the first N problems (0: all)")
    sampling: Sampling = group(Sampling, k=96)  # the K samples for maj@K, pass@K and rerank@K
    k_problems: int = field(0, "draw the K samples for the first N problems only, greedy maj@1 for all (0: all)")
    few_shot: FewShot = group(FewShot)
    calculator: bool = field(False, "insert calculator results after '<<expr=' (GSM8K annotations)")
    orm: str = field("", "reward-model directory for rerank@K")
    run: Run = group(Run)
    compute: Compute = group(Compute)
    out: str = field("", "directory for metrics.json, metrics.md and samples.jsonl (default: MODEL/../eval-SPLIT)")

    def validate(self) -> None:
        if not self.model:
            raise UsageError("--model is required")
        validate_groups(self)
        if self.compute.gradient_checkpointing:
            raise UsageError("--gradient-checkpointing saves memory in training; eval trains nothing")
        if self.n < 0 or self.k_problems < 0:
            raise UsageError("n and k_problems must be >= 0")
        if self.calculator and self.sampling.engine == "vllm":
            raise UsageError("--calculator inserts tokens while sampling, which --engine vllm cannot: use --engine mathrl")
        if not self.sampling.k:
            # -k 0: greedy maj@1 only; these settings shape the K samples or score them
            refuse(self.sampling, ("temperature",), "with -k 0 (greedy decoding only)")
            refuse(self, ("k_problems", "orm"), "with -k 0 (greedy decoding only: no samples to draw or rerank)")
        if (self.data.task or read_meta(self.model).get("task", {}).get("name")) == "synthetic":
            refuse(self, ("calculator",), "on the synthetic task (its solutions have no <<expr=result>> "
                                          "annotations to complete)")


def run_eval(cfg: EvalConfig) -> dict:
    setup_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    task = task_of(cfg.model, cfg.data, cfg.prompting)
    problems = task.problems(cfg.split)
    if cfg.n:
        problems = problems[: cfg.n]
    if not problems:
        raise UsageError(f"split {cfg.split} of {task.name} is empty")
    condition = read_meta(cfg.model).get("condition")
    if condition and condition.get("dense") and cfg.sampling.engine == "vllm":
        raise UsageError(f"{cfg.model} is conditioned on dense returns (a marker forced after every step), which "
                         "--engine vllm cannot sample: use --engine mathrl")
    model, tokenizer = load_model(cfg.model, device=device, precision=cfg.run.precision, compute=cfg.compute)
    engines.attach(model, tokenizer, cfg.sampling, cfg.model)
    scorer = None
    if cfg.orm:
        from mathrl.reward_model import load_reward_model

        scorer = load_reward_model(cfg.orm, tokenizer, device=device).score_texts
    shots = few_shot_examples(task, cfg.model, cfg.few_shot.shots, cfg.few_shot.exemplars)
    total = len(problems) + cfg.sampling.k * (min(cfg.k_problems, len(problems)) if cfg.k_problems else len(problems))
    bar = progress(total, "eval", "sample")
    results = evaluate(model, tokenizer, task, problems, k=cfg.sampling.k, temperature=cfg.sampling.temperature,
                       max_new_tokens=cfg.sampling.max_new_tokens, shots=shots, seed=cfg.run.seed,
                       calculator=cfg.calculator,
                       token_budget=cfg.sampling.token_budget, scorer=scorer, progress=bar.update,
                       condition=condition, k_problems=cfg.k_problems)
    bar.close()
    metrics = summarize(results)
    out = Path(cfg.out) if cfg.out else Path(cfg.model).resolve().parent / f"eval-{cfg.split}"
    write_report(results, metrics, out, title=f"{cfg.model} on {task.name}/{cfg.split}")
    print(headline(metrics))
    warn_no_answer(task, metrics)
    print(f"wrote {out}/metrics.json, metrics.md, samples.jsonl")
    return metrics


# ----------------------------------------------------------------------------------------------------------
# mathrl score


@dataclass
class ScoreConfig:
    samples: str = field("", "jsonl of {\"question\" or \"id\": ..., \"completions\": [...]} (required)")
    data: Data = group(Data, task="synthetic")  # the task the questions belong to (no model records one here)
    surface: str | None = field(None, "synthetic: the format the completions are in, qa (default) or prose")
    split: str = field("test", "split the questions come from")
    k: int = field(0, "k for maj@k / pass@k (0: the number of completions per line)")
    orm: str = field("", "reward-model directory for rerank@k")
    audit: bool = field(False, "also grade every completion with every extraction (strict, flexible, boxed) and "
                               "report how often they agree, with examples (audit.json)")
    device: str = field("auto", "device for the reward model")
    out: str = field("", "output directory (required)")

    def validate(self) -> None:
        validate_groups(self)
        if not self.samples or not self.out:
            raise UsageError("--samples and --out are required")
        if not self.orm:
            refuse(self, ("device",), "without --orm (only the reward model runs on a device)")


def run_score(cfg: ScoreConfig) -> dict:
    d = cfg.data
    task = task_from_options(d.task, level=d.level, data_dir=d.data_dir, extract=d.extract, surface=cfg.surface,
                             fields=d.fields())
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
        rm_task = formatted_task(task, cfg.orm)  # prompted as the reward model's samples were (its mathrl.json)
        for r in results:
            r.scores = rm.score_texts([rm_task.prompt(r.problem)] * len(r.texts), r.texts)
    metrics = summarize(results, k=k)
    # maj@1 from samples: with one completion per line, the vote is that completion; with several, pass@1 is the
    # mean sample accuracy, neither a greedy answer nor a vote, and maj@1 is left out
    if "maj@1" not in metrics and "pass@1" in metrics and n_min == 1:
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
    if cfg.audit:
        audit = grader_audit([(t, r.problem.answer, r.problem.id) for r in results for t in r.texts])
        (out / "audit.json").write_text(json.dumps(audit, indent=1))
        print(format_audit(audit))
    if unmatched:
        print(f"warning: {len(unmatched)} line(s) matched no problem, e.g. {unmatched[0]!r}")
    print(headline(metrics, k))
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
