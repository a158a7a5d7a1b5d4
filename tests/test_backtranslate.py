"""Backtranslated training data: the filter and its counts (by hand), the mixing ratio's arithmetic, a smoke run of
``mathrl backtranslate`` on the tiny model (its counts add up) and one with a scripted sampler that keeps pairs,
``sft``/``ei --backtranslated`` training on them, and the refusals."""

from __future__ import annotations

import json
import math
import random
import sys

import pytest
from safetensors.torch import load_file

from mathrl import engines
from mathrl.algorithms.backtranslate import Candidate, filter_pairs, question_keys, round_trip_problem
from mathrl.backtranslated import added_count, read_pairs, select_pairs
from mathrl.cli import main
from mathrl.errors import UsageError
from mathrl.sampler import Rollout
from mathrl.tasks import load_task
from mathrl.tasks.base import Problem, reverse_prompt


@pytest.fixture(scope="module")
def task():
    return load_task("synthetic", level=2)


# ----------------------------------------------------------------------------------------------------------
# The filter, on constructed pairs

SOL7 = "Ann = Bob + 3 = 4 + 3 = 7.\n#### 7"


def _c(question, solution=SOL7, solution_finish="eos", question_finish="eos", source="s"):
    return Candidate(source, solution, solution_finish, question, question_finish)


def test_the_filter_counts_each_reason_by_hand(task):
    real = task.problems("train")[0].question
    candidates = [
        _c("How many pens does Ann have?"),  # 0: kept (the reply reaches 7)
        _c("How many cats?", solution="Ann = 4 + 3 = 7."),  # 1: malformed: no '#### N' the task reads
        _c("   "),  # 2: malformed: an empty question
        _c("How many pens does Ann keep?", question_finish="length"),  # 3: malformed: the question was cut
        _c("How many pens does Ann own?", solution_finish="length"),  # 4: malformed: the solution was cut
        _c("How many dogs does Ann have?"),  # 5: failed round trip (the reply reaches 8)
        _c("how many  PENS does Ann have?"),  # 6: duplicate of 0 (up to case and spaces), which was kept
        _c(real.upper()),  # 7: duplicate of a real train question
        _c("How many coins does Max have?", solution="Max = 2 * 5 = 10.\n#### 10"),  # 8: kept
        _c("How many birds?"),  # 9: failed round trip: the reply has no answer
    ]
    replies = [" Ann = 7.\n#### 7", None, None, None, None, " #### 8", " #### 7", " #### 7", " #### 10", " no idea"]
    result = filter_pairs(task, candidates, replies, question_keys(task.problems("train")))
    # 10 generated = 4 malformed (1-4) + 2 failed round trips (5, 9) + 2 duplicates (6 of 0, 7 of a real
    # question) + 2 kept (0, 8)
    assert result.counts() == {"generated": 10, "malformed": 4, "failed_round_trip": 2, "duplicates": 2,
                               "duplicates_of_real": 1, "duplicates_of_generated": 1, "kept": 2}
    assert [(p.question, p.answer) for p in result.kept] == [("How many pens does Ann have?", "7"),
                                                              ("How many coins does Max have?", "10")]
    c = result.counts()
    assert c["generated"] == c["malformed"] + c["failed_round_trip"] + c["duplicates"] + c["kept"]


def test_a_malformed_candidate_claims_no_problem_and_a_good_one_the_answer_the_task_reads(task):
    assert round_trip_problem(task, _c("Q?", solution="no answer"), 0) is None
    p = round_trip_problem(task, _c("  Q?  "), 3)
    assert (p.id, p.question, p.answer) == ("backtranslated-3", "Q?", "7")
    with pytest.raises(ValueError):  # a well-formed candidate must have been sampled
        filter_pairs(task, [_c("Q?")], [None], set())


def test_the_reverse_prompt():
    assert reverse_prompt(" A = 1 + 2 = 3.\n#### 3 ") == "Solution: A = 1 + 2 = 3.\n#### 3\nQuestion:"


# ----------------------------------------------------------------------------------------------------------
# The ratio


