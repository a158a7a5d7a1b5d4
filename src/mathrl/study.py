"""The study: one command that re-tests Havrilla et al. 2024 end to end and writes a report.

Grid per seed (the paper's, at the scale at hand): pretrain -> SFT (per-epoch trade-off) -> ORM and SORM on the
SFT policy -> from the SFT model: EI (sparse, ORM), PPO (sparse, dense, ORM), RCRL (sparse, dense), GRPO
(sparse); from the pretrained model (few-shot prompted): EI and PPO (sparse) -> evaluation of every model
with maj@1, maj@K, rerank@K (the ORM) and pass@K -> ``report.md`` and a self-contained ``report.html``
(``report.py``).

Every stage is one ``mathrl`` command run in its own process with its own run directory under OUT/seed-N/, its
log in ``log.txt``. The processes are forked from a server that has imported torch and transformers once (their
import costs ~7 s of CPU per process: --quick took 5.3 minutes with fresh processes, 3.1 forked). A finished
stage leaves ``stage.json`` (its command and wall time) and is skipped when the study runs again; an
interrupted one is resumed from its last checkpoint. Stages that do not depend on each other run two at a time
with one thread each (on 2 cores that is ~1.5x the throughput of one 2-thread process).

With ``--task gsm8k --model DIR`` (a real pretrained HF model; typically with ``--device cuda``) the pretrain
stage is skipped, DIR is the pretrained start (few-shot prompted), and the same grid runs on GSM8K.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import runpy
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field as dc_field
from pathlib import Path

from mathrl.config import field, save as save_config
from mathrl.errors import RunError, UsageError
from mathrl.run import remove_tree


@dataclass
class Config:
    out: str = field("runs/study", "study directory (one folder per seed, report.md and report.html)")
    quick: bool = field(False, "a small, fast version of the whole grid (minutes; results are only indicative)")
    seeds: int = field(1, "number of seeds (the table reports mean ± std)")
    task: str = field("synthetic", "synthetic, gsm8k or svamp")
    level: int | None = field(None, "synthetic task level (default: the task's default)")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    model: str = field("", "gsm8k/svamp: a pretrained HF model directory (the 'pretrained' start)")
    device: str = field("auto", "cpu, cuda, cuda:N or auto")
    k: int = field(0, "K for maj@K, pass@K, rerank@K in the final evaluation (0: 96, or 16 with --quick)")
    eval_problems: int = field(0, "test problems in the final evaluation (0: 120, or 60 with --quick)")
    sft_compile: bool | None = field(None, "torch.compile the SFT stage's training pass (a step takes ~0.8 of "
                                           "the eager time after ~30 s of compiling). "
                                           "Default: on with the full budgets, off with --quick (too few steps)")
    workers: int = field(2, "stages run at once (each with threads = free cores / workers)")
    only: list[str] = field([], "run only these stages (and what they need), e.g. sft ei-sparse-sft")

    def validate(self) -> None:
        if self.seeds < 1 or self.workers < 1:
            raise UsageError("seeds and workers must be >= 1")
        if self.task != "synthetic" and not self.model:
            raise UsageError(f"--task {self.task} needs --model DIR (a pretrained model; the embedded pretraining "
                             "only exists for the synthetic task)")
        if self.task == "synthetic" and self.model:
            raise UsageError("--model applies to gsm8k/svamp; the synthetic study pretrains its own model")


@dataclass
class Stage:
    """One command of the study. ``model_from`` names the stage whose OUT/model this one starts from."""

    name: str
    command: list[str]
    needs: list[str] = dc_field(default_factory=list)
    after: list[str] = dc_field(default_factory=list)  # order only: start after these if they are in the plan
    group: str = ""  # report grouping: pretrain, sft, orm, rl, eval
    meta: dict = dc_field(default_factory=dict)


# Budgets: full (the report's default) and quick. Tuned so that one seed of the full grid takes ~40 minutes on
# 2 CPU cores with the embedded default (docs/results.md has the measured times).
# The pretrained start gets small budgets: at this scale its few-shot pass@K is ~0 (docs/results.md), so RL from it
# has nothing to reinforce; the runs are kept to show that (the paper's F5 needs a stronger pretrained model).
BUDGETS = {
    "full": dict(pretrain_steps=60, sft_epochs=3, train_size=20000, dev_size=200, dev_k=16,
                 orm_questions=1500, sorm_samples=400, ei_rounds=2, ei_questions=2000, ppo_iterations=20,
                 ppo_prompts=64, grpo_prompts=32, rcrl_questions=2000, run_eval_size=100, run_eval_k=8,
                 pretrained_questions=500, pretrained_iterations=6, max_new_tokens=96),
    "quick": dict(pretrain_steps=15, sft_epochs=1, train_size=3000, dev_size=30, dev_k=4,
                  orm_questions=150, sorm_samples=40, ei_rounds=1, ei_questions=300, ppo_iterations=3,
                  ppo_prompts=16, grpo_prompts=8, rcrl_questions=150, run_eval_size=30, run_eval_k=4,
                  pretrained_questions=60, pretrained_iterations=2, max_new_tokens=64),
}


def plan(cfg: Config, seed: int, root: Path) -> list[Stage]:
    """The stages of one seed, in dependency order."""
    b = BUDGETS["quick" if cfg.quick else "full"]
    k = cfg.k or (16 if cfg.quick else 96)
    n_eval = cfg.eval_problems or (40 if cfg.quick else 120)
    d = lambda name: str(root / name)  # noqa: E731
    common = ["--seed", str(seed), "--device", cfg.device]
    task_args = ["--task", cfg.task] + (["--data-dir", cfg.data_dir] if cfg.data_dir else [])
    level_args = ["--level", str(cfg.level)] if cfg.level is not None else []
    mnt = ["--max-new-tokens", str(b["max_new_tokens"])]
    sft_compile = cfg.sft_compile if cfg.sft_compile is not None else not cfg.quick
    run_eval = ["--eval-size", str(b["run_eval_size"]), "--eval-k", str(b["run_eval_k"])]
    stages: list[Stage] = []
    if cfg.task == "synthetic":
        stages.append(Stage("pretrain", ["pretrain", "--steps", str(b["pretrain_steps"]), "--warmup-steps", "15",
                                         "--recall-fraction", "0.2", "--drill-fraction", "0.3", *level_args,
                                         *common], group="pretrain"))
        pretrained = d("pretrain") + "/model"
        sft_task = ["--task", "synthetic", *level_args, "--train-size", str(b["train_size"])]
    else:
        pretrained = cfg.model
        sft_task = task_args
    stages.append(Stage("sft", ["sft", "--model", pretrained, *sft_task, "--epochs", str(b["sft_epochs"]),
                                "--whole-sequence-loss", "--dev-size", str(b["dev_size"]),
                                "--eval-k", str(b["dev_k"]), *(["--compile"] if sft_compile else []), *mnt,
                                *common],
                        needs=["pretrain"] if cfg.task == "synthetic" else [], group="sft"))
    sft = d("sft") + "/model"
    stages.append(Stage("orm", ["orm", "train", "--policy", sft, "--questions", str(b["orm_questions"]), *mnt,
                                *common], needs=["sft"], group="orm"))
    stages.append(Stage("sorm", ["orm", "train", "--stepwise", "--policy", sft, "--questions",
                                 str(b["orm_questions"] // 2), "--sorm-samples", str(b["sorm_samples"]), *mnt,
                                 *common], needs=["sft"], group="orm"))
    orm = d("orm") + "/model"
    sorm = d("sorm") + "/model"

    def ei(name, start, start_stage, extra, reward, questions=b["ei_questions"], rounds=b["ei_rounds"]):
        stages.append(Stage(name, ["ei", "--model", start, "--rounds", str(rounds), "--questions",
                                   str(questions), "--patience", "0", *extra, *run_eval, *mnt, *common],
                            needs=[start_stage] + (["orm"] if reward == "orm" else []), group="rl",
                            meta={"algorithm": "EI", "reward": reward, "start": start_stage}))

    def pg(name, start, start_stage, command, reward, extra, iterations=b["ppo_iterations"]):
        prompts = b["grpo_prompts"] if command == "grpo" else b["ppo_prompts"]
        if command == "ppo":
            # GAE lambda 1 (Monte-Carlo return minus the value baseline) instead of the 0.95 default: with a sparse
            # terminal reward and a value head that starts at zero, lambda 0.95 passes 0.95^40 ~ 0.13 of the credit
            # to the first tokens of a 40-token solution (docs/results.md, PPO calibration)
            extra = ["--lam", "1.0", *extra]
        stages.append(Stage(name, [command, "--model", start, "--iterations", str(iterations), "--prompts",
                                   str(prompts), "--eval-every", str(max(1, iterations // 3)), *extra,
                                   *run_eval, *mnt, *common],
                            needs=[start_stage] + (["orm"] if reward == "orm" else []), group="rl",
                            meta={"algorithm": "GRPO" if command == "grpo" else "PPO", "reward": reward,
                                  "start": start_stage}))

    def rc(name, returns, extra):
        stages.append(Stage(name, ["rcrl", "--model", sft, "--returns", returns, "--questions",
                                   str(b["rcrl_questions"]), *extra, *run_eval, *mnt, *common],
                            needs=["sft"] + (["sorm"] if "--sorm" in extra else []), group="rl",
                            meta={"algorithm": "RCRL", "reward": returns, "start": "sft"}))

    ei("ei-sparse-sft", sft, "sft", [], "sparse")
    ei("ei-orm-sft", sft, "sft", ["--reward", "orm", "--orm", orm], "orm")
    pg("ppo-sparse-sft", sft, "sft", "ppo", "sparse", [])
    pg("ppo-dense-sft", sft, "sft", "ppo", "dense", ["--reward", "dense"])
    pg("ppo-orm-sft", sft, "sft", "ppo", "orm", ["--reward", "orm", "--orm", orm])
    pg("grpo-sparse-sft", sft, "sft", "grpo", "sparse", ["-k", "8"])
    rc("rcrl-sparse-sft", "sparse", [])
    rc("rcrl-dense-sft", "dense", [] if cfg.task == "synthetic" else ["--step-labels", "sorm", "--sorm", sorm])
    start_pt = "pretrain" if cfg.task == "synthetic" else "pretrained"
    small = cfg.task == "synthetic"  # a real pretrained model (gsm8k/svamp) gets the full budgets
    ei("ei-sparse-pretrained", pretrained, start_pt, [], "sparse",
       **(dict(questions=b["pretrained_questions"], rounds=1) if small else {}))
    pg("ppo-sparse-pretrained", pretrained, start_pt, "ppo", "sparse", [],
       **(dict(iterations=b["pretrained_iterations"]) if small else {}))
    for s in stages:
        if s.name.endswith("-pretrained"):
            s.after = ["sft"]  # SFT is the critical path: let it have every core while it runs
    if cfg.task != "synthetic":
        for s in stages:
            s.needs = [n for n in s.needs if n != "pretrained"]

    # final evaluation of every model: maj@1, maj@K, rerank@K (the ORM), pass@K
    models = {"sft": sft, start_pt: pretrained}
    models.update({s.name: d(s.name) + "/model" for s in stages if s.group == "rl"})
    for name, path in models.items():
        stages.append(Stage(f"eval-{name}", ["eval", "--model", path, "-n", str(n_eval), "-k", str(k), "--orm",
                                             orm, *mnt, *common],
                            needs=[n for n in (name, "orm") if n != "pretrained"], group="eval",
                            meta={"model": name}))
    return stages


def _with_needs(stages: list[Stage], only: list[str]) -> list[Stage]:
    if not only:
        return stages
    by_name = {s.name: s for s in stages}
    unknown = [o for o in only if o not in by_name]
    if unknown:
        raise UsageError(f"unknown stage(s) {', '.join(unknown)} (known: {', '.join(by_name)})")
    keep, todo = set(), list(only)
    while todo:
        n = todo.pop()
        if n not in keep and n in by_name:
            keep.add(n)
            todo += by_name[n].needs
    return [s for s in stages if s.name in keep]


def _run_stage(stage: Stage, root: Path, threads: int) -> float:
    """Run one stage (resuming it if it was interrupted); returns its wall time."""
    out = root / stage.name
    done = out / "stage.json"
    if _finished(stage, root):
        return json.loads(done.read_text())["seconds"]
    started = out / "command.json"
    if done.is_file() or (started.is_file() and json.loads(started.read_text()) != _comparable(stage.command)):
        # the study's settings changed since this stage ran (or started): its result is stale; start it afresh
        print(f"[study] {root.name}: {stage.name} ran with other settings; running it again", flush=True)
        remove_tree(out)
    args = list(stage.command) + ["--out", str(out)]
    if stage.command[0] != "eval" and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        args.append("--resume")  # interrupted earlier with the same settings: continue from its last checkpoint
    args += ["--threads", str(threads)]
    out.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps(_comparable(stage.command)))
    with open(out / "log.txt", "a") as log:
        log.write(f"$ mathrl {' '.join(args)}\n")
    t0 = time.time()
    returncode = _launch(args, out / "log.txt")
    seconds = time.time() - t0
    if returncode != 0:
        tail = (out / "log.txt").read_text().strip().splitlines()[-1:] or [""]
        raise RunError(f"study stage {stage.name} failed (exit {returncode}): {tail[0]} "
                       f"(log: {out / 'log.txt'}); rerun the study to resume")
    done.write_text(json.dumps({"command": ["mathrl", *args], "seconds": round(seconds, 1)}, indent=1))
    return seconds


# modules every stage imports, loaded once by the fork server (names, not the CLI: the child runs `mathrl` as
# `python -m mathrl` does)
_PRELOAD = ["torch", "transformers", "transformers.models.llama.modeling_llama", "mathrl.commands",
            "mathrl.algorithms.expert_iteration", "mathrl.algorithms.orm", "mathrl.algorithms.ppo",
            "mathrl.algorithms.pretrain", "mathrl.algorithms.rcrl", "mathrl.algorithms.sft"]


def _launch(args: list[str], log: Path) -> int:
    """Run `mathrl ARGS` in a new process with its output appended to ``log``; returns its exit status."""
    env = {"MATHRL_PROGRESS": "0"}  # no progress bars in log files
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
        with open(log, "a") as f:
            return subprocess.run([sys.executable, "-m", "mathrl", *args], stdout=f, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, **env)).returncode
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    proc = ctx.Process(target=_stage_main, args=(args, str(log), env), daemon=False)
    proc.start()
    proc.join()
    return proc.exitcode


def _stage_main(args: list[str], log: str, env: dict) -> None:
    """In the forked process: stdout and stderr to the log, then `python -m mathrl ARGS` (it exits with the
    command's status)."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(env)
    sys.argv = ["mathrl", *args]
    runpy.run_module("mathrl", run_name="__main__", alter_sys=True)


def _finished(stage: Stage, root: Path) -> bool:
    """True when the stage ran to the end with the same command (stage.json records it)."""
    done = root / stage.name / "stage.json"
    if not done.is_file():
        return False
    try:
        return _comparable(json.loads(done.read_text())["command"][1:]) == _comparable(stage.command)
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def _comparable(command: list[str]) -> list[str]:
    """A stage command without the flags that do not change its result (threads, output, resume)."""
    out, skip = [], False
    for a in command:
        if skip:
            skip = False
        elif a in ("--threads", "--out"):
            skip = True
        elif a != "--resume":
            out.append(a)
    return out


def run_stages(stages: list[Stage], root: Path, workers: int, total_threads: int) -> None:
    """Run stages respecting ``needs``, up to ``workers`` at once."""
    pending = {s.name: s for s in stages}
    finished = {s.name for s in stages if _finished(s, root)}
    for name in finished:
        pending.pop(name)
    known = {s.name for s in stages}
    running = {}
    threads = max(1, total_threads // max(1, workers))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            ready = [s for s in pending.values()
                     if all(n in finished or n not in known for n in s.needs + s.after)]
            for s in ready[: workers - len(running)]:
                pending.pop(s.name)
                print(f"[study] {root.name}: start {s.name}", flush=True)
                # a stage that runs alone (pretrain, then SFT, wait on each other) gets every core
                alone = workers == 1 or (not running and len(ready) == 1)
                running[pool.submit(_run_stage, s, root, total_threads if alone else threads)] = s
            if not running:
                raise RunError(f"study: stages {', '.join(pending)} wait on stages that cannot run")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                s = running.pop(fut)
                seconds = fut.result()  # re-raises a stage failure
                finished.add(s.name)
                print(f"[study] {root.name}: done {s.name} ({seconds / 60:.1f} min)", flush=True)


def main(cfg: Config) -> None:
    from mathrl.report import write_report
    from mathrl.training import default_threads

    root = Path(cfg.out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {cfg.out}: {e.strerror or e}") from None
    save_config(cfg, root / "study.yaml")
    total_threads = default_threads()
    t0 = time.time()
    all_stages = {}
    for seed in range(cfg.seeds):
        seed_root = root / f"seed-{seed}"
        stages = _with_needs(plan(cfg, seed, seed_root), cfg.only)
        all_stages[seed] = stages
        run_stages(stages, seed_root, cfg.workers, total_threads)
    # wall time over every invocation (an interrupted study that was resumed counts each part)
    timing = root / "wall_time.json"
    earlier = json.loads(timing.read_text())["seconds"] if timing.is_file() else 0.0
    wall = earlier + time.time() - t0
    timing.write_text(json.dumps({"seconds": round(wall, 1)}))
    report = write_report(root, cfg, all_stages, wall_seconds=wall)
    print(f"[study] finished in {(time.time() - t0) / 60:.1f} min ({wall / 60:.1f} min over all invocations): "
          f"{report}.md and {report}.html")
