"""Backtracking (reverse curriculum, ``--backtrack schedule|adaptive``): the prefix cut, the schedule, the adaptive
rule, scoring of prefix + completion, the action mask, smoke runs, resume and the refusals."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from mathrl import backtrack
from mathrl.algorithms.policy_gradient_config import Backtrack, Scoring
from mathrl.cli import main
from mathrl.tasks import load_task
from mathrl.tasks.base import Problem

# a 3-step synthetic solution (qa surface: one '.'-ended step per quantity, then the answer line)
STEP1, STEP2, STEP3 = " A = B + 2 = 3 + 2 = 5.", " C = A * 2 = 5 * 2 = 10.", " D = C - 1 = 10 - 1 = 9."
HAND = Problem(id="hand", question="?", solution=(STEP1 + STEP2 + STEP3).strip() + "\n#### 9", answer="9")


@pytest.fixture(scope="module")
def synthetic():
    return load_task("synthetic", level=2)


@pytest.fixture(scope="module")
def three_step(synthetic):
    """A real train problem of level 2 with a 3-step reference solution (its graph checks steps)."""
    return next(p for p in synthetic.problems("train") if backtrack.reference_steps(synthetic, p) == 3)


def _rollout(tokenizer, prompt_index: int, text: str):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return SimpleNamespace(prompt_index=prompt_index, text=text, completion_ids=ids)


# ----------------------------------------------------------------------------------------------------------
# Pure functions


def test_the_prefix_is_the_reference_cut_after_step_j(synthetic):
    # target = " " + solution; step_spans end just past each '.': j steps revealed = the first j sentences
    assert backtrack.reference_steps(synthetic, HAND) == 3
    assert backtrack.revealed_prefix(synthetic, HAND, 0) == ""
    assert backtrack.revealed_prefix(synthetic, HAND, 1) == STEP1
    assert backtrack.revealed_prefix(synthetic, HAND, 2) == STEP1 + STEP2
    # GSM8K: steps are lines; the cut is at the end of line j, before its newline (the model writes it)
    gsm = load_task("gsm8k")
    p = Problem(id="g", question="?", solution="He has 2+3=<<2+3=5>>5.\nHe eats 1: 5-1=<<5-1=4>>4.\n#### 4",
                answer="4")
    assert backtrack.reference_steps(gsm, p) == 2
    assert backtrack.revealed_prefix(gsm, p, 1) == " He has 2+3=<<2+3=5>>5."


def test_the_cut_is_where_the_tokenizer_cuts(synthetic, tiny_model_dir):
    """Prompt + prefix tokenizes as the start of prompt + whole reference (the embedded tokenizer's tokens
    carry their leading space): the model continues the token sequence an SFT model was trained on."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    checked = 0
    for p in synthetic.problems("train")[:50]:
        whole = tok(synthetic.prompt(p) + synthetic.target(p), add_special_tokens=False)["input_ids"]
        for j in range(1, backtrack.reference_steps(synthetic, p)):
            cut = tok(synthetic.prompt(p) + backtrack.revealed_prefix(synthetic, p, j),
                      add_special_tokens=False)["input_ids"]
            assert whole[: len(cut)] == cut
            checked += 1
    assert checked > 10


def test_the_schedule_by_hand():
    # 10 iterations, fraction 0.5: frac = 1 - i / 5 = 1, .8, .6, .4, .2, then 0 from iteration 5 on
    # n_steps 3: j = floor(2 frac + .5) = floor(2.5, 2.1, 1.7, 1.3, .9, .5) = 2, 2, 1, 1, 0, 0
    assert [backtrack.scheduled_reveal(3, i, 10, 0.5) for i in range(10)] == [2, 2, 1, 1, 0, 0, 0, 0, 0, 0]
    # n_steps 2: floor(1.5, 1.3, 1.1, .9, .7) = 1, 1, 1, 0, 0
    assert [backtrack.scheduled_reveal(2, i, 10, 0.5) for i in range(6)] == [1, 1, 1, 0, 0, 0]
    # one step: nothing to reveal
    assert [backtrack.scheduled_reveal(1, i, 10, 0.5) for i in range(3)] == [0, 0, 0]
    # fraction 1, 4 iterations, n_steps 5: frac = 1, .75, .5, .25; 4 frac + .5 = 4.5, 3.5, 2.5, 1.5: halves round up
    assert [backtrack.scheduled_reveal(5, i, 4, 1.0) for i in range(4)] == [4, 3, 2, 1]


