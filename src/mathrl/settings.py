"""The settings every command shares, defined once: each group is a dataclass that a command's ``Config``
composes with ``config.group(Group, **its own defaults)``; ``config.py`` flattens the groups into flags, so a
setting has one name and one help text in every command (``--lr``, ``--micro-batch-size``, ``--eval-k``...).
Where a command needs another default (SFT's learning rate is not PPO's), it says so where it composes the group,
and ``--help`` shows it.

Groups: ``Run`` (seed, threads, device, precision), ``Data`` (which task, by default the one recorded with the model), ``Optim`` (AdamW with warmup and cosine decay, gradient accumulation, clipping), ``Sampling``
(collecting rollouts), ``Evaluation`` (the in-run evaluations), ``Rounds`` (the fine-tuning inside each round of EI and RCRL). Single settings that several commands share
without the rest of a group (``shots``, ``resume``, ``max_new_tokens``...) are field factories here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.config import field
from mathrl.errors import UsageError


def max_new_tokens():
    return field(128, "completion length limit")


def token_budget():
    return field(1 << 17, "sampler cache budget in tokens (bounds memory)")


def resume():
    return field(False, "continue the run in --out from its last good checkpoint")


def fsdp():
    return field(False, "under torchrun: shard the model over the ranks with FSDP (models too big for one device)")


@dataclass
class Run:
    seed: int = field(0, "random seed (initialisation, sampling and data order)")
    threads: int = field(0, "torch threads (0: the cores this process may use)")
    device: str = field("auto", "cpu, cuda, cuda:N or auto")
    precision: str = field("auto", "float32, bfloat16 (bf16 weights: updates below bf16's resolution are lost), "
                                   "bf16-mixed (float32 weights and optimizer state, bf16 compute), or auto "
                                   "(CPU: float32; CUDA: bf16-mixed to train, bfloat16 to evaluate)")

    def validate(self) -> None:
        from mathrl.models import PRECISIONS

        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r} (known: {', '.join(PRECISIONS)})")


@dataclass
class Data:
    task: str = field("", "task: synthetic, gsm8k, svamp or jsonl:PATH (your own file or directory of "
                          "train/test.jsonl) (default: the one recorded with the model)")
    level: int | None = field(None, "synthetic task level (default: the model's, else the task default)")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    extract: str | None = field(None, "gsm8k/svamp/jsonl answer extraction: strict (#### N), flexible (the last "
                                      "number) or boxed (the last \\boxed{N})")
    question_field: str | None = field(None, "jsonl:PATH tasks: the question's field (default: question)")
    answer_field: str | None = field(None, "jsonl:PATH tasks: the answer's field, a number or a solution ending in "
                                           "'#### N' (default: answer)")
    solution_field: str | None = field(None, "jsonl:PATH tasks: a reference solution's field (optional; for SFT)")

    def fields(self) -> dict:
        return {"question_field": self.question_field, "answer_field": self.answer_field,
                "solution_field": self.solution_field}


@dataclass
class Optim:
    lr: float = field(5e-4, "peak learning rate")
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of the peak (cosine decay; 1: constant)")
    warmup_steps: int = field(20, "linear warmup steps")
    weight_decay: float = field(0.1, "AdamW weight decay (matrices only)")
    grad_clip: float = field(1.0, "gradient norm clip (0: off)")
    batch_size: int = field(32, "sequences per optimizer step")
    micro_batch_size: int = field(0, "sequences per forward/backward pass; smaller than batch_size accumulates "
                                     "gradients, exactly (the last pass may be shorter; 0: batch_size)")

    def validate(self) -> None:
        if self.lr <= 0:
            raise UsageError("lr must be > 0")
        if self.batch_size < 1:
            raise UsageError("batch_size must be >= 1")
        if self.micro_batch_size < 0:
            raise UsageError("micro_batch_size must be >= 0 (0: the whole batch)")
        if not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise UsageError("min_lr_ratio must be in [0, 1]; warmup_steps, weight_decay and grad_clip >= 0")

    @property
    def micro(self) -> int:
        """Sequences per forward pass (``micro_batch_size``, or the whole batch)."""
        return self.micro_batch_size or self.batch_size


@dataclass
class Sampling:
    k: int = field(4, "samples per prompt")
    temperature: float = field(1.0, "sampling temperature")
    max_new_tokens: int = max_new_tokens()
    token_budget: int = token_budget()
    engine: str = field("mathrl", "rollout engine: mathrl (this package's sampler) or vllm (the optional extra, "
                                  "pip install \"mathrl[vllm]\"; docs/engines.md)")

    def validate(self) -> None:
        from mathrl.engines import check

        if self.k < 0 or self.max_new_tokens < 1 or self.token_budget < 1:
            raise UsageError("k must be >= 0 (eval: 0 for greedy only), max_new_tokens and token_budget >= 1")
        check(self.engine)

    def require_samples(self) -> None:
        """Training commands learn from the K samples: K = 0 would be a run that silently does nothing."""
        if self.k < 1:
            raise UsageError("k (samples per prompt) must be >= 1")
        if self.temperature < 0:
            raise UsageError("temperature must be >= 0")


@dataclass
class Evaluation:
    eval_size: int = field(500, "problems per in-run evaluation (0: none)")
    eval_k: int = field(16, "samples per evaluated problem for maj@K / pass@K")
    eval_temperature: float = field(1.0, "sampling temperature of the K evaluation samples")
    eval_split: str = field("test", "split of the in-run evaluations (reported; model selection uses dev)")

    def validate(self) -> None:
        if self.eval_size < 0 or self.eval_k < 0:
            raise UsageError("eval_size and eval_k must be >= 0")


@dataclass
class Rounds:
    """The fine-tuning of each round of a round-based run (EI, RCRL)."""

    epochs: float = field(2.0, "passes over the round's training data (EI: D_i; RCRL: the labelled mix)")
    max_steps: int = field(0, "cap on optimizer steps per round (0: none)")
    checkpoint_every: int = field(100, "fine-tuning steps between checkpoints inside a round")

    def validate(self) -> None:
        if self.epochs <= 0:
            raise UsageError("epochs must be > 0")
        if self.max_steps < 0 or self.checkpoint_every < 0:
            raise UsageError("max_steps and checkpoint_every must be >= 0")


def shots():
    return field(-1, "few-shot examples in prompts (-1: as recorded with the model)")


def validate_groups(cfg) -> None:
    """Validate every group of ``cfg`` (its own ``validate`` checks the rest)."""
    for value in vars(cfg).values():
        if hasattr(value, "validate") and type(value).__module__ == __name__:
            value.validate()
