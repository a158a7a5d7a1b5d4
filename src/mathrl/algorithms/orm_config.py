"""The settings of ``mathrl orm train`` (its loop: ``orm.py``), in a module that imports no torch so that ``mathrl orm
train --help`` needs none (``algorithms/__init__.py`` says why the Configs live apart)."""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.config import field, group, refuse
from mathrl.errors import UsageError
from mathrl.settings import compile_blocks, Compute, Data, Lora, Optim, Prompting, Run, Sampling, fsdp, resume, \
    validate_sampling_trainer


@dataclass
class Config:
    COMMAND = "orm train"  # (not a field) the command a run directory's config.yaml names: runsetup.start_run
    model: str = field("", "policy model directory whose samples are labelled (required)")
    out: str = field("runs/orm", "run directory (the reward model is written to OUT/model)")
    data: Data = group(Data)
    prompting: Prompting = group(Prompting)
    stepwise: bool = field(False, "train a stepwise ORM (SORM) with rollout-estimated step labels")
    questions: int = field(2000, "training questions to sample from")
    sampling: Sampling = group(Sampling)
    m: int = field(4, "SORM: continuations sampled from each step prefix")
    sorm_samples: int = field(1500, "SORM: training samples that get rollout step labels (the SORM trains on "
                                        "those only)")
    pairwise_weight: float = field(0.0, "weight of a within-question pairwise (Bradley-Terry) loss added to the "
                                        "token BCE: a question's correct samples should outscore its incorrect ones "
                                        "(batches then hold whole questions); 0: the BCE alone")
    balance: bool = field(False, "balance positive and negative samples 1:1 (default: natural ratio)")
    heldout: float = field(0.1, "fraction of questions held out for the AUC / step-agreement report")
    epochs: float = field(2.0, "passes over the labelled samples")
    optim: Optim = group(Optim)
    lora: Lora = group(Lora)  # adapters on the trunk; the new scalar head trains in full
    compile: bool = compile_blocks()
    fsdp: bool = fsdp()
    checkpoint_every: int = field(100, "optimizer steps between checkpoints")
    run: Run = group(Run)
    compute: Compute = group(Compute)
    resume: bool = resume()

    def validate(self) -> None:
        validate_sampling_trainer(self, "the policy whose samples the reward model judges")
        if self.lora.save_merged is False:
            raise UsageError("--no-save-merged: a reward model is saved with its adapters merged (its new head has "
                             "no base model to go onto)")
        if self.questions < 2 or self.m < 1:
            raise UsageError("questions must be >= 2 and m >= 1")
        if not 0 < self.heldout < 1:
            raise UsageError("heldout must lie in (0, 1)")
        if self.epochs <= 0:
            raise UsageError("epochs must be > 0")
        if self.pairwise_weight < 0:
            raise UsageError("pairwise-weight must be >= 0")
        if self.pairwise_weight > 0 and self.sampling.k < 2:
            raise UsageError("-k 1 leaves no question two samples to rank: pass -k >= 2 or --pairwise-weight 0")
        if not self.stepwise:
            refuse(self, ("m", "sorm_samples"), "without --stepwise (they make a SORM's step labels)")
