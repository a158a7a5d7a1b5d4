"""Evaluation metrics as pure functions (Havrilla et al. 2024, section 3 "Evaluation").

- **maj@1**: accuracy of the greedy completion (the paper's definition).
- **maj@k**: the answer most frequent among k samples is the model's answer (self-consistency). Unparseable
  answers (None) never vote. **Tie rule**: when t answers share the top count, the question scores 1/t if the
  reference is among them, 0 otherwise: the expected accuracy of breaking the tie uniformly at random, which does
  not depend on sample order (lm-eval's ``Counter.most_common`` picks the first seen).
- **rerank@k**: the sample with the highest reward-model score is the model's answer; ties among top-scored
  samples score the fraction of them that are correct (same rule).
- **pass@k**: the unbiased estimator of Chen et al. 2021 (Codex), ``1 - C(n-c, k) / C(n, k)`` from n >= k samples
  of which c are correct, in the numerically stable product form ``1 - prod_{i=n-c+1..n} (1 - k/i)``.
  (A bootstrap of the best of k resampled samples, or the max over all n > k samples, overestimates pass@k: both
  count a question solved by any of more than k draws.)

When n > k samples are available, maj@k and rerank@k are averaged over ``n_subsets`` fixed pseudo-random
subsets of size k (deterministic), an estimate of their expectation rather than the "first k" draw.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct.

    >>> pass_at_k(4, 1, 1)
    0.25
    >>> pass_at_k(4, 1, 4)
    1.0
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n samples, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_vote_score(answers: Sequence[str | None], reference: str) -> float:
    """Score of one majority vote (see the tie rule in the module docstring); 0 when nobody answers."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    winners = [a for a, c in counts.items() if c == top]
    return (reference in winners) / len(winners)


def rerank_score(scores: Sequence[float], correct: Sequence[bool]) -> float:
    """Score of picking the top-scored sample; ties at the top score the fraction of them that are correct."""
    if len(scores) != len(correct) or not scores:
        raise ValueError("rerank needs one score per sample and at least one sample")
    best = max(scores)
    top = [ok for s, ok in zip(scores, correct) if s == best]
    return sum(top) / len(top)


def _subsets(n: int, k: int, n_subsets: int, seed: int) -> list[list[int]]:
    if k == n:
        return [list(range(n))]
    rng = random.Random(seed * 1_000_003 + n * 101 + k)
    return [rng.sample(range(n), k) for _ in range(n_subsets)]


def maj_at_k(answers: Sequence[str | None], reference: str, k: int, n_subsets: int = 64, seed: int = 0) -> float:
    """maj@k for one question from n >= k sampled answers (normalised strings or None)."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n samples, got k={k}, n={n}")
    subsets = _subsets(n, k, n_subsets, seed)
    return sum(majority_vote_score([answers[i] for i in s], reference) for s in subsets) / len(subsets)


def rerank_at_k(scores: Sequence[float], correct: Sequence[bool], k: int, n_subsets: int = 64, seed: int = 0) -> float:
    """rerank@k for one question from n >= k samples with reward-model scores."""
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"rerank@k needs 1 <= k <= n samples, got k={k}, n={n}")
    subsets = _subsets(n, k, n_subsets, seed)
    return sum(rerank_score([scores[i] for i in s], [correct[i] for i in s]) for s in subsets) / len(subsets)


def normalize_solution(text: str) -> str:
    """Solution text up to whitespace and case, for counting distinct solutions."""
    return " ".join(text.lower().split())


def distinct_count(items: Sequence[str | None]) -> int:
    """Number of distinct non-None items."""
    return len({x for x in items if x is not None})


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (probability a random positive outscores a random negative; ties count 1/2)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    # rank-based (Mann-Whitney U), O(n log n)
    ranked = sorted((s, i) for i, s in enumerate(scores))
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for m in range(i, j + 1):
            ranks[ranked[m][1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def within_question_auc(scores: Sequence[float], labels: Sequence[bool], questions: Sequence[str]) -> float:
    """AUC inside each question's own samples, averaged over the questions that have both a correct and an
    incorrect sample (nan if none does): per question, the fraction of its (correct, incorrect) pairs that the
    scores order correctly, ties 1/2. What reranking a question's samples needs; the pooled ``auc`` also rewards a
    score that only knows which questions are easy.

    >>> within_question_auc([0.9, 0.1, 0.2, 0.8, 0.5], [True, False, True, False, True], ["a", "a", "b", "b", "c"])
    0.5
    """
    if not len(scores) == len(labels) == len(questions):
        raise ValueError("within_question_auc needs one score, label and question per sample")
    by_question: dict[str, tuple[list[float], list[bool]]] = {}
    for s, y, q in zip(scores, labels, questions):
        by_question.setdefault(q, ([], []))
        by_question[q][0].append(s)
        by_question[q][1].append(bool(y))
    per_question = [auc(s, y) for s, y in by_question.values() if any(y) and not all(y)]
    return sum(per_question) / len(per_question) if per_question else float("nan")


def guesser_pass_at_k(train_answers: Sequence[str], test_answers: Sequence[str], k: int) -> float:
    """pass@k of a question-blind guesser that draws k answers i.i.d. from the train answers' empirical
    distribution p: the mean over test questions of 1 - (1 - p(answer))^k. The floor that answer-only pass@k
    must clear to say anything about reasoning (its step-verified pass@k is 0: it writes no steps).

    >>> guesser_pass_at_k(["1", "1", "2", "3"], ["1", "4"], 2)  # (1 - 0.5^2 + 1 - 1^2) / 2
    0.375
    """
    if not train_answers or not test_answers or k < 1:
        raise ValueError("need train answers, test answers and k >= 1")
    counts = Counter(train_answers)
    n = len(train_answers)
    return sum(1.0 - (1.0 - counts.get(a, 0) / n) ** k for a in test_answers) / len(test_answers)
