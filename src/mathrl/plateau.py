"""When an RL run evaluates, when its dev curve has stopped rising, and how fast it got there: pure functions of
rollout counts and dev maj@1 values, shared by every RL loop (EI and RCRL through ``rounds.py``, PPO and GRPO
through ``pg_run.py``) and by whoever reads a finished run's history.

- ``log_point_crossed``: the log-spaced evaluation schedule (``--eval-at log``): an evaluation when the rollouts
  consumed pass ``first``, 2 ``first``, 4 ``first``, ... (after the start's at 0 rollouts). Sample-complexity
  curves are read on a log axis (Havrilla et al. 2024 report rollouts to convergence from ~6e4 to ~1e6), and
  doubling the rollouts between points keeps the cost of evaluating a fixed fraction of the run's.
- ``plateaued``: the stopping rule (``--stop-at-plateau``), on dev questions only.
- ``rollouts_to_fraction``: the rollouts needed to reach a fraction (0.9) of the gain over the start that the run
  reached, the sample-complexity measure of a curve.

A curve is a list of (rollouts, dev maj@1) in the order evaluated, its first point the start at 0 rollouts.
"""

from __future__ import annotations

from typing import Sequence

Curve = Sequence[tuple[int, float]]


def log_point_crossed(first: int, before: int, after: int) -> bool:
    """Whether a point of the log schedule ``first * 2**j`` (j >= 0) lies in (``before``, ``after``]: the
    iteration or round that took the rollouts consumed from ``before`` to ``after`` ends with an evaluation (one,
    however many points it passed)."""
    point = first
    while point <= before:
        point *= 2
    return point <= after


def log_schedule(first: int, cap: int) -> list[int]:
    """The schedule's points up to ``cap`` rollouts: 0 (the start), ``first``, 2 ``first``, ... (a loop evaluates
    where its rollouts first reach each point, and after its last iteration or round as well)."""
    points, point = [0], first
    while point <= cap:
        points.append(point)
        point *= 2
    return points


def dev_curve(history: Sequence[dict]) -> list[tuple[int, float]]:
    """(rollouts, maj@1) of the records of a run's history that were evaluated (those with ``maj@1``)."""
    return [(h["rollouts"], h["maj@1"]) for h in history if "maj@1" in h]


def plateaued(curve: Curve, margin: float, window: int = 2) -> bool:
    """Whether the run has plateaued at the last point of ``curve``: it has learned (the best value before the
    last ``window`` points exceeds the start, the first point, by more than ``margin``) and stopped learning (the
    best of the last ``window`` points exceeds the best before them by at most ``margin``).

    On the log schedule the last two points cover the last three quarters of the rollouts consumed, so the rule
    reads "no gain worth ``margin`` over the latest doubling and the one before". A curve that has not risen
    above its start is never a plateau (PPO gained nothing here at 5K rollouts and +4.5 maj@1 at 15K): such a run
    goes on to its cap. A best-of-two against a best-of-all-earlier is the conservative side under evaluation
    noise: noise makes the window's maximum exceed the margin more often, which delays the stop, never advances
    it. Needs ``window`` + 2 points at least (the start, one point between, the window)."""
    if len(curve) < window + 2:
        return False
    values = [v for _, v in curve]
    start, before, last = values[0], max(values[:-window]), max(values[-window:])
    return before > start + margin and last <= before + margin


def mark_plateau(history: list[dict], margin: float, min_rollouts: int = 0) -> bool:
    """Whether the dev curve of ``history`` (``dev_curve``; its last record just evaluated) has plateaued at its
    last point, at ``min_rollouts`` rollouts or more; if so that record gets ``plateau_at``: its rollouts (the run
    stops there).

    Why a minimum: a learning curve that rises by a point or so per doubling of the rollouts reads as a plateau
    over any two doublings on a few hundred dev questions, whose paired standard error is ~2-3 points (measured:
    a PPO run from the embedded SFT model met the rule at 4,096 rollouts, dev maj@1 0.42, 0.47, 0.48, 0.485 at 0,
    1K, 2K, 4K, where a 16K-rollout run of the same arm had gained a further ~2.6 points on test)."""
    if not history or "maj@1" not in history[-1] or history[-1]["rollouts"] < min_rollouts:
        return False
    if not plateaued(dev_curve(history), margin):
        return False
    history[-1]["plateau_at"] = history[-1]["rollouts"]
    return True


def stopped_at_plateau(history: Sequence[dict]) -> bool:
    """Whether a run stopped at a plateau (its last record has ``plateau_at``): a resumed run does not go on."""
    return bool(history) and "plateau_at" in history[-1]


def rollouts_to_fraction(curve: Curve, fraction: float = 0.9) -> float | None:
    """The rollouts at which ``curve`` first reaches its start plus ``fraction`` of its gain (the best value
    minus the start, the first point), linearly interpolated between the two points around it; None when the
    curve never rises above its start. ``fraction`` in (0, 1): the best point itself lies above the target."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    start = curve[0][1]
    gain = max(v for _, v in curve) - start
    if gain <= 0:
        return None
    target = start + fraction * gain
    for (r0, v0), (r1, v1) in zip(curve, curve[1:]):
        if v0 < target <= v1:
            return r0 + (target - v0) / (v1 - v0) * (r1 - r0)
    raise AssertionError("unreachable: the curve's best point lies above the target")
