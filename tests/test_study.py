"""Study orchestration: a stage's result is reused while its command and what it reads are unchanged."""

import ast
import json
import shutil
import time
from pathlib import Path

import pytest

from mathrl import stagecache, study
from mathrl.study import Config, Stage, plan


def test_finished_stage_is_reused_only_with_the_same_settings(tmp_path):
    stage = Stage("sft", ["sft", "--epochs", "3", "--seed", "0"])
    by_name = {"sft": stage}
    assert not stagecache.is_current(stage, tmp_path, by_name)
    (tmp_path / "shared" / "sft").mkdir(parents=True)
    stagecache.finish(tmp_path / "shared" / "sft", ["mathrl", "sft", "--epochs", "3", "--seed", "0", "--out", "x",
                                                      "--resume", "--threads", "2"], 1.0,
                      stagecache.inputs(stage, tmp_path, by_name))
    assert stagecache.is_current(stage, tmp_path, by_name)  # threads, out and resume do not change a result
    other = Stage("sft", ["sft", "--epochs", "2", "--seed", "0"])
    assert not stagecache.is_current(other, tmp_path, {"sft": other})
    # a record from before inputs were recorded cannot be shown current
    record = json.loads((tmp_path / "shared" / "sft" / "stage.json").read_text())
    del record["inputs"]
    (tmp_path / "shared" / "sft" / "stage.json").write_text(json.dumps(record))
    assert not stagecache.is_current(stage, tmp_path, by_name)


def test_a_stage_computed_by_other_code_is_not_current(tmp_path, monkeypatch):
    """The code is an input: a stage finished under other mathrl sources (or another torch or transformers) runs
    again, and so does what needs it; a change of comments or docstrings only keeps the cache."""
    stage = Stage("sft", ["sft", "--seed", "0"])
    ev = Stage("eval-sft", ["eval", "--seed", "0"], needs=["sft"])
    by_name = {"sft": stage, "eval-sft": ev}
    for s in (stage, ev):
        s.dir(tmp_path).mkdir(parents=True)
        stagecache.finish(s.dir(tmp_path), ["mathrl", *s.command], 1.0, stagecache.inputs(s, tmp_path, by_name))
    assert stagecache.is_current(ev, tmp_path, by_name)
    monkeypatch.setattr(stagecache, "code_fingerprint", lambda: "other code")
    assert not stagecache.is_current(stage, tmp_path, by_name)
    assert not stagecache.is_current(ev, tmp_path, by_name)
    # what the fingerprint hashes: each module parsed, without its docstrings (comments never reach the tree)
    a = '"""doc one"""\nclass C:\n    """doc"""\n    def f(self):\n        """doc"""\n        return 1  # why\n'
    b = '"""doc two"""\nclass C:\n    def f(self):\n\n        return 1\n'
    assert stagecache.parsed(a) == stagecache.parsed(b)
    assert stagecache.parsed(b) != stagecache.parsed(b.replace("return 1", "return 2"))
    assert stagecache.parsed('def f():\n    """only a docstring"""\n') == stagecache.parsed("def f():\n    pass\n")


