"""Prioritized level replay (``plr.py``, ``--question-sampling plr``): the replay distribution and the scores by
hand, seeded draws, the unseen-vs-replay decision, PPO and GRPO runs with it, resume, and the flags' refusals."""

from __future__ import annotations

import json
import random
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from mathrl import checkpoint as ckpt
from mathrl import plr
from mathrl.cli import main
from mathrl.errors import UsageError
from mathrl.plr import PLRState


def _state(scores: dict, last_drawn: dict, draws: int, next_unseen: int = 0) -> PLRState:
    return PLRState(scores=dict(scores), last_drawn=dict(last_drawn), draws=draws, next_unseen=next_unseen)


# ------------------------------------------------------------------------------------------------------------
# The formulas by hand


def test_ranks_share_the_best_rank_on_ties():
    # 0.25 and 0.25: nothing above them -> rank 1 both; 0.16: two above -> 3; 0.0: three above -> 4
    assert plr.ranks([0.25, 0.0, 0.16, 0.25]) == [1, 4, 3, 1]
    assert plr.ranks([0.0, 0.0, 0.0]) == [1, 1, 1]


def test_replay_distribution_by_hand():
    # four seen questions; beta 0.5 (1/beta = 2), rho 0.1; c = 10 draws so far
    #   scores  a 0.25, b 0.0, c 0.16, d 0.25 -> ranks 1, 4, 3, 1
    #   h^(1/beta) = (1/rank)^2 = 1, 1/16, 1/9, 1          sum = 2 + 1/16 + 1/9 = (288 + 9 + 16) / 144 = 313/144
    #   P_S = 144/313, 9/313, 16/313, 144/313
    #   last drawn C = 9, 4, 8, 10 -> staleness c - C = 1, 6, 2, 0   sum 9
    #   P_C = 1/9, 6/9, 2/9, 0
    #   P_replay = 0.9 P_S + 0.1 P_C:
    #     a: 0.9 * 144/313 + 0.1/9 = 0.414058 + 0.011111 = 0.425169
    #     b: 0.9 * 9/313   + 0.6/9 = 0.025879 + 0.066667 = 0.092546
    #     c: 0.9 * 16/313  + 0.2/9 = 0.046006 + 0.022222 = 0.068228
    #     d: 0.9 * 144/313 + 0     = 0.414058
    st = _state({"a": 0.25, "b": 0.0, "c": 0.16, "d": 0.25}, {"a": 9, "b": 4, "c": 8, "d": 10}, draws=10)
    p = plr.replay_distribution(st, beta=0.5, rho=0.1)
    expected = {"a": 0.9 * 144 / 313 + 0.1 / 9, "b": 0.9 * 9 / 313 + 0.6 / 9, "c": 0.9 * 16 / 313 + 0.2 / 9,
                "d": 0.9 * 144 / 313}
    assert p == pytest.approx(expected)
    assert p["a"] == pytest.approx(0.425169, abs=1e-6) and p["b"] == pytest.approx(0.092546, abs=1e-6)
    assert sum(p.values()) == pytest.approx(1.0)


def test_replay_distribution_at_jiang_et_al_temperature():
    # beta 0.1 (1/beta = 10), rho 0.1; scores 0.24, 0.0, 0.09 -> ranks 1, 3, 2
    #   (1/rank)^10 = 1, 1/59049, 1/1024; sum = 1 + 1/59049 + 1/1024 = 1.00099351
    #   P_S = 0.99900748, 0.00001692, 0.00097559: nearly an argmax
    #   staleness with c = 3, C = 1, 2, 3 -> 2, 1, 0: P_C = 2/3, 1/3, 0
    #   P_replay = 0.9 P_S + 0.1 P_C = 0.96577340, 0.03334856, 0.00087803
    st = _state({"x": 0.24, "y": 0.0, "z": 0.09}, {"x": 1, "y": 2, "z": 3}, draws=3)
    p = plr.replay_distribution(st, beta=0.1, rho=0.1)
    z = 1 + 1 / 59049 + 1 / 1024
    assert p["x"] == pytest.approx(0.9 / z + 0.1 * 2 / 3) == pytest.approx(0.9657734, abs=1e-6)
    assert p["y"] == pytest.approx(0.9 / 59049 / z + 0.1 / 3) == pytest.approx(0.0333486, abs=1e-6)
    assert p["z"] == pytest.approx(0.9 / 1024 / z) == pytest.approx(0.0008780, abs=1e-6)


