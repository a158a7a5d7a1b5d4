"""Backtracking, a reverse curriculum for PPO and GRPO (``--backtrack schedule|adaptive``; the settings are
``policy_gradient_config.Backtrack``).

Salimans & Chen (2018, "Learning Montezuma's Revenge from a single demonstration") start each episode from a state
of a demonstration and move the start backwards as the agent learns to finish from it; Xi et al. (2024, R3, arXiv
2402.05808) carry this to reasoning: the prompt is the question plus the first j steps of a reference solution, so
that a sparse outcome reward is reached early, and j falls to 0 (the bare question). Havrilla et al. (2024) tried
such a curriculum for PPO and report that it did not beat plain PPO; this module lets that be re-tested.

- ``revealed_prefix``: the text of the first j steps of the task's reference solution (``task.target``, cut at
  the end of its step j by ``task.step_spans``); the training prompt is the task's prompt + that text.
- ``scheduled_reveal`` (``--backtrack schedule``): j = round(frac x (n_steps - 1)) with frac falling linearly from
  1 at the first iteration to 0 at ``fraction`` x the iterations (R3's stages, made continuous).
- ``next_reveal`` (``--backtrack adaptive``, per question as in R3's and AdaBack's per-sample schedules): a
  question starts at n_steps - 1 and moves one step earlier once its group's success rate at its current j reaches
  the threshold; the loops keep each question's j in their state (checkpointed).

The reward grades the whole solution, prefix + completion (``rollouts.score`` with the ``Starts``' prefixes), and
only the model's own tokens are trained: the prefix is part of the prompt. Evaluation starts from the bare question.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mathrl.errors import UsageError


@dataclass(frozen=True)
class Starts:
    """Where the rollouts of a batch of problems start: ``prefixes[i]``, the text of the first ``revealed[i]``
    reference steps of problem i ("" for the bare question), follows its prompt."""

    prefixes: tuple[str, ...]
    revealed: tuple[int, ...]

    def pick(self, idx) -> Starts:
        return Starts(tuple(self.prefixes[i] for i in idx), tuple(self.revealed[i] for i in idx))

    @staticmethod
    def concat(parts: list[Starts]) -> Starts:
        return Starts(tuple(x for s in parts for x in s.prefixes), tuple(j for s in parts for j in s.revealed))

    def record(self) -> dict:
        """The history's ``backtrack_steps`` (mean revealed steps per prompt) and ``backtrack_revealed_fraction``
        (the fraction of prompts with at least one revealed step)."""
        n = max(1, len(self.revealed))
        return {"backtrack_steps": sum(self.revealed) / n,
                "backtrack_revealed_fraction": sum(j > 0 for j in self.revealed) / n}


def bare(n: int) -> Starts:
    """``n`` problems that start from the bare question."""
    return Starts(("",) * n, (0,) * n)


def reference_steps(task, problem) -> int:
    """The number of steps of the problem's reference solution (``task.step_spans`` of ``task.target``)."""
    return len(task.step_spans(task.target(problem)))


def revealed_prefix(task, problem, j: int) -> str:
    """The reference solution (``task.target``) up to the end of its step j (the character just past the step
    as ``task.step_spans`` ends it: the synthetic task's '.', a GSM8K line before its newline); "" for j = 0.
    The model continues from there and writes the separator before its first step itself, the tokens an SFT
    model wrote there."""
    if j <= 0:
        return ""
    target = task.target(problem)
    spans = task.step_spans(target)
    return target[: spans[min(j, len(spans)) - 1][1]]


def scheduled_reveal(n_steps: int, iteration: int, iterations: int, fraction: float) -> int:
    """``--backtrack schedule``: the steps revealed at 0-based ``iteration`` of ``iterations``:
    frac = max(0, 1 - iteration / (fraction x iterations)), j = round(frac x (n_steps - 1)), rounding halves up
    (R3's staged schedule made continuous: the first iteration reveals all but the last step, and from
    ``fraction`` x ``iterations`` on every prompt is the bare question)."""
    if n_steps <= 1:
        return 0
    frac = max(0.0, 1.0 - iteration / (fraction * iterations))
    return min(n_steps - 1, math.floor(frac * (n_steps - 1) + 0.5 + 1e-9))


def next_reveal(j: int, success_rate: float, threshold: float) -> int:
    """``--backtrack adaptive``: a question's revealed steps after a group at ``j`` succeeded at ``success_rate``:
    one step earlier once it reaches ``threshold``, else unchanged (never below 0)."""
    return max(0, j - 1) if success_rate >= threshold else j


def plan(settings, task, problems: list, iteration: int, iterations: int, adaptive: dict[str, int]) -> Starts:
    """Where each of ``problems`` starts at 0-based ``iteration`` (``settings``: ``policy_gradient_config.Backtrack``;
    ``adaptive``: the adaptive mode's j per question id, a question not in it at n_steps - 1)."""
    if settings.backtrack == "none":
        return bare(len(problems))
    revealed = []
    for p in problems:
        n = reference_steps(task, p)
        if settings.backtrack == "schedule":
            revealed.append(scheduled_reveal(n, iteration, iterations, settings.backtrack_fraction))
        else:
            revealed.append(max(0, min(adaptive.get(p.id, n - 1), n - 1)))
    return Starts(tuple(revealed_prefix(task, p, j) for p, j in zip(problems, revealed)), tuple(revealed))


def advance(adaptive: dict[str, int], task, problems: list, starts: Starts, rollouts, threshold: float) -> dict:
    """The adaptive mode's j per question after a batch: each question's group success rate (the task's grade of
    prefix + completion: a correct answer) at its ``starts.revealed`` moves it by ``next_reveal``. A new dict;
    ``rollout.prompt_index`` indexes ``problems``."""
    correct: dict[int, list[bool]] = {}
    for r in rollouts:
        i = r.prompt_index
        correct.setdefault(i, []).append(task.grade(problems[i], starts.prefixes[i] + r.text).correct)
    out = dict(adaptive)
    for i, grades in correct.items():
        out[problems[i].id] = next_reveal(starts.revealed[i], sum(grades) / len(grades), threshold)
    return out


def check_task(settings, task, problems: list) -> None:
    """Refuse backtracking where it cannot reveal anything: no reference solution of ``problems`` (the train split)
    has two steps or more (its own answers only, or one step: j = n_steps - 1 = 0 always)."""
    if settings.backtrack != "none" and not any(reference_steps(task, p) >= 2 for p in problems):
        raise UsageError(f"--backtrack {settings.backtrack} has no effect on task {task.name}: no reference solution "
                         "of its train split has two steps or more to reveal")