def test_adaptive_moves_j_only_when_the_threshold_is_met(synthetic):
    assert backtrack.next_reveal(2, 0.5, 0.5) == 1  # reached: one step earlier
    assert backtrack.next_reveal(2, 0.49, 0.5) == 2  # not reached
    assert backtrack.next_reveal(0, 1.0, 0.5) == 0  # the bare question stays
    settings = Backtrack(backtrack="adaptive", backtrack_threshold=0.5)
    other = Problem(id="other", question="?", solution=HAND.solution, answer="9")
    # a question not seen before starts at n_steps - 1 = 2; "other" was moved to 1 earlier
    starts = backtrack.plan(settings, synthetic, [HAND, other], 0, 10, {"other": 1})
    assert starts.revealed == (2, 1) and starts.prefixes == (STEP1 + STEP2, STEP1)
    right, wrong = STEP3 + "\n#### 9", " D = 8.\n#### 8"
    rollouts = [SimpleNamespace(prompt_index=0, text=right), SimpleNamespace(prompt_index=0, text=right),
                SimpleNamespace(prompt_index=1, text=right), SimpleNamespace(prompt_index=1, text=wrong)]
    # HAND: 2/2 correct >= .5 -> 1; other: 1/2 = .5 >= .5 -> 0
    assert backtrack.advance({"other": 1}, synthetic, [HAND, other], starts, rollouts, 0.5) == {"hand": 1, "other": 0}
    # threshold .75: other's .5 does not reach it, and it stays at 1
    assert backtrack.advance({"other": 1}, synthetic, [HAND, other], starts, rollouts, 0.75) == {"hand": 1, "other": 1}
    assert starts.record() == {"backtrack_steps": 1.5, "backtrack_revealed_fraction": 1.0}


def test_none_and_schedule_plan(synthetic):
    assert backtrack.plan(Backtrack(), synthetic, [HAND], 0, 10, {}) == backtrack.bare(1)
    settings = Backtrack(backtrack="schedule", backtrack_fraction=0.5)
    assert backtrack.plan(settings, synthetic, [HAND], 2, 10, {}).revealed == (1,)  # as in the hand schedule


# ----------------------------------------------------------------------------------------------------------
# Scoring sees prefix + completion; only the model's tokens are trained


def test_the_grade_sees_prefix_and_completion(synthetic, three_step, tiny_model_dir):
    """The last step alone is right only after the first two (the verified reward checks every needed step)."""
    from transformers import AutoTokenizer

    from mathrl.rollouts import score

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    target = synthetic.target(three_step)
    prefix = backtrack.revealed_prefix(synthetic, three_step, 2)
    completion = target[len(prefix):]  # the last step and the answer line
    rollouts = [_rollout(tok, 0, completion), _rollout(tok, 1, completion)]
    prompts = [synthetic.prompt(three_step)] * 2
    # problem 0 continues the revealed prefix, problem 1 (the same question) starts from the bare question
    s = score(Scoring(reward="verified"), synthetic, tok, None, rollouts, [three_step, three_step], prompts,
              prefixes=[prefix, ""])
    assert s.outcome.tolist() == [1.0, 0.0]

    # dense: 1/3 per matched reference result (3 steps), for the model's own step only: the two revealed steps
    # earn nothing. Return = outcome 1 (sparse) + 1/3, the 1/3 on the token that ends the model's step
    d = score(Scoring(reward="dense"), synthetic, tok, None, rollouts[:1], [three_step], prompts[:1],
              prefixes=[prefix])
    assert d.outcome.tolist() == [1.0]
    assert d.returns.tolist() == pytest.approx([1 + 1 / 3])
    step_end = completion.index(".") + 1
    nonzero = d.token_rewards[0].nonzero().flatten().tolist()
    assert len(nonzero) == 2 and nonzero[-1] == len(rollouts[0].completion_ids) - 1
    assert len(tok.decode(rollouts[0].completion_ids[: nonzero[0] + 1])) >= step_end

    # a reward function gets the bare question's prompt and the whole solution
    seen = {}

    def spy(prompts, completions, **columns):
        seen.update(prompts=prompts, completions=completions)
        return [0.0] * len(completions)

    import mathrl.rewards as rewards

    rewards.user_reward.cache_clear()
    module = SimpleNamespace(spy=spy)
    import sys

    sys.modules["backtrack_spy"] = module
    try:
        score(Scoring(reward="backtrack_spy:spy"), synthetic, tok, None, rollouts[:1], [three_step], prompts[:1],
              prefixes=[prefix])
    finally:
        del sys.modules["backtrack_spy"]
        rewards.user_reward.cache_clear()
    assert seen == {"prompts": prompts[:1], "completions": [target]}


