"""The evaluation schedule, the plateau rule and the rollouts-to-90% measure (plateau.py): pure functions, each
expected number derived by hand in a comment. The loops' use of them is tests/test_eval_schedule.py."""

from __future__ import annotations

import pytest

from mathrl.plateau import dev_curve, log_point_crossed, log_schedule, mark_plateau, plateaued, rollouts_to_fraction, \
    stopped_at_plateau


def test_log_schedule_doubles_from_the_first_point_up_to_the_cap():
    # 1024 * 2^j <= 32768 for j = 0..5
    assert log_schedule(1024, 32768) == [0, 1024, 2048, 4096, 8192, 16384, 32768]
    # 1000, 2000 <= 3999 < 4000
    assert log_schedule(1000, 3999) == [0, 1000, 2000]
    assert log_schedule(1024, 1000) == [0]


@pytest.mark.parametrize("before, after, due", [
    (0, 256, False),  # the first point (1024) not reached yet
    (768, 1024, True),  # reaching a point exactly counts
    (1024, 1280, False),  # the next point is 2048
    (1792, 2048, True),
    (0, 5000, True),  # a long step passes 1024, 2048 and 4096: one evaluation
    (4096, 8191, False),
    (8191, 8192, True),
])
def test_an_iteration_evaluates_when_its_rollouts_pass_a_point(before, after, due):
    assert log_point_crossed(1024, before, after) is due


def test_ppo_iterations_of_256_rollouts_evaluate_at_the_doublings():
    # 256 rollouts per iteration: rollouts 256 i pass 1024, 2048, 4096, 8192 at iterations 4, 8, 16, 32
    due = [i for i in range(1, 41) if log_point_crossed(1024, 256 * (i - 1), 256 * i)]
    assert due == [4, 8, 16, 32]


@pytest.mark.parametrize("values, margin, expected", [
    # points at 0, 1K, 2K, 4K, 8K; the window is the last two (4K .39, 8K .40), max .40; before it max .38 (2K):
    # .40 <= .38 + .03, and .38 > start .30 + .03: plateau
    ([0.30, 0.35, 0.38, 0.39, 0.40], 0.03, True),
    # the same curve at 4K: window max .39, before max .35: .39 > .35 + .03: still rising
    ([0.30, 0.35, 0.38, 0.39], 0.03, False),
    # flat from the start: before max .31 is not > .30 + .02, whatever the window: never a plateau (a slow
    # starter goes on to its cap)
    ([0.30, 0.31, 0.30, 0.31, 0.30], 0.02, False),
    # learned, then fell: window max .38 <= before max .40 + .02; .40 > .32: plateau (stops the decline)
    ([0.30, 0.40, 0.38, 0.36], 0.02, True),
    # too few points: the start, then the window alone
    ([0.30, 0.50, 0.50], 0.02, False),
    # a late rise: window max .45 > before max .33 + .02
    ([0.30, 0.30, 0.33, 0.34, 0.45], 0.02, False),
])
def test_the_plateau_rule(values, margin, expected):
    curve = [(r, v) for r, v in zip([0, 1024, 2048, 4096, 8192], values)]
    assert plateaued(curve, margin) is expected


def test_a_larger_margin_declares_the_plateau_earlier():
    curve = [(0, 0.30), (1024, 0.40), (2048, 0.43), (4096, 0.45)]
    # window max .45, before max .40: .45 > .40 + .02, but .45 <= .40 + .06 (and .40 > .30 + .06)
    assert not plateaued(curve, 0.02)
    assert plateaued(curve, 0.06)


def test_mark_plateau_records_where_the_run_stopped():
    history = [{"rollouts": 0, "maj@1": 0.30}, {"rollouts": 512, "reward": 0.1},  # not evaluated: no maj@1
               {"rollouts": 1024, "maj@1": 0.50}, {"rollouts": 2048, "maj@1": 0.51}]
    assert dev_curve(history) == [(0, 0.30), (1024, 0.50), (2048, 0.51)]
    assert not mark_plateau(history, 0.02) and not stopped_at_plateau(history)  # 3 points: too few
    history.append({"rollouts": 4096, "maj@1": 0.50})
    # window {.51, .50} max .51 <= before max .50 + .02; .50 > .30 + .02
    assert mark_plateau(history, 0.02) and history[-1]["plateau_at"] == 4096 and stopped_at_plateau(history)
    # a record that was not evaluated is no point of the curve: no plateau decided at it
    assert not mark_plateau([*history[:-1], {"rollouts": 5000}], 0.02)


def test_rollouts_to_ninety_percent_interpolates_between_points():
    curve = [(0, 0.30), (1024, 0.40), (2048, 0.50), (4096, 0.51), (8192, 0.50)]
    # gain = best .51 - start .30 = .21; target = .30 + .9 x .21 = .489; first reached between (1024, .40) and
    # (2048, .50): 1024 + (.489 - .40) / (.50 - .40) x 1024 = 1024 + .89 x 1024 = 1935.36
    assert rollouts_to_fraction(curve) == pytest.approx(1935.36)
    # half the gain: .30 + .105 = .405, between (1024, .40) and (2048, .50): 1024 + .05 x 1024 = 1075.2
    assert rollouts_to_fraction(curve, 0.5) == pytest.approx(1075.2)
    with pytest.raises(ValueError):
        rollouts_to_fraction(curve, 1.0)


def test_rollouts_to_fraction_of_a_curve_that_never_rose_is_none():
    assert rollouts_to_fraction([(0, 0.40), (1024, 0.40), (2048, 0.35)]) is None


def test_no_plateau_stop_before_the_minimum_rollouts():
    # the curve of the test above meets the rule at 4,096 rollouts; with a minimum of 8,192 it does not stop there,
    # and stops at the first point from 8,192 on where the rule still holds (best of {.50, .505} = .505 <= .51 + .02)
    history = [{"rollouts": 0, "maj@1": 0.30}, {"rollouts": 1024, "maj@1": 0.50}, {"rollouts": 2048, "maj@1": 0.51},
               {"rollouts": 4096, "maj@1": 0.50}]
    assert not mark_plateau(history, 0.02, min_rollouts=8192) and "plateau_at" not in history[-1]
    history.append({"rollouts": 8192, "maj@1": 0.505})
    assert mark_plateau(history, 0.02, min_rollouts=8192) and history[-1]["plateau_at"] == 8192