def test_the_ratio_arithmetic_by_hand():
    assert added_count(8, 0.5) == 4  # 0.5 x 8
    assert added_count(7, 0.5) == 4  # 3.5, rounded half up
    assert added_count(10, 0.25) == 3  # 2.5 -> 3 (Python's round would give 2)
    assert added_count(10, 0.24) == 2  # 2.4 -> 2
    assert added_count(3, 2.0) == 6  # two per real example
    assert added_count(0, 0.5) == 0  # nothing real, nothing added


def test_select_pairs_is_a_seeded_pass_repeated_when_the_file_is_short():
    pairs = [Problem(id=str(i), question=f"q{i}", solution="#### 1", answer="1") for i in range(5)]
    five = select_pairs(pairs, 5, seed=0)
    assert sorted(p.id for p in five) == ["0", "1", "2", "3", "4"]  # each once
    assert select_pairs(pairs, 3, seed=0) == five[:3]  # a smaller count is a prefix (EI's rounds grow D_i)
    twelve = select_pairs(pairs, 12, seed=0)
    assert twelve == five + five + five[:2]  # 12 = 2 x 5 + 2: each pair 2 or 3 times, in the pass's order
    assert select_pairs(pairs, 5, seed=1) != five and select_pairs(pairs, 0, seed=0) == []


# ----------------------------------------------------------------------------------------------------------
# The file


def _write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PAIRS = [{"question": "Ann has 4 pens. Bob has 3 more pens than Ann. How many pens does Bob have?",
          "solution": "Bob = Ann + 3 = 4 + 3 = 7.\n#### 7", "answer": "7", "source_id": "synthetic-train-1"},
         {"question": "Max has 5 coins. Yan has twice as many coins as Max. How many coins does Yan have?",
          "solution": "Yan = Max * 2 = 5 * 2 = 10.\n#### 10", "answer": "10", "source_id": "synthetic-train-2"},
         {"question": "Eve has 9 cats. Joe has 2 fewer cats than Eve. How many cats does Joe have?",
          "solution": "Joe = Eve - 2 = 9 - 2 = 7.\n#### 7", "answer": "7", "source_id": "synthetic-train-3"}]


