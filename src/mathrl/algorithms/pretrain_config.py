"""The settings of ``mathrl pretrain`` (its loop: ``pretrain.py``), in a module that imports no torch so that ``mathrl
pretrain --help`` needs none (``algorithms/__init__.py`` says why the Configs live apart)."""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.config import field, group
from mathrl.errors import UsageError
from mathrl.settings import MODEL_SIZES, Optim, Run, one_of, resume, validate_groups
from mathrl.tasks import SURFACES


@dataclass
class Config:
    COMMAND = "pretrain"  # (not a field) the command a run directory's config.yaml names: runsetup.start_run
    out: str = field("runs/pretrain", "run directory (the model is written to OUT/model)")
    task: str = field("synthetic", "task whose language is modelled (only the synthetic task has a corpus)")
    level: int = field(1, "synthetic task level of the problem texts")
    size: str = field("tiny", "model size: " + ", ".join(MODEL_SIZES))
    steps: int = field(6000, "optimizer steps")
    # batch_size: packed rows per step; 8 rows of 256 tokens: the tiny model learns per step (8 rows reached a
    # lower loss than 32 for the same tokens and time, docs/results.md)
    optim: Optim = group(Optim, lr=3e-3, warmup_steps=30, batch_size=8)
    seq_len: int = field(256, "tokens per packed row")
    solution_fraction: float = field(0.10, "fraction of documents that are worked solutions (prose format)")
    drill_fraction: float = field(0.45, "fraction of documents that are arithmetic drill lines")
    recall_fraction: float = field(0.15, "fraction of documents that are ledger lists repeating their statements")
    surface: str = field("prose", "the format this model is prompted in, recorded in mathrl.json: prose (the "
                                  "corpus's own: the bare question, zero-shot) or qa (Question:/Answer:, few-shot)")
    shots: int = field(-1, "few-shot examples that prompts for this model should carry (recorded in mathrl.json; "
                           "-1: 0 for prose, 2 for qa)")
    document_mask: bool = field(True, "attend within each packed document only (block-diagonal causal mask); "
                                      "--no-document-mask lets every token see the earlier documents of its row")
    checkpoint_every: int = field(30, "steps between checkpoints")
    log_every: int = field(20, "steps between log lines")
    run: Run = group(Run)
    resume: bool = resume()

    def validate(self) -> None:
        validate_groups(self)
        if self.task != "synthetic":
            raise UsageError("pretrain builds the embedded default; for gsm8k/svamp start from a real pretrained "
                             "model directory (--model) instead")
        one_of(self.size, MODEL_SIZES, "size")
        for name in ("steps", "seq_len", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        one_of(self.surface, tuple(SURFACES), "surface")
        fractions = (self.solution_fraction, self.drill_fraction, self.recall_fraction)
        if min(fractions) < 0 or sum(fractions) > 1:
            raise UsageError("solution_fraction + drill_fraction + recall_fraction must lie in [0, 1]")
