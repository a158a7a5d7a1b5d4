"""Rewards: how a completion is scored, through the task (RL code never parses answers itself).

- ``sparse``: 1 if the final answer is correct, else 0 (Havrilla et al. 2024, section 3: the sparse reward).
- ``verified``: 1 if the answer is correct *and* every step checks out (tasks with an exact step check; on the
  synthetic task this removes "lucky" samples whose answer is right by accident).
- ``orm``: the outcome reward model's estimate of p(correct) (``reward_model.py``).
- ``dense`` (``dense_step_rewards``): per-step credit for each intermediate result that matches one of the
  reference solution's (the paper's dense reward), plus the sparse reward at the end.
"""

from __future__ import annotations

from typing import Callable, Sequence

from mathrl.errors import UsageError
from mathrl.tasks.base import Problem

OUTCOME_REWARDS = ("sparse", "verified", "orm")


def outcome_rewards(task, problems: Sequence[Problem], texts: Sequence[str], kind: str,
                    orm_scorer: Callable | None = None, prompts: Sequence[str] | None = None) -> list[float]:
    """One scalar return per completion (``problems[i]`` is the problem of ``texts[i]``)."""
    if kind == "sparse":
        return [float(task.grade(p, t).correct) for p, t in zip(problems, texts)]
    if kind == "verified":
        grades = [task.grade(p, t) for p, t in zip(problems, texts)]
        if grades and grades[0].steps is None:
            raise UsageError(f"the verified reward needs a task with a step check; {task.name} has none")
        return [float(g.verified) for g in grades]
    if kind == "orm":
        if orm_scorer is None or prompts is None:
            raise UsageError("the orm reward needs a reward model (--orm DIR)")
        return [float(s) for s in orm_scorer(list(prompts), list(texts))]
    raise UsageError(f"unknown reward {kind!r} (known: {', '.join(OUTCOME_REWARDS)})")


def dense_step_rewards(task, problem: Problem, text: str) -> list[float]:
    """Reward per step of ``text``: 1/n_ref for each step whose result appears among the reference's
    intermediate results (each reference result can be matched once), in step order."""
    # the reference in the surface the policy writes (qa: the task's solution; prose: its prose rendering)
    reference = [v for v in task.step_results(task.target(problem)) if v]
    if not reference:
        return [0.0] * len(task.step_results(text))
    remaining = list(reference)
    out = []
    for value in task.step_results(text):
        if value in remaining:
            remaining.remove(value)
            out.append(1.0 / len(reference))
        else:
            out.append(0.0)
    return out