def test_read_pairs_reads_the_jsonl_format_and_refuses_a_bad_file_in_one_line(task, tmp_path):
    pairs = read_pairs(task, _write_pairs(tmp_path / "ok.jsonl", PAIRS))
    assert [(p.question, p.answer) for p in pairs] == [(r["question"], r["answer"]) for r in PAIRS]
    assert task.target(pairs[0]) == " Bob = Ann + 3 = 4 + 3 = 7.\n#### 7"
    cases = {
        "missing.jsonl": None,
        "notjson.jsonl": "{not json\n",
        "nofield.jsonl": json.dumps({"question": "q", "answer": "7"}) + "\n",
        "mismatch.jsonl": json.dumps({"question": "q", "solution": "A = 4 + 4 = 8.\n#### 8", "answer": "7"}) + "\n",
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(UsageError) as e:
            read_pairs(task, str(tmp_path / name))
        assert "\n" not in str(e.value) and name in str(e.value), (name, str(e.value))
    # an empty file (backtranslate kept no pair) adds none, and says so in one line
    (tmp_path / "empty.jsonl").write_text("")
    assert read_pairs(task, str(tmp_path / "empty.jsonl")) == []
    assert select_pairs([], 5, seed=0) == []  # the ratio asks for pairs the file does not have: none added


# ----------------------------------------------------------------------------------------------------------
# mathrl backtranslate

SMALL = ["--batch-size", "4", "--max-new-tokens", "12", "--threads", "1", "--report-to", "none"]


def test_backtranslate_on_the_tiny_model_counts_add_up(tiny_model_dir, tmp_path):
    out = tmp_path / "bt"
    assert main(["backtranslate", "--model", str(tiny_model_dir), "--out", str(out), "--questions", "3", "-k", "2",
                 "--reverse-size", "8", "--reverse-max-steps", "2", *SMALL]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["generated"] == 3 * 2 and s["reverse_steps"] == 2 and s["reverse_problems"] == 8
    assert s["generated"] == s["malformed"] + s["failed_round_trip"] + s["duplicates"] + s["kept"]
    assert s["duplicates"] == s["duplicates_of_real"] + s["duplicates_of_generated"]
    assert len((out / "backtranslated.jsonl").read_text().splitlines()) == s["kept"]
    # the reverse model trained: its weights are not the forward model's
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "reverse" / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before)


def _scripted(train):
    """A sampler standing in for both models (the reverse model still trains for real): the forward model writes a
    train question's reference solution (sample 0) or no answer (sample 1); the reverse model, for a solution with
    answer a, writes the train question back (a % 3 == 0: a duplicate of a real question), "Novel question about
    a?" (a % 3 == 1: its round trip reaches a) or "Odd question about a?" (a % 3 == 2: its round trip reaches
    a + 1)."""
    by_question = {p.question: p for p in train}
    by_solution = {p.solution: p for p in train}

    def reply(prompt: str, j: int) -> str:
        if prompt.startswith("Solution: "):
            p = by_solution.get(prompt[len("Solution: "):-len("\nQuestion:")])
            if p is None:  # the solution without an answer: malformed whatever its question
                return "What?"
            a = int(p.answer)
            return [p.question, f"Novel question about {a}?", f"Odd question about {a}?"][a % 3]
        question = prompt[len("Question: "):-len("\nAnswer:")]
        if question in by_question:
            return " " + by_question[question].solution if j == 0 else " I do not know."
        a = int(question.split("about ")[1].rstrip("?"))
        return f" #### {a if question.startswith('Novel') else a + 1}"

    def sample(self, model, tokenizer, prompts, k, params, keys=None, progress=None):
        return [Rollout(i, j, keys[i], [], [], [], [], reply(prompt, j), "eos")
                for i, prompt in enumerate(prompts) for j in range(k)]

    return sample


def test_backtranslate_keeps_the_pairs_that_pass_and_counts_the_others(tiny_model_dir, tmp_path, monkeypatch, task):
    train = task.problems("train")
    monkeypatch.setattr(engines.Mathrl, "sample", _scripted(train))
    out, n, seed = tmp_path / "bt", 30, 4
    assert main(["backtranslate", "--model", str(tiny_model_dir), "--out", str(out), "--questions", str(n), "-k", "2",
                 "--reverse-size", "8", "--reverse-max-steps", "1", "--seed", str(seed), *SMALL]) == 0
    # the questions: the first n of the train split shuffled with the seed; what the script makes of them
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    answers = [int(train[i].answer) for i in order[:n]]
    novel = [a for a in answers if a % 3 == 1]
    expected = {"generated": 2 * n, "malformed": n, "failed_round_trip": sum(a % 3 == 2 for a in answers),
                "duplicates_of_real": sum(a % 3 == 0 for a in answers),
                "duplicates_of_generated": len(novel) - len(set(novel)), "kept": len(set(novel))}
    expected["duplicates"] = expected["duplicates_of_real"] + expected["duplicates_of_generated"]
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary[k] for k in expected} == expected
    assert expected["kept"] > 0 and expected["failed_round_trip"] > 0 and expected["duplicates_of_real"] > 0
    rows = [json.loads(line) for line in (out / "backtranslated.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == list(dict.fromkeys(f"Novel question about {a}?" for a in novel))
    assert all(r["answer"] == r["question"].split("about ")[1].rstrip("?") for r in rows)
    assert set(rows[0]) == {"question", "solution", "answer", "source_id"}
    # the file is the task's jsonl format: sft and ei read it back, and so does --task jsonl:PATH
    assert len(read_pairs(task, str(out / "backtranslated.jsonl"))) == len(rows)
    # resumed after its last phase, the run writes the same pairs
    first = (out / "backtranslated.jsonl").read_text()
    assert main(["backtranslate", "--model", str(tiny_model_dir), "--out", str(out), "--questions", str(n), "-k", "2",
                 "--reverse-size", "8", "--reverse-max-steps", "1", "--seed", str(seed), "--resume", *SMALL]) == 0
    assert (out / "backtranslated.jsonl").read_text() == first


# ----------------------------------------------------------------------------------------------------------
# sft and ei with --backtranslated


def test_sft_trains_on_the_real_problems_and_ratio_times_as_many_pairs(tiny_model_dir, tmp_path, capsys):
    pairs = _write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(tiny_model_dir), "--out", str(out), "--epochs", "1", "--train-size", "8",
                 "--batch-size", "4", "--eval-size", "0", "--threads", "1", "--report-to", "none",
                 "--backtranslated", pairs, "--backtranslated-ratio", "0.5"]) == 0
    # 8 real problems + 0.5 x 8 = 4 pairs (the file's 3, one of them twice) = 12 examples: 3 steps of 4
    assert "12 train problems (8 real + 4 backtranslated)" in capsys.readouterr().out
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps[-1] == "step-0000003"
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before)


