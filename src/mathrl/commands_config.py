"""The configs of the commands in ``commands.py`` (data show/stats, model init, eval, score).

They live apart from the code that runs them because that code imports torch and this module must not: the CLI
builds ``mathrl COMMAND --help`` from a Config, and that should take a moment, not the seconds torch's import
costs. This module imports only the settings layer (``settings.py``, ``config.py``, ``errors.py``) and ``record.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.config import field, group, refuse
from mathrl.errors import UsageError
from mathrl.record import read_record
from mathrl.settings import MODEL_SIZES, Compute, Data, FewShot, Prompting, Run, Sampling, one_of, validate_groups


def _data_task():
    return field("synthetic", "task: synthetic, gsm8k or svamp")


def _data_split():
    return field("test", "split")


def _data_level():
    return field(None, "synthetic task level")


def _data_dir():
    return field(None, "gsm8k/svamp data directory")


@dataclass
class DataConfig:
    """``data show``: the first problems of a split."""

    task: str = _data_task()
    split: str = _data_split()
    n: int = field(3, "problems to show")
    level: int | None = _data_level()
    data_dir: str | None = _data_dir()


@dataclass
class DataStatsConfig:
    """``data stats``: counts and lengths of a whole split (``n`` would not apply; ``tokenizer`` does not to show)."""

    task: str = _data_task()
    split: str = _data_split()
    level: int | None = _data_level()
    data_dir: str | None = _data_dir()
    tokenizer: str | None = field(None, "model directory whose tokenizer counts tokens (default: characters)")


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
        if not self.sampling.k:
            # -k 0: greedy maj@1 only; these settings shape the K samples or score them
            refuse(self.sampling, ("temperature",), "with -k 0 (greedy decoding only)")
            refuse(self, ("k_problems", "orm"), "with -k 0 (greedy decoding only: no samples to draw or rerank)")
        if (self.data.task or read_record(self.model).task.get("name")) == "synthetic":
            refuse(self, ("calculator",), "on the synthetic task (its solutions have no <<expr=result>> "
                                          "annotations to complete)")


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
        if self.k < 0:
            raise UsageError(f"k must be >= 0 (0: the number of completions per line), got {self.k}")
        if not self.orm:
            refuse(self, ("device",), "without --orm (only the reward model runs on a device)")