def _imported_modules(module: str, files: dict) -> set[str]:
    """The mathrl modules ``module`` imports anywhere in its code (at the top or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(files[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            base = node.module if node.level == 0 else ".".join(module.split(".")[: -node.level] + [node.module])
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return found & set(files)


def test_the_modules_left_out_of_the_code_fingerprint_are_those_no_stage_command_runs(tmp_path):
    """A change of a verdict rule or of the report's wording keeps the stages (their code is fingerprinted
    without ``STUDY_SIDE``); that is right only if no stage command imports those modules, directly or through
    another module, at any depth. And every module that no stage command imports is left out, so that changing
    it never throws away hours of stages."""
    from mathrl.cli import COMMANDS

    package = Path(stagecache.__file__).parent
    files = {}
    for path in package.rglob("*.py"):
        parts = ("mathrl", *path.relative_to(package).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    roots = {"mathrl", "mathrl.__main__", "mathrl.cli"}
    for name, command in COMMANDS.items():
        if name != "study":  # the one command that is not a stage
            roots |= {command.config.split(":")[0], command.run.split(":")[0]}
    reached, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
            todo += parents + sorted(_imported_modules(module, files))  # a package's __init__ runs first
    study_side = {f"mathrl.{name}" for name in stagecache.STUDY_SIDE}
    assert not study_side & reached, f"a stage command imports {sorted(study_side & reached)}"
    assert set(files) - reached == study_side, "add these to stagecache.STUDY_SIDE: " \
        f"{sorted(set(files) - reached - study_side)}"
    # the fingerprint of a copy of the package: the same after a study-side change, another after a stage-side one
    copy = tmp_path / "mathrl"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    fingerprint = stagecache.code_fingerprint.__wrapped__  # not the per-process cache: the sources change here
    before = fingerprint(copy)
    assert before == fingerprint(package)
    with open(copy / "report.py", "a") as f:
        f.write("\nWORDING = 'another sentence'\n")
    assert fingerprint(copy) == before
    with open(copy / "losses.py", "a") as f:
        f.write("\nCLIP = 0.3\n")
    assert fingerprint(copy) != before


def test_comparable_drops_only_run_mechanics():
    assert stagecache.comparable(["ei", "--threads", "1", "--rounds", "2", "--out", "d", "--resume"]) == \
        ["ei", "--rounds", "2"]


def _run_plan(cfg, root, monkeypatch) -> list[str]:
    """study.run_stages with each stage's command replaced by a stub that succeeds; the stages it ran."""
    ran = []

    def launch(args, log, ranks=1):
        out = args[args.index("--out") + 1]
        ran.append(next(s.name for s in stages if str(s.dir(root)) == out))
        return 0

    monkeypatch.setattr(study, "_launch", launch)
    stages = plan(cfg, root)
    study.run_stages(stages, root, workers=2, total_threads=2)
    return ran


def test_a_study_with_an_engine_that_is_not_installed_is_refused_before_any_stage(tmp_path, monkeypatch):
    import sys

    from mathrl.errors import UsageError

    monkeypatch.setitem(sys.modules, "vllm", None)  # what Python does for a package that is not installed
    monkeypatch.setattr(study, "_launch", lambda *a, **k: pytest.fail("a stage ran"))
    with pytest.raises(UsageError, match="--engine vllm needs vLLM"):
        study.main(Config(quick=True, out=str(tmp_path / "s"), engine="vllm"))
    assert not (tmp_path / "s").exists()  # nothing written either


def test_an_interrupted_study_still_counts_its_wall_time_up_to_its_last_finished_stage(tmp_path, monkeypatch):
    # the wall time was written once, after the last stage: a study stopped part-way (a failed stage, a killed
    # session) and resumed reported only the invocation that finished, and dropped the stages the first one ran
    calls = []

    def launch(args, log, ranks=1):
        calls.append(args[0])
        if len(calls) == 3:
            raise study.RunError("a stage failed")
        time.sleep(0.05)
        return 0

    monkeypatch.setattr(study, "_launch", launch)
    with pytest.raises(study.RunError):
        study.main(Config(quick=True, out=str(tmp_path), workers=1))
    first = json.loads((tmp_path / "wall_time.json").read_text())["seconds"]
    assert first >= 0.1  # two stages of >= 0.05 s finished before the failure


def test_a_changed_budget_reruns_the_rl_stages_and_every_evaluation_of_their_models(tmp_path, monkeypatch):
    quick = dict(quick=True, out=str(tmp_path))
    first = _run_plan(Config(**quick), tmp_path, monkeypatch)
    assert len(first) == len(plan(Config(**quick), tmp_path))
    assert _run_plan(Config(**quick), tmp_path, monkeypatch) == []  # nothing changed: everything reused
    again = set(_run_plan(Config(**quick, rollouts=1024), tmp_path, monkeypatch))
    stages = plan(Config(**quick, rollouts=1024), tmp_path)
    rl = {s.name for s in stages if s.group == "rl"}
    evals_of_rl = {s.name for s in stages if s.group == "eval" and s.run is not None}
    assert rl and evals_of_rl and again == rl | evals_of_rl  # the evaluations' commands did not change: their models did
    assert not again & {"pretrain", "sft", "orm", "sorm", "eval-sft", "eval-pretrain"}


