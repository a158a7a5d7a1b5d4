"""What the study report reads, as typed records: ``collect`` reads the stages' outputs into a ``StudyData``.

Per-question records come from every evaluation (``samples.jsonl`` of the final evaluations,
``eval_questions.jsonl`` of the RL runs' in-run evaluations on dev questions, ``dev_questions.jsonl`` of SFT's
epochs), so every difference can be paired over the same questions and, where runs have several seeds, over seeds.
A seed that stopped at its dev plateau has its curve carried forward to the points its run's other seeds reached
(``carry_forward``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathrl.grid import GRID_SIZE, PRETRAIN, PRETRAINED, SFT, Run
from mathrl.metrics import majority_vote_score, rerank_score
from mathrl.plateau import stopped_at_plateau
from mathrl.stagecache import is_current, read_json

Seed = int | None  # None: a shared model, evaluated once


@dataclass(frozen=True)
class Question:
    """One question of one evaluation: its greedy answer's correctness and, when it was sampled, ``c`` correct
    and ``c_verified`` step-verified of ``n`` samples, ``maj``, the majority vote's score over the n samples
    (``metrics.majority_vote_score``; from samples.jsonl's answers), ``rerank``, the score of the reward model's
    top pick of the n samples (``metrics.rerank_score``; from samples.jsonl's scores, when the evaluation had a
    reward model), and ``distinct_verified``, the distinct step-verified solutions among them
    (``evaluate.distinct_verified``; records written before it was recorded have none). None: not measured."""

    id: str
    n: int = 0
    c: int | None = None
    c_verified: int | None = None
    greedy_correct: bool | None = None
    greedy_verified: bool | None = None
    answer: Any = None
    question: str | None = None
    greedy: str | None = None
    maj: float | None = None
    rerank: float | None = None
    distinct_verified: int | None = None

    @classmethod
    def of(cls, row: dict) -> "Question":
        answers = row.get("answers")
        maj = (majority_vote_score(answers, row["answer"]) if answers and row.get("answer") is not None
               and len(answers) == (row.get("n") or 0) else None)
        scores, correct = row.get("scores"), row.get("correct")
        rerank = (rerank_score(scores, correct) if scores and correct and len(scores) == len(correct)
                  == (row.get("n") or 0) else None)
        return cls(id=row["id"], n=row.get("n") or 0, c=row.get("c"), c_verified=row.get("c_verified"),
                   greedy_correct=row.get("greedy_correct"), greedy_verified=row.get("greedy_verified"),
                   answer=row.get("answer"), question=row.get("question"), greedy=row.get("greedy"), maj=maj,
                   rerank=rerank, distinct_verified=row.get("distinct_verified"))


Records = list[Question]


@dataclass(frozen=True)
class Difficulty:
    """maj@1 of the ``n`` test questions of one difficulty level (metrics.json's by_difficulty)."""

    n: int | None
    maj1: float | None


@dataclass(frozen=True)
class Metrics:
    """metrics.json of one final evaluation: its K, the aggregate metrics by name (maj@1, pass@K, rerank@K,
    distinct_answers, ...) and maj@1 per difficulty level."""

    k: int
    values: dict[str, float]
    by_difficulty: dict[str, Difficulty]

    @classmethod
    def of(cls, m: dict) -> "Metrics":
        return cls(k=m.get("k", 0), values={k: v for k, v in m.items() if isinstance(v, (int, float))},
                   by_difficulty={lv: Difficulty(d.get("n"), d.get("maj@1"))
                                  for lv, d in (m.get("by_difficulty") or {}).items()})


@dataclass
class Evaluation:
    """One model's final evaluation: per-question records and metrics, per seed (``{None: ...}`` when shared)."""

    records: dict[Seed, Records] = field(default_factory=dict)
    metrics: dict[Seed, Metrics] = field(default_factory=dict)


@dataclass
class RunResults:
    """One RL run of the grid over its seeds: ``history[seed]`` its logged rows (keys vary by algorithm; an
    in-run evaluation's row has ``maj@1`` on dev questions, and the row where the run stopped at its plateau
    ``plateau_at``), ``curve[seed][rollouts]`` its in-run evaluations' records (dev questions)."""

    run: Run
    rollouts: int = 0  # the run's rollout budget
    history: dict[int, list[dict]] = field(default_factory=dict)
    curve: dict[int, dict[int, Records]] = field(default_factory=dict)
    # carried[seed]: the points of curve[seed] carried forward from a plateau stop (``carry_forward``)
    carried: dict[int, list[int]] = field(default_factory=dict)


def carry_forward(r: RunResults) -> None:
    """Carry the curve of each seed that stopped at its plateau forward to the later points other seeds of the run
    have: a run that stopped at its plateau (``plateau.stopped_at_plateau``: ``plateau_at`` on its history's last
    record) produces its stop model for any larger budget, so at every later point of another seed its records
    are those of its last evaluated point. Seeds then share their points (``findings.curve_points`` reads only the
    points every seed has: without this, one seed stopping early would cut every seed's curve there).
    ``r.carried[seed]`` lists the points so filled, for the report to count. A seed that stopped without a
    plateau is not carried: its later models are unknown."""
    points = sorted({p for pts in r.curve.values() for p in pts})
    for seed, pts in r.curve.items():
        if not pts or not stopped_at_plateau(r.history.get(seed, [])):
            continue
        last = max(pts)
        later = [p for p in points if p > last]
        for p in later:
            pts[p] = pts[last]
        if later:
            r.carried[seed] = later


@dataclass(frozen=True)
class RewardModel:
    """report.json of the ORM or SORM: held-out AUCs, training samples, and the SORM's step checks."""

    auc: float | None = None
    auc_within_question: float | None = None
    n_train_samples: int | None = None
    n_train_step_labelled: int | None = None
    step_precision: float | None = None
    step_recall: float | None = None

    @classmethod
    def of(cls, r: dict) -> "RewardModel":
        return cls(**{k: r.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Finished:
    """A finished stage: its wall time and the command it ran."""

    seconds: float
    command: list[str]


@dataclass
class StudyData:
    """What the report reads. ``evals[model]``: final evaluations by model name (sft, pretrain or pretrained,
    a run's name); ``runs[name]``: every planned RL run, in the grid's order; ``sft_dev[epoch]``: SFT's dev
    records per epoch; ``finished[stage name]``: the stages that ran to the end."""

    k: int = 0
    evals: dict[str, Evaluation] = field(default_factory=dict)
    runs: dict[str, RunResults] = field(default_factory=dict)
    sft_dev: dict[int, Records] = field(default_factory=dict)
    reward_models: dict[str, RewardModel] = field(default_factory=dict)
    finished: dict[str, Finished] = field(default_factory=dict)
    verified: bool = True  # the task checks steps (synthetic): pass@K findings use verified pass@K
    # the backtranslate stage's counts (generated, malformed, failed_round_trip, duplicates..., kept), where it ran
    backtranslated: dict[str, int] = field(default_factory=dict)
    grid_size: str = GRID_SIZE  # the grid's model size (its pretrain's --size): F7 compares other sizes with it

    @property
    def pretrained(self) -> str:
        """The pretrained start's model name: the synthetic study's own pretraining, or a given model."""
        return PRETRAIN if PRETRAIN in self.evals else PRETRAINED

    def order(self) -> list[str]:
        """The evaluated models: the shared ones (the grid's, then other sizes' SFT models), then the runs in the
        grid's order."""
        first = [m for m in (PRETRAIN, PRETRAINED, SFT) if m in self.evals]
        shared = [m for m in self.evals if m not in first and m not in self.runs]
        return first + shared + [r for r in self.runs if r in self.evals]


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
    """Read what the stages (study.Stage) wrote under ``root``: only the current ones (``stagecache.is_current``:
    a stage whose command or inputs changed since it ran, e.g. the evaluation of a model trained again, is not
    read, so the report never shows a result of what is no longer there)."""
    data = StudyData()
    by_name, memo = {s.name: s for s in stages}, {}
    for s in stages:
        if s.base == PRETRAIN and "--size" in s.command:  # the grid's model size, where not the default
            data.grid_size = s.command[s.command.index("--size") + 1]
        d = s.dir(root)
        done = read_json(d / "stage.json") if is_current(s, root, by_name, memo) else None
        if not done:
            continue  # not finished, or stale: nothing of it is read
        data.finished[s.name] = Finished(done["seconds"], done["command"])
        if s.group == "eval":
            m = read_json(d / "metrics.json")
            if m:
                e = data.evals.setdefault(s.model, Evaluation())
                e.metrics[s.seed] = Metrics.of(m)
                e.records[s.seed] = [Question.of(r) for r in _jsonl(d / "samples.jsonl")]
                data.k = data.k or m.get("k", 0)
                data.verified = data.verified and "maj@1_verified" in m
        elif s.group == "rl":
            r = data.runs.setdefault(s.base, RunResults(s.run, s.rollouts))
            h = read_json(d / "history.json")
            if h:
                r.history[s.seed] = h
            points = {}
            for row in _jsonl(d / "eval_questions.jsonl"):
                # a resumed run may repeat a point: the last counts
                points[row["rollouts"]] = [Question.of(q) for q in row["questions"]]
            if points:
                r.curve[s.seed] = points
        elif s.group == "orm":
            rep = read_json(d / "report.json")
            if rep:
                data.reward_models[s.base] = RewardModel.of(rep)
        elif s.group == "data":
            data.backtranslated = {k: v for k, v in (read_json(d / "summary.json") or {}).items()
                                   if isinstance(v, int)}
        elif s.base == SFT:
            for row in _jsonl(d / "dev_questions.jsonl"):
                data.sft_dev[row["epoch"]] = [Question.of(q) for q in row["questions"]]
    for r in data.runs.values():
        carry_forward(r)
    return data
