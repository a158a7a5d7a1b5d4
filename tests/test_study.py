"""Study orchestration: stage caching is keyed by the stage's command."""

import json

from mathrl.study import Config, Stage, _comparable, _finished, plan


def test_finished_stage_is_reused_only_with_the_same_settings(tmp_path):
    stage = Stage("sft", ["sft", "--epochs", "3", "--seed", "0"])
    assert not _finished(stage, tmp_path)
    (tmp_path / "sft").mkdir()
    record = {"command": ["mathrl", "sft", "--epochs", "3", "--seed", "0", "--out", "x", "--resume", "--threads", "2"],
              "seconds": 1.0}
    (tmp_path / "sft" / "stage.json").write_text(json.dumps(record))
    assert _finished(stage, tmp_path)  # threads, out and resume do not change a result
    assert not _finished(Stage("sft", ["sft", "--epochs", "2", "--seed", "0"]), tmp_path)


def test_comparable_drops_only_run_mechanics():
    assert _comparable(["ei", "--threads", "1", "--rounds", "2", "--out", "d", "--resume"]) == ["ei", "--rounds", "2"]


def test_plan_has_the_paper_grid_and_quick_budgets(tmp_path):
    names = [s.name for s in plan(Config(quick=True), 0, tmp_path)]
    for name in ("pretrain", "sft", "orm", "sorm", "ei-sparse-sft", "ppo-dense-sft", "rcrl-dense-sft",
                 "grpo-sparse-sft", "ei-sparse-pretrained", "eval-sft", "eval-ppo-orm-sft"):
        assert name in names
    by = {s.name: s for s in plan(Config(quick=True), 0, tmp_path)}
    assert "sft" in by["ei-sparse-sft"].needs and "orm" in by["ei-orm-sft"].needs


def test_stage_process_runs_the_command_and_returns_its_status(tmp_path):
    # the stage runs in a process forked from the preloading server, its output appended to the log
    from mathrl.study import _launch

    log = tmp_path / "log.txt"
    log.write_text("$ header\n")
    assert _launch(["data", "show", "--task", "synthetic", "-n", "1"], log) == 0
    text = log.read_text()
    assert text.startswith("$ header\n") and "answer" in text.lower()
    assert _launch(["data", "show", "--task", "nosuchtask"], log) == 2  # a usage error: one line, exit 2
    assert log.read_text().strip().splitlines()[-1].startswith("error:")


def test_sft_compile_defaults_to_the_budget_and_can_be_set(tmp_path):
    sft = lambda cfg: next(s for s in plan(cfg, 0, tmp_path) if s.name == "sft").command  # noqa: E731
    assert "--compile" in sft(Config()) and "--compile" not in sft(Config(quick=True))
    assert "--compile" not in sft(Config(sft_compile=False)) and "--compile" in sft(Config(quick=True, sft_compile=True))
