"""The settings every command shares, defined once: each group is a dataclass that a command's ``Config``
composes with ``config.group(Group, **its own defaults)``; ``config.py`` flattens the groups into flags, so a
setting has one name and one help text in every command (``--lr``, ``--micro-batch-size``, ``--eval-k``...).
Where a command needs another default (SFT's learning rate is not PPO's), it says so where it composes the group,
and ``--help`` shows it.

Groups: ``Run`` (seed, threads, device, precision), ``Compute`` (gradient checkpointing, attention kernel),
``Data`` (which task, by default the one recorded with the model), ``Prompting`` (chat template, system prompt,
prompt template, stop strings; by default those recorded with the model), ``FewShot`` (how many few-shot examples
and which), ``Optim`` (AdamW with warmup and cosine decay, gradient accumulation, clipping), ``Lora`` (adapters
instead of full fine-tuning), ``Sampling`` (collecting rollouts), ``Evaluation`` (the in-run evaluations),
``EvalSchedule`` (when RL runs evaluate, and the stop at a plateau), ``Rounds`` (the fine-tuning inside each round
of EI and RCRL), ``Backtranslated`` (synthetic pairs mixed into SFT's and EI's fine-tuning data). Single settings
that several commands share without the rest of a group (``resume``, ``max_new_tokens``...) are field factories
here.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mathrl.config import field, refuse
from mathrl.errors import UsageError

# The values of the settings that name a choice. They are defined here, with the settings, and the code that acts
# on them imports them from here (models, engines, tasks): this module imports nothing of mathrl but config and
# errors, so any module may compose the settings and building a config imports no torch.
PRECISIONS = ("auto", "float32", "bfloat16", "bf16-mixed")
ATTENTION_KERNELS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
ENGINES = ("mathrl", "vllm")
EXEMPLARS = ("train", "wei2022")  # tasks/exemplars.py
MODEL_SIZES = ("tiny", "tiny4", "small")  # the embedded model's sizes (models.SIZES)
PLACEHOLDER = "{question}"  # where a prompt template takes the question (tasks/prompting.py)


def one_of(value: str, known: Sequence[str], what: str) -> None:
    """A one-line error for a ``what`` that is none of ``known``."""
    if value not in known:
        raise UsageError(f"unknown {what} {value!r} (known: {', '.join(known)})")


def max_new_tokens():
    return field(128, "completion length limit")


def token_budget():
    return field(1 << 17, "sampler cache budget in tokens (bounds memory)")


def resume():
    return field(False, "continue the run in --out from its last good checkpoint")


def compile_blocks():
    """The ``compile`` field of every command that trains (``compile.compiled``)."""
    return field(False, "torch.compile the transformer blocks of the training passes (dynamic shapes; ~30 s to "
                        "compile on 2 CPU cores, cached after; falls back to eager if it fails; sampling stays eager)")


def fsdp():
    return field(False, "under torchrun: shard the model over the ranks with FSDP (models too big for one device)")


TRACKERS = ("tensorboard", "wandb", "trackio")  # --report-to (runlog.py logs to them)


def parse_report_to(value: str) -> tuple[str, ...]:
    """The trackers ``--report-to`` names (comma-separated, or ``none``), each checked: a known name whose package
    is installed (one line naming the pip command otherwise)."""
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    if names == ("none",):
        return ()
    if not names or "none" in names:
        raise UsageError(f"--report-to {value!r}: name trackers ({', '.join(TRACKERS)}), or none alone")
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise UsageError(f"--report-to: unknown tracker {unknown[0]!r} (known: {', '.join(TRACKERS)}, none)")
    for name in ("wandb", "trackio"):
        if name in names and importlib.util.find_spec(name) is None:
            raise UsageError(f'--report-to {name} needs the {name} package: pip install "mathrl[{name}]"')
    return names


@dataclass
class Run:
    seed: int = field(0, "random seed (initialisation, sampling and data order)")
    threads: int = field(0, "torch threads (0: the cores this process may use)")
    device: str = field("auto", "cpu, cuda, cuda:N or auto")
    precision: str = field("auto", "float32, bfloat16 (bf16 weights: updates below bf16's resolution are lost), "
                                   "bf16-mixed (float32 weights and optimizer state, bf16 compute), or auto "
                                   "(CPU: float32; CUDA: bf16-mixed to train, bfloat16 to evaluate)")
    report_to: str = field("tensorboard", "training runs: experiment trackers, comma-separated: tensorboard, wandb, "
                                          "trackio (pip install \"mathrl[wandb]\" / \"mathrl[trackio]\"), or none; "
                                          "RUN/metrics.jsonl is always written")

    def validate(self) -> None:
        if self.threads < 0:
            raise UsageError(f"threads must be >= 0 (0: the cores this process may use), got {self.threads}")
        one_of(self.precision, PRECISIONS, "precision")
        parse_report_to(self.report_to)


@dataclass
class Compute:
    """How the models a command trains are run: memory and speed, never the result (beyond float rounding)."""

    gradient_checkpointing: bool = field(False, "recompute each block's activations in the backward pass instead "
                                                "of keeping them (less memory, about a third more compute; "
                                                "training commands)")
    attn_implementation: str = field("", "attention kernel of the models a command loads: "
                                         + ", ".join(ATTENTION_KERNELS) + " (default: transformers' choice)")

    def validate(self) -> None:
        if self.attn_implementation:
            one_of(self.attn_implementation, ATTENTION_KERNELS, "attn_implementation")


@dataclass
class Data:
    task: str = field("", "task: synthetic, gsm8k, svamp, or your own data: jsonl:PATH or parquet:PATH (a file, or "
                          "a directory of train/test files), datasets:PATH (a save_to_disk folder; parquet and "
                          "datasets need mathrl[data]) (default: the one recorded with the model)")
    level: int | None = field(None, "synthetic task level (default: the model's, else the task default)")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    extract: str | None = field(None, "gsm8k/svamp/your own data: answer extraction: strict (#### N), flexible "
                                      "(the last number), boxed (the last \\boxed{N}) or math-verify (LaTeX and "
                                      "expressions compared symbolically; pip install \"mathrl[math]\")")
    question_field: str | None = field(None, "your own data (jsonl:/parquet:/datasets:PATH): the question's field "
                                             "(default: question)")
    answer_field: str | None = field(None, "your own data: the answer's field, a number or a solution ending in "
                                           "'#### N' (default: answer)")
    solution_field: str | None = field(None, "your own data: a reference solution's field (optional; for SFT)")

    def fields(self) -> dict:
        return {"question_field": self.question_field, "answer_field": self.answer_field,
                "solution_field": self.solution_field}


@dataclass
class Prompting:
    """How questions become prompts (``tasks/prompting.py``). Each setting not given is the one recorded with the
    model (mathrl.json ``prompting``), and every model a command writes records the ones it used."""

    chat_template: bool | None = field(None, "format prompts with the tokenizer's own chat template: the question "
                                             "is the user's turn, the completion the assistant's (default: as "
                                             "recorded with the model, else off)")
    system_prompt: str | None = field(None, "a system message (with --chat-template), else the prompts' first "
                                            "paragraph (default: as recorded with the model, else none)")
    prompt_template: str | None = field(None, "a text file whose {question} is replaced by the question: the "
                                              "user's turn, or the prompt; few-shot examples take the same format "
                                              "(default: as recorded with the model; '': none)")
    stop: list[str] | None = field(None, "a stop string beyond the task's own; repeat the flag for more "
                                         "(default: as recorded with the model, else none)")

    def validate(self) -> None:
        if self.stop is not None:
            check_stop(self.stop)
        if self.prompt_template:
            check_template(read_template(self.prompt_template), f"--prompt-template {self.prompt_template}")


def check_template(text: str, where: str) -> str:
    """``text`` if it is a usable prompt template, else a one-line error naming ``where`` it came from."""
    if PLACEHOLDER not in text:
        raise UsageError(f"{where}: a prompt template needs a {PLACEHOLDER} placeholder (where the question goes)")
    return text


def check_stop(stop: Sequence[str]) -> None:
    if any(not s for s in stop):
        raise UsageError("--stop: a stop string may not be empty (it would stop every completion at once)")


def read_template(path: str) -> str:
    """The text of a prompt-template file (one line for a missing or unreadable one)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompt-template {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None


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
        if self.k < 0 or self.max_new_tokens < 1 or self.token_budget < 1:
            raise UsageError("k must be >= 0 (eval: 0 for greedy only), max_new_tokens and token_budget >= 1")
        one_of(self.engine, ENGINES, "engine")

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
        if not self.eval_size:
            refuse(self, ("eval_k", "eval_temperature", "eval_split"), "with --eval-size 0 (no in-run evaluation)")


EVAL_AT = ("every", "log")


@dataclass
class EvalSchedule:
    """When an RL run (EI, RCRL, PPO, GRPO) runs its in-run evaluation (``Evaluation``), and whether it stops
    when its dev maj@1 has plateaued (``plateau.py`` states the rule and why)."""

    eval_at: str = field("every", "when in-run evaluations happen besides the start and the end: every (EI, RCRL: "
                                  "each round; PPO, GRPO: every --eval-every iterations) or log (when the rollouts "
                                  "consumed pass --eval-first, then twice it, four times it...)")
    eval_first: int = field(1024, "--eval-at log: rollouts at the first evaluation after the start's")
    stop_at_plateau: bool = field(False, "stop when dev maj@1 has plateaued: after a gain over the start of more "
                                         "than --plateau-margin, the best of the last two evaluations exceeds the "
                                         "best before them by at most the margin (needs --eval-at log and "
                                         "--eval-split dev: never decided on test)")
    plateau_margin: float = field(0.02, "--stop-at-plateau: the least gain in dev maj@1 that counts as learning "
                                        "(docs/algorithms.md says why 0.02)")
    plateau_min: int = field(0, "--stop-at-plateau: no stop before this many rollouts (0: none)")

    def validate(self) -> None:
        one_of(self.eval_at, EVAL_AT, "eval_at")
        if self.eval_first < 1 or not 0 <= self.plateau_margin < 1 or self.plateau_min < 0:
            raise UsageError("eval_first must be >= 1, plateau_margin in [0, 1) and plateau_min >= 0")
        if self.eval_at != "log":
            refuse(self, ("eval_first",), "without --eval-at log")
            if self.stop_at_plateau:
                raise UsageError("--stop-at-plateau needs --eval-at log (the rule compares the last two points of "
                                 "the log-spaced schedule)")
        if not self.stop_at_plateau:
            refuse(self, ("plateau_margin", "plateau_min"), "without --stop-at-plateau")


def validate_schedule(cfg) -> None:
    """The checks of ``cfg.schedule`` (an ``EvalSchedule``) against ``cfg.eval`` (an ``Evaluation``)."""
    if not cfg.eval.eval_size:
        refuse(cfg, ("eval_at", "eval_first", "stop_at_plateau", "plateau_margin", "plateau_min"),
               "with --eval-size 0 (no in-run evaluation)")
    if cfg.schedule.stop_at_plateau and cfg.eval.eval_split != "dev":
        raise UsageError("--stop-at-plateau decides on dev problems: add --eval-split dev (early stopping never "
                         "reads the test split)")


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


@dataclass
class Backtranslated:
    """Synthetic training pairs made by ``mathrl backtranslate`` mixed into a fine-tuning set (SFT's training set,
    each EI round's fine-tuning data): ``backtranslated`` examples per real one, drawn from a seeded pass over the
    file (``backtranslated.py``; docs/algorithms.md, "Backtranslated data")."""

    backtranslated: str = field("", "a jsonl of backtranslated (question, solution, answer) pairs, as `mathrl "
                                    "backtranslate` writes to OUT/backtranslated.jsonl, to add to the training data")
    backtranslated_ratio: float = field(0.0, "backtranslated examples added per real training example (e.g. 0.5: "
                                             "one per two; rounded half up; the file's pairs are repeated in a "
                                             "seeded order when it holds fewer)")

    def validate(self) -> None:
        if self.backtranslated_ratio < 0:
            raise UsageError("backtranslated_ratio must be >= 0")
        if not self.backtranslated:
            refuse(self, ("backtranslated_ratio",), "without --backtranslated PATH")
            return
        if not self.backtranslated_ratio:
            raise UsageError("--backtranslated needs --backtranslated-ratio > 0 (backtranslated examples per real "
                             "one; at 0 none is added)")
        if not Path(self.backtranslated).is_file():
            raise UsageError(f"--backtranslated {self.backtranslated}: no such file")


def shots():
    return field(-1, "few-shot examples in prompts (-1: as recorded with the model)")


@dataclass
class FewShot:
    """The solved examples a prompt carries before its question."""

    shots: int = shots()
    exemplars: str = field("", "which examples: train (the first --shots problems of the train split) or wei2022 "
                               "(the 8 GSM8K chain-of-thought exemplars of Wei et al. 2022, solutions ending in "
                               "'#### N') (default: as recorded with the model, else train)")

    def validate(self) -> None:
        if self.exemplars:
            one_of(self.exemplars, EXEMPLARS, "exemplars")
        if self.shots == 0:
            refuse(self, ("exemplars",), "with --shots 0 (no few-shot examples)")


@dataclass
class Lora:
    """LoRA adapters (PEFT) instead of full fine-tuning."""

    lora_rank: int = field(0, "LoRA rank through PEFT (0: full fine-tuning)")
    lora_alpha: float = field(0.0, "LoRA alpha: adapters are scaled by alpha / rank (0: 2 x rank)")
    lora_targets: list[str] = field(["all-linear"], "modules that get adapters: all-linear (every linear layer "
                                                    "but the output head) or module names (q_proj v_proj ...)")
    save_merged: bool | None = field(None, "LoRA runs: write OUT/model as full weights with the adapters merged "
                                           "(the default), or with --no-save-merged the adapters alone (PEFT "
                                           "format; mathrl commands load them onto the start model)")

    def validate(self) -> None:
        if self.lora_rank < 0 or self.lora_alpha < 0:
            raise UsageError("lora_rank and lora_alpha must be >= 0")
        if self.lora_rank and not self.lora_targets:
            raise UsageError("--lora-targets: name at least one module (or all-linear)")
        if not self.lora_rank:
            refuse(self, ("lora_alpha", "lora_targets", "save_merged"), "without LoRA (--lora-rank > 0)")

    @property
    def merged(self) -> bool:
        return self.save_merged is not False


def check_fsdp(lora: Lora, fsdp: bool) -> None:
    """--fsdp: not with LoRA, and only where there are ranks to shard over (``distributed.shard_model`` is a no-op
    on one process, so the flag would do nothing)."""
    if fsdp and lora.lora_rank:
        raise UsageError("--fsdp with --lora-rank is not supported (LoRA keeps a full frozen copy per rank "
                         "anyway); use one or the other")
    if fsdp and int(os.environ.get("WORLD_SIZE", "1") or 1) == 1:
        raise UsageError("--fsdp has no effect on one process: it shards the model over torchrun's ranks "
                         "(torchrun --nproc-per-node N -m mathrl ...)")


def validate_sampling_trainer(cfg, model: str) -> None:
    """What every trainer that samples from a start model checks first (EI, RCRL, reward models, PPO, GRPO): its
    groups, at least one sample per prompt, no LoRA under FSDP, and the start model (``model``: what it must be)."""
    validate_groups(cfg)
    cfg.sampling.require_samples()
    check_fsdp(cfg.lora, cfg.fsdp)
    if not cfg.model:
        raise UsageError(f"--model is required ({model})")


def validate_groups(cfg) -> None:
    """Validate every group of ``cfg`` (its own ``validate`` checks the rest)."""
    for value in vars(cfg).values():
        if hasattr(value, "validate") and type(value).__module__ == __name__:
            value.validate()
    if getattr(cfg, "compile", False):
        if getattr(cfg, "fsdp", False):
            raise UsageError("--compile with --fsdp is not supported yet; use one of them")
        if cfg.compute.gradient_checkpointing:
            # the backward pass recomputes a block outside the compiled call (tried: torch's checkpoint refuses the
            # recomputed tensors)
            raise UsageError("--compile with --gradient-checkpointing is not supported; use one of them")
