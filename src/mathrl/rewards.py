"""Rewards: how a completion is scored, through the task (RL code never parses answers itself).

- ``sparse``: 1 if the final answer is correct, else 0 (Havrilla et al. 2024, section 3: the sparse reward).
- ``verified``: 1 if the answer is correct *and* every step checks out (tasks with an exact step check; on the
  synthetic task this removes "lucky" samples whose answer is right by accident).
- ``orm``: the outcome reward model's estimate of p(correct) (``reward_model.py``).
- ``dense`` (``dense_step_rewards``): per-step credit for each intermediate result that matches one of the
  reference solution's (the paper's dense reward), plus the sparse reward at the end.
- ``module:function`` (``user_reward``): your own function with TRL's signature,
  ``reward_func(prompts, completions, **columns) -> list[float]``; the columns are ``question``, ``answer`` and
  ``solution`` (one entry per completion). ``module`` is an importable module or a path to a ``.py`` file.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from pathlib import Path
from typing import Callable, Sequence

from mathrl.errors import UsageError
from mathrl.tasks.base import Problem

OUTCOME_REWARDS = ("sparse", "verified", "orm")


def is_user_reward(kind: str) -> bool:
    return ":" in kind


@functools.lru_cache(maxsize=None)
def user_reward(spec: str) -> Callable:
    """The function ``module:function`` names (a dotted module on the path, or a ``.py`` file); one-line errors."""
    module_name, _, func_name = spec.rpartition(":")
    if not module_name or not func_name:
        raise UsageError(f"--reward {spec}: expected module:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"--reward {spec}: file not found: {module_name}")
            loader_spec = importlib.util.spec_from_file_location(f"mathrl_user_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module failed to import: say which and why, in one line
        raise UsageError(f"--reward {spec}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UsageError(f"--reward {spec}: {module_name} has no function {func_name!r}")
    return func


def _call_user_reward(kind: str, problems, texts, prompts) -> list[float]:
    try:
        values = user_reward(kind)(prompts=list(prompts), completions=list(texts),
                                   question=[p.question for p in problems], answer=[p.answer for p in problems],
                                   solution=[p.solution for p in problems])
    except Exception as e:  # noqa: BLE001 - the user's function failed: name it, in one line
        raise UsageError(f"--reward {kind} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UsageError(f"--reward {kind}: must return a list of numbers") from None
    if len(values) != len(texts) or not all(math.isfinite(v) for v in values):
        raise UsageError(f"--reward {kind}: returned {len(values)} values for {len(texts)} completions, or a "
                         "non-finite one")
    return values


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
    if is_user_reward(kind):
        return _call_user_reward(kind, problems, texts, prompts if prompts is not None else [""] * len(texts))
    raise UsageError(f"unknown reward {kind!r} (known: {', '.join(OUTCOME_REWARDS)}, or module:function)")


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


def overlong_penalty(length: int, max_len: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the outcome reward: 0 up to
    ``max_len - buffer`` tokens, then falling linearly to -1 at ``max_len``:

        R(y) = 0                                  if |y| <= L_max - L_buf
               (L_max - L_buf - |y|) / L_buf      if L_max - L_buf < |y| <= L_max
               -1                                 if |y| > L_max
    """
    if buffer <= 0:
        return 0.0
    start = max_len - buffer
    if length <= start:
        return 0.0
    if length > max_len:
        return -1.0
    return (start - length) / buffer