def test_a_changed_model_outside_the_study_reruns_what_reads_it(tmp_path, monkeypatch):
    # a user's pretrained model (gsm8k --model DIR): retrained in place, everything downstream of it runs again
    model = tmp_path / "user-model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    cfg = Config(quick=True, out=str(tmp_path / "study"), task="gsm8k", model=str(model))
    root = tmp_path / "study"
    assert _run_plan(cfg, root, monkeypatch)
    assert _run_plan(cfg, root, monkeypatch) == []
    (model / "model.safetensors").write_bytes(b"new weights")
    assert set(_run_plan(cfg, root, monkeypatch)) == {s.name for s in plan(cfg, root)}


def test_plan_has_the_paper_grid_seeds_and_matched_budgets(tmp_path):
    stages = plan(Config(), tmp_path)
    names = [s.name for s in stages]
    for name in ("pretrain", "sft", "orm", "ei-sparse-sft@4", "ppo-dense-sft@2", "rcrl-dense-sft@0",
                 "sft-continued@1", "ei-sparse-pretrained@2", "eval-sft", "eval-ppo-orm-sft@0", "eval-pretrain",
                 "eval-sft-continued@4"):
        assert name in names
    # every default arm feeds a finding: GRPO is the objectives ablation's base, and no synthetic run reads the SORM
    assert "grpo-sparse-sft@0" not in names and "sorm" not in names
    # 5 seeds for the sparse runs and continued SFT, 3 for the variants and the pretrained start
    assert "ppo-sparse-sft@5" not in names and "ppo-dense-sft@3" not in names and "ppo-sparse-pretrained@3" not in names
    quick = [s.name for s in plan(Config(quick=True), tmp_path)]
    assert "ei-sparse-sft@1" in quick and "ei-sparse-sft@2" not in quick and "ppo-dense-sft@1" not in quick
    by = {s.name: s for s in stages}
    assert "sft" in by["ei-sparse-sft@1"].needs and "orm" in by["ei-orm-sft@0"].needs
    assert by["ei-sparse-sft@1"].dir(tmp_path) == tmp_path / "seed-1" / "ei-sparse-sft"
    assert by["sft"].dir(tmp_path) == tmp_path / "shared" / "sft"

    def arg(stage, flag):
        return int(stage.command[stage.command.index(flag) + 1])

    # the same rollout cap for every RL run from either start: EI rounds x questions x K=4, PPO/GRPO
    # iterations x 256, RCRL questions x 4; dev evaluations on the log schedule, a plateau stop where it can fire
    for s in stages:
        if s.group != "rl":
            continue
        if s.command[0] == "sft":  # continued SFT: one pass over as many training problems as an RL run's rollouts
            assert arg(s, "--train-size") * arg(s, "--epochs") == 32768 and s.needs == ["sft"], s.name
            continue
        if s.command[0] == "ei":
            assert arg(s, "--rounds") * arg(s, "--questions") * 4 == 32768, s.name
        elif s.command[0] == "rcrl":
            assert arg(s, "--questions") * 4 == 32768, s.name
        else:
            assert arg(s, "--iterations") * 256 == 32768, s.name
        assert s.command[s.command.index("--eval-split") + 1] == "dev" and "--eval-at" in s.command, s.name
        assert ("--stop-at-plateau" in s.command) == (s.command[0] != "rcrl"), s.name  # RCRL trains one round
    # every final evaluation: the same problems and sampling seed
    evals = [s for s in stages if s.group == "eval"]
    assert {(arg(s, "-n"), arg(s, "--k-problems"), arg(s, "--seed")) for s in evals} == {(1000, 120, 0)}
    # on a real task dense RCRL labels steps with the SORM, so it is trained: it labels every sample it trains on,
    # 1,000 training questions x K=4 = 4,000 labelled samples (the ORM's 10% held-out share comes on top: 1,111)
    by = {s.name: s for s in plan(Config(task="gsm8k", model="some/model"), tmp_path)}
    assert arg(by["sorm"], "--sorm-samples") == 4 * 1000 and arg(by["sorm"], "--questions") == 1111
    assert "sorm" in by["rcrl-dense-sft@0"].needs


