"""The study's statistics: the crossed paired bootstrap and the verdict rules, with hand-derived numbers."""

import numpy as np
import pytest

from mathrl.metrics import guesser_pass_at_k
from mathrl.stats import (
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    NOT_TESTABLE,
    Interval,
    bootstrap,
    combine,
    t_interval,
    t_quantile,
    verdict,
)


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


def test_seed_term_uses_student_t_on_the_per_seed_spread():
    # a: seed 0 solves all 4 questions, seed 1 none; b (shared) none. Per-seed differences d = (1, 0): mean 0.5,
    # sample variance 0.5, v_s = 0.5 / 2 = 0.25. The seed-averaged a is 0.5 on every question, so every question
    # replicate is 0.5 - 0 and v_q = 0. Half-width t(0.975, 1 df) * sqrt(0.25) = 12.706 * 0.5 = 6.353
    iv = bootstrap({"a": [[1, 1, 1, 1], [0, 0, 0, 0]], "b": [0, 0, 0, 0]}, diff, n_boot=200)
    assert iv.estimate == 0.5 and iv.seeds == 2 and iv.seed_variance
    assert iv.lo == pytest.approx(0.5 - 6.3531, abs=1e-3) and iv.hi == pytest.approx(0.5 + 6.3531, abs=1e-3)
    # one seed: the percentile interval, flagged as having no seed variance
    one = bootstrap({"a": [1, 1, 0, 0], "b": [0, 1, 0, 0]}, diff, n_boot=200)
    assert one.seeds == 1 and not one.seed_variance


def test_t_quantiles_match_the_table():
    # Student's t, 97.5%: 12.706 (1 df), 4.303 (2), 2.776 (4), 2.042 (30); the normal's 1.960
    for df, t in ((1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042), (float("inf"), 1.960)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-3)


def _study(rng, n_seeds, seed_sd, shared, q=1000, agree=0.8, effect=0.02):
    """One simulated study, the design of ``mathrl study``: per question a solve rate p ~ U(0.15, 0.85); a model
    (one seed) solves a question when its uniform draw u < p + its shift, the draw shared across models with
    probability ``agree`` (models agree on most questions, as fine-tunes of one SFT model do); each seed of an RL
    arm shifts its solve rate by N(0, seed_sd). A = RL with ``n_seeds`` seeds and mean shift ``effect``; B = the
    shared SFT model (shift 0) or another RL arm with its own seeds (shift 0). The true A - B is ``effect``
    (p + shift stays inside (0, 1) but for a 5-sd seed)."""
    p = rng.uniform(0.15, 0.85, q)
    u = rng.random(q)

    def model(shifts):
        own = rng.random((len(shifts), q))
        draw = np.where(rng.random((len(shifts), q)) < agree, u, own)
        return (draw < p + np.asarray(shifts)[:, None]).astype(float)

    a = model(effect + rng.normal(0, seed_sd, n_seeds))
    b = model([0.0]) if shared else model(rng.normal(0, seed_sd, n_seeds))
    return a, b


@pytest.mark.parametrize("n_seeds", [3, 5])
@pytest.mark.parametrize("seed_sd", [0.017, 0.025])
def test_intervals_cover_at_the_measured_seed_spread(n_seeds, seed_sd):
    # 500 simulated studies per setting, alternating an RL arm against the shared SFT model and against another
    # RL arm with its own seeds: the 95% interval must contain the true difference in >= 94% of them (the
    # crossed bootstrap it replaced covered 0.93 / 0.88 with 3 seeds at these spreads). Monte-Carlo standard
    # error of a coverage near 0.96 over 500 studies: 0.009
    rng = np.random.default_rng(1000 * n_seeds + int(seed_sd * 1000))
    n, hits = 500, 0
    for i in range(n):
        a, b = _study(rng, n_seeds, seed_sd, shared=i % 2 == 0)
        iv = bootstrap({"a": a, "b": b}, diff, n_boot=300, seed=i)
        hits += iv.lo < 0.02 < iv.hi
    assert hits / n >= 0.94


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
    assert combine([]) == NOT_TESTABLE
    # not testable: a required part (its arm did not learn) -> not testable; an optional one is left out; a
    # contradiction elsewhere still stands
    assert combine([HOLDS, NOT_TESTABLE]) == NOT_TESTABLE
    assert combine([HOLDS, NOT_TESTABLE], [True, False]) == HOLDS
    assert combine([CONTRADICTED, NOT_TESTABLE]) == CONTRADICTED
    assert combine([NOT_TESTABLE], [False]) == NOT_TESTABLE


def test_guesser_pass_at_k():
    # p(1) = 2/4, p(4) = 0: question "1": 1 - (1 - 0.5)^2 = 0.75, question "4": 0 -> mean 0.375
    assert guesser_pass_at_k(["1", "1", "2", "3"], ["1", "4"], 2) == pytest.approx(0.375)
    # uniform over 100 answers, k = 96: 1 - 0.99^96 = 0.6190
    train = [str(i) for i in range(100)]
    assert guesser_pass_at_k(train, ["5"], 96) == pytest.approx(1 - 0.99 ** 96)
    with pytest.raises(ValueError):
        guesser_pass_at_k([], ["1"], 1)


def test_t_interval_over_seeds():
    # values 1, 2, 3: mean 2, sample sd 1, t(0.975, 2 df) = 4.3027, half-width 4.3027 / sqrt(3) = 2.4841
    iv = t_interval([1.0, 2.0, 3.0])
    assert iv.estimate == 2.0 and iv.seeds == 3
    assert iv.lo == pytest.approx(2 - 2.4841, abs=1e-3) and iv.hi == pytest.approx(2 + 2.4841, abs=1e-3)
    # 5 values -1, -1, -1, -1, -1: sd 0, a zero-width interval
    assert (t_interval([-1.0] * 5).lo, t_interval([-1.0] * 5).hi) == (-1.0, -1.0)
    # one value: no seed variance and no interval, so no verdict
    one = t_interval([0.5])
    assert one.seeds == 1 and np.isnan(one.lo) and verdict("similar", one, 1.0) == INCONCLUSIVE
    with pytest.raises(ValueError):
        t_interval([])