def test_staleness_undefined_leaves_the_score_term():
    # one seen question, drawn at the last draw: staleness 0, P_C undefined -> P_replay = P_S = 1
    assert plr.replay_distribution(_state({"a": 0.0}, {"a": 5}, draws=5), 0.1, 0.1) == {"a": 1.0}
    # equal scores share rank 1: P_S uniform; staleness 3 and 1 -> P_C 3/4, 1/4; rho 0.5:
    #   0.5 * 1/2 + 0.5 * 3/4 = 0.625, 0.5 * 1/2 + 0.5 * 1/4 = 0.375
    p = plr.replay_distribution(_state({"a": 0.0, "b": 0.0}, {"a": 1, "b": 3}, draws=4), 0.1, 0.5)
    assert p == pytest.approx({"a": 0.625, "b": 0.375})


def test_p1mp_score_by_hand():
    assert plr.p1mp_score([True, False, False, True]) == 0.25  # p = 1/2: 1/2 * 1/2
    assert plr.p1mp_score([True, False, False, False]) == 0.1875  # p = 1/4: 1/4 * 3/4 = 3/16
    assert plr.p1mp_score([True, True]) == 0.0 and plr.p1mp_score([False] * 4) == 0.0  # no signal


def test_update_plr_scores_groups_from_pass_rates_and_from_advantages(tiny_model_dir):
    from mathrl.pg_run import update_plr
    from mathrl.tasks import load_task

    task = load_task("synthetic", level=2)
    problems = task.problems("train")[:2]
    right = [task.target(p) for p in problems]
    # group 0: right, wrong (p = 1/2 -> 0.25); group 1: wrong, wrong (p = 0 -> 0)
    rollouts = [SimpleNamespace(prompt_index=0, text=right[0]), SimpleNamespace(prompt_index=0, text="no"),
                SimpleNamespace(prompt_index=1, text="no"), SimpleNamespace(prompt_index=1, text="#### 123456789")]

    def cfg(score):
        return SimpleNamespace(curriculum=SimpleNamespace(plr_score=score))

    st = SimpleNamespace(plr=PLRState())
    summary = update_plr(cfg("p1mp"), st, task, problems, rollouts, torch.zeros(4, 3), torch.ones(4, 3, dtype=bool),
                         ("", ""))
    assert st.plr.scores == {problems[0].id: 0.25, problems[1].id: 0.0}
    # mean 0.125, max 0.25, one of the two at 0
    assert summary == {"plr_seen": 2, "plr_score_mean": 0.125, "plr_score_max": 0.25, "plr_score_zero_fraction": 0.5}
    # abs-advantage: each row's mean |A| over its action tokens, then the group's mean
    #   row 0: (|1| + |-3|) / 2 = 2; row 1: |2| / 1 = 2        -> group 0: 2
    #   row 2: |-0.5| / 1 = 0.5;     row 3: (0 + 1 + 0.5) / 3 = 0.5 -> group 1: 0.5
    adv = torch.tensor([[1.0, -3.0, 9.0], [2.0, 9.0, 9.0], [-0.5, 9.0, 9.0], [0.0, 1.0, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]], dtype=bool)
    update_plr(cfg("abs-advantage"), st, task, problems, rollouts, adv, mask, ("", ""))
    assert st.plr.scores == {problems[0].id: 2.0, problems[1].id: 0.5}
    # p1mp grades the whole solution, the revealed reference steps (--backtrack) + the completion. Group 1: an empty
    # completion after its whole reference is right, a later wrong final answer is wrong -> p = 1/2 -> 0.25;
    # without the prefix neither is right -> p = 0 -> 0
    both = [SimpleNamespace(prompt_index=0, text="no"), SimpleNamespace(prompt_index=0, text="no"),
            SimpleNamespace(prompt_index=1, text=""), SimpleNamespace(prompt_index=1, text="\n#### 999999")]
    ones = torch.ones(4, 3, dtype=bool)
    update_plr(cfg("p1mp"), st, task, problems, both, torch.zeros(4, 3), ones, ("", right[1]))
    assert st.plr.scores[problems[1].id] == 0.25
    update_plr(cfg("p1mp"), st, task, problems, both, torch.zeros(4, 3), ones, ("", ""))
    assert st.plr.scores[problems[1].id] == 0.0
    assert plr.abs_advantage_score([0.5, 1.5]) == 1.0