def test_variant_seeds_cannot_exceed_seeds():
    from mathrl.errors import UsageError

    with pytest.raises(UsageError, match="variant_seeds"):
        Config(seeds=1, variant_seeds=2).validate()


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
    sft = lambda cfg: next(s for s in plan(cfg, tmp_path) if s.name == "sft").command  # noqa: E731
    assert "--compile" in sft(Config()) and "--compile" not in sft(Config(quick=True))
    assert "--compile" not in sft(Config(sft_compile=False)) and "--compile" in sft(Config(quick=True, sft_compile=True))


def test_rl_compile_is_off_by_default_and_can_be_set(tmp_path):
    rl = lambda cfg: [s.command for s in plan(cfg, tmp_path) if s.group == "rl"]  # noqa: E731
    assert not any("--compile" in c for c in rl(Config())) and not any("--compile" in c for c in rl(Config(quick=True)))
    assert all("--compile" in c for c in rl(Config(rl_compile=True)))


def test_objectives_ablation_adds_grpo_loss_variants_on_grpos_budget_and_seeds(tmp_path):
    default = {s.name for s in plan(Config(), tmp_path)}
    assert not any("dapo" in n for n in default)  # not in the default grid
    stages = {s.name: s for s in plan(Config(ablation="objectives"), tmp_path)}
    grpo = stages["grpo-sparse-sft@2"].command
    for name, first in (("drgrpo", "--advantage-scale"), ("dapo", "--clip-high"), ("gspo", "--policy-loss"),
                        ("cispo", "--policy-loss")):
        s = stages[f"grpo-{name}-sft@2"]
        assert f"eval-grpo-{name}-sft@2" in stages and s.run.objective
        # GRPO's command with the objective's switches inserted: same budget, prompts, K, seed and evaluations
        i = s.command.index(first)
        n_extra = len(s.command) - len(grpo)
        assert s.command[:i] + s.command[i + n_extra:] == grpo
        assert s.rollouts == stages["grpo-sparse-sft@2"].rollouts
    with pytest.raises(Exception, match="unknown ablation"):
        Config(ablation="rewards").validate()


def test_a_real_model_gets_published_rates_longer_completions_and_its_prompt_flags(tmp_path):
    from mathrl.errors import UsageError
    from mathrl.settings import Prompting

    cfg = Config(task="gsm8k", model="some/model", prompting=Prompting(chat_template=True, stop=["</s>"]))
    cfg.validate()
    by = {s.name: s.command for s in plan(cfg, tmp_path)}
    assert "pretrain" not in by

    def arg(name, flag):
        return by[name][by[name].index(flag) + 1]

    # the rates of docs/algorithms.md "Real models" instead of the 0.7M model's defaults
    assert [arg(n, "--lr") for n in ("sft", "orm", "sorm", "ei-sparse-sft@0", "rcrl-sparse-sft@0")] == ["1e-5"] * 5
    assert arg("ppo-sparse-sft@0", "--lr") == "1e-6" and arg("sft-continued@0", "--lr") == "1e-5"
    assert arg("sft", "--epochs") == "3" and {arg(n, "--max-new-tokens") for n in by} == {"256"}
    # the prompt flags reach the stages that start from the pretrained model; the SFT model records them
    for name in ("sft", "eval-pretrained", "ei-sparse-pretrained@0", "ppo-sparse-pretrained@0"):
        assert "--chat-template" in by[name] and arg(name, "--stop") == "</s>", name
    assert "--chat-template" not in by["ei-sparse-sft@0"] and "--chat-template" not in by["eval-sft"]
    # the embedded default runs at the rates its tuning sweep selected (budgets.STUDY_LR; the others, pretrain, SFT
    # and the reward models, at their commands' defaults), and has no chat template to apply
    from mathrl.budgets import STUDY_LR

    embedded = {s.name: s.command for s in plan(Config(), tmp_path)}
    assert [embedded[n][embedded[n].index("--lr") + 1] for n in
            ("ei-sparse-sft@0", "ppo-sparse-sft@0", "rcrl-sparse-sft@0", "sft-continued@0", "ppo-dense-sft@0")] == \
        [STUDY_LR[c] for c in ("ei", "ppo", "rcrl", "sft-continued", "ppo")]
    assert all("--lr" not in embedded[n] for n in ("pretrain", "sft", "orm"))
    with pytest.raises(UsageError, match="real model"):
        Config(prompting=Prompting(chat_template=True)).validate()


