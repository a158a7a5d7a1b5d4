"""Smoke runs of every CLI command on tiny configs, and the one-line errors of bad input."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import torch

from mathrl.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(next(model_dir.glob("*.safetensors"))))


def _changed(before_dir, after_dir) -> bool:
    """Whether training changed the parameters: some tensor that both models have (same name and shape; RCRL
    grows the embeddings, a reward model swaps the head) differs."""
    a, b = _weights(before_dir), _weights(after_dir)
    shared = [k for k in a if k in b and a[k].shape == b[k].shape]
    assert shared, "the two models share no parameter"
    return any(not torch.equal(a[k], b[k]) for k in shared)


@pytest.fixture(scope="module")
def start(runs):
    """A tiny pretrained model and the SFT model trained from it: the start of every RL smoke test below, built
    by whichever test asks first (so that none depends on another test having run, and -k cannot skip one)."""
    pt, sft = runs / "pretrain", runs / "sft"
    assert main(["pretrain", "--out", str(pt), "--steps", "4", "--batch-size", "4", "--seq-len", "64",
                 "--checkpoint-every", "2", "--log-every", "2", "--threads", "1"]) == 0
    assert main(["sft", "--model", str(pt / "model"), "--out", str(sft), "--epochs", "1", "--train-size", "24",
                 "--batch-size", "8", "--eval-size", "3", "--eval-k", "2", "--max-new-tokens", "12",
                 "--threads", "1"]) == 0
    return {"pretrain": pt, "sft": sft / "model"}


@pytest.fixture(scope="module")
def orm_model(runs, start):
    """An ORM on the SFT model's samples; its scores give the policy-gradient smoke runs reward signal (the tiny
    SFT model rarely solves a problem, so sparse rewards would leave every group without signal)."""
    out = runs / "orm"
    assert main(["orm", "train", "--model", str(start["sft"]), "--out", str(out), "--questions", "12", "-k", "2",
                 "--epochs", "1", "--max-new-tokens", "12", "--threads", "1"]) == 0
    return out / "model"


def test_data_commands(capsys, data_dir, data_counts):
    assert main(["data", "show", "--task", "synthetic", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("question:") == 2 and "####" in out
    assert main(["data", "stats", "--task", "svamp", "--data-dir", str(data_dir / "svamp"), "--split", "all"]) == 0
    assert f"{data_counts['svamp']} problems" in capsys.readouterr().out


def test_model_init(runs, capsys):
    assert main(["model", "init", "--out", str(runs / "init"), "--size", "tiny"]) == 0
    assert (runs / "init" / "config.json").is_file() and (runs / "init" / "tokenizer.json").is_file()
    assert "parameters" in capsys.readouterr().out


def test_pretrain_sft_eval_pipeline(runs, start, capsys):
    pt, sft = start["pretrain"], start["sft"].parent
    assert (pt / "model" / "config.json").is_file()
    meta = json.loads((pt / "model" / "mathrl.json").read_text())
    # prompted zero-shot in the corpus's own prose format (SyntheticProseTask)
    assert meta["shots"] == 0 and meta["task"]["surface"] == "prose"
    assert _changed(pt / "init", pt / "model") and _changed(pt / "model", sft / "model")
    records = [json.loads(line) for line in (sft / "metrics.jsonl").read_text().splitlines()]
    assert any("dev/maj@1" in r and "dev/pass@2" in r for r in records)
    ev = runs / "eval"
    assert main(["eval", "--model", str(sft / "model"), "-n", "3", "-k", "4", "--max-new-tokens", "12",
                 "--out", str(ev), "--threads", "1"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    for key in ("maj@1", "maj@4", "pass@4", "pass@4_verified", "distinct_solutions", "by_difficulty"):
        assert key in metrics
    assert len((ev / "samples.jsonl").read_text().splitlines()) == 3
    # the pretrained model is evaluated in its own surface: bare question prompts, prose grading
    ev_pt = runs / "eval-pretrain"
    assert main(["eval", "--model", str(pt / "model"), "-n", "2", "-k", "2", "--max-new-tokens", "8",
                 "--out", str(ev_pt), "--threads", "1"]) == 0
    assert "pass@2_verified" in json.loads((ev_pt / "metrics.json").read_text())
    from mathrl.runsetup import task_for
    from mathrl.settings import Data

    task = task_for(str(pt / "model"), Data())
    p = task.problems("test")[0]
    assert task.surface == "prose" and task.prompt(p) == p.question


def _gsm8k_references(data_dir, path, rewrite=lambda answer: answer, n=None):
    """A `mathrl score` samples file: each GSM8K test question with its reference answer (rewritten) as the one
    completion; the first ``n`` questions (default all)."""
    with open(data_dir / "gsm8k" / "test.jsonl") as f, open(path, "w") as out:
        for line in list(f)[:n]:
            row = json.loads(line)
            out.write(json.dumps({"question": row["question"], "completions": [rewrite(row["answer"])]}) + "\n")


def test_score_gsm8k_references_is_perfect(tmp_path, data_dir, data_counts):
    samples = tmp_path / "refs.jsonl"
    _gsm8k_references(data_dir, samples)
    assert main(["score", "--task", "gsm8k", "--data-dir", str(data_dir / "gsm8k"), "--samples", str(samples),
                 "--out", str(tmp_path / "scored")]) == 0
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    n = data_counts["gsm8k/test"]
    assert metrics["maj@1"] == metrics["pass@1"] == 1.0 and metrics["n_questions"] == n
    assert metrics["n_unmatched"] == 0
    # the references end in '#### N': strict and flexible (the headline here: no extraction recorded) both read it
    assert metrics["extract"] == "flexible" and metrics["by_extraction"]["strict"]["pass@1"] == 1.0
    scored = (tmp_path / "scored" / "scored.jsonl").read_text().splitlines()
    assert len(scored) == n and json.loads(scored[0])["correct"] == [True]


def test_score_with_math_verify_extraction(tmp_path, data_dir):
    samples = tmp_path / "refs.jsonl"
    _gsm8k_references(data_dir, samples)
    head = tmp_path / "head.jsonl"  # math-verify parses with sympy: 40 references keep the test short
    head.write_text("".join(samples.read_text().splitlines(keepends=True)[:40]))
    assert main(["score", "--task", "gsm8k", "--data-dir", str(data_dir / "gsm8k"), "--samples", str(head),
                 "--extract", "math-verify", "--out", str(tmp_path / "scored")]) == 0
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert metrics["pass@1"] == 1.0 and metrics["n_questions"] == 40 and metrics["no_answer_rate"] == 0


def test_score_warns_when_strict_extraction_finds_no_answers(tmp_path, data_dir, capsys):
    # GSM8K references ending in "A: 26" (as GPT-3's published solutions do) instead of "#### 26"
    samples = tmp_path / "a.jsonl"
    # "... A: 26" instead of "... #### 26"
    _gsm8k_references(data_dir, samples, lambda a: a.split("####")[0] + "A: " + a.split("####")[1].strip(), 30)
    args = ["score", "--task", "gsm8k", "--data-dir", str(data_dir / "gsm8k"), "--samples", str(samples)]
    assert main([*args, "--extract", "strict", "--out", str(tmp_path / "strict")]) == 0
    assert "warning: 100% of completions have no '#### N' answer" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "flex")]) == 0  # the default for completions from elsewhere
    assert "warning" not in capsys.readouterr().out
    assert json.loads((tmp_path / "flex" / "metrics.json").read_text())["maj@1"] == 1.0


def test_score_grades_prose_completions_flexibly_with_every_extraction_side_by_side(tmp_path, data_dir, capsys):
    # GSM8K test 0 (Janet's ducks, answer 18) and test 1 (the robe, answer 3), four prose completions each, as
    # another model writes them: no '#### N' but one
    completions = {
        "gsm8k-test-0": ["She has 16 - 3 - 4 = 9 eggs left. 9 * 2 = 18. She makes $18 every day.",
                         "16 - 3 - 4 = 9 eggs, so she makes 9 * $2 = $18.",
                         "She sells 16 - 3 = 13 eggs for 13 * 2 = 26 dollars.",
                         "The answer is \\boxed{18}."],
        "gsm8k-test-1": ["Half of 2 is 1, so 2 + 1 = 3 bolts.",
                         "It takes 2 + 1 = 3 bolts in total.\n#### 3",
                         "2 bolts of blue and 2 of white make 4.",
                         "2 / 2 = 1 white bolt; 3 bolts in all."]}
    samples = tmp_path / "prose.jsonl"
    samples.write_text("".join(json.dumps({"id": i, "completions": c}) + "\n" for i, c in completions.items()))
    args = ["score", "--task", "gsm8k", "--data-dir", str(data_dir / "gsm8k"), "--samples", str(samples)]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    out = capsys.readouterr().out
    assert "answers graded with --extract flexible" in out and "| strict |" in out and "| flexible (headline) |" in out
    assert main([*args, "--extract", "flexible", "--out", str(tmp_path / "flexible")]) == 0
    default, flexible = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("default", "flexible"))
    assert default == flexible  # defaults grade as --extract flexible does
    # by hand, the last number of each completion: ducks 18, 18, 26, 18 (the boxed 18); robe 3, 3, 4, 3
    # flexible: 3 of 4 right on each: sample accuracy 6/8, pass@1 = (3/4 + 3/4) / 2, pass@4 = 1, both votes right
    assert default["extract"] == "flexible"
    table = default["by_extraction"]
    assert (default["pass@1"], default["pass@4"], default["maj@4"]) == (0.75, 1.0, 1.0)
    assert table["flexible"] == {k: v for k, v in default.items() if k in table["flexible"]}
    # strict: only the robe's second completion has '#### N' (right): pass@1 = (0/4 + 1/4) / 2, pass@4 = (0 + 1) / 2,
    # 7 of 8 without an answer; boxed: only the ducks' fourth, likewise
    for mode in ("strict", "boxed"):
        assert table[mode]["pass@1"] == 0.125 and table[mode]["pass@4"] == 0.5
        assert table[mode]["sample_accuracy"] == 0.125 and table[mode]["no_answer_rate"] == 0.875
    assert table["flexible"]["no_answer_rate"] == 0.0
    assert ("math-verify" in table) == (importlib.util.find_spec("math_verify") is not None)
    # per completion, each extraction's answer and verdict
    scored = [json.loads(line) for line in (tmp_path / "default" / "scored.jsonl").read_text().splitlines()]
    ducks, robe = scored
    assert ducks["answers"] == ["18", "18", "26", "18"] and ducks["correct"] == [True, True, False, True]
    assert ducks["by_extraction"]["strict"] == {"answers": [None] * 4, "correct": [False] * 4}
    assert ducks["by_extraction"]["boxed"] == {"answers": [None, None, None, "18"], "correct": [False] * 3 + [True]}
    assert robe["by_extraction"]["strict"]["correct"] == [False, True, False, False]
    assert robe["by_extraction"]["flexible"]["answers"] == ["3", "3", "4", "3"]
    # --extract strict still chooses the headline explicitly; the side-by-side table is the same
    assert main([*args, "--extract", "strict", "--out", str(tmp_path / "strict")]) == 0
    strict = json.loads((tmp_path / "strict" / "metrics.json").read_text())
    assert strict["extract"] == "strict" and strict["pass@1"] == 0.125 and strict["by_extraction"] == table
    # a samples file whose every line records the extraction it was graded with (mathrl eval's samples.jsonl
    # for a model mathrl trained records strict) is graded with that one
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text("".join(json.dumps({"id": i, "completions": c, "extract": "strict"}) + "\n"
                                for i, c in completions.items()))
    capsys.readouterr()
    assert main(["score", "--task", "gsm8k", "--data-dir", str(data_dir / "gsm8k"), "--samples", str(recorded),
                 "--out", str(tmp_path / "recorded")]) == 0
    assert "--extract strict (as recorded in" in capsys.readouterr().out
    assert json.loads((tmp_path / "recorded" / "metrics.json").read_text())["pass@1"] == 0.125


def test_score_reports_unmatched_questions(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"question": "What is love?", "completions": ["#### 1"]}) + "\n"
                       + json.dumps({"id": "synthetic-test-0", "completions": ["#### 2", "#### 3"]}) + "\n")
    assert main(["score", "--samples", str(samples), "--out", str(tmp_path / "o")]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["n_unmatched"] == 1 and metrics["n_questions"] == 1
    assert "maj@1" not in metrics  # two completions per line: pass@1 is no vote and is not copied into maj@1
    assert "matched no problem" in capsys.readouterr().out


def test_score_reads_your_own_data_with_its_field_names(tmp_path):
    # a jsonl directory whose question and answer live under other names; by hand: 2 questions, the first answered
    # right by 1 of its 2 completions, the second by none -> pass@2 0.5, pass@1 0.25
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"problem": "Ann has 3 pens and buys 4. How many?", "final": "7"},
            {"problem": "Bob has 10 cups and breaks 2. How many?", "final": "8"}]
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"question": rows[0]["problem"], "completions": ["3 + 4 = 7", "3 + 4 = 8"]}) + "\n"
                       + json.dumps({"question": rows[1]["problem"], "completions": ["10 - 2 = 9", "none"]}) + "\n")
    assert main(["score", "--samples", str(samples), "--task", f"jsonl:{data}", "--question-field", "problem",
                 "--answer-field", "final", "--extract", "flexible", "--out", str(tmp_path / "o")]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["n_unmatched"] == 0 and metrics["pass@2"] == 0.5 and metrics["pass@1"] == 0.25


@pytest.mark.parametrize("argv,message", [
    (["data", "show", "--task", "mnist"], "unknown task 'mnist'"),
    (["eval", "--model", "/nonexistent/model"], "model directory not found"),
    (["sft", "--micro-batch-size", "-1"], "micro_batch_size must be >= 0"),
    (["eval"], "--model is required"),
    (["score", "--samples", "/nope.jsonl", "--out", "/tmp/x"], "file not found"),
    # unknown keys and wrong types on the command line (YAML: test_bad_yaml_configs)
    (["sft", "--learning-rate", "3"], "unrecognized arguments: --learning-rate"),
    # spellings of earlier versions: the new name
    (["ppo", "--model", "x", "--microbatch-size", "2"], "unknown flag --microbatch-size (renamed: did you mean "
                                                          "--micro-batch-size?)"),
    (["ppo", "--model", "x", "--minibatch-size", "8"], "did you mean --batch-size?"),
    (["orm", "train", "--policy", "x"], "did you mean --model?"),
    (["sft", "--dev-size", "3"], "did you mean --eval-size?"),
    (["ei", "--model", "x", "--patience", "2", "--patience-size", "0"], "--patience needs dev problems"),
    (["ei", "--model", "x", "-k", "0"], "k (samples per prompt) must be >= 1"),
    (["sft", "--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    # impossible combinations
    (["grpo", "--model", "x", "-k", "1"], "needs k >= 2"),
    (["ppo", "--model", "x", "--reward", "orm"], "--reward orm needs --orm DIR"),
    (["ppo", "--model", "x", "--zero-signal", "drop"], "unknown flag --zero-signal: it is a `mathrl grpo` setting"),
    (["ppo", "--model", "x", "--advantage", "rloo"], "critic-free: mathrl grpo --advantage grpo|rloo|reinforce++"),
    (["grpo", "--model", "x", "--lam", "1"], "unknown flag --lam: it is a `mathrl ppo` setting"),
    (["grpo", "--model", "x", "--refill-rounds", "2"], "--refill-rounds has no effect without --zero-signal refill"),
    (["grpo", "--model", "x", "--advantage", "reinforce++", "--zero-signal", "refill"],
     "--zero-signal drop/refill applies to grpo/rloo"),
    (["grpo", "--model", "x", "--advantage", "rloo", "--advantage-scale", "batch"],
     "--advantage-scale has no effect with --advantage rloo"),
    # flags that cannot affect the run given the others
    (["grpo", "--model", "x", "--orm-mode", "step"], "--orm-mode has no effect without --reward orm"),
    (["ppo", "--model", "x", "--kl-coef", "0", "--kl-target", "1"], "--kl-target has no effect with --kl-coef 0"),
    (["grpo", "--model", "x", "--kl-bound", "5"], "--kl-bound has no effect with --kl-coef 0"),
    (["ppo", "--model", "x", "--vllm-is-cap", "3"], "--vllm-is-cap has no effect without --engine vllm"),
    (["grpo", "--model", "x", "--eval-size", "0", "--eval-every", "2"],
     "--eval-every has no effect with --eval-size 0"),
    (["grpo", "--model", "x", "--policy-loss", "cispo", "--clip-high", "0.28", "--clip", "0.1"],
     "--clip has no effect with --policy-loss cispo and --clip-high"),
    (["grpo", "--model", "x", "--skip-zero-signal"], "renamed: did you mean --zero-signal?"),
    # flags that cannot affect the run with the others given (every such refusal: tests/test_flags.py)
    (["ei", "--model", "x", "--orm-threshold", "0.7"], "--orm-threshold has no effect with --reward sparse"),
    (["sft", "--model", "x", "--size", "small"], "--size has no effect with --model"),
    (["orm", "train", "--model", "x", "--m", "2"], "--m has no effect without --stepwise"),
    (["data", "stats", "-n", "2"], "unrecognized arguments: -n 2"),
    # values outside their range, and a misspelled split of the default task
    (["ppo", "--model", "x", "--gamma", "2"], "gamma must be in [0, 1], got 2.0"),
    (["ppo", "--model", "x", "--lam", "1.5"], "lam must be in [0, 1], got 1.5"),
    (["ppo", "--model", "x", "--vf-coef", "-1"], "vf_coef must be >= 0, got -1.0"),
    (["ppo", "--model", "x", "--value-clip", "-1"], "value_clip must be >= 0, got -1.0"),
    (["data", "show", "--split", "val"], "unknown split 'val' for task synthetic (known: train, test, dev)"),
    (["eval", "--model", "x", "--threads", "-3"], "threads must be >= 0 (0: the cores this process may use), got -3"),
    (["score", "--samples", "s.jsonl", "--out", "o", "-k", "-1"], "k must be >= 0"),
    # --fsdp outside torchrun would shard over one rank: nothing
    (["sft", "--fsdp"], "--fsdp has no effect on one process"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_bad_yaml_configs(tmp_path, capsys):
    bad_key = tmp_path / "a.yaml"
    bad_key.write_text("epochs: 2\nlearning_rate: 0.1\n")
    assert main(["sft", "--config", str(bad_key)]) == 2
    assert "unknown option 'learning_rate'" in capsys.readouterr().err
    renamed = tmp_path / "r.yaml"
    renamed.write_text("microbatch_size: 2\n")
    assert main(["ppo", "--config", str(renamed)]) == 2
    assert "unknown option 'microbatch_size' (renamed: did you mean 'micro_batch_size'?)" in capsys.readouterr().err
    bad_type = tmp_path / "b.yaml"
    bad_type.write_text("epochs: two\n")
    assert main(["sft", "--config", str(bad_type)]) == 2
    assert "epochs must be an integer" in capsys.readouterr().err
    broken = tmp_path / "c.yaml"
    broken.write_text("epochs: [1,\n")
    assert main(["sft", "--config", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "mathrl", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mathrl ")


def test_expert_iteration_smoke(start, tmp_path):
    sft_model = start["sft"]
    out = tmp_path / "ei"
    assert main(["ei", "--model", str(sft_model), "--out", str(out), "--rounds", "2", "--questions", "6", "-k", "2",
                 "--max-new-tokens", "12", "--eval-size", "3", "--eval-k", "2", "--include-references",
                 "--patience", "0", "--threads", "1"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["round"] for h in history] == [0, 1, 2] and history[0]["rollouts"] == 0  # round 0: the start
    assert history[-1]["rollouts"] == 2 * 6 * 2 and "maj@1" in history[-1]
    assert all(h["train_steps"] > 0 for h in history[1:])  # the references alone give D_i something to learn
    assert (out / "sample_complexity.png").is_file() and _changed(sft_model, out / "model")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("sample_accuracy" in r and "maj@1" in r for r in records)


def test_expert_iteration_early_stopping_reads_dev(start, tmp_path):
    out = tmp_path / "ei-dev"
    assert main(["ei", "--model", str(start["sft"]), "--out", str(out), "--rounds", "3", "--questions", "4", "-k", "2",
                 "--max-new-tokens", "8", "--eval-size", "0", "--include-references", "--patience", "1",
                 "--patience-size", "3", "--threads", "1"]) == 0
    history = json.loads((out / "history.json").read_text())
    # no test evaluation at all (eval_size 0), yet early stopping has its dev maj@1 each round
    assert all("dev_maj@1" in h and "maj@1" not in h for h in history)


def test_reward_models_and_rerank_smoke(start, orm_model, tmp_path):
    sft_model = start["sft"]
    out = tmp_path / "sorm"
    assert main(["orm", "train", "--model", str(sft_model), "--out", str(out), "--questions", "12", "-k", "2",
                 "--epochs", "1", "--max-new-tokens", "12", "--threads", "1", "--stepwise", "-m", "2",
                 "--sorm-samples", "6"]) == 0
    for model_dir, kind in ((orm_model, "orm"), (out / "model", "sorm")):
        report = json.loads((model_dir.parent / "report.json").read_text())
        assert report["kind"] == kind and "auc" in report
        assert json.loads((model_dir / "mathrl.json").read_text())["kind"] == kind
        assert _changed(sft_model, model_dir)  # the trunk trained, not only the new head
    # the SORM trains only on the samples it labelled step by step
    report = json.loads((out / "report.json").read_text())
    assert report["n_train_samples"] == report["n_train_step_labelled"] == 6
    ev = tmp_path / "eval"
    assert main(["eval", "--model", str(sft_model), "-n", "3", "-k", "2", "--max-new-tokens", "12", "--orm",
                 str(orm_model), "--out", str(ev), "--threads", "1"]) == 0
    assert "rerank@2" in json.loads((ev / "metrics.json").read_text())
    # --k-problems: greedy on all 3 problems, the K samples on the first 2 only
    ev2 = tmp_path / "eval-k"
    assert main(["eval", "--model", str(sft_model), "-n", "3", "-k", "2", "--k-problems", "2", "--max-new-tokens",
                 "12", "--out", str(ev2), "--threads", "1"]) == 0
    m = json.loads((ev2 / "metrics.json").read_text())
    rows = [json.loads(line) for line in (ev2 / "samples.jsonl").read_text().splitlines()]
    assert m["n_questions"] == 3 and m["n_sampled_questions"] == 2 and [r["n"] for r in rows] == [2, 2, 0]
    full = [json.loads(line) for line in (ev / "samples.jsonl").read_text().splitlines()]
    assert [r["completions"] for r in rows[:2]] == [r["completions"] for r in full[:2]]  # same per-question streams


def test_reward_model_with_another_tokenizer_is_refused(start, tmp_path, data_dir, capsys):
    sft_model = start["sft"]
    other = tmp_path / "gsm-init"
    assert main(["model", "init", "--task", "gsm8k", "--data-dir", str(data_dir / "gsm8k"), "--out", str(other)]) == 0
    from transformers import AutoModelForTokenClassification

    AutoModelForTokenClassification.from_pretrained(str(other), num_labels=1).save_pretrained(other)
    assert main(["eval", "--model", str(sft_model), "-n", "2", "-k", "2", "--max-new-tokens", "8", "--orm",
                 str(other), "--out", str(tmp_path / "e")]) == 2
    assert "different tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("command,extra", [
    ("ppo", []), ("ppo", ["--reward", "dense", "--kl-target", "0.5"]), ("grpo", ["--reward", "orm"]),
    ("grpo", ["--advantage", "rloo", "--kl-coef", "0.05", "--reward", "orm"]),
    ("ppo", ["--lora-rank", "2", "--reward", "orm"]),
    # REINFORCE++ (batch mean and std) and REINFORCE++-baseline (group mean, batch std)
    ("grpo", ["--advantage", "reinforce++", "--reward", "orm"]),
    ("grpo", ["--advantage-scale", "batch", "--reward", "orm"]),
    # the learning step without a shared prompt cache (checkpointed passes keep none), value head included
    ("ppo", ["--gradient-checkpointing", "--reward", "orm"]),
    # the outcome part of ORM step rewards is all zeros: the signal of a group is in its summed step rewards
    ("grpo", ["--reward", "orm", "--orm-mode", "step", "--zero-signal", "drop"]),
    # the objective family: GSPO with GRPO's per-sequence aggregation; Dr.GRPO's scale and normaliser with CISPO
    ("grpo", ["--reward", "orm", "--policy-loss", "gspo", "--loss-aggregation", "sequence", "--clip", "0.05"]),
    ("grpo", ["--reward", "orm", "--policy-loss", "cispo", "--clip-high", "0.28", "--advantage-scale", "none",
              "--loss-aggregation", "constant", "--overlong-buffer", "4"]),
])
def test_policy_gradient_smoke(start, orm_model, tmp_path, command, extra):
    sft_model = start["sft"]
    out = tmp_path / "pg"
    extra = [*extra, "--orm", str(orm_model)] if "orm" in extra else extra
    assert main([command, "--model", str(sft_model), "--out", str(out), "--iterations", "2", "--prompts", "4",
                 "-k", "2", "--batch-size", "4", "--max-new-tokens", "12", "--eval-size", "2", "--eval-k", "2",
                 "--threads", "1", *extra]) == 0
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["iteration"] == 2 and history[-1]["rollouts"] == 16
    assert "maj@1" in history[0] and all("loss" in h and "grad_norm" in h for h in history[1:])
    assert all({"clipfrac_low", "clipfrac_high", "ratio_mean", "truncation_rate"} <= set(h) for h in history[1:])
    # the KL is measured when there is a reference model: PPO (kl_coef 0.05), or a KL term; `mathrl grpo` (kl_coef
    # 0) keeps none
    assert ("kl" in history[-1]) == (command == "ppo" or "--kl-coef" in extra)
    if "--kl-target" in extra:  # adaptive KL: the coefficient moves with the measured KL
        assert history[1]["kl_coef"] == 0.05 and history[2]["kl_coef"] != history[1]["kl_coef"]
    if "--zero-signal" in extra:
        assert all(h["zero_signal_fraction"] < 1 for h in history[1:])
    assert _changed(sft_model, out / "model")  # LoRA: the merged adapters


@pytest.mark.parametrize("command,extra", [
    ("sft", ["--epochs", "1", "--train-size", "16", "--batch-size", "8", "--eval-size", "0"]),
    # EI and RCRL retrain from the start each round: from fresh adapters (the references give EI data to learn)
    ("ei", ["--rounds", "1", "--questions", "4", "-k", "2", "--patience", "0", "--include-references",
            "--eval-size", "0"]),
    ("rcrl", ["--questions", "4", "-k", "2", "--eval-size", "0"]),  # the return tokens' embeddings train in full
    ("orm", ["--questions", "6", "-k", "2", "--epochs", "1", "--batch-size", "4"]),  # and the reward head
])
def test_lora_on_every_trainer_changes_the_weights(start, tmp_path, command, extra):
    out = tmp_path / command
    argv = ["orm", "train"] if command == "orm" else [command]
    sampled = [] if command == "sft" else ["--max-new-tokens", "8"]  # SFT without dev evaluations samples nothing
    assert main([*argv, "--model", str(start["sft"]), "--out", str(out), "--lora-rank", "2", "--lora-alpha", "8",
                 "--lora-targets", "q_proj", "v_proj", *sampled, "--threads", "1", *extra]) == 0
    assert (out / "model" / "config.json").is_file()  # merged weights: an ordinary model directory
    before, after = _weights(start["sft"]), _weights(out / "model")
    assert _changed(start["sft"], out / "model")
    # only the targeted projections (and, in RCRL and the ORM, what trains in full beside them) moved
    moved = {k.split(".")[-2] for k in before if k in after and before[k].shape == after[k].shape
             and not torch.equal(before[k], after[k])}
    assert moved == {"q_proj", "v_proj"}, moved


def test_lora_adapters_alone_are_saved_resumed_and_loaded_onto_the_start_model(start, tmp_path):
    from mathrl import checkpoint as ckpt
    from mathrl.models import apply_lora, load_model
    from mathrl.settings import Lora

    out = tmp_path / "sft"
    assert main(["sft", "--model", str(start["sft"]), "--out", str(out), "--epochs", "1", "--train-size", "16",
                 "--batch-size", "8", "--eval-size", "0", "--lora-rank", "2", "--no-save-merged",
                 "--threads", "1"]) == 0
    adapter = json.loads((out / "model" / "adapter_config.json").read_text())
    assert not (out / "model" / "config.json").exists() and adapter["base_model_name_or_path"] == str(
        start["sft"].resolve())
    # every command loads the directory as the start model with the adapters merged in
    merged, _ = load_model(str(out / "model"), device="cpu")
    base, _ = load_model(str(start["sft"]), device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), base.state_dict().values()))
    assert main(["eval", "--model", str(out / "model"), "-n", "2", "-k", "1", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "e"), "--threads", "1"]) == 0
    # a LoRA run's checkpoint holds its adapters, and resuming loads them onto the start model
    last = ckpt.latest_checkpoint(out)
    fresh = apply_lora(load_model(str(start["sft"]), device="cpu")[0], Lora(lora_rank=2), start["sft"])
    ckpt.load_weights_into(fresh, last)
    merged_again = fresh.merge_and_unload()
    assert all(torch.equal(a, b) for a, b in zip(merged.state_dict().values(), merged_again.state_dict().values()))


def test_mask_truncated_leaves_cut_completions_out_of_the_loss(start, orm_model, tmp_path):
    # 2 new tokens: every completion is cut at the limit, so with --mask-truncated no token is in the loss
    args = ["grpo", "--model", str(start["sft"]), "--iterations", "1", "--prompts", "4", "-k", "2", "--batch-size",
            "8", "--max-new-tokens", "2", "--eval-size", "0", "--reward", "orm", "--orm", str(orm_model),
            "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "masked"), "--mask-truncated"]) == 0
    history = json.loads((tmp_path / "masked" / "history.json").read_text())
    assert history[-1]["truncation_rate"] == 1.0
    assert not _changed(start["sft"], tmp_path / "masked" / "model")
    assert main([*args, "--out", str(tmp_path / "unmasked")]) == 0  # the same run without the flag learns
    assert _changed(start["sft"], tmp_path / "unmasked" / "model")


def test_k_larger_than_samples_is_rejected(tmp_path, capsys):
    # pass@K needs n >= K completions per question
    from mathrl.tasks import load_task

    p = load_task("synthetic", level=1).problems("test")[0]
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"id": p.id, "completions": ["a", "b"]}) + "\n")
    assert main(["score", "--samples", str(samples), "--task", "synthetic", "--level", "1", "-k", "3",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: k=3 is larger than the fewest completions on a line (2)"


@pytest.mark.parametrize("returns", ["sparse", "dense"])
def test_rcrl_smoke_and_conditioned_eval(start, tmp_path, returns):
    sft_model = start["sft"]
    out = tmp_path / "rcrl"
    assert main(["rcrl", "--model", str(sft_model), "--out", str(out), "--returns", returns, "--questions", "4",
                 "-k", "2", "--max-new-tokens", "12", "--eval-size", "2", "--eval-k", "2", "--threads", "1"]) == 0
    meta = json.loads((out / "model" / "mathrl.json").read_text())
    assert meta["condition"] == {"token": "[GOOD]", "dense": returns == "dense"}
    history = json.loads((out / "history.json").read_text())
    assert [(h["round"], h["rollouts"]) for h in history] == [(0, 0), (1, 8)] and "maj@1" in history[0]
    assert _changed(sft_model, out / "model")
    assert main(["eval", "--model", str(out / "model"), "-n", "2", "-k", "2", "--max-new-tokens", "12",
                 "--out", str(tmp_path / "e"), "--threads", "1"]) == 0
    row = json.loads((tmp_path / "e" / "samples.jsonl").read_text().splitlines()[0])
    assert all("[GOOD]" not in c and "[BAD]" not in c for c in row["completions"])


def test_rcrl_balanced_labels_log_the_natural_ratio_and_train_on_the_balanced_mix(start, tmp_path):
    # what the study's F8 reads: good_fraction is the share of good labels before balancing (the natural ratio),
    # dataset_size what balancing kept. A reward that marks samples 1, 2, 3 of every 4 good (rollouts come in
    # (prompt, sample) order): 4 questions x K=2 = 8 samples, 6 good and 2 bad -> natural 6 / 8 = 0.75; balanced
    # keeps 2 good and the 2 bad -> 4 examples
    reward = tmp_path / "three_in_four.py"
    reward.write_text("def reward(prompts, completions, **columns):\n"
                      "    return [1.0 if i % 4 else 0.0 for i in range(len(completions))]\n")
    out = tmp_path / "rcrl"
    assert main(["rcrl", "--model", str(start["sft"]), "--out", str(out), "--reward", f"{reward}:reward",
                 "--label-ratio", "balanced", "--no-include-references", "--questions", "4", "-k", "2",
                 "--max-new-tokens", "12", "--eval-size", "2", "--eval-k", "2", "--threads", "1"]) == 0
    round_1 = json.loads((out / "history.json").read_text())[1]
    assert round_1["good_fraction"] == 0.75 and round_1["dataset_size"] == 4
    assert json.loads((out / "model" / "mathrl.json").read_text())["label_ratio"] == "balanced"
    assert _changed(start["sft"], out / "model")


def test_return_conditioned_examples_mask_the_return_tokens():
    from mathrl.algorithms.rcrl import labelled_example

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    text = " a. b."
    ex = labelled_example(Tok(), [1, 2], text, [(0, 3), (3, 6)], [True, False], final_good=False, good=7, bad=8,
                          eos=9, dense=True)
    # prompt [1, 2] | [GOOD] " a." | [BAD] " b." | EOS ; only solution tokens and EOS are targets
    assert ex.input_ids == (1, 2, 7, 32, 97, 46, 8, 32, 98, 46, 9)
    assert ex.loss_mask == (False, False, False, True, True, True, False, True, True, True, True)
    sparse = labelled_example(Tok(), [1], text, [], [], final_good=True, good=7, bad=8, eos=9, dense=False)
    assert sparse.input_ids[:2] == (1, 7) and sparse.loss_mask[:2] == (False, False)


@pytest.mark.parametrize("command", ["study", "pretrain", "sft", "ei", "orm train", "ppo", "grpo", "rcrl", "eval",
                                     "score", "data show", "data stats", "model init"])
def test_every_command_has_help(command, capsys):
    # argparse formats help texts with %: a stray "%" in a flag's help broke --help (config.add_arguments escapes it)
    assert main([*command.split(), "--help"]) == 0
    assert "--" in capsys.readouterr().out


def test_a_percent_sign_in_a_flags_help_is_printed_as_it_is(capsys):
    import argparse
    from dataclasses import dataclass

    from mathrl.config import add_arguments, field

    @dataclass
    class Settings:
        share: float = field(0.5, "fraction of the data (50% by default)")

    parser = argparse.ArgumentParser()
    add_arguments(parser, Settings)
    assert "(50% by default)" in parser.format_help()


def test_a_hub_id_in_the_local_cache_works_offline_and_a_missing_one_is_one_line(start, tmp_path, monkeypatch,
                                                                                  capsys):
    import shutil

    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-sft" / "snapshots" / "0123abcd"
    shutil.copytree(start["sft"], snapshot)
    (cache / "models--someone--tiny-sft" / "refs").mkdir()
    (cache / "models--someone--tiny-sft" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert main(["eval", "--model", "someone/tiny-sft", "-n", "2", "-k", "2", "--max-new-tokens", "8",
                 "--out", str(tmp_path / "e"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n_questions"] == 2
    capsys.readouterr()
    assert main(["eval", "--model", "someone/absent", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not in the local Hugging Face cache" in err and "\n" not in err


def test_a_model_mathrl_did_not_train_is_graded_with_flexible_extraction(tmp_path, data_dir, capsys):
    other = tmp_path / "foreign"
    assert main(["model", "init", "--task", "gsm8k", "--data-dir", str(data_dir / "gsm8k"), "--out", str(other)]) == 0
    (other / "mathrl.json").unlink()  # as any Hugging Face checkpoint: no record of a task
    args = ["eval", "--model", str(other), "--task", "gsm8k", "--data-dir", str(data_dir / "gsm8k"), "-n", "2",
            "-k", "1", "--max-new-tokens", "4", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "answers read with --extract flexible" in out and "| flexible (headline) |" in out
    # strict, flexible and boxed side by side in metrics.json and samples.jsonl, which records the headline one
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["extract"] == "flexible" and {"strict", "flexible", "boxed"} <= set(metrics["by_extraction"])
    assert metrics["by_extraction"]["flexible"]["maj@1"] == metrics["maj@1"]
    row = json.loads((tmp_path / "e" / "samples.jsonl").read_text().splitlines()[0])
    assert row["extract"] == "flexible" and row["by_extraction"]["flexible"]["answers"] == row["answers"]
    assert row["by_extraction"]["strict"]["greedy_answer"] is None or "####" in row["greedy"]
    assert main([*args, "--extract", "strict", "--out", str(tmp_path / "s")]) == 0
    assert "--extract flexible" not in capsys.readouterr().out.split("warning")[0]


def test_dapo_dynamic_sampling_refills_the_batch_and_counts_every_rollout(start, tmp_path):
    # a reward that differs within a group only some of the time (completion length mod 3), so that some groups
    # carry no signal and refill has to draw further prompts
    reward = tmp_path / "parity.py"
    reward.write_text("def reward(prompts, completions, **columns):\n    return [len(c) % 3 / 2 for c in completions]\n")
    out = tmp_path / "dapo"
    prompts, k, rounds, cap = 4, 2, 3, 40
    assert main(["grpo", "--model", str(start["sft"]), "--out", str(out), "--reward", f"{reward}:reward",
                 "--zero-signal", "refill", "--refill-rounds", str(rounds), "--max-rollouts", str(cap),
                 "--iterations", "10", "--prompts", str(prompts), "-k", str(k), "--batch-size", "4",
                 "--max-new-tokens", "12", "--eval-size", "0", "--threads", "1"]) == 0
    history = [h for h in json.loads((out / "history.json").read_text()) if h["iteration"] > 0]
    drawn = [b["rollouts"] - a["rollouts"] for a, b in zip([{"rollouts": 0}] + history, history)]
    for h, n in zip(history, drawn):
        assert 1 <= h["sampling_rounds"] <= 1 + rounds and h["groups"] <= prompts
        assert 0 <= h["zero_signal_fraction"] <= 1
        # a batch is full of groups with signal, unless every refill round was spent or the budget ran out
        assert h["groups"] == prompts or h["sampling_rounds"] == 1 + rounds or h["rollouts"] == cap
        # every rollout drawn counts, kept or not: up to a full draw per round (the cap may shorten the last)
        assert (h["sampling_rounds"] - 1) * prompts * k < n <= h["sampling_rounds"] * prompts * k
    assert any(h["sampling_rounds"] > 1 for h in history)  # some groups had no signal: refill drew again
    # the budget: draws stop at exactly --max-rollouts (k divides it), before --iterations ran out
    assert history[-1]["rollouts"] == cap and len(history) < 10
    assert _changed(start["sft"], out / "model")


def test_your_own_jsonl_task_and_reward_function(start, tmp_path, capsys):
    from mathrl.tasks import load_task

    rows = [{"q": p.question, "final": p.answer, "work": p.solution}
            for p in load_task("synthetic").problems("train")[:60]]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = tmp_path / "my_reward.py"
    reward.write_text("def reward(prompts, completions, answer, **columns):\n"
                      "    assert len(prompts) == len(completions) == len(answer) == len(columns['question'])\n"
                      # alternating within each group of K=2 (rollouts come in (prompt, sample) order): every group
                      # has signal, whatever the model writes
                      "    return [i % 2 * 0.5 + len(c) % 2 * 0.25 for i, c in enumerate(completions)]\n")
    task = ["--task", f"jsonl:{data}", "--question-field", "q", "--answer-field", "final", "--solution-field", "work"]
    small = ["--max-new-tokens", "12", "--eval-size", "2", "--eval-k", "2", "--threads", "1"]
    out = tmp_path / "grpo"
    assert main(["grpo", "--model", str(start["sft"]), "--out", str(out), *task, "--reward", f"{reward}:reward",
                 "--iterations", "2", "--prompts", "4", "-k", "2", "--batch-size", "4", *small]) == 0
    history = json.loads((out / "history.json").read_text())
    assert all(0 <= h["reward"] <= 1 and h["zero_signal_fraction"] < 1 for h in history[1:])
    assert _changed(start["sft"], out / "model")
    ei = tmp_path / "ei"
    assert main(["ei", "--model", str(start["sft"]), "--out", str(ei), *task, "--reward", f"{reward}:reward",
                 "--rounds", "1", "--questions", "4", "-k", "2", "--patience", "0", *small]) == 0
    rcrl = tmp_path / "rcrl"  # the user's reward marks the good solutions: its history counts them
    assert main(["rcrl", "--model", str(start["sft"]), "--out", str(rcrl), *task, "--reward", f"{reward}:reward",
                 "--questions", "4", "-k", "2", "--include-references", "--no-include-references", *small]) == 0
    rcrl_round = json.loads((rcrl / "history.json").read_text())[1]
    assert 0 < rcrl_round["good_fraction"] < 1 and _changed(start["sft"], rcrl / "model")
    recorded = json.loads((ei / "model" / "mathrl.json").read_text())["task"]
    assert recorded["name"] == f"jsonl:{data}" and recorded["question_field"] == "q"
    # later commands read the file as it was recorded: no --task, no field flags
    assert main(["eval", "--model", str(ei / "model"), "-n", "3", "-k", "2", "--max-new-tokens", "8",
                 "--out", str(tmp_path / "e"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n_questions"] == 3
    capsys.readouterr()
    # bad input: one line each
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"q": "x", "final": "7"}) + "\n" + json.dumps({"question": "y"}) + "\n")
    assert main(["eval", "--model", str(start["sft"]), "--task", f"jsonl:{bad}", "--question-field", "q",
                 "--answer-field", "final", "--split", "train", "--out", str(tmp_path / "b")]) == 2
    assert main(["grpo", "--model", str(start["sft"]), "--reward", f"{tmp_path}/nope.py:f"]) == 2
    assert main(["grpo", "--model", str(start["sft"]), "--reward", f"{reward}:absent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "row 2 has no field 'q'" in err[0]
    assert "file not found" in err[1] and "has no function 'absent'" in err[2]


def test_your_own_data_as_parquet_or_a_datasets_folder(start, tmp_path, monkeypatch, capsys):
    import builtins

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mathrl.tasks import load_task

    synthetic = load_task("synthetic").problems("train")[:50]
    rows = [{"q": p.question, "final": int(p.answer), "work": p.solution} for p in synthetic]  # a numeric column
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mine.parquet")
    fields = {"question_field": "q", "answer_field": "final", "solution_field": "work"}
    single = load_task(f"parquet:{tmp_path / 'mine.parquet'}", **fields)
    assert len(single.problems("train")) + len(single.problems("test")) == 50  # split by hash, as one jsonl file
    assert single.problems("train")[0].solution.endswith("#### " + single.problems("train")[0].answer)
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:40]),
                          "test": datasets.Dataset.from_list(rows[40:46]),
                          "validation": datasets.Dataset.from_list(rows[46:])}).save_to_disk(str(folder))
    task = load_task(f"datasets:{folder}", **fields)
    assert [len(task.problems(s)) for s in ("train", "test", "dev")] == [40, 6, 4]  # dev: the validation split
    assert task.problems("test")[0].question == synthetic[40].question
    out = tmp_path / "e"
    assert main(["eval", "--model", str(start["sft"]), "--task", f"datasets:{folder}", "--question-field", "q",
                 "--answer-field", "final", "-n", "2", "-k", "1", "--max-new-tokens", "4", "--out", str(out),
                 "--threads", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n_questions"] == 2
    capsys.readouterr()
    # one line for: a folder that save_to_disk did not write, a row without the field, no datasets package
    assert main(["eval", "--model", str(start["sft"]), "--task", f"datasets:{tmp_path}", "--out", str(out)]) == 2
    assert main(["eval", "--model", str(start["sft"]), "--task", f"parquet:{tmp_path / 'mine.parquet'}",
                 "--question-field", "question", "--out", str(out)]) == 2
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "datasets" else real_import(name, *a, **k))
    assert main(["eval", "--model", str(start["sft"]), "--task", f"parquet:{tmp_path / 'mine.parquet'}",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "not a folder written by datasets' save_to_disk" in err[0]
    assert "row 1 has no field 'question'" in err[1] and 'pip install "mathrl[data]"' in err[2]


def test_score_audit_shows_where_the_graders_disagree(tmp_path, data_dir, data_counts, capsys):
    from mathrl.tasks import load_task

    # GSM8K references: strict and flexible both read the '#### N' line; no reference has a \boxed{}
    refs = tmp_path / "refs.jsonl"
    _gsm8k_references(data_dir, refs)
    assert main(["score", "--task", "gsm8k", "--data-dir", str(data_dir / "gsm8k"), "--samples", str(refs),
                 "--audit", "--out", str(tmp_path / "a")]) == 0
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert audit["n_completions"] == data_counts["gsm8k/test"] and audit["accuracy"]["strict"] == 1.0
    assert audit["accuracy"]["boxed"] == 0.0 and "| strict~flexible |" in capsys.readouterr().out
    # hand-made hostile completions for one problem whose answer is A: by hand, strict is right on 1 and 4 only,
    # flexible on 2, 4 and 5 (the last number), boxed on 3 and 5
    p = load_task("synthetic").problems("test")[0]
    a, wrong = p.answer, str(int(p.answer) + 1)
    completions = [f"#### {a} then {wrong}", f"The answer is {a}.", f"so \\boxed{{{a}}} hence {wrong}",
                   f"#### {a}", f"#### {wrong} no wait \\boxed{{{a}}} {a}", "<think> #### </think>"]
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text(json.dumps({"id": p.id, "completions": completions}) + "\n")
    assert main(["score", "--samples", str(hostile), "--audit", "--out", str(tmp_path / "h")]) == 0
    audit = json.loads((tmp_path / "h" / "audit.json").read_text())
    assert audit["accuracy"] == pytest.approx({"strict": 2 / 6, "flexible": 3 / 6, "boxed": 2 / 6})
    # strict vs flexible differ on completions 1, 2 and 5: agree on 3 of 6
    assert audit["agreement"]["strict~flexible"] == pytest.approx(3 / 6)
    assert audit["patterns"]["strict- flexible- boxed-"] == 1  # the <think> one: no grader crashes or credits it


def test_eval_with_k_0_is_greedy_only(start, tmp_path):
    assert main(["eval", "--model", str(start["sft"]), "-n", "3", "-k", "0", "--max-new-tokens", "8",
                 "--out", str(tmp_path / "g"), "--threads", "1"]) == 0
    metrics = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert "maj@1" in metrics and not any(k.startswith("pass@") for k in metrics)


def test_a_rollout_budget_not_a_multiple_of_k_ends_with_its_last_whole_group():
    # groups of K are drawn whole: with --max-rollouts 10 and K=4 the run stops after 8 rollouts, and that
    # iteration is the last one (its evaluation and checkpoint are due), not a loop that finds nothing to draw
    from mathrl.algorithms.grpo import GRPOState, budget_spent
    from mathrl.algorithms.grpo_config import Config
    from mathrl.settings import Sampling

    cfg = Config(model="m", max_rollouts=10, sampling=Sampling(k=4))
    assert [budget_spent(cfg, GRPOState(rollouts_used=n)) for n in (0, 4, 6, 8)] == [False, False, False, True]
    assert not budget_spent(Config(model="m", sampling=Sampling(k=4)), GRPOState(rollouts_used=10 ** 6))


def test_a_run_directory_of_another_command_is_not_resumed_and_keeps_its_record(start, tmp_path, capsys):
    # an SFT run's checkpoint would load into PPO's optimizer (a torch ValueError, deep in the resume); the
    # directory's config.yaml names its command, and a failed --resume leaves it as it was
    run = tmp_path / "sft"
    shutil.copytree(start["sft"].parent, run)
    record = (run / "config.yaml").read_text()
    assert record.startswith("# mathrl sft:")
    assert main(["ppo", "--model", str(start["sft"]), "--out", str(run), "--resume", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --resume: {run} holds a `mathrl sft` run, not a `mathrl ppo` one; resume it with "
                   "`mathrl sft --resume` or choose another --out")
    assert (run / "config.yaml").read_text() == record
    # the record (its first line a YAML comment) reads back as the command's config
    from mathrl.algorithms.sft_config import Config
    from mathrl.config import build, load_yaml

    assert build(Config, load_yaml(str(run / "config.yaml"))).model == str(start["pretrain"] / "model")


def test_model_files_that_would_be_lost_or_start_at_random_are_refused(start, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    # model init over a trained model
    trained = tmp_path / "trained"
    shutil.copytree(start["sft"], trained)
    before = _weights(trained)
    assert main(["model", "init", "--out", str(trained)]) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert all(torch.equal(before[k], _weights(trained)[k]) for k in before)
    # a checkpoint without one of its weights (transformers would initialise it at random)
    weights = next(trained.glob("*.safetensors"))
    state = load_file(str(weights))
    dropped = next(k for k in state if "mlp.down_proj" in k)
    del state[dropped]
    save_file(state, str(weights), metadata={"format": "pt"})
    assert main(["eval", "--model", str(trained), "-n", "1", "-k", "0", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "lacks 1 of the model's weights" in err and dropped in err
    # a policy's directory as the reward model (its score head would start at random)
    assert main(["eval", "--model", str(start["sft"]), "--orm", str(start["sft"]), "-n", "1", "-k", "2",
                 "--out", str(tmp_path / "e"), "--threads", "1"]) == 2
    assert "is not a reward model: it lacks score" in capsys.readouterr().err
    # an --out that cannot be written is refused before the sampling, not after it
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["eval", "--model", str(start["sft"]), "-n", "1", "-k", "0", "--out", str(blocker),
                 "--threads", "1"]) == 2
    assert f"--out {blocker} exists and is not a directory" in capsys.readouterr().err


def test_files_that_are_not_utf8_are_named_with_their_line(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_bytes(b'{"question": "a", "completions": ["x"]}\n{"question": "b\xff", "completions": ["y"]}\n')
    assert main(["score", "--samples", str(samples), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {samples}:2: not UTF-8 text (byte 0xff at column 16)"
    config = tmp_path / "c.yaml"
    config.write_bytes(b"epochs: \xff\n")
    assert main(["sft", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {config}: not UTF-8 text"


def test_a_reward_function_that_raises_is_named(tmp_path):
    from mathrl.errors import UsageError
    from mathrl.rewards import outcome_rewards
    from mathrl.tasks import load_task

    module = tmp_path / "broken_reward.py"
    module.write_text("def reward(prompts, completions, **columns):\n    return [1 / 0 for _ in completions]\n")
    task = load_task("synthetic")
    problem = task.problems("test")[0]
    with pytest.raises(UsageError, match=rf"^--reward {module}:reward raised ZeroDivisionError: division by zero$"):
        outcome_rewards(task, [problem], ["#### 1"], f"{module}:reward", prompts=["q"])
