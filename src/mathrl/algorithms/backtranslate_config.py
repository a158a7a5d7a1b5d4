"""The settings of ``mathrl backtranslate`` (its loop: ``backtranslate.py``), in a module that imports no torch so
that ``mathrl backtranslate --help`` needs none (``algorithms/__init__.py`` says why the Configs live apart)."""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.config import field, group
from mathrl.errors import UsageError
from mathrl.settings import Compute, Data, Optim, Prompting, Run, Sampling, resume, validate_groups


@dataclass
class Config:
    COMMAND = "backtranslate"  # (not a field) the command a run directory's config.yaml names: runsetup.start_run
    model: str = field("", "the forward model, which writes solutions (an SFT model): it samples the solutions, "
                           "checks the round trip, and starts the reverse model (required)")
    out: str = field("runs/backtranslate", "run directory (the pairs: OUT/backtranslated.jsonl; the counts: "
                                           "OUT/summary.json; the reverse model: OUT/reverse)")
    data: Data = group(Data)
    prompting: Prompting = group(Prompting)  # the forward model's prompts (the reverse model's are fixed)
    questions: int = field(1000, "train questions whose sampled solutions are backtranslated: the first of a seeded "
                                 "shuffled pass over the train split")
    sampling: Sampling = group(Sampling)  # -k solutions per question; --temperature for solutions and questions
    reverse_size: int = field(0, "train problems the reverse model learns solution -> question from: the next ones "
                                 "of the same pass, never the --questions (0: every one left)")
    reverse_epochs: float = field(1.0, "passes of the reverse model's fine-tuning over its problems")
    reverse_max_steps: int = field(0, "cap on the reverse model's optimizer steps (0: none)")
    # the reverse model is fine-tuned as SFT fine-tunes: SFT's defaults for the embedded model
    optim: Optim = group(Optim, lr=3e-3, warmup_steps=100, batch_size=16)
    run: Run = group(Run)
    compute: Compute = group(Compute)
    resume: bool = resume()

    def validate(self) -> None:
        validate_groups(self)
        self.sampling.require_samples()
        if not self.model:
            raise UsageError("--model is required (the forward model: an SFT model directory)")
        if self.sampling.engine != "mathrl":
            # the questions come from a model trained in this run, and a colocated vLLM engine serves one model
            raise UsageError("--engine vllm: backtranslate samples from two models, one trained in the run; it "
                             "runs with --engine mathrl only")
        if self.questions < 1:
            raise UsageError("questions must be >= 1")
        if self.reverse_size < 0 or self.reverse_max_steps < 0:
            raise UsageError("reverse_size and reverse_max_steps must be >= 0")
        if self.reverse_epochs <= 0:
            raise UsageError("reverse_epochs must be > 0")