def test_the_grid_table_is_what_plan_runs_under_the_names_on_disk(tmp_path):
    from mathrl.grid import RUNS

    # a study directory is resumed by these names (OUT/seed-N/NAME, OUT/seed-N/eval-NAME): they must not change
    assert [r.name for r in RUNS] == [
        "ei-sparse-sft", "ppo-sparse-sft", "grpo-sparse-sft", "rcrl-sparse-sft", "grpo-drgrpo-sft", "grpo-dapo-sft",
        "grpo-gspo-sft", "grpo-cispo-sft", "sft-continued", "ppo-backtrack-sft", "ppo-plr-sft", "ei-backtranslated-sft",
        "sft-continued-backtranslated", "ei-orm-sft", "ppo-dense-sft", "ppo-orm-sft", "rcrl-dense-sft",
        "ei-sparse-pretrained", "ppo-sparse-pretrained", "rcrl-sparse-pretrained", "rcrl-balanced-pretrained"]
    # every row is planned by the default grid or by one of its ablations
    stages = [s for ablation in ("objectives", "label-ratio", "curriculum")
              for s in plan(Config(ablation=ablation, seeds=2, variant_seeds=2), tmp_path)]
    rl = [s for s in stages if s.group == "rl"]
    assert {s.base for s in rl} == {r.name for r in RUNS}
    assert all(s.command[0] == s.run.command and s.dir(tmp_path).name == s.run.name for s in rl)
    assert {s.base for s in stages if s.group == "eval"} == {"eval-sft", "eval-pretrain"} | {f"eval-{r.name}" for r in RUNS}
    # a run's flags name the reward models it reads: it waits for them
    by = {s.name: s for s in stages}
    assert by["ppo-orm-sft@0"].needs == ["sft", "orm"] and by["ei-sparse-pretrained@0"].needs == ["pretrain"]
    assert by["grpo-dapo-sft@1"].command[by["grpo-dapo-sft@1"].command.index("--max-rollouts") + 1] == "32768"


def test_the_sweep_runs_each_compared_algorithm_at_three_rates_with_the_studys_command(tmp_path):
    from mathrl.errors import UsageError
    from mathrl.sweep import SWEEP_LR, SWEEP_SEED

    stages = plan(Config(sweep=True), tmp_path)
    assert [s.name for s in stages[:2]] == ["pretrain", "sft"]
    swept = [s for s in stages if s.group == "sweep"]
    assert len(swept) == 12 and all(s.dir(tmp_path).parent == tmp_path / "sweep" for s in swept)
    grid = {s.name: s.command for s in plan(Config(), tmp_path)}
    for s in swept:
        run, rate = s.base.rsplit("-lr", 1)
        key = "sft-continued" if run == "sft-continued" else s.command[0]
        assert rate in SWEEP_LR[key] and s.seed == SWEEP_SEED and s.needs == ["sft"]
        # the study's command of seed 0 with the swept rate and the sweep's seed: same cap, schedule and stop
        # (the grid's at its selected rate, budgets.STUDY_LR)
        cmd, expected = list(s.command), list(grid[f"{run}@0"])
        assert cmd[cmd.index("--lr") + 1] == rate
        expected[expected.index("--lr") + 1] = rate
        cmd[cmd.index("--seed") + 1] = "0"
        assert cmd == expected, s.name
    # three rates per algorithm, the same factors (0.3, 1, 3) around each default
    for rates in SWEEP_LR.values():
        lo, mid, hi = map(float, rates)
        assert lo / mid == pytest.approx(0.3) and hi / mid == pytest.approx(3.0)
    for bad in (dict(seeds=3), dict(ablation="objectives"), dict(k=16)):
        with pytest.raises(UsageError, match="with --sweep"):
            Config(sweep=True, **bad).validate()
    with pytest.raises(UsageError, match="--sweep with --task gsm8k"):  # its rates are the embedded model's
        Config(sweep=True, task="gsm8k", model="m").validate()
    # the engine reaches the swept runs that sample, as it does the grid's
    vllm = {s.name: s.command for s in plan(Config(sweep=True, engine="vllm"), tmp_path)}
    assert all(vllm[s.name][-2:] == ["--engine", "vllm"] for s in swept if s.command[0] != "sft")


