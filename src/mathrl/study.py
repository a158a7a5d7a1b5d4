"""The study: one command that re-tests Havrilla et al. 2024 end to end and writes a report.

The grid (the paper's, at the scale at hand): pretrain -> SFT (per-epoch trade-off on a dev split) -> the ORM
(and, where a run reads it, the SORM) on the SFT policy, all trained once and shared (OUT/shared/) -> from the SFT
model, for each of ``seeds`` RL seeds (OUT/seed-N/): EI, PPO and RCRL with the sparse reward and continued SFT
with an RL run's budget (findings F1, F2, F3, F6; GRPO with ``--ablation objectives``); for
``variant_seeds`` seeds: EI (ORM), PPO (dense, ORM), RCRL (dense) (F4) and EI and PPO from the pretrained
model, prompted as it records (the embedded one: zero-shot in its corpus's prose format) (F5) -> the final
evaluation of every model on the same test problems with the same per-question sampling streams ->
``report.md`` and a self-contained ``report.html`` (``report.py``), whose findings carry paired 95% intervals
(``stats.py``).

Every RL run gets the same rollout budget (``--rollouts``, from either start; ``budgets.BUDGETS`` says how each
algorithm spends it). One SFT checkpoint is shared by the RL seeds: the seed intervals measure RL's variance,
not SFT's.

Every stage is one ``mathrl`` command run in its own process with its own run directory, its log in
``log.txt``. The processes are forked from a server that has imported torch and transformers once (their
import costs ~7 s of CPU per process); pretraining runs alone, as one 1-thread torchrun rank per core on a CPU. A
finished stage leaves ``stage.json`` and is reused when the study runs again while it is current: the same command
and the same inputs (the run ids of the stages it needs, the files it reads outside the study, mathrl's code and
torch's and transformers' versions: ``stagecache.py``),
so a changed setting re-runs its stage and everything downstream. An interrupted stage is resumed from its last
checkpoint when its command and inputs are unchanged, else started afresh. Stages that do not
depend on each other run ``workers`` at a time, sharing ``threads`` (on 2 cores two 1-thread processes give
~1.5x the throughput of one 2-thread process).

With ``--task gsm8k --model DIR`` (a real pretrained HF model; typically with ``--device cuda``) the pretrain
stage is skipped, DIR is the pretrained start (few-shot prompted), and the same grid runs on GSM8K.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import runpy
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field as dc_field
from pathlib import Path

from mathrl import stagecache, sweep
from mathrl.budgets import BUDGETS, STUDY_LR, model_sizes, seed_counts
from mathrl.config import field, group, refuse, save as save_config
from mathrl.errors import RunError, UsageError
from mathrl.grid import (ABLATIONS, EI, GRID_SIZE, PPO, PRETRAIN, PRETRAINED, RCRL, SFT, SFT_MORE, Run,
                         runs_by_seed_count, size_runs, sized)
from mathrl.settings import ENGINES, MODEL_SIZES, Prompting, one_of, validate_groups
from mathrl.sweep import SWEEP_LR, SWEEP_SEED


@dataclass
class Config:
    out: str = field("runs/study", "study directory (shared/ and seed-N/ run directories, report.md and report.html)")
    quick: bool = field(False, "a small, fast version of the whole grid: a pipeline check, not results")
    seeds: int = field(0, "RL seeds for the algorithms of F1/F2/F3/F6 (EI, PPO, RCRL with the sparse reward "
                          "from SFT, and continued SFT; 0: 5, or 2 with --quick); pretrain, SFT and the reward "
                          "models are trained once and shared")
    variant_seeds: int = field(0, "RL seeds for the reward variants (F4) and the pretrained start (F5); <= seeds "
                                  "(0: 3, or 1 with --quick)")
    task: str = field("synthetic", "synthetic, gsm8k or svamp")
    level: int | None = field(None, "synthetic task level (default: the task's default)")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    model: str = field("", "gsm8k/svamp: a pretrained HF model directory or hub id (the 'pretrained' start)")
    prompting: Prompting = group(Prompting)  # gsm8k/svamp: how the pretrained model is prompted (SFT records it)
    device: str = field("auto", "cpu, cuda, cuda:N or auto")
    rollouts: int = field(0, "rollout cap of every RL run, from either start; each run stops earlier where its "
                             "dev maj@1 plateaus (0: 32768, or 512 with --quick)")
    k: int = field(0, "K for maj@K, pass@K, rerank@K in the final evaluation (0: 96, or 16 with --quick)")
    eval_problems: int = field(0, "test problems in the final evaluation, greedy maj@1 on all (0: 1000, or 100 "
                                  "with --quick)")
    k_problems: int = field(0, "of those, how many get the K samples (0: 120, or 40 with --quick)")
    sft_compile: bool | None = field(None, "torch.compile the SFT stage's training pass (a step takes ~0.8 of "
                                           "the eager time after ~30 s of compiling). "
                                           "Default: on with the full budgets, off with --quick (too few steps)")
    rl_compile: bool = field(False, "torch.compile the RL stages' training passes (PPO's and GRPO's learning step "
                                    "and the passes before it, EI's and RCRL's fine-tunes). Off by default, so that "
                                    "a study and its ablations run their stages alike: on the embedded model a "
                                    "compile costs ~10-80 s per stage and saves ~0.5 s per PPO iteration and an eighth "
                                    "of a 32K EI stage (docs/results.md)")
    workers: int = field(2, "stages run at once (each with threads / workers threads)")
    threads: int = field(0, "torch threads shared by the running stages (0: the cores this process may use)")
    only: list[str] = field([], "run only these stages (and what they need), e.g. sft ei-sparse-sft@1")
    engine: str = field("mathrl", "rollout engine of the stages that sample (orm, RL, eval): mathrl or vllm "
                                  "(docs/engines.md); RCRL with dense returns and its evaluation keep mathrl's "
                                  "sampler (vLLM cannot force step markers)")
    ablation: str = field("", "an extra grid beyond the paper's (not in the default): objectives (GRPO, and its "
                              "loss as Dr.GRPO, DAPO, GSPO and CISPO, from SFT, with the sparse runs' budget and "
                              "seeds), curriculum (the paper's negative results: PPO with backtracking and with "
                              "prioritized level replay, EI and continued SFT with backtranslated data, with the "
                              "sparse runs' budget and seeds: findings N1-N3) or label-ratio (RCRL with natural and "
                              "with balanced good/bad labels from the pretrained start, variant_seeds seeds: "
                              "finding F8)")
    sizes: str = field(GRID_SIZE, "embedded model sizes, comma-separated (" + ", ".join(MODEL_SIZES) + "): the first "
                                  "is the grid's model; each further one adds its own pretrain, SFT, and EI and PPO "
                                  "(sparse, from its SFT, variant_seeds seeds, the grid's cap) with their final "
                                  "evaluations, for finding F7 (larger models explore more diversely). Synthetic "
                                  "task only; 'tiny,small' adds ~2.3x the time of the grid's pretrain, SFT and "
                                  "variant_seeds EI and PPO runs (docs/algorithms.md)")
    sweep: bool = field(False, "run the tuning sweep instead of the grid: EI, PPO, RCRL (sparse, from SFT) and "
                               "continued SFT at their default learning rate x 0.3, 1 and 3, one seed, the study's "
                               "cap and dev schedule; writes sweep.md (the rate each selects on dev: sweep.py)")

    def validate(self) -> None:
        validate_groups(self)
        one_of(self.engine, ENGINES, "engine")
        if self.ablation not in ("", *ABLATIONS):
            raise UsageError(f"unknown ablation {self.ablation!r} (known: {', '.join(ABLATIONS)})")
        if self.seeds < 0 or self.workers < 1 or self.variant_seeds < 0:
            raise UsageError("seeds and variant_seeds must be >= 0 (0: the budget's default), workers >= 1")
        seeds, variant_seeds = seed_counts(self)
        if variant_seeds > seeds:
            raise UsageError(f"variant_seeds ({variant_seeds}) must be <= seeds ({seeds}): a variant is compared "
                             "with the sparse run of the same seed")
        if min(self.rollouts, self.k, self.eval_problems, self.k_problems, self.threads) < 0:
            raise UsageError("rollouts, k, eval_problems, k_problems and threads must be >= 0")
        if self.rollouts and self.rollouts % 512:
            raise UsageError(f"--rollouts {self.rollouts}: use a multiple of 512, so that every algorithm spends "
                             "exactly the budget and EI and PPO are evaluated at the same rollout points")
        if self.task != "synthetic" and not self.model:
            raise UsageError(f"--task {self.task} needs --model DIR (a pretrained model; the embedded pretraining "
                             "only exists for the synthetic task)")
        if self.sweep:
            refuse(self, ("ablation", "seeds", "variant_seeds", "k", "eval_problems", "k_problems", "sizes"),
                   "with --sweep (it runs one seed of the sparse runs from SFT and evaluates on dev only)")
            if self.task != "synthetic":
                raise UsageError(f"--sweep with --task {self.task}: its rates are the embedded model's defaults x "
                                 "0.3, 1, 3 (a real model's study rates are in study.REAL_MODEL)")
        if self.task == "synthetic":
            refuse(self, ("model",), "on the synthetic task (the study pretrains its own model; --model is for "
                                     "gsm8k/svamp)")
            refuse(self, ("data_dir",), "on the synthetic task (it is generated; --data-dir is for gsm8k/svamp)")
            refuse(self.prompting, ("chat_template", "system_prompt", "prompt_template", "stop"),
                   "on the synthetic task (the embedded model is prompted in its own formats; they apply to a real "
                   "model: --task gsm8k/svamp --model DIR)")
            sizes = model_sizes(self)
            for size in sizes:
                one_of(size, MODEL_SIZES, "sizes")
            if len(set(sizes)) != len(sizes):
                raise UsageError(f"--sizes {self.sizes}: a size is listed twice")
        else:
            refuse(self, ("level",), f"with --task {self.task} (levels are the synthetic task's)")
            refuse(self, ("sizes",), f"with --task {self.task} (sizes are the embedded model's, which the study "
                                     "pretrains on the synthetic task; --model is the real task's one model)")


@dataclass
class Stage:
    """One command of the study. ``seed`` None: a shared stage (OUT/shared/BASE), else OUT/seed-N/BASE; its
    name is BASE or BASE@N. ``needs`` names stages. An RL stage and its final evaluation carry their ``run`` (a
    row of grid.RUNS); an evaluation names the ``model`` it evaluates (a run's name, sft or the pretrained
    start)."""

    base: str
    command: list[str]
    seed: int | None = None
    needs: list[str] = dc_field(default_factory=list)
    group: str = ""  # report grouping: pretrain, sft, orm, rl, eval
    run: Run | None = None
    model: str = ""
    rollouts: int = 0  # an RL stage's rollout budget
    # runs alone with every core as that many 1-thread torchrun ranks (data parallel) instead of one process with
    # that many threads: pretraining, the study's one stage that runs alone (see run_stages)
    data_parallel: bool = False
    folder: str = ""  # the directory under the study's root; "" for shared/ or seed-N/ (the sweep: sweep/)

    @property
    def name(self) -> str:
        return self.base if self.seed is None else f"{self.base}@{self.seed}"

    def dir(self, root: Path) -> Path:
        return root / (self.folder or ("shared" if self.seed is None else f"seed-{self.seed}")) / self.base


# the runs the tuning sweep tunes: those the findings compare on the sparse reward from SFT (sweep.py)
SWEPT = (EI, PPO, RCRL, SFT_MORE)

EVAL_SEED = 0  # every final evaluation samples with the same per-question streams (paired comparisons)

# A real model (--task gsm8k/svamp --model DIR): the commands' default rates are the embedded 0.7M model's, 10 to
# 1000 times what published recipes use at 0.5B-7B (docs/algorithms.md, "Real models": starting points from those
# recipes, not measured with mathrl), so the study passes these, longer completions and SFT's 2-3 epochs instead.
REAL_MODEL = dict(lr={"sft": "1e-5", "sft-continued": "1e-5", "ei": "1e-5", "rcrl": "1e-5", "orm": "1e-5", "ppo": "1e-6", "grpo": "1e-6"},
                  max_new_tokens=256, sft_epochs=3)




def _prompting_args(p: Prompting) -> list[str]:
    """The prompt flags of ``p`` that were given, as command-line arguments."""
    args = [] if p.chat_template is None else ["--chat-template" if p.chat_template else "--no-chat-template"]
    args += [] if p.system_prompt is None else ["--system-prompt", p.system_prompt]
    args += [] if p.prompt_template is None else ["--prompt-template", p.prompt_template]
    return args + [a for stop in (p.stop or []) for a in ("--stop", stop)]


def _on_cpu(device: str) -> bool:
    """Whether the study's stages run on the CPU (one torchrun rank per core is then the way to use the cores; on
    a GPU one process drives it)."""
    if device != "auto":
        return device == "cpu"
    import torch  # here, not at the top: `mathrl study --help` imports no torch

    return not torch.cuda.is_available()


def plan(cfg: Config, root: Path) -> list[Stage]:
    """Every stage of the study, in dependency order."""
    b = dict(BUDGETS["quick" if cfg.quick else "full"])
    real = cfg.task != "synthetic"
    if real:
        b.update(max_new_tokens=REAL_MODEL["max_new_tokens"],
                 sft_epochs=b["sft_epochs"] if cfg.quick else REAL_MODEL["sft_epochs"])
    rates = REAL_MODEL["lr"] if real else STUDY_LR
    lr = lambda command: ["--lr", rates[command]] if command in rates else []  # noqa: E731
    prompting = _prompting_args(cfg.prompting)  # for the stages that start from the pretrained model
    budget = cfg.rollouts or b["rollouts"]
    k = cfg.k or b["k"]
    n_eval = cfg.eval_problems or b["eval_problems"]
    k_problems = min(cfg.k_problems or b["k_problems"], n_eval)
    d = lambda st: str(st.dir(root))  # noqa: E731
    device = ["--device", cfg.device]
    task_args = ["--task", cfg.task] + (["--data-dir", cfg.data_dir] if cfg.data_dir else [])
    level_args = ["--level", str(cfg.level)] if cfg.level is not None else []
    mnt = ["--max-new-tokens", str(b["max_new_tokens"])]
    sft_compile = cfg.sft_compile if cfg.sft_compile is not None else not cfg.quick
    rl_compile = ["--compile"] if cfg.rl_compile else []
    # in-run evaluations on dev (model selection and the plateau rule never read test) at 0, eval_first and every
    # doubling; the plateau margin: 0.02 on 500 questions (about one standard error of a paired difference there,
    # plateau.py) scaled by sqrt(500 / n) to the n dev questions evaluated (500 in the full study: 0.02)
    run_eval = ["--eval-size", str(b["run_eval_size"]), "--eval-k", str(b["run_eval_k"]), "--eval-split", "dev",
                "--eval-at", "log", "--eval-first", str(b["eval_first"])]
    # no stop before a quarter of the cap: over two doublings a curve that still rises a point or so per doubling
    # reads as flat on a few hundred dev questions (plateau.mark_plateau)
    plateau = ["--stop-at-plateau", "--plateau-margin", f"{0.02 * (500 / b['run_eval_size']) ** 0.5:.2f}",
               "--plateau-min", str(budget // 4)]
    shared_seed = ["--seed", "0", *device]
    # every stage that reads the task's data reads it where the study was told to (a model records its task's
    # name and options, not where its data lay)
    data_dir = ["--data-dir", cfg.data_dir] if cfg.data_dir else []
    stages: list[Stage] = []
    # the embedded model's sizes (--sizes): the grid's first; each further one gets its own pretrain and SFT
    sizes = model_sizes(cfg) if cfg.task == "synthetic" else []

    def pretrain_stage(name: str, size: str) -> Stage:
        # the corpus mix and batch are pretrain's defaults (its docstring); the budget is the study's, the same
        # for every size (the size is named only where it is not pretrain's default, so the default grid's
        # command is what it was)
        return Stage(name, ["pretrain", "--steps", str(b["pretrain_steps"]), *level_args,
                            *(["--size", size] if size != GRID_SIZE else []), *shared_seed],
                     group="pretrain", data_parallel=_on_cpu(cfg.device))

    def sft_stage(name: str, start: str, needs: list[str]) -> Stage:
        return Stage(name, ["sft", "--model", start, *sft_task, *prompting, *lr("sft"), "--epochs",
                            str(b["sft_epochs"]), "--whole-sequence-loss", "--eval-size", str(b["dev_size"]),
                            "--eval-k", str(b["dev_k"]), *(["--compile"] if sft_compile else []), *mnt, *shared_seed],
                     needs=needs, group="sft")

    if cfg.task == "synthetic":
        pre = pretrain_stage(PRETRAIN, sizes[0])
        stages.append(pre)
        pretrained, start_pt = d(pre) + "/model", PRETRAIN
        sft_task = ["--task", "synthetic", *level_args, "--train-size", str(b["train_size"])]
    else:
        pretrained, start_pt = cfg.model, PRETRAINED
        sft_task = task_args
    sft = sft_stage(SFT, pretrained, [PRETRAIN] if cfg.task == "synthetic" else [])
    orm = Stage("orm", ["orm", "train", "--model", d(sft) + "/model", "--questions", str(b["orm_questions"]), *lr("orm"), *mnt,
                        *data_dir, *shared_seed], needs=["sft"], group="orm")
    # the SORM labels the steps of every sample it trains on: questions x K=4 training samples, all labelled
    n_sorm = b["sorm_questions"]
    sorm = Stage("sorm", ["orm", "train", "--stepwise", "--model", d(sft) + "/model", "--questions",
                          str(n_sorm + max(1, n_sorm // 9)), "--sorm-samples", str(4 * n_sorm), *lr("orm"), *mnt,
                          *data_dir, *shared_seed],
                 needs=["sft"], group="orm")
    # the SORM feeds the study only where a run reads it (dense RCRL's step labels on a real task, F4); on the
    # synthetic task the exact step checker labels steps and no finding reads the SORM, so it is not trained
    reads = {m for _, runs in runs_by_seed_count(cfg.ablation) for r in runs for m in r.reads(real)}
    # backtranslated pairs (--ablation curriculum), made once from the SFT model: K=4 solutions of bt_questions
    # train questions, a reverse model fine-tuned for bt_reverse_steps steps on the other train problems, pairs kept
    # by round trip (backtranslate.py)
    backtranslate = Stage("backtranslate", ["backtranslate", "--model", d(sft) + "/model", "--questions",
                                            str(b["bt_questions"]), "-k", "4", "--reverse-max-steps",
                                            str(b["bt_reverse_steps"]), *lr("sft"), *mnt, *data_dir, *shared_seed],
                          needs=["sft"], group="data")
    stages += [sft, orm] + ([sorm] if "sorm" in reads else []) + ([backtranslate] if "backtranslate" in reads else [])
    sft_model, orm_model = d(sft) + "/model", d(orm) + "/model"
    # (start, size) -> (its model directory, its stage)
    starts = {("sft", ""): (sft_model, SFT), ("pretrained", ""): (pretrained, start_pt)}
    # what a run's flags may name (grid.Run): the shared reward models, the budget, the overlong buffer
    filled = {"orm": orm_model, "sorm": d(sorm) + "/model", "budget": str(budget),
              "backtranslate": d(backtranslate) + "/backtranslated.jsonl",
              "overlong": str(max(1, b["max_new_tokens"] // 4))}

    def rl(run: Run, seed: int, rate: str = ""):
        """The stage of ``run`` for ``seed``; ``rate``: a learning rate of the sweep (its stage under sweep/)."""
        lr_of = (lambda command: ["--lr", rate]) if rate else lr  # noqa: E731
        model, start_stage = starts[run.start, run.size]
        needs = [start_stage] if start_stage != PRETRAINED else []
        needs += run.reads(real)
        extra = [a.format(**filled) for a in run.flags + (run.real_task_flags if real else ())]
        algorithm = run.algorithm
        common = [*run_eval, *mnt, *data_dir, "--seed", str(seed), *device,
                  *(prompting if run.start == "pretrained" else [])]
        if algorithm == "SFT":
            # continued SFT (F2 b): one pass over as many of SFT's own training problems as an RL run draws
            # rollouts (synthetic: the first ``budget`` of them, which SFT saw twice), the SFT stage's loss
            task = (["--task", "synthetic", *level_args, "--train-size", str(budget)] if not real
                    else ["--task", cfg.task])
            cmd = ["sft", "--model", model, *task, *lr_of("sft-continued"), "--epochs", "1", "--whole-sequence-loss", *extra,
                   "--eval-size", str(b["dev_size"]), "--eval-k", str(b["dev_k"]), *mnt, *data_dir, "--seed",
                   str(seed), *device]
        elif algorithm == "EI":
            questions = max(1, min(512, budget // 8))
            cmd = ["ei", "--model", model, *lr_of("ei"), "--rounds", str(max(1, budget // (4 * questions))),
                   "--questions", str(questions), "--patience", "0", *plateau, *extra, *common]
        elif algorithm == "RCRL":
            cmd = ["rcrl", "--model", model, *lr_of("rcrl"), "--questions", str(max(1, budget // 4)), *extra, *common]
        else:
            iterations = max(1, budget // 256)
            prompts = ["--prompts", "32", "-k", "8"] if algorithm == "GRPO" else ["--prompts", "64", "-k", "4"]
            if algorithm == "PPO":
                # GAE lambda 1 (Monte-Carlo return minus the value baseline) instead of the 0.95 default: with a
                # sparse terminal reward and a value head that starts at zero, lambda 0.95 passes 0.95^40 ~ 0.13 of
                # the credit to the first tokens of a 40-token solution (docs/results.md, PPO calibration)
                extra = ["--lam", "1.0", *extra]
            command = run.command
            cmd = [command, "--model", model, *lr_of(command), "--iterations", str(iterations), *prompts, *plateau,
                   *extra, *common]
        if "--backtrack" in run.flags:
            # no plateau stop while the schedule still reveals reference steps (its first half, --backtrack-fraction
            # 0.5): a stop there would leave a policy that last trained from revealed steps
            i = cmd.index("--plateau-min")
            cmd[i + 1] = str(max(int(cmd[i + 1]), budget // 2))
        if rate:
            stages.append(Stage(f"{run.name}-lr{rate}", cmd + rl_compile, seed=seed, needs=needs, group="sweep",
                                run=run, rollouts=budget, folder="sweep"))
        else:
            stages.append(Stage(run.name, cmd + rl_compile, seed=seed, needs=needs, group="rl", run=run,
                                rollouts=budget))

    if cfg.sweep:
        # the shared models the sparse runs from SFT start from, then each swept run (sweep.py)
        stages[:] = [s for s in stages if s.group in ("pretrain", "sft")]
        for run in SWEPT:
            for rate in SWEEP_LR["sft-continued" if run.algorithm == "SFT" else run.command]:
                rl(run, SWEEP_SEED, rate)
        return _with_engine(stages, cfg.engine)

    for count, runs in runs_by_seed_count(cfg.ablation):
        for seed in range(dict(zip(("seeds", "variant_seeds"), seed_counts(cfg)))[count]):
            for run in runs:
                rl(run, seed)

    # F7 (--sizes): each further size's pretrain (alone, as the grid's: run_stages), SFT (the grid's budget and
    # rate) and its EI and PPO runs from that SFT, after the grid's runs (variant_seeds seeds: as the grid's other
    # comparisons that are not the paper's core arms)
    size_sfts = []
    for size in sizes[1:]:
        pre_size = pretrain_stage(sized(PRETRAIN, size), size)
        sft_size = sft_stage(sized(SFT, size), d(pre_size) + "/model", [pre_size.name])
        stages += [pre_size, sft_size]
        size_sfts.append(sft_size)
        starts["sft", size] = (d(sft_size) + "/model", sft_size.name)
        for seed in range(seed_counts(cfg)[1]):
            for run in size_runs(size):
                rl(run, seed)

    # final evaluation of every model on the same test problems with the same sampling streams (EVAL_SEED):
    # greedy maj@1 on n_eval problems, K samples on the first k_problems (maj@K, rerank@K with the ORM, pass@K)
    def ev(base, model, seed, needs, model_name, rerank=True, extra=(), run=None):
        orm_args = ["--orm", orm_model] if rerank else []
        stages.append(Stage(base, ["eval", "--model", model, "-n", str(n_eval), "-k", str(k), "--k-problems",
                                   str(k_problems), *orm_args, *mnt, *data_dir, "--seed", str(EVAL_SEED), *device,
                                   *extra],
                            seed=seed, needs=needs + (["orm"] if rerank else []), group="eval", run=run,
                            model=model_name))

    ev("eval-sft", sft_model, None, [SFT], SFT)
    # the synthetic pretrained start writes prose; the ORM was trained on the SFT policy's qa samples, so its
    # rerank@K of prose samples would mean nothing (rerank is shown for the SFT side only)
    prose = cfg.task == "synthetic"
    ev(f"eval-{start_pt}", pretrained, None, [start_pt] if start_pt != PRETRAINED else [], start_pt, not prose,
       prompting)
    # the ORM was trained on the grid's SFT policy's samples: another size's models are evaluated without rerank
    # (F7 reads their samples' diversity, not rerank@K)
    for s in size_sfts:
        ev(f"eval-{s.base}", d(s) + "/model", None, [s.name], s.base, rerank=False)
    for s in [s for s in stages if s.group == "rl"]:
        ev(f"eval-{s.base}", d(s) + "/model", s.seed, [s.name], s.base,
           not (prose and s.run.start == "pretrained") and not s.run.size, run=s.run)
    return _with_engine(stages, cfg.engine)


SAMPLING_COMMANDS = ("orm", "ei", "ppo", "grpo", "rcrl", "eval")


def _with_engine(stages: list[Stage], engine: str) -> list[Stage]:
    """``stages`` with ``--engine ENGINE`` on every command that samples (but those that force step markers)."""
    if engine != "mathrl":
        for s in stages:
            if s.command[0] in SAMPLING_COMMANDS and not _forces_steps(s):
                s.command += ["--engine", engine]
    return stages


def _forces_steps(stage: Stage) -> bool:
    """RCRL with dense returns, and the evaluation of its model, force a marker after every step while sampling:
    mathrl's sampler only."""
    return stage.run is not None and stage.run.forces_steps


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