@pytest.fixture
def keep_all(tmp_path):
    (tmp_path / "bt_keep_all.py").write_text("def reward(prompts, completions, **columns):\n"
                                             "    return [1.0] * len(completions)\n")
    sys.path.insert(0, str(tmp_path))
    yield "bt_keep_all:reward"
    sys.path.remove(str(tmp_path))


def test_ei_adds_ratio_times_each_rounds_data(tiny_model_dir, tmp_path, keep_all):
    pairs = _write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "ei"
    assert main(["ei", "--model", str(tiny_model_dir), "--out", str(out), "--rounds", "2", "--questions", "3",
                 "-k", "2", "--reward", keep_all, "--include-references", "--batch-size", "4", "--patience", "0",
                 "--eval-size", "0", "--max-new-tokens", "8", "--threads", "1", "--report-to", "none",
                 "--backtranslated", pairs, "--backtranslated-ratio", "1.5"]) == 0
    rounds = json.loads((out / "history.json").read_text())
    for i, h in enumerate(rounds):
        real = h["dataset_size"] + 3 * (i + 1)  # D_i and the references of the questions sampled so far
        assert h["backtranslated"] == math.floor(1.5 * real + 0.5)
        assert h["train_steps"] == math.ceil((real + h["backtranslated"]) / 4) * 2  # 2 epochs in batches of 4


# ----------------------------------------------------------------------------------------------------------
# Refusals


def test_the_flags_are_refused_where_they_do_not_apply(tiny_model_dir, tmp_path, capsys):
    pairs = _write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    base = ["sft", "--epochs", "1", "--eval-size", "0", "--out", str(tmp_path / "r")]
    cases = [
        (base + ["--backtranslated-ratio", "0.5"], "--backtranslated-ratio has no effect without --backtranslated"),
        (base + ["--backtranslated", pairs], "--backtranslated needs --backtranslated-ratio > 0"),
        (base + ["--backtranslated", pairs, "--backtranslated-ratio", "-1"], "backtranslated_ratio must be >= 0"),
        (base + ["--backtranslated", str(tmp_path / "nope.jsonl"), "--backtranslated-ratio", "0.5"], "no such file"),
        (["ei", "--model", str(tiny_model_dir), "--backtranslated-ratio", "0.5"], "has no effect without"),
        (["ppo", "--model", str(tiny_model_dir), "--backtranslated", pairs], "unrecognized arguments"),
        (["grpo", "--model", str(tiny_model_dir), "--backtranslated-ratio", "0.5"], "unrecognized arguments"),
        (["rcrl", "--model", str(tiny_model_dir), "--backtranslated", pairs], "unrecognized arguments"),
        (["backtranslate", "--model", str(tiny_model_dir), "--backtranslated", pairs], "unrecognized arguments"),
        (["backtranslate", "--model", str(tiny_model_dir), "--engine", "vllm"], "--engine mathrl only"),
        (["backtranslate"], "--model is required"),
        (["backtranslate", "--model", str(tiny_model_dir), "--questions", "0"], "questions must be >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_a_malformed_pairs_file_stops_sft_in_one_line(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n{oops\n")
    assert main(["sft", "--model", str(tiny_model_dir), "--out", str(tmp_path / "s"), "--epochs", "1",
                 "--train-size", "8", "--eval-size", "0", "--threads", "1", "--backtranslated", str(bad),
                 "--backtranslated-ratio", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2: not valid JSON" in err and err.count("\n") == 1