def test_the_sweep_selects_the_best_final_dev_maj1_ties_to_the_smaller_rate(tmp_path):
    from mathrl import sweep

    def history(path, curve, plateau_at=None):
        path.mkdir(parents=True)
        rows = [{"rollouts": x, "maj@1": v} for x, v in curve]
        if plateau_at:
            rows[-1]["plateau_at"] = plateau_at
        (path / "history.json").write_text(json.dumps(rows))
        (path / "stage.json").write_text("{}")  # finished
        (path / "eval_questions.jsonl").write_text("".join(
            json.dumps({"rollouts": x, "questions": [{}] * 500}) + "\n" for x, _ in curve))

    history(tmp_path / "a", [(0, 0.60), (1024, 0.66), (2048, 0.64)])
    history(tmp_path / "b", [(0, 0.60), (1024, 0.62), (2048, 0.65)], plateau_at=2048)
    history(tmp_path / "c", [(0, 0.60), (1024, 0.65), (2048, 0.65)])
    rows = [sweep.read_rl(tmp_path / n, "ei", lr) for n, lr in (("a", "1.5e-4"), ("b", "5e-4"), ("c", "1.5e-3"))]
    # a ends at 0.64 (its best, 0.66, is not the model it produces); b and c end at 0.65: the tie goes to b's
    # smaller rate
    assert [(r.start, r.final, r.best, r.consumed, r.plateau_at) for r in rows] == [
        (0.60, 0.64, 0.66, 2048, None), (0.60, 0.65, 0.65, 2048, 2048), (0.60, 0.65, 0.65, 2048, None)]
    assert sweep.select(rows)["ei"].lr == "5e-4"
    table = sweep.markdown(rows, 2048, "mathrl study --sweep")
    assert "| ei | 5e-4 | 0.600 | 0.650 | 0.650 | 2,048 | plateau at 2,048 |" in table and table.count("| yes |") == 1
    assert sweep.read_rl(tmp_path / "missing", "ei", "5e-4") is None
    assert {r.questions for r in rows} == {500}  # the questions of the last evaluation, not the evaluations
    (tmp_path / "a" / "stage.json").unlink()  # an unfinished run is not read
    assert sweep.read_rl(tmp_path / "a", "ei", "1.5e-4") is None


def test_curriculum_ablation_runs_each_curriculum_beside_its_plain_run_with_the_grids_budget(tmp_path):
    default = {s.name for s in plan(Config(), tmp_path)}
    assert "backtranslate" not in default and not any("plr" in n or "backtrack" in n for n in default)
    stages = {s.name: s for s in plan(Config(ablation="curriculum"), tmp_path)}
    ppo = stages["ppo-sparse-sft@4"].command
    for name, switch in (("ppo-backtrack-sft@4", ["--backtrack", "schedule"]),
                         ("ppo-plr-sft@4", ["--question-sampling", "plr"])):
        cmd = list(stages[name].command)
        if name.startswith("ppo-backtrack"):
            # no plateau stop while the schedule reveals steps (its first half): half the cap, not a quarter
            j = cmd.index("--plateau-min")
            assert (cmd[j + 1], ppo[j + 1]) == ("16384", "8192")
            cmd[j + 1] = ppo[j + 1]
        i = cmd.index(switch[0])
        assert cmd[i:i + 2] == switch and cmd[:i] + cmd[i + 2:] == ppo  # plain PPO's command and the switch
        assert f"eval-{name}" in stages
    bt = stages["backtranslate"]
    assert bt.needs == ["sft"] and bt.command[:3] == ["backtranslate", "--model", str(tmp_path / "shared/sft/model")]
    pairs = str(tmp_path / "shared/backtranslate/backtranslated.jsonl")
    for name, plain in (("ei-backtranslated-sft@4", "ei-sparse-sft@4"),
                        ("sft-continued-backtranslated@4", "sft-continued@4")):
        s, cmd = stages[name], stages[name].command
        assert "backtranslate" in s.needs
        i = cmd.index("--backtranslated")
        assert cmd[i:i + 4] == ["--backtranslated", pairs, "--backtranslated-ratio", "0.5"]
        assert cmd[:i] + cmd[i + 4:] == stages[plain].command