def test_draws_by_level_counts_every_level():
    assert plr.draws_by_level([1, 2, 3], [2, 2, 3]) == {"plr_draws_level_1": 0, "plr_draws_level_2": 2,
                                                        "plr_draws_level_3": 1}


# ------------------------------------------------------------------------------------------------------------
# Draws


class FixedRng:
    """A random generator whose every random() is ``value`` (the decision and the pick become readable)."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


PASS = [f"q{i}" for i in range(10)]


def test_unseen_questions_follow_the_pass_until_enough_are_seen():
    st = PLRState()
    got = plr.draw(st, 3, PASS, FixedRng(0.0), beta=0.1, rho=0.1, replay_prob=1.0, min_seen=3)
    # nothing scored yet: the first three of the pass, none replayed
    assert got.ids == ["q0", "q1", "q2"] and got.replayed == [False] * 3
    assert st.next_unseen == 3 and st.draws == 3 and st.last_drawn == {"q0": 1, "q1": 2, "q2": 3}


def test_the_replay_decision():
    def seen():  # three scored questions, q1 the best; the pass continues at q3
        return _state({"q0": 0.0, "q1": 0.25, "q2": 0.1}, {"q0": 1, "q1": 2, "q2": 3}, draws=3, next_unseen=3)

    # random() 0.3 < replay_prob 0.5: replay; the pick with u = 0.3 lands on the first cumulative weight above 0.3:
    # P_replay = 0.9 P_S + 0.1 P_C with ranks 3, 1, 2 and staleness 2, 1, 0: q0 0.067, q1 0.932, q2 0.001
    # (cumulative 0.067, 0.999, 1.0), so q1
    st = seen()
    got = plr.draw(st, 1, PASS, FixedRng(0.3), beta=0.1, rho=0.1, replay_prob=0.5, min_seen=3)
    assert got.ids == ["q1"] and got.replayed == [True] and st.next_unseen == 3 and st.last_drawn["q1"] == 4
    # random() 0.7 >= 0.5: the next unseen question of the pass
    st = seen()
    got = plr.draw(st, 1, PASS, FixedRng(0.7), beta=0.1, rho=0.1, replay_prob=0.5, min_seen=3)
    assert got.ids == ["q3"] and got.replayed == [False] and st.next_unseen == 4
    # fewer seen than min_seen: unseen whatever the coin says
    got = plr.draw(seen(), 1, PASS, FixedRng(0.0), beta=0.1, rho=0.1, replay_prob=1.0, min_seen=4)
    assert got.ids == ["q3"] and got.replayed == [False]
    # the pass used up: every draw replays, even at a small replay_prob; at most once per batch while it can
    st = _state({"a": 0.0, "b": 0.25}, {"a": 1, "b": 2}, draws=2, next_unseen=2)
    got = plr.draw(st, 3, ["a", "b"], random.Random(0), beta=0.1, rho=0.1, replay_prob=0.01, min_seen=1)
    assert got.replayed == [True] * 3 and sorted(got.ids[:2]) == ["a", "b"]


def test_replays_are_distinct_within_a_batch():
    scores = {f"q{i}": i / 40 for i in range(10)}
    st = _state(scores, {q: 0 for q in scores}, draws=10, next_unseen=10)
    got = plr.draw(st, 6, PASS, random.Random(1), beta=0.1, rho=0.1, replay_prob=1.0, min_seen=1)
    assert len(set(got.ids)) == 6 and all(got.replayed)
    assert got.ids[0] == "q9"  # the best score takes ~0.9 of P_replay


def test_draws_are_seeded_and_reproducible():
    def run(seed):
        st = PLRState()
        out = []
        for it in range(5):
            got = plr.draw(st, 4, [f"q{i}" for i in range(30)], random.Random(f"plr/{seed}/{it}"), beta=0.1,
                           rho=0.3, replay_prob=0.5, min_seen=4)
            plr.update(st, got.ids, [len(i) % 3 / 8 for i in got.ids])
            out.append(got.ids)
        return out, st

    (a, sa), (b, sb) = run(0), run(0)
    assert a == b and sa == sb
    assert any(r for r in run(0)[1].scores)  # something was scored
    assert run(1)[0] != a


# ------------------------------------------------------------------------------------------------------------
# Runs


def _weights(model_dir):
    return load_file(str(next(model_dir.glob("*.safetensors"))))


def _changed(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return any(not torch.equal(wa[k], wb[k]) for k in wa if k in wb and wa[k].shape == wb[k].shape)


@pytest.fixture(scope="module")
def reward_fn(tmp_path_factory):
    """A reward whose returns differ within a group (the untrained policy solves nothing: GRPO would learn
    nothing from the sparse reward)."""
    import sys

    root = tmp_path_factory.mktemp("plr-reward")
    (root / "plr_test_reward.py").write_text("def reward(prompts, completions, **columns):\n"
                                             "    return [len(c) % 3 / 2 for c in completions]\n")
    sys.path.insert(0, str(root))
    yield "plr_test_reward:reward"
    sys.path.remove(str(root))


RUN = ["--iterations", "3", "--prompts", "2", "-k", "2", "--batch-size", "4", "--max-new-tokens", "8",
       "--eval-size", "0", "--threads", "1"]


@pytest.mark.parametrize("command,extra", [
    ("ppo", ["--plr-score", "p1mp"]),
    ("grpo", ["--plr-score", "abs-advantage", "--plr-replay-prob", "1.0"]),
])
def test_a_plr_run_trains_and_logs_its_draws(tiny_model_dir, tmp_path, reward_fn, command, extra):
    out = tmp_path / command
    reward = ["--reward", reward_fn] if command == "grpo" else []
    assert main([command, "--model", str(tiny_model_dir), "--out", str(out), "--question-sampling", "plr", *RUN,
                 *reward, *extra]) == 0
    assert _changed(tiny_model_dir, out / "model")
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 3
    for h in history:
        levels = {k: v for k, v in h.items() if k.startswith("plr_draws_level_")}
        assert levels and sum(levels.values()) == 2  # every draw counted once, by its difficulty
        assert {"plr_replayed", "plr_seen", "plr_score_mean", "plr_score_max", "plr_score_zero_fraction"} <= set(h)
    assert history[0]["plr_replayed"] == 0  # the first iteration sees its questions for the first time
    if command == "grpo":  # replay_prob 1: every later draw replays the 2 seen questions
        assert [h["plr_replayed"] for h in history] == [0, 2, 2] and history[-1]["plr_seen"] == 2
        assert history[-1]["plr_score_max"] > 0  # the reward's advantages are not all 0


def test_a_uniform_run_logs_its_draws_by_level_and_walks_the_pass(tiny_model_dir, tmp_path):
    from mathrl.pg_run import draw_questions
    from mathrl.rollouts import next_problems
    from mathrl.tasks import load_task

    out = tmp_path / "uniform"
    assert main(["ppo", "--model", str(tiny_model_dir), "--out", str(out), *RUN]) == 0
    history = json.loads((out / "history.json").read_text())
    assert all(sum(v for k, v in h.items() if k.startswith("plr_draws_level_")) == 2 for h in history)
    assert not any("plr_seen" in h for h in history)
    # the uniform draw is the shuffled pass itself
    questions = load_task("synthetic", level=2).problems("train")[:7]
    order = [3, 1, 6, 0, 5, 2, 4]
    inputs = SimpleNamespace(questions=questions, order=order)
    problems, record = draw_questions(None, inputs, SimpleNamespace(plr=None, prompts_used=5), 4)
    assert problems == next_problems(questions, order, 5, 4)
    assert sum(record.values()) == 4


def test_a_resumed_plr_run_equals_an_uninterrupted_one(tiny_model_dir, tmp_path, reward_fn):
    args = ["grpo", "--model", str(tiny_model_dir), "--question-sampling", "plr", "--plr-score", "abs-advantage",
            "--reward", reward_fn, "--iterations", "4", "--prompts", "2", "-k", "2", "--batch-size", "4",
            "--max-new-tokens", "8", "--eval-size", "0", "--threads", "1", "--checkpoint-every", "1"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*args, "--out", str(full)]) == 0
    assert main([*args, "--out", str(cut)]) == 0
    # the interruption: after iteration 3's checkpoint (iteration 4's and the final model lost)
    last = ckpt.latest_checkpoint(cut)
    assert ckpt.load_state(last)["iteration"] == 4
    shutil.rmtree(last)
    shutil.rmtree(cut / "model")
    assert ckpt.load_state(ckpt.latest_checkpoint(cut))["plr"]["draws"] == 6
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    wa, wb = _weights(full / "model"), _weights(cut / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda hs: [{k: v for k, v in h.items() if "seconds" not in k} for h in hs]  # noqa: E731
    h_full = json.loads((full / "history.json").read_text())
    assert strip(h_full) == strip(json.loads((cut / "history.json").read_text()))
    # the run replays, and the resumed iteration went on from the restored state: its draws and scores
    # (equal histories) and the seen set (3 before it, 2 unseen drawn by it)
    assert sum(h["plr_replayed"] for h in h_full) > 0
    assert [h["plr_seen"] for h in h_full[2:]] == [3, 5]


# ------------------------------------------------------------------------------------------------------------
# Flags


@pytest.mark.parametrize("command", ["ppo", "grpo"])
@pytest.mark.parametrize("flag", ["--plr-score=abs-advantage", "--plr-temperature=0.2", "--plr-staleness=0.2",
                                  "--plr-replay-prob=0.3"])
def test_plr_flags_are_refused_without_plr(tiny_model_dir, tmp_path, capsys, command, flag):
    assert main([command, "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"), flag]) == 2
    err = capsys.readouterr().err
    assert flag.split("=")[0] in err and "--question-sampling uniform" in err


@pytest.mark.parametrize("values,message", [
    ({"question_sampling": "random"}, "question_sampling"),
    ({"question_sampling": "plr", "plr_score": "regret"}, "plr_score"),
    ({"question_sampling": "plr", "plr_temperature": 0.0}, "--plr-temperature"),
    ({"question_sampling": "plr", "plr_staleness": 1.0}, "--plr-staleness"),
    ({"question_sampling": "plr", "plr_replay_prob": 0.0}, "--plr-replay-prob"),
    # adaptive backtracking moves a question's start once it is solved there; PLR would keep the score of the old
    # start (0 when all its samples solved it), so the question would rarely return to move on
    ({"question_sampling": "plr", "backtracking": {"backtrack": "adaptive"}}, "--backtrack adaptive"),
])
def test_bad_plr_values_are_refused(tiny_model_dir, tmp_path, values, message):
    from mathrl.algorithms.ppo_config import Config
    from mathrl.config import build

    with pytest.raises(UsageError, match=message):
        build(Config, {"model": str(tiny_model_dir), "out": str(tmp_path / "r"), **values})


def test_plr_with_refill_is_refused(tiny_model_dir, tmp_path, capsys):
    assert main(["grpo", "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"), "--question-sampling", "plr",
                 "--zero-signal", "refill"]) == 2
    assert "--question-sampling plr" in capsys.readouterr().err


def test_the_config_names_the_scores_plr_computes():
    from mathrl.algorithms.policy_gradient_config import PLR_SCORES

    assert PLR_SCORES == plr.SCORES


def test_a_uniform_checkpoint_is_not_resumed_as_plr(tiny_model_dir, tmp_path, capsys):
    out = str(tmp_path / "uniform")
    argv = ["ppo", "--model", str(tiny_model_dir), "--out", out, "--iterations", "1", "--prompts", "2", "-k", "2",
            "--batch-size", "4", "--max-new-tokens", "8", "--eval-size", "0", "--threads", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--resume", "--question-sampling", "plr"]) == 2
    assert "written with --question-sampling uniform" in capsys.readouterr().err


def test_plr_refuses_a_train_split_smaller_than_one_iteration(tmp_path):
    from mathrl.pg_run import Inputs, draw_questions

    cfg = SimpleNamespace(curriculum=SimpleNamespace(plr_temperature=0.1, plr_staleness=0.1, plr_replay_prob=0.5),
                          run=SimpleNamespace(seed=0), pg=SimpleNamespace(prompts=4))
    st = SimpleNamespace(plr=PLRState(), iteration=0, prompts_used=0)
    qs = [SimpleNamespace(id=f"q{i}", difficulty=1) for i in range(3)]
    with pytest.raises(UsageError, match="fewer than one iteration draws"):
        draw_questions(cfg, Inputs(qs, [0, 1, 2], [], [], None), st, 4)