def test_only_the_models_tokens_are_in_the_action_mask(synthetic, three_step, tiny_model_dir):
    from mathrl.engines import Mathrl
    from mathrl.models import load_model
    from mathrl.rollouts import forward_policy, pack_rollouts, sample
    from mathrl.settings import Sampling

    policy, tok = load_model(str(tiny_model_dir), device="cpu")
    problems = [three_step, synthetic.problems("train")[0]]
    starts = backtrack.Starts((backtrack.revealed_prefix(synthetic, three_step, 2), ""), (2, 0))
    prompts, rollouts = sample(Mathrl(), policy, tok, synthetic, problems, [], Sampling(k=2, max_new_tokens=6),
                               seed=0, prefixes=starts.prefixes)
    assert prompts == [synthetic.prompt(p) for p in problems]  # the bare questions' prompts
    batch = pack_rollouts(rollouts, tok.pad_token_id)
    for n, r in enumerate(rollouts):
        prompt_row = batch.prompt_ids[batch.prompt_of[n]][batch.prompt_mask[batch.prompt_of[n]].bool()]
        # the revealed steps are prompt tokens...
        assert tok.decode(prompt_row) == prompts[r.prompt_index] + starts.prefixes[r.prompt_index]
        # ...and the action (and loss) mask covers exactly the sampled completion tokens
        assert int(batch.action_mask[n].sum()) == len(r.completion_ids)
        assert batch.completion_ids[n, : len(r.completion_ids)].tolist() == r.completion_ids
        assert not (batch.loss_mask[n] & ~batch.action_mask[n]).any()
    logp, _ = forward_policy(policy, None, batch, False)
    assert logp.shape == batch.action_mask.shape


# ----------------------------------------------------------------------------------------------------------
# Runs


def _weights(model_dir) -> dict:
    return load_file(str(next(Path(model_dir).glob("*.safetensors"))))


def _changed(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return any(not torch.equal(wa[k], wb[k]) for k in wa if k in wb and wa[k].shape == wb[k].shape)


@pytest.fixture(scope="module")
def reward_fn(tmp_path_factory):
    """A reward whose values differ within a group (the untrained policy solves nothing)."""
    path = tmp_path_factory.mktemp("reward") / "bt_reward.py"
    path.write_text("def reward(prompts, completions, **columns):\n    return [len(c) % 3 / 2 for c in completions]\n")
    return f"{path}:reward"


RUN = ["--prompts", "4", "-k", "2", "--batch-size", "4", "--max-new-tokens", "10", "--eval-size", "2", "--eval-k", "2",
       "--threads", "1"]


@pytest.mark.parametrize("command,extra", [
    # 4 iterations, fraction .5: frac = 1, .5, 0, 0; at frac .5 a 3-step question reveals floor(2 x .5 + .5) = 1
    # step and a 2-step one floor(1 x .5 + .5) = 1; from iteration 2 on none
    ("ppo", ["--backtrack", "schedule", "--iterations", "4"]),
    # every question is new: it starts at n_steps - 1
    ("grpo", ["--backtrack", "adaptive", "--backtrack-threshold", "0.5", "--iterations", "2"]),
])
def test_smoke_runs_train_and_log_the_revealed_steps(tiny_model_dir, tmp_path, reward_fn, command, extra):
    out = tmp_path / command
    assert main([command, "--model", str(tiny_model_dir), "--out", str(out), "--reward", reward_fn, *RUN, *extra]) == 0
    history = json.loads((out / "history.json").read_text())
    runs = history[1:]
    assert all({"backtrack_steps", "backtrack_revealed_fraction"} <= set(h) for h in runs)
    assert _changed(tiny_model_dir, out / "model")
    if command == "ppo":
        assert runs[0]["backtrack_steps"] > 0 and runs[-1]["backtrack_steps"] == 0
        assert [h["backtrack_revealed_fraction"] for h in runs[2:]] == [0, 0]
    else:
        assert all(h["backtrack_steps"] > 0 for h in runs)
        state = torch.load(sorted((out / "checkpoints").glob("step-*"))[-1] / "state.pt", weights_only=False)
        assert len(state["backtrack_j"]) == 8  # 2 iterations x 4 questions, none solved: each at n_steps - 1


def test_adaptive_resume_equals_no_interruption(tiny_model_dir, tmp_path, reward_fn, monkeypatch):
    """Two 3-step questions drawn every iteration and graded correct: j goes 2, 1, 0; a run stopped after its
    second checkpoint and resumed must go on from j = 0 (from the checkpoint), as the uninterrupted run does."""
    from mathrl.algorithms import grpo
    from mathrl.tasks.base import Grade
    from mathrl.tasks.synthetic_qa import SyntheticQATask

    problems = SyntheticQATask.problems

    def two_questions(self, split):
        ps = problems(self, split)
        return [p for p in ps if backtrack.reference_steps(self, p) == 3][:2] if split == "train" else ps

    monkeypatch.setattr(SyntheticQATask, "problems", two_questions)
    monkeypatch.setattr(SyntheticQATask, "grade", lambda self, p, c: Grade(answer=p.answer, correct=True))
    args = ["--model", str(tiny_model_dir), "--reward", reward_fn, "--backtrack", "adaptive", "--iterations", "3",
            "--prompts", "2", "-k", "2", "--batch-size", "4", "--max-new-tokens", "8", "--eval-size", "0",
            "--checkpoint-every", "1", "--threads", "1"]
    assert main(["grpo", *args, "--out", str(tmp_path / "full")]) == 0

    class Stop(Exception):
        pass

    save = grpo.save_iteration

    def save_then_stop(run_dir, st, *a, **k):
        save(run_dir, st, *a, **k)
        if st.iteration == 2:
            raise Stop

    monkeypatch.setattr(grpo, "save_iteration", save_then_stop)
    with pytest.raises(Stop):
        grpo.main(_config(["grpo", *args, "--out", str(tmp_path / "stopped")]))
    monkeypatch.setattr(grpo, "save_iteration", save)
    assert main(["grpo", *args, "--out", str(tmp_path / "stopped"), "--resume"]) == 0
    full = json.loads((tmp_path / "full" / "history.json").read_text())
    resumed = json.loads((tmp_path / "stopped" / "history.json").read_text())
    assert [h["backtrack_steps"] for h in full] == [2, 1, 0]
    assert [h["backtrack_steps"] for h in resumed] == [2, 1, 0]
    wf, wr = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "stopped" / "model")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