def _arg(stage, flag):
    return stage.command[stage.command.index(flag) + 1]


def _with(command, flag, value):
    """``command`` with ``flag``'s value replaced."""
    out = list(command)
    out[out.index(flag) + 1] = value
    return out


def test_the_default_plan_is_unchanged_by_sizes_and_a_further_size_repeats_the_grids_runs(tmp_path):
    from mathrl.grid import GRID_SIZE

    default = plan(Config(), tmp_path)
    # --sizes tiny (the default, given) plans the same stages, commands and directories
    assert [(s.name, s.command, s.needs, s.dir(tmp_path)) for s in plan(Config(sizes="tiny"), tmp_path)] == \
        [(s.name, s.command, s.needs, s.dir(tmp_path)) for s in default]
    stages = plan(Config(sizes="tiny,small"), tmp_path)
    by = {s.name: s for s in stages}
    # every stage of the default grid keeps its name, command, needs and directory (a study directory resumes)
    for s in default:
        assert (by[s.name].command, by[s.name].needs, by[s.name].dir(tmp_path)) == (s.command, s.needs, s.dir(tmp_path))
    added = [s for s in stages if s.name not in {d.name for d in default}]
    # the further size: its pretrain and SFT, and EI and PPO for each of the 3 variant seeds, with evaluations
    assert sorted(s.name for s in added) == sorted(
        ["pretrain-small", "sft-small", "eval-sft-small"]
        + [f"{e}{r}-sparse-sft-small@{seed}" for r in ("ei", "ppo") for seed in range(3) for e in ("", "eval-")])
    assert len({s.dir(tmp_path) for s in stages}) == len(stages)  # no directory shared
    assert GRID_SIZE == "tiny" and "--size" not in by["pretrain"].command
    # pretrain: the grid's command with --size small, alone and data parallel as the grid's
    pre = by["pretrain-small"]
    i = pre.command.index("--size")
    assert pre.command[i + 1] == "small" and pre.command[:i] + pre.command[i + 2:] == by["pretrain"].command
    assert pre.data_parallel == by["pretrain"].data_parallel and pre.dir(tmp_path) == tmp_path / "shared" / "pretrain-small"
    # SFT from it with the grid's SFT budget and settings
    assert by["sft-small"].command == _with(by["sft"].command, "--model", str(pre.dir(tmp_path) / "model"))
    assert by["sft-small"].needs == ["pretrain-small"]
    sft_small = str(by["sft-small"].dir(tmp_path) / "model")
    for r in ("ei", "ppo"):
        for seed in range(3):
            s, grid = by[f"{r}-sparse-sft-small@{seed}"], by[f"{r}-sparse-sft@{seed}"]
            # the grid's run of that seed from its own size's SFT: the same cap, schedule, plateau stop and seed
            assert s.command == _with(grid.command, "--model", sft_small) and s.needs == ["sft-small"]
            assert s.rollouts == grid.rollouts and s.run.size == "small"
            assert s.dir(tmp_path) == tmp_path / f"seed-{seed}" / f"{r}-sparse-sft-small"
            # its final evaluation: the grid's, without the ORM's rerank (trained on the grid size's samples)
            ev, grid_ev = by[f"eval-{r}-sparse-sft-small@{seed}"], by[f"eval-{r}-sparse-sft@{seed}"]
            i = grid_ev.command.index("--orm")
            expected = grid_ev.command[:i] + grid_ev.command[i + 2:]
            assert ev.command == _with(expected, "--model", str(s.dir(tmp_path) / "model"))
        assert f"{r}-sparse-sft-small@3" not in by  # variant seeds, not seeds
    # the first size is the grid's model: --sizes small,tiny pretrains the grid at small, the further tiny at tiny
    swapped = {s.name: s for s in plan(Config(sizes="small,tiny"), tmp_path)}
    assert _arg(swapped["pretrain"], "--size") == "small" and "--size" not in swapped["pretrain-tiny"].command
    assert "ei-sparse-sft-tiny@2" in swapped