def _run_stage(stage: Stage, root: Path, threads: int, reads: dict) -> float:
    """Run one stage that is not current (resuming it if it was interrupted with the same command and inputs,
    ``reads``: ``stagecache.inputs``); returns its wall time."""
    out = stage.dir(root)
    started = out / "command.json"
    begun = {"command": stagecache.comparable(stage.command), "inputs": reads}
    if (out / "stage.json").is_file() or (started.is_file() and stagecache.read_json(started) != begun):
        # its command or what it reads changed since it ran (or started): its result is stale; start it afresh
        print(f"[study] {stage.name} ran with other settings or inputs; running it again", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    args = list(stage.command) + ["--out", str(out)]
    if stage.command[0] != "eval" and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        args.append("--resume")  # interrupted earlier with the same settings: continue from its last checkpoint
    ranks = threads if stage.data_parallel else 1
    args += ["--threads", str(threads // ranks)]
    out.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps(begun))
    with open(out / "log.txt", "a") as log:
        log.write(f"$ {f'torchrun --nproc_per_node {ranks} -m ' if ranks > 1 else ''}mathrl {' '.join(args)}\n")
    t0 = time.time()
    returncode = _launch(args, out / "log.txt", ranks)
    seconds = time.time() - t0
    if returncode != 0:
        tail = (out / "log.txt").read_text().strip().splitlines()[-1:] or [""]
        raise RunError(f"study stage {stage.name} failed (exit {returncode}): {tail[0]} "
                       f"(log: {out / 'log.txt'}); rerun the study to resume")
    stagecache.finish(out, ["mathrl", *args], seconds, reads)
    return seconds



# modules every stage imports, loaded once by the fork server (names, not the CLI: the child runs `mathrl` as
# `python -m mathrl` does)
_PRELOAD = ["torch", "transformers", "transformers.models.llama.modeling_llama", "mathrl.commands",
            "mathrl.algorithms.expert_iteration", "mathrl.algorithms.grpo", "mathrl.algorithms.orm", "mathrl.algorithms.ppo",
            "mathrl.algorithms.pretrain", "mathrl.algorithms.rcrl", "mathrl.algorithms.sft",
            "mathrl.algorithms.backtranslate"]


def _launch(args: list[str], log: Path, ranks: int = 1) -> int:
    """Run `mathrl ARGS` in a new process with its output appended to ``log``; returns its exit status. With
    ``ranks`` > 1: as that many data-parallel processes under torchrun (standalone: its rendezvous on this host)."""
    env = {"MATHRL_PROGRESS": "0"}  # no progress bars in log files
    if ranks > 1:
        # OMP_NUM_THREADS: torchrun sets it to 1 anyway when it starts several ranks; said here so the log shows it
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
        with open(log, "a") as f:
            return subprocess.run([*launcher, "-m", "mathrl", *args], stdout=f, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, OMP_NUM_THREADS="1", **env)).returncode
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


def run_stages(stages: list[Stage], root: Path, workers: int, total_threads: int, on_done=None) -> None:
    """Run stages respecting ``needs``, up to ``workers`` at once; a stage whose result is current
    (``stagecache.is_current``, checked once the stages it needs are done) is reused. ``on_done()`` is called after
    each stage that ran."""
    pending = {s.name: s for s in stages}
    by_name = dict(pending)
    finished: set[str] = set()
    stale: set[str] = set()  # ready stages found not current: they run
    running = {}
    threads = max(1, total_threads // max(1, workers))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            ready = [s for s in pending.values() if all(n in finished or n not in by_name for n in s.needs)]
            # checked once per stage: its needs are done, so the answer cannot change while it waits for a worker
            reused = [s for s in ready if s.name not in stale and stagecache.is_current(s, root, by_name)]
            stale.update(s.name for s in ready)
            for s in reused:
                pending.pop(s.name)
                finished.add(s.name)
            if reused:
                continue  # what they unblock may be current too
            starting = []
            for s in ready:
                if s.data_parallel:
                    # a stage that runs alone (pretraining, of each model size) starts once nothing else runs, and
                    # no stage after it in the plan's order starts before it (else the stages that keep becoming
                    # ready would never leave it an idle machine)
                    if not running and not starting:
                        starting.append(s)
                    break
                if len(running) + len(starting) < workers:
                    starting.append(s)
            for s in starting:
                pending.pop(s.name)
                print(f"[study] start {s.name}", flush=True)
                # a stage that runs alone (pretrain) gets every core, pretraining as one 1-thread rank per core
                # (Stage.data_parallel); otherwise one thread each: SFT runs beside the pretrained start's stages,
                # since two 1-thread stages use 2 cores better than one 2-thread stage (SFT 9,769 tokens/s on 1
                # thread in the 2026-12-06 study, 11,765 on 2 in the 2026-12-01 one). Two 1-thread ranks also
                # keep going when another process takes a core: a 2-thread process waits on its slower thread at
                # every operation (measured on 2 cores with a competing matmul loop: 2 ranks 13.7k tokens/s, one
                # 2-thread process 6.0k; alone 20.7k and 19.5k; docs/results.md)
                alone = workers == 1 or (not running and len(starting) == 1)
                running[pool.submit(_run_stage, s, root, total_threads if alone else threads,
                                    stagecache.inputs(s, root, by_name))] = s
            if not running:
                raise RunError(f"study: stages {', '.join(pending)} wait on stages that cannot run")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                s = running.pop(fut)
                seconds = fut.result()  # re-raises a stage failure
                finished.add(s.name)
                print(f"[study] done {s.name} ({seconds / 60:.1f} min)", flush=True)
                if on_done is not None:
                    on_done()


def _sweep_row(stage: Stage, root: Path):
    """The sweep table's row of a finished sweep stage (None where it has not run)."""
    rate = stage.base.rsplit("-lr", 1)[1]
    if stage.run.algorithm == "SFT":
        return sweep.read_sft(stage.dir(root), rate)
    return sweep.read_rl(stage.dir(root), stage.run.command, rate)


def main(cfg: Config) -> None:
    # imported here: they import torch, and this module must not (`mathrl study --help` builds its Config)
    from mathrl.report import write_report
    from mathrl.engines import check_installed
    from mathrl.runsetup import default_threads

    check_installed(cfg.engine)
    root = Path(cfg.out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {cfg.out}: {e.strerror or e}") from None
    # the sweep may run in a study's directory (to reuse its pretrain and SFT): its config and time apart
    save_config(cfg, root / ("sweep.yaml" if cfg.sweep else "study.yaml"))
    total_threads = cfg.threads or default_threads()
    t0 = time.time()
    every = plan(cfg, root)
    stages = _with_needs(every, cfg.only)
    print(f"[study] {len(stages)} stages, {cfg.workers} at a time, {total_threads} threads", flush=True)
    if cfg.engine != "mathrl":
        kept = [s.name for s in stages if s.command[0] in SAMPLING_COMMANDS and _forces_steps(s)]
        print(f"[study] sampling with {cfg.engine}" + (f", but {', '.join(kept)} with mathrl's sampler (dense "
                                                       "step markers)" if kept else ""), flush=True)
    # wall time over every invocation (an interrupted study that was resumed counts each part), written after each
    # stage, so that an invocation stopped part-way counts up to its last finished stage
    timing = root / ("sweep_wall_time.json" if cfg.sweep else "wall_time.json")
    earlier = json.loads(timing.read_text())["seconds"] if timing.is_file() else 0.0

    def record_wall() -> float:
        wall = earlier + time.time() - t0
        timing.write_text(json.dumps({"seconds": round(wall, 1)}))
        return wall

    run_stages(stages, root, cfg.workers, total_threads, on_done=record_wall)
    wall = record_wall()
    if cfg.sweep:
        rows = [row for s in every if s.group == "sweep" and (row := _sweep_row(s, root))]
        table = sweep.write(root, rows, every[-1].rollouts, "mathrl study --sweep" + (" --quick" if cfg.quick else ""))
        print(table.read_text(), flush=True)
        print(f"[study] sweep finished in {(time.time() - t0) / 60:.1f} min ({wall / 60:.1f} min over all "
              f"invocations): {table}", flush=True)
        return
    # the report covers the whole study as it now is on disk (its current stages), not only those --only ran
    report = write_report(root, cfg, every, wall_seconds=wall)
    print(f"[study] finished in {(time.time() - t0) / 60:.1f} min ({wall / 60:.1f} min over all invocations): "
          f"{report}.md and {report}.html")