def _config(argv):
    from mathrl.cli import COMMANDS, build_parser, load
    from mathrl.config import from_args

    args = build_parser(argv[0]).parse_args(argv)
    return from_args(load(COMMANDS[args.func].config), args)


# ----------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("command", ["ppo", "grpo"])
@pytest.mark.parametrize("extra,message", [
    (["--backtrack-fraction", "0.3"], "--backtrack-fraction has no effect with --backtrack none"),
    (["--backtrack-threshold", "0.3"], "--backtrack-threshold has no effect with --backtrack none"),
    (["--backtrack", "schedule", "--backtrack-threshold", "0.3"], "--backtrack-threshold has no effect with "
                                                                   "--backtrack schedule"),
    (["--backtrack", "adaptive", "--backtrack-fraction", "0.3"], "--backtrack-fraction has no effect with "
                                                                  "--backtrack adaptive"),
    (["--backtrack", "always"], "unknown backtrack 'always'"),
    (["--backtrack", "schedule", "--backtrack-fraction", "0"], "must lie in (0, 1]"),
])
def test_the_flags_are_refused_where_they_do_not_apply(command, extra, message, capsys):
    assert main([command, "--model", "x", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["ei"], ["rcrl"]])
def test_ei_and_rcrl_have_no_backtracking(argv, capsys):
    assert main([*argv, "--model", "x", "--backtrack", "schedule"]) == 2
    assert "--backtrack" in capsys.readouterr().err


def test_a_task_without_reference_steps_is_refused():
    """SVAMP's references are one equation (one step): there is nothing to reveal."""
    one_step = Problem(id="s", question="?", solution="3 + 2 = <<3+2=5>>5\n#### 5", answer="5")
    task = load_task("gsm8k")
    with pytest.raises(Exception, match="--backtrack schedule has no effect on task gsm8k"):
        backtrack.check_task(Backtrack(backtrack="schedule"), task, [one_step, one_step])
    backtrack.check_task(Backtrack(), task, [one_step])  # none: nothing to check
    backtrack.check_task(Backtrack(backtrack="adaptive"), load_task("synthetic", level=2),
                         [HAND])  # three steps
