"""The ``mathrl`` command. Each subcommand is a config dataclass and the function that runs it; nothing here
knows how any of them works.

Errors: a ``UsageError`` (bad config, data or model) prints one line and exits 2; a ``RunError`` (divergence,
disk full) prints one line and exits 1; anything unexpected prints one line too (set MATHRL_DEBUG=1 for the
traceback). Ctrl-C exits 130; the last checkpoint is kept.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from dataclasses import dataclass

from mathrl import __version__
from mathrl.config import add_arguments, from_args, unknown_flag
from mathrl.errors import MathRLError


@dataclass(frozen=True)
class Command:
    """A subcommand: where its Config is (``module:Name``), the function that runs it (``module:function``) and
    its one-line help. Modules are named, not imported: ``mathrl --help`` imports none of them, and ``mathrl CMD``
    imports CMD's alone. Every Config lives in a module that does not import torch (``commands_config.py``,
    ``study.py``, ``algorithms/*_config.py``), so that ``mathrl CMD --help`` does not import torch either."""

    config: str
    run: str
    help: str


COMMANDS = {
    "study": Command("mathrl.study:Config", "mathrl.study:main",
                     "the whole paper grid on one task, with a report (report.md/.html)"),
    "data show": Command("mathrl.commands_config:DataConfig", "mathrl.commands:data_show",
                         "print problems with reference solutions and answers"),
    "data stats": Command("mathrl.commands_config:DataStatsConfig", "mathrl.commands:data_stats",
                          "counts and length statistics of a split"),
    "model init": Command("mathrl.commands_config:ModelInitConfig", "mathrl.commands:model_init",
                          "create the embedded default model + tokenizer"),
    "pretrain": Command("mathrl.algorithms.pretrain_config:Config", "mathrl.algorithms.pretrain:main",
                        "pretrain the embedded default (the paper's pretrained start)"),
    "sft": Command("mathrl.algorithms.sft_config:Config", "mathrl.algorithms.sft:main",
                   "supervised fine-tuning, with per-epoch dev metrics"),
    "ei": Command("mathrl.algorithms.expert_iteration_config:Config", "mathrl.algorithms.expert_iteration:main",
                  "Expert Iteration: sample K, keep the correct, fine-tune"),
    "backtranslate": Command("mathrl.algorithms.backtranslate_config:Config", "mathrl.algorithms.backtranslate:main",
                             "synthetic (question, solution) pairs by backtranslation, filtered by round trip"),
    "orm train": Command("mathrl.algorithms.orm_config:Config", "mathrl.algorithms.orm:main",
                         "train an outcome (or --stepwise) reward model on policy samples"),
    "ppo": Command("mathrl.algorithms.ppo_config:Config", "mathrl.algorithms.ppo:main",
                   "PPO with value head, GAE, KL penalty in the reward"),
    "grpo": Command("mathrl.algorithms.grpo_config:Config", "mathrl.algorithms.grpo:main",
                    "GRPO, RLOO, REINFORCE++ (--advantage): group or batch baselines, no critic"),
    "rcrl": Command("mathrl.algorithms.rcrl_config:Config", "mathrl.algorithms.rcrl:main",
                    "return-conditioned RL: train on good and bad samples marked by returns"),
    "eval": Command("mathrl.commands_config:EvalConfig", "mathrl.commands:run_eval",
                    "maj@1, maj@K, pass@K, rerank@K and more for a model"),
    "score": Command("mathrl.commands_config:ScoreConfig", "mathrl.commands:run_score",
                     "the same metrics for completions produced elsewhere"),
}


def load(where: str):
    """The object ``module:name`` names (importing the module)."""
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


def chosen(argv) -> str | None:
    """The command ``argv`` names (its first words, before any flag), or None."""
    words = []
    for word in argv:
        if word.startswith("-"):
            break
        words.append(word)
    return next((name for name in COMMANDS if name.split() == words[: len(name.split())]), None)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit 2) instead of a usage block."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; only ``command``'s flags are added (its Config imported), the others list
    their name and help."""
    parser = _Parser(prog="mathrl", description="Reinforcement learning for math word problems.")
    parser.add_argument("--version", action="version", version=f"mathrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, spec in COMMANDS.items():
        if " " in name:
            group, leaf = name.split(" ", 1)
            if group not in groups:
                gp = sub.add_parser(group, help=f"{group} commands")
                groups[group] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            p = groups[group].add_parser(leaf, help=spec.help, description=spec.help)
        else:
            p = sub.add_parser(name, help=spec.help, description=spec.help)
        if name == command:
            add_arguments(p, load(spec.config))
            p.set_defaults(func=name)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.filterwarnings("ignore", message=".*torch.utils._pytree.*")
    # PEFT asks transformers 5 a deprecated question under --lora-rank; a line of noise on every LoRA run
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    debug = os.environ.get("MATHRL_DEBUG") == "1"
    try:
        parser = build_parser(chosen(argv))
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit as e:  # --help (0) or a bad flag (2, one line already printed)
            return int(e.code or 0)
        if not hasattr(args, "func"):
            parser.print_help()
            return 2
        spec = COMMANDS[args.func]
        cls = load(spec.config)
        if extra:
            raise unknown_flag(cls, extra)
        cfg = from_args(cls, args)
        run(load(spec.run), cfg)
        return 0
    except MathRLError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (rerun with --resume)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line instead of a traceback wall
        if debug:
            raise
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(set MATHRL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def run(func, cfg) -> None:
    """Run a command (its module imported: torch and transformers with it), quietening transformers' logging."""
    # imported here, after parsing: `mathrl --help` and bad flags must not wait for torch and transformers
    from transformers.utils import logging as hf_logging

    from mathrl import distributed

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        func(cfg)
    finally:
        distributed.teardown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
