"""The study's statistics: the crossed paired bootstrap and the verdict rules, with hand-derived numbers."""

import numpy as np
import pytest

from mathrl.metrics import guesser_pass_at_k
from mathrl.stats import CONTRADICTED, HOLDS, INCONCLUSIVE, Interval, bootstrap, combine, verdict


def diff(m):
    return m["a"] - m["b"]


def test_estimate_is_the_difference_of_means():
    # a solves q0, q1; b solves q1: 2/4 - 1/4 = 0.25
    iv = bootstrap({"a": [1, 1, 0, 0], "b": [0, 1, 0, 0]}, diff, n_boot=200)
    assert iv.estimate == 0.25


def test_identical_models_have_a_zero_width_interval():
    # paired: every replicate resamples the same questions for both, so a - b = 0 in every replicate
    x = np.random.default_rng(0).integers(0, 2, size=50)
    iv = bootstrap({"a": x, "b": x.copy()}, diff, n_boot=300)
    assert (iv.estimate, iv.lo, iv.hi) == (0.0, 0.0, 0.0)


def test_pairing_keeps_a_one_sided_difference_one_sided():
    # a = b except on q0, which only a solves: per-question differences are >= 0, so every paired replicate is
    # >= 0 (an unpaired bootstrap of two 0.5 accuracies over 20 questions would reach about -0.3)
    b = np.array([1] * 10 + [0] * 10)
    a = b.copy()
    a[10] = 1
    iv = bootstrap({"a": a, "b": b}, diff, n_boot=1000)
    assert iv.estimate == pytest.approx(0.05)
    assert iv.lo >= 0.0 and iv.hi > 0.05


def test_seed_axis_is_resampled():
    # a: seed 0 solves all 4 questions, seed 1 none; b (shared, one seed) none. A replicate draws 2 seeds:
    # (0,0) -> 1, (0,1)/(1,0) -> 0.5, (1,1) -> 0 with probabilities 1/4, 1/2, 1/4; questions do not matter.
    # So the 2.5th percentile is 0, the 97.5th is 1, the estimate 0.5
    iv = bootstrap({"a": [[1, 1, 1, 1], [0, 0, 0, 0]], "b": [0, 0, 0, 0]}, diff, n_boot=2000)
    assert (iv.estimate, iv.lo, iv.hi) == (0.5, 0.0, 1.0)


def test_cells_must_share_questions_and_seeds():
    with pytest.raises(ValueError, match="share their questions"):
        bootstrap({"a": [1, 0], "b": [1, 0, 1]}, diff)
    with pytest.raises(ValueError, match="share their seeds"):
        bootstrap({"a": [[1, 0], [0, 0]], "b": [[1, 0], [0, 1], [1, 1]]}, diff)
    with pytest.raises(ValueError, match="shape"):
        bootstrap({"a": [], "b": []}, diff)


@pytest.mark.parametrize("rule, lo, hi, expected", [
    # margin m = 0.02 throughout
    ("at_least", -0.01, 0.03, HOLDS),  # lo > -m
    ("at_least", -0.05, -0.03, CONTRADICTED),  # hi < -m
    ("at_least", -0.05, 0.01, INCONCLUSIVE),
    ("raises", 0.001, 0.05, HOLDS),  # lo > 0
    ("raises", -0.03, 0.015, CONTRADICTED),  # hi < m: any gain is below the margin
    ("raises", -0.01, 0.04, INCONCLUSIVE),
    ("falls", -0.05, -0.001, HOLDS),  # hi < 0
    ("falls", -0.01, 0.02, CONTRADICTED),  # lo > -m
    ("falls", -0.03, 0.01, INCONCLUSIVE),
    ("similar", -0.01, 0.015, HOLDS),  # inside (-m, m)
    ("similar", 0.03, 0.05, CONTRADICTED),  # lo > m
    ("similar", -0.06, -0.03, CONTRADICTED),  # hi < -m
    ("similar", -0.01, 0.03, INCONCLUSIVE),
    ("little", -0.05, 0.01, HOLDS),  # hi < m
    ("little", 0.03, 0.06, CONTRADICTED),  # lo > m
    ("little", 0.0, 0.03, INCONCLUSIVE),
])
def test_verdict_rules(rule, lo, hi, expected):
    assert verdict(rule, Interval((lo + hi) / 2, lo, hi), 0.02) == expected


def test_verdict_of_an_undefined_interval_is_inconclusive():
    assert verdict("raises", Interval(0.0, float("nan"), float("nan")), 0.02) == INCONCLUSIVE
    with pytest.raises(ValueError, match="unknown rule"):
        verdict("bigger", Interval(0, 0, 0), 0.02)


def test_combine():
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([INCONCLUSIVE, CONTRADICTED, HOLDS]) == CONTRADICTED
    assert combine([]) == INCONCLUSIVE


def test_guesser_pass_at_k():
    # p(1) = 2/4, p(4) = 0: question "1": 1 - (1 - 0.5)^2 = 0.75, question "4": 0 -> mean 0.375
    assert guesser_pass_at_k(["1", "1", "2", "3"], ["1", "4"], 2) == pytest.approx(0.375)
    # uniform over 100 answers, k = 96: 1 - 0.99^96 = 0.6190
    train = [str(i) for i in range(100)]
    assert guesser_pass_at_k(train, ["5"], 96) == pytest.approx(1 - 0.99 ** 96)
    with pytest.raises(ValueError):
        guesser_pass_at_k([], ["1"], 1)
