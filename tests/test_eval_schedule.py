"""The RL loops on the log-spaced evaluation schedule and the stop at a dev plateau (settings.EvalSchedule,
plateau.py), on the untrained tiny model: which rollout counts get an evaluation, a run that stops on a constructed
plateau (the in-run evaluation replaced by a scripted dev curve) and stays stopped when resumed, and the flag
combinations refused."""

from __future__ import annotations

import json

import pytest

from mathrl.cli import main

SMALL = ["--max-new-tokens", "8", "--threads", "1"]
# scripted dev maj@1 by rollouts consumed: at 16 the window {8: .51, 16: .50} max .51 <= .50 (before: 4) + .02,
# and .50 > .30 (the start) + .02: the plateau; at 8 the window {4, 8} has only the start before it (no gain yet)
CURVE = {0: 0.30, 4: 0.50, 8: 0.51, 16: 0.50, 24: 0.50, 32: 0.50, 40: 0.50}
LOG = ["--eval-at", "log", "--eval-first", "4"]
PLATEAU = [*LOG, "--eval-split", "dev", "--eval-size", "2", "--eval-k", "2", "--stop-at-plateau"]


def _history(out):
    return json.loads((out / "history.json").read_text())


def _evaluated(history):
    return [h["rollouts"] for h in history if "maj@1" in h]


@pytest.fixture
def scripted(monkeypatch):
    """The in-run evaluation of every loop replaced by CURVE (read at the rollouts consumed)."""
    def fake(policy, tokenizer, task, problems, ev, sampling, *, rollouts, **_):
        return {"maj@1": CURVE[rollouts]}

    import mathrl.algorithms.expert_iteration as ei
    import mathrl.algorithms.rcrl as rcrl
    import mathrl.pg_run as pg_run

    for module in (ei, rcrl, pg_run):
        monkeypatch.setattr(module, "evaluate_in_run", fake)


def test_ppo_evaluates_where_its_rollouts_pass_each_doubling(tiny_model_dir, tmp_path):
    out = tmp_path / "ppo"
    # 2 prompts x K=2: 4 rollouts per iteration; points 4, 8, 16 (32 > 24): iterations 1, 2, 4, and 6 (the last)
    assert main(["ppo", "--model", str(tiny_model_dir), "--out", str(out), "--iterations", "6", "--prompts", "2",
                 "-k", "2", "--batch-size", "4", "--eval-size", "2", "--eval-k", "2", *LOG, *SMALL]) == 0
    assert _evaluated(_history(out)) == [0, 4, 8, 16, 24]


def test_ei_evaluates_only_the_rounds_that_pass_a_point(tiny_model_dir, tmp_path):
    out = tmp_path / "ei"
    # 2 questions x K=2: 4 rollouts per round; rounds end at 4, 8, 12, 16, 20: points 4, 8, 16; 20 is the last
    assert main(["ei", "--model", str(tiny_model_dir), "--out", str(out), "--rounds", "5", "--questions", "2",
                 "-k", "2", "--batch-size", "4", "--patience", "0", "--eval-size", "2", "--eval-k", "2", *LOG,
                 *SMALL]) == 0
    history = _history(out)
    assert [h["round"] for h in history] == [0, 1, 2, 3, 4, 5]
    assert _evaluated(history) == [0, 4, 8, 16, 20]


@pytest.mark.parametrize("command, extra", [
    ("ppo", ["--iterations", "10", "--prompts", "2", "--batch-size", "4"]),
    ("grpo", ["--iterations", "10", "--prompts", "2", "--batch-size", "4"]),
    ("ei", ["--rounds", "10", "--questions", "2", "--batch-size", "4", "--patience", "0"]),
    ("rcrl", ["--rounds", "10", "--questions", "2", "--batch-size", "4"]),
])
def test_a_run_stops_at_a_dev_plateau_and_stays_stopped(scripted, tiny_model_dir, tmp_path, command, extra, capsys):
    out = tmp_path / command
    argv = [command, "--model", str(tiny_model_dir), "--out", str(out), "-k", "2", *extra, *PLATEAU, *SMALL]
    assert main(argv) == 0
    history = _history(out)
    # every step draws 4 rollouts; evaluated at 0, 4, 8, 16 (the plateau, see CURVE), not run past it
    assert _evaluated(history) == [0, 4, 8, 16]
    assert history[-1]["rollouts"] == 16 and history[-1]["plateau_at"] == 16
    assert sum("plateau_at" in h for h in history) == 1
    assert "plateaued at 16 rollouts" in capsys.readouterr().out
    assert (out / "model").is_dir()
    # resumed, it does not go on
    assert main([*argv, "--resume"]) == 0
    assert _history(out) == history


@pytest.mark.parametrize("argv, message", [
    (["ppo", "--eval-at", "log", "--eval-every", "3"], "--eval-every has no effect with --eval-at log"),
    (["grpo", "--eval-first", "512"], "--eval-first has no effect without --eval-at log"),
    (["ei", "--stop-at-plateau", "--patience", "0", "--eval-split", "dev"], "--stop-at-plateau needs --eval-at log"),
    (["rcrl", "--eval-at", "log", "--stop-at-plateau"], "--stop-at-plateau decides on dev problems"),
    (["ppo", "--eval-at", "log", "--plateau-margin", "0.05"], "--plateau-margin has no effect without --stop-at"),
    (["grpo", "--eval-at", "log", "--plateau-min", "8192"], "--plateau-min has no effect without --stop-at"),
    (["ei", "--eval-at", "log", "--eval-split", "dev", "--stop-at-plateau"], "two early-stopping rules"),
    (["grpo", "--eval-size", "0", "--eval-at", "log"], "--eval-at has no effect with --eval-size 0"),
    (["ppo", "--eval-at", "sometimes"], "unknown eval_at 'sometimes'"),
    (["rcrl", "--eval-at", "log", "--eval-first", "0"], "eval_first must be >= 1"),
])
def test_bad_schedule_flags_are_one_line_errors(argv, message, capsys):
    assert main([argv[0], "--model", "x", *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
