"""Prioritized level replay (PLR; Jiang, Grefenstette & Rocktäschel 2021, "Prioritized Level Replay", ICML) over
the train questions: the sampler the PPO and GRPO loops call where a uniform run walks its shuffled pass
(``pg_run.draw_questions``; flags ``--question-sampling plr``, ``--plr-*``: ``policy_gradient_config.Curriculum``).

A question is a "level". Each draw either takes the next **unseen** question of the run's shuffled pass (the order
``rollouts.next_problems`` walks) or **replays** a seen one from

    P_replay = (1 - rho) * P_S + rho * P_C                                         (Jiang et al., eq. 1-3)
    P_S(i) = h(S_i)^(1/beta) / sum_j h(S_j)^(1/beta),  h(S_i) = 1 / rank(S_i)     (rank prioritization)
    P_C(i) = (c - C_i) / sum_j (c - C_j)                                          (staleness)

over the seen questions, where S_i is question i's score (its learning potential, from its most recent group:
``p1mp_score``, ``abs_advantage_score``), c the number of draws so far and C_i the draw count right after
question i was last drawn (so a question drawn at the last draw has staleness 0, as in the authors' code).

Choices where the paper is silent or its setting (one level per actor episode) differs from ours (a batch of
questions per iteration):

- rank: 1 + the number of seen questions with a strictly higher score, so tied scores share a rank and a weight
  (the authors' code breaks ties by the order of a sort; with a weak start most scores are 0 and tie);
- the replay decision is a fixed Bernoulli(``replay_prob``) per draw (the authors' code's "fixed" schedule; their
  default "proportionate" schedule, P(replay) = the fraction of levels seen, would replay almost never here: a run
  sees a small part of a train split of thousands); replay starts once at least ``min_seen`` questions have a score
  (the loops pass one iteration's ``--prompts``: the first iteration is all unseen), and every draw replays once
  the pass has no unseen question left;
- within one iteration a question is drawn at most once (replays are drawn from P_replay restricted to the seen
  questions not yet drawn in that iteration, renormalized; with beta 0.1 P_S is nearly an argmax, and a batch
  would otherwise hold the top question many times); if every seen question is already in the batch and no unseen
  one is left, repeats are allowed;
- if every seen question has staleness 0 (sum_j (c - C_j) = 0), P_C is undefined and P_replay = P_S.

Pure and seeded: the state is a plain dataclass saved in the run's checkpoint, and ``draw`` takes its random
generator from the caller, so a resumed run draws what an uninterrupted one does.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

SCORES = ("p1mp", "abs-advantage")


@dataclass
class PLRState:
    """The sampler's state: ``scores`` (question id -> score of its most recent group; the seen questions, in the
    order they were first scored), ``last_drawn`` (question id -> C_i, the draw count right after its last draw),
    ``draws`` (c, the draws so far) and ``next_unseen`` (the position in the shuffled pass of the next unseen
    question: only unseen draws advance it, so the questions before it are exactly those ever drawn)."""

    scores: dict = dataclasses.field(default_factory=dict)
    last_drawn: dict = dataclasses.field(default_factory=dict)
    draws: int = 0
    next_unseen: int = 0


@dataclass(frozen=True)
class Draw:
    """One call's draws: the question ``ids`` in draw order and, for each, whether it was ``replayed``."""

    ids: list
    replayed: list


def ranks(scores: Sequence[float]) -> list[int]:
    """1 + the number of strictly higher scores, for each score (ties share the best rank: [3, 1, 3] -> [1, 3, 1])."""
    desc = sorted(-s for s in scores)
    return [1 + bisect.bisect_left(desc, -s) for s in scores]


def score_distribution(scores: Sequence[float], beta: float) -> list[float]:
    """P_S: (1/rank)^(1/beta), normalized (Jiang et al., rank prioritization)."""
    h = [(1.0 / r) ** (1.0 / beta) for r in ranks(scores)]
    total = sum(h)
    return [x / total for x in h]


def staleness_distribution(staleness: Sequence[int]) -> list[float] | None:
    """P_C: (c - C_i) / sum_j (c - C_j); None when every staleness is 0 (undefined)."""
    total = sum(staleness)
    return [s / total for s in staleness] if total > 0 else None


