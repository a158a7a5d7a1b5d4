"""The configs of the commands in ``commands.py`` (data show/stats, model init, eval, score).

They live apart from the code that runs them because that code imports torch and this module must not: the CLI
builds ``mathrl COMMAND --help`` from a Config, and that should take a moment, not the seconds torch's import
costs. This module imports only the settings layer (``settings.py``, ``config.py``, ``errors.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.config import field, group, refuse
from mathrl.errors import UsageError
from mathrl.settings import MODEL_SIZES, Compute, Data, FewShot, Prompting, Run, Sampling, one_of, validate_groups


@dataclass
class DataConfig:
    task: str = field("synthetic", "task: synthetic, gsm8k or svamp")
    split: str = field("test", "split")
    n: int = field(3, "problems to show")
    level: int | None = field(None, "synthetic task level")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    tokenizer: str | None = field(None, "model directory whose tokenizer counts tokens (stats)")


@dataclass
class ModelInitConfig:
    out: str = field("runs/model-init", "directory to write the model and tokenizer to")
    task: str = field("synthetic", "task whose text the tokenizer is trained on")
    size: str = field("tiny", "model size: " + ", ".join(MODEL_SIZES))
    level: int | None = field(None, "synthetic task level")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    seed: int = field(0, "initialisation seed")

    def validate(self) -> None:
        one_of(self.size, MODEL_SIZES, "size")


@dataclass
class EvalConfig:
    model: str = field("", "model directory (required)")
    data: Data = group(Data)
    prompting: Prompting = group(Prompting)
    split: str = field("test", "split to evaluate")
    n: int = field(0, "evaluate the first N problems (0: all)")
    sampling: Sampling = group(Sampling, k=96)  # the K samples for maj@K, pass@K and rerank@K
    k_problems: int = field(0, "draw the K samples for the first N problems only, greedy maj@1 for all (0: all)")
    few_shot: FewShot = group(FewShot)
    calculator: bool = field(False, "insert calculator results after '<<expr=' (GSM8K annotations)")
    orm: str = field("", "reward-model directory for rerank@K")
    run: Run = group(Run)
    compute: Compute = group(Compute)
    out: str = field("", "directory for metrics.json, metrics.md and samples.jsonl (default: MODEL/../eval-SPLIT)")

    def validate(self) -> None:
        if not self.model:
            raise UsageError("--model is required")
        validate_groups(self)
        if self.compute.gradient_checkpointing:
            raise UsageError("--gradient-checkpointing saves memory in training; eval trains nothing")
        refuse(self.run, ("report_to",), "on mathrl eval, which logs no training run (its metrics go to --out)")
        if self.n < 0 or self.k_problems < 0:
            raise UsageError("n and k_problems must be >= 0")
        if self.calculator and self.sampling.engine == "vllm":
            raise UsageError("--calculator inserts tokens while sampling, which --engine vllm cannot: use --engine mathrl")


@dataclass
class ScoreConfig:
    samples: str = field("", "jsonl of {\"question\" or \"id\": ..., \"completions\": [...]} (required)")
    data: Data = group(Data, task="synthetic")  # the task the questions belong to (no model records one here)
    surface: str | None = field(None, "synthetic: the format the completions are in, qa (default) or prose")
    split: str = field("test", "split the questions come from")
    k: int = field(0, "k for maj@k / pass@k (0: the number of completions per line)")
    orm: str = field("", "reward-model directory for rerank@k")
    audit: bool = field(False, "also grade every completion with every extraction (strict, flexible, boxed) and "
                               "report how often they agree, with examples (audit.json)")
    device: str = field("auto", "device for the reward model")
    out: str = field("", "output directory (required)")

    def validate(self) -> None:
        validate_groups(self)
        if not self.samples or not self.out:
            raise UsageError("--samples and --out are required")
