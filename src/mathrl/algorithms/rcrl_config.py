"""The settings of ``mathrl rcrl`` (its loop: ``rcrl.py``), in a module that imports no torch so that ``mathrl rcrl
--help`` needs none (``algorithms/__init__.py`` says why the Configs live apart)."""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.config import field, group, refuse
from mathrl.errors import UsageError
from mathrl.rewards import is_user_reward, user_reward
from mathrl.settings import compile_blocks, Compute, Data, EvalSchedule, Evaluation, Lora, Optim, Prompting, Rounds, Run, Sampling, \
    fsdp, resume, validate_sampling_trainer, validate_schedule


@dataclass
class Config:
    COMMAND = "rcrl"  # (not a field) the command a run directory's config.yaml names: runsetup.start_run
    model: str = field("", "starting checkpoint (an SFT model) (required)")
    out: str = field("runs/rcrl", "run directory (the final policy is written to OUT/model)")
    data: Data = group(Data)
    prompting: Prompting = group(Prompting)
    returns: str = field("sparse", "sparse (one return token per solution) or dense (one per step)")
    reward: str = field("sparse", "what marks a solution good: sparse (its answer is right) or module:function "
                                  "(your own, TRL's signature: good when its score >= 0.5)")
    step_labels: str = field("auto", "dense: exact (synthetic step checker), sorm, reference (matched results), "
                                     "or auto (exact where the task checks steps, else reference)")
    sorm: str = field("", "SORM directory (step_labels sorm)")
    label_ratio: str = field("natural", "natural, or balanced (as many bad samples as good ones)")
    rounds: int = field(1, "rounds of collect -> label -> fine-tune")
    questions: int = field(4000, "training questions per round (0: the whole train split)")
    sampling: Sampling = group(Sampling)
    include_references: bool = field(True, "also train on the reference solutions, marked good")
    rounds_ft: Rounds = group(Rounds)
    optim: Optim = group(Optim)
    lora: Lora = group(Lora)  # the return tokens' embeddings train in full beside the adapters
    eval: Evaluation = group(Evaluation)
    compile: bool = compile_blocks()
    schedule: EvalSchedule = group(EvalSchedule)  # a round evaluates if it passed a point of the schedule
    fsdp: bool = fsdp()
    run: Run = group(Run)
    compute: Compute = group(Compute)
    resume: bool = resume()

    def validate(self) -> None:
        validate_sampling_trainer(self, "an SFT model directory")
        validate_schedule(self)
        if self.lora.save_merged is False:
            raise UsageError("--no-save-merged: rcrl adds the return tokens to the vocabulary, so its adapters do not "
                             "fit the start model; its LoRA runs save merged weights")
        if self.returns == "dense" and self.sampling.engine == "vllm":
            raise UsageError("--returns dense forces a return marker after every step while sampling, which --engine "
                             "vllm cannot: use --engine mathrl (or --returns sparse)")
        if is_user_reward(self.reward):
            user_reward(self.reward)  # import it now: a typo fails before any work
        elif self.reward != "sparse":
            raise UsageError(f"unknown reward {self.reward!r} for rcrl (sparse, or module:function)")
        if self.returns not in ("sparse", "dense"):
            raise UsageError("returns must be sparse or dense")
        if self.step_labels not in ("auto", "exact", "sorm", "reference"):
            raise UsageError("step_labels must be auto, exact, sorm or reference")
        if self.returns == "sparse":
            refuse(self, ("step_labels",), "with --returns sparse (only dense returns label steps)")
        if self.step_labels == "sorm" and not self.sorm:
            raise UsageError("--step-labels sorm needs --sorm DIR")
        if self.step_labels != "sorm" or self.returns == "sparse":
            refuse(self, ("sorm",), "without --returns dense --step-labels sorm")
        if self.label_ratio not in ("natural", "balanced"):
            raise UsageError("label_ratio must be natural or balanced")
        if self.rounds < 1:
            raise UsageError("rounds must be >= 1")