def test_sizes_are_checked_and_refused_where_they_do_not_apply():
    from mathrl.errors import UsageError

    Config(sizes="tiny,tiny4,small").validate()
    for bad, match in (("tiny,huge", "huge"), ("tiny,small,tiny", "twice")):
        with pytest.raises(UsageError, match=match):
            Config(sizes=bad).validate()
    for cfg in (Config(task="gsm8k", model="m", sizes="tiny,small"), Config(sweep=True, sizes="tiny,small")):
        with pytest.raises(UsageError, match="--sizes") as e:
            cfg.validate()
        assert "\n" not in str(e.value)


def test_model_sizes_are_listed_smallest_first():
    # F7 orders its pairs by MODEL_SIZES (larger - smaller): check the order on their parameter counts
    from mathrl.models import SIZES
    from mathrl.settings import MODEL_SIZES

    def blocks(s):  # attention (4 h^2) and SwiGLU (3 h ffn) weights of every block
        return s.layers * (4 * s.hidden ** 2 + 3 * s.hidden * s.ffn)

    counts = [blocks(SIZES[name]) for name in MODEL_SIZES]
    assert set(MODEL_SIZES) == set(SIZES) and counts == sorted(counts) and len(set(counts)) == len(counts)


def test_label_ratio_ablation_runs_rcrl_natural_and_balanced_from_the_pretrained_start(tmp_path):
    default = {s.name for s in plan(Config(), tmp_path)}
    assert not any("pretrained" in n and "rcrl" in n for n in default)  # not in the default grid
    by = {s.name: s for s in plan(Config(ablation="label-ratio"), tmp_path)}
    pretrained = str(by["pretrain"].dir(tmp_path) / "model")
    for seed in range(3):  # variant seeds
        natural, balanced = by[f"rcrl-sparse-pretrained@{seed}"], by[f"rcrl-balanced-pretrained@{seed}"]
        # the grid's RCRL of that seed (its budget, no reference solutions) from the pretrained start
        assert natural.command == _with(by[f"rcrl-sparse-sft@{seed}"].command, "--model", pretrained)
        assert natural.needs == balanced.needs == ["pretrain"]
        i = balanced.command.index("--label-ratio")
        assert balanced.command[i + 1] == "balanced" and balanced.command[:i] + balanced.command[i + 2:] == natural.command
        assert f"eval-rcrl-balanced-pretrained@{seed}" in by
        # the synthetic pretrained start writes prose: its models are evaluated without the ORM's rerank, as
        # EI and PPO from it are
        assert "--orm" not in by[f"eval-rcrl-sparse-pretrained@{seed}"].command
    assert "rcrl-sparse-pretrained@3" not in by


def test_a_pretraining_stage_runs_alone_with_every_core_as_data_parallel_ranks(tmp_path, monkeypatch):
    # each size's pretrain starts once nothing else runs, and nothing starts while it runs
    import threading
    import time

    active, seen, lock = set(), [], threading.Lock()
    cfg = Config(quick=True, out=str(tmp_path), sizes="tiny,small", device="cpu")
    stages = plan(cfg, tmp_path)

    def launch(args, log, ranks=1):
        out = args[args.index("--out") + 1]
        name = next(s.name for s in stages if str(s.dir(tmp_path)) == out)
        with lock:
            active.add(name)
            seen.append((name, frozenset(active), ranks, args[args.index("--threads") + 1]))
        time.sleep(0.002)
        with lock:
            active.discard(name)
        return 0

    monkeypatch.setattr(study, "_launch", launch)
    study.run_stages(stages, tmp_path, workers=2, total_threads=2)
    assert len(seen) == len(stages)
    for name, others, ranks, threads in seen:
        if name.startswith("pretrain"):
            assert others == {name} and (ranks, threads) == (2, "1"), (name, others)  # two 1-thread ranks
        else:
            assert not any(o.startswith("pretrain") for o in others), (name, others)
            assert ranks == 1
    order = [name for name, *_ in seen]
    assert order.index("pretrain-small") > order.index("pretrain")
