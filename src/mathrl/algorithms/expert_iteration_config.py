"""The settings of ``mathrl ei`` (its loop: ``expert_iteration.py``), in a module that imports no torch so that
``mathrl ei --help`` needs none (``algorithms/__init__.py`` says why the Configs live apart)."""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.config import field, group, refuse
from mathrl.errors import UsageError
from mathrl.rewards import OUTCOME_REWARDS, is_user_reward, user_reward
from mathrl.settings import compile_blocks, Backtranslated, Compute, Data, EvalSchedule, Evaluation, FewShot, Lora, Optim, Prompting, Rounds, Run, \
    Sampling, fsdp, resume, validate_sampling_trainer, validate_schedule


@dataclass
class Config:
    COMMAND = "ei"  # (not a field) the command a run directory's config.yaml names: runsetup.start_run
    model: str = field("", "starting checkpoint: an SFT model, or a pretrained one (few-shot prompted) (required)")
    out: str = field("runs/ei", "run directory (the final policy is written to OUT/model)")
    data: Data = group(Data)
    prompting: Prompting = group(Prompting)
    rounds: int = field(3, "maximum number of rounds (the cap: --rounds x --questions x -k rollouts)")
    patience: int = field(2, "stop after this many rounds without a dev maj@1 improvement (0: never)")
    patience_size: int = field(200, "dev problems whose greedy maj@1 decides early stopping (patience)")
    questions: int = field(4000, "fresh training questions per round: the next ones of a seeded shuffled pass over "
                                 "the train split, a new pass once it is used up (0: the whole split every round)")
    sampling: Sampling = group(Sampling)  # k: the paper's efficient setting is 4
    few_shot: FewShot = group(FewShot)  # while the policy is the start model (zero-shot after its first round)
    reward: str = field("sparse", "filter: sparse (answer correct), verified (answer and steps), orm, or "
                                  "module:function (your own, TRL's signature)")
    orm: str = field("", "reward-model directory (reward orm)")
    orm_threshold: float = field(0.5, "keep samples whose reward-model (or module:function) score is at least this")
    include_references: bool = field(False, "also train on the reference solutions of the sampled questions")
    retrain_from: str = field("initial", "initial (ReST-EM: fine-tune the start model each round) or last")
    backtranslation: Backtranslated = group(Backtranslated)  # synthetic pairs added to each round's fine-tuning data
    rounds_ft: Rounds = group(Rounds)
    optim: Optim = group(Optim)
    lora: Lora = group(Lora)  # retrain_from initial: each round's fine-tuning starts from fresh adapters
    eval: Evaluation = group(Evaluation)
    compile: bool = compile_blocks()
    schedule: EvalSchedule = group(EvalSchedule)  # a round evaluates if it passed a point of the schedule
    fsdp: bool = fsdp()
    run: Run = group(Run)
    compute: Compute = group(Compute)
    resume: bool = resume()

    def validate(self) -> None:
        validate_sampling_trainer(self, "an SFT or pretrained model directory")
        if is_user_reward(self.reward):
            user_reward(self.reward)  # import it now: a typo fails before any work
        elif self.reward not in OUTCOME_REWARDS:
            raise UsageError(f"unknown reward {self.reward!r} (known: {', '.join(OUTCOME_REWARDS)}, module:function)")
        if self.reward == "orm" and not self.orm:
            raise UsageError("--reward orm needs --orm DIR")
        if self.reward != "orm":
            refuse(self, ("orm",), "without --reward orm")
        if self.reward in ("sparse", "verified"):
            refuse(self, ("orm_threshold",), f"with --reward {self.reward} (a 0/1 return: kept when it is 1)")
        validate_schedule(self)
        if not self.patience:
            refuse(self, ("patience_size",), "with --patience 0 (no early stopping)")
        if self.patience and self.schedule.stop_at_plateau:
            raise UsageError("--stop-at-plateau and --patience are two early-stopping rules: add --patience 0")
        if self.rounds == 1:
            refuse(self, ("retrain_from",), "with --rounds 1 (the only round fine-tunes the start model)")
        if self.retrain_from not in ("initial", "last"):
            raise UsageError("retrain_from must be 'initial' or 'last'")
        if self.rounds < 1:
            raise UsageError("rounds must be >= 1")
        if min(self.patience, self.questions, self.patience_size) < 0:
            raise UsageError("patience, patience_size and questions must be >= 0")
        if self.patience and not self.patience_size:
            raise UsageError("--patience needs dev problems to decide on (--patience-size > 0)")
