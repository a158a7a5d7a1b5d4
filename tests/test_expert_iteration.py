"""Expert Iteration as the paper describes it (Havrilla et al. 2024, section 3.1): every round samples fresh
training questions (the next ones of one seeded shuffled pass over the train split), keeps the samples that pass
the filter, and fine-tunes on D_i accumulated over every round's questions."""

from __future__ import annotations

import json
import math
import random
import sys

import pytest

from mathrl import checkpoint as ckpt
from mathrl.algorithms.expert_iteration import EIState
from mathrl.cli import main
from mathrl.rollouts import next_problems
from mathrl.tasks import load_task


@pytest.fixture
def keep_all(tmp_path):
    """A reward function (module:function) that passes every sample through the filter: D_i then holds a sample
    of every question sampled, whatever the untrained model writes."""
    (tmp_path / "ei_keep_all.py").write_text("def reward(prompts, completions, **columns):\n"
                                             "    return [1.0] * len(completions)\n")
    sys.path.insert(0, str(tmp_path))
    yield "ei_keep_all:reward"
    sys.path.remove(str(tmp_path))


def test_each_round_samples_fresh_questions_and_trains_on_all_of_them(tiny_model_dir, tmp_path, keep_all):
    out = tmp_path / "ei"
    assert main(["ei", "--model", str(tiny_model_dir), "--out", str(out), "--rounds", "3", "--questions", "4",
                 "-k", "2", "--reward", keep_all, "--include-references", "--batch-size", "4", "--patience", "0",
                 "--eval-size", "0", "--max-new-tokens", "8", "--threads", "1", "--seed", "3"]) == 0
    rounds = json.loads((out / "history.json").read_text())
    assert [h["questions_used"] for h in rounds] == [4, 8, 12]
    assert all(h["questions_solved"] == 1.0 for h in rounds)  # every sample kept
    # the questions of the three rounds: the first 12 of the pass over the train split shuffled with the seed
    train = load_task("synthetic", level=2).problems("train")
    order = list(range(len(train)))
    random.Random(3).shuffle(order)
    expected = {train[i].id for i in order[:12]}
    assert expected != {p.id for p in train[:12]}  # not the first problems of the split
    state = ckpt.load_state(ckpt.latest_checkpoint(out))
    assert state["questions_used"] == 12
    assert {qid for (qid, _), _ in state["dataset"]} == expected  # D_3 holds samples of all 12: accumulated
    sizes = [h["dataset_size"] for h in rounds]
    assert sizes == sorted(sizes) and sizes[0] > 0 and all(h["new_unique"] > 0 for h in rounds)
    # each round fine-tunes on D_i and the references of every question sampled so far (4 per round), 2 epochs in
    # batches of 4: ceil((|D_i| + 4 i) / 4) x 2 steps
    assert [h["train_steps"] for h in rounds] == [math.ceil((h["dataset_size"] + 4 * (i + 1)) / 4) * 2
                                                  for i, h in enumerate(rounds)]
    # each round's fine-tune logs every 20 steps and its last step (fine_tune.jsonl, read by benchmarks/stage_rates.py)
    lines = [json.loads(line) for line in (out / "fine_tune.jsonl").read_text().splitlines()]
    expected_lines = [(r + 1, s) for r, h in enumerate(rounds)
                      for s in sorted({*range(20, h["train_steps"] + 1, 20), h["train_steps"]})]
    assert [(x["round"], x["step"]) for x in lines] == expected_lines
    assert all(x["loss"] > 0 for x in lines) and [x["time"] for x in lines] == sorted(x["time"] for x in lines)


def test_the_pass_wraps_to_a_new_epoch_only_once_the_split_is_used():
    # EI walks the split with rollouts.next_problems: 5 questions in order [3, 1, 4, 0, 2], 2 per round: rounds
    # take [3, 1], [4, 0], then [2] and, the split used up, the same order again from its start: [3]
    questions, order = list("abcde"), [3, 1, 4, 0, 2]
    rounds = [next_problems(questions, order, used, 2) for used in (0, 2, 4)]
    assert rounds == [["d", "b"], ["e", "a"], ["c", "d"]]


def test_a_checkpoint_of_an_earlier_version_resumes_at_the_start_of_the_pass():
    saved = {**EIState(round=1, rollouts_used=8).to_dict()}
    del saved["questions_used"]
    st = EIState.from_dict(saved)
    assert st.round == 1 and st.rollouts_used == 8 and st.questions_used == 0