def replay_distribution(state: PLRState, beta: float, rho: float) -> dict:
    """P_replay over the seen questions (id -> probability): (1 - rho) * P_S + rho * P_C (P_S alone when P_C is
    undefined)."""
    ids = list(state.scores)
    if not ids:
        return {}
    p_s = score_distribution([state.scores[i] for i in ids], beta)
    p_c = staleness_distribution([state.draws - state.last_drawn[i] for i in ids])
    if p_c is None:
        return dict(zip(ids, p_s))
    return {i: (1 - rho) * s + rho * c for i, s, c in zip(ids, p_s, p_c)}


def _pick(rng: random.Random, ids: list, weights: list[float]):
    """One of ``ids`` with probability proportional to ``weights`` (uniform if they sum to 0: underflow)."""
    total = sum(weights)
    if total <= 0:
        return ids[rng.randrange(len(ids))]
    cumulative, acc = [], 0.0
    for w in weights:
        acc += w
        cumulative.append(acc)
    return ids[min(bisect.bisect_right(cumulative, rng.random() * total), len(ids) - 1)]


def draw(state: PLRState, n: int, pass_ids: Sequence[str], rng: random.Random, *, beta: float, rho: float,
         replay_prob: float, min_seen: int) -> Draw:
    """Draw ``n`` questions (one iteration's batch) and advance ``state``'s counters (``draws``, ``last_drawn``,
    ``next_unseen``); the scores change only in ``update``. ``pass_ids``: the question ids in the run's shuffled
    pass order. Each draw replays with probability ``replay_prob`` once ``min_seen`` questions have a score (always,
    once the pass is used up), else takes the next unseen question."""
    ids, replayed = [], []
    in_batch: set = set()
    for _ in range(n):
        candidates = [i for i in state.scores if i not in in_batch]
        unseen_left = state.next_unseen < len(pass_ids)
        can_replay = bool(candidates) and len(state.scores) >= min_seen
        if can_replay and (not unseen_left or rng.random() < replay_prob):
            # P_replay once per draw: the staleness changes with every draw
            p = replay_distribution(state, beta, rho)
            choice, again = _pick(rng, candidates, [p[i] for i in candidates]), True
        elif unseen_left:
            choice, again = pass_ids[state.next_unseen], False
            state.next_unseen += 1
        else:  # no unseen question left and every seen one is in the batch already: allow repeats
            p = replay_distribution(state, beta, rho)
            seen = list(state.scores)
            choice, again = _pick(rng, seen, [p[i] for i in seen]), True
        state.draws += 1
        state.last_drawn[choice] = state.draws
        in_batch.add(choice)
        ids.append(choice)
        replayed.append(again)
    return Draw(ids, replayed)


def update(state: PLRState, ids: Sequence[str], scores: Sequence[float]) -> None:
    """Record each question's score from its most recent group (a question drawn twice in one batch: the later)."""
    for i, s in zip(ids, scores):
        state.scores[i] = float(s)


def p1mp_score(passed: Sequence[bool]) -> float:
    """p(1 - p) of the group's pass rate p: the variance of its Bernoulli reward, 0 for a question always or never
    solved (no learning signal), at most 1/4 at p = 1/2."""
    p = sum(bool(x) for x in passed) / len(passed)
    return p * (1 - p)


def abs_advantage_score(row_abs_advantages: Sequence[float]) -> float:
    """The mean over the group's samples of each sample's mean |advantage| over its tokens (Jiang et al.'s "L1
    value loss", (1/T) sum_t |A_t| per episode, averaged over the group's K episodes)."""
    return sum(row_abs_advantages) / len(row_abs_advantages)


def score_summary(state: PLRState) -> dict:
    """The score distribution over the seen questions, for the history: mean, max and the fraction at 0."""
    s = list(state.scores.values())
    if not s:
        return {"plr_seen": 0}
    return {"plr_seen": len(s), "plr_score_mean": sum(s) / len(s), "plr_score_max": max(s),
            "plr_score_zero_fraction": sum(x == 0 for x in s) / len(s)}


def draws_by_level(levels: Sequence[int], drawn: Sequence[int]) -> dict:
    """``plr_draws_level_<d>``: how many of the ``drawn`` difficulties are ``d``, for every level ``d`` of
    ``levels`` (0 included, so every record of a run has the same keys)."""
    return {f"plr_draws_level_{d}": sum(x == d for x in drawn) for d in levels}
