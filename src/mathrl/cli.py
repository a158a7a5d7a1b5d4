"""The ``mathrl`` command. Each subcommand is a config dataclass and the function that runs it; nothing here
knows how any of them works.

Errors: a ``UsageError`` (bad config, data or model) prints one line and exits 2; a ``RunError`` (divergence,
disk full) prints one line and exits 1; anything unexpected prints one line too (set MATHRL_DEBUG=1 for the
traceback). Ctrl-C exits 130; the last checkpoint is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from mathrl import __version__


def _commands():
    # imported here so that `mathrl --help` stays fast
    from mathrl import commands, study
    from mathrl.algorithms import expert_iteration, orm, ppo, pretrain, rcrl, sft

    return {
        "study": (study.Config, study.main, "the whole paper grid on one task, with a report (report.md/.html)"),
        "data show": (commands.DataConfig, commands.data_show, "print problems with reference solutions and answers"),
        "data stats": (commands.DataStatsConfig, commands.data_stats, "counts and length statistics of a split"),
        "model init": (commands.ModelInitConfig, commands.model_init, "create the embedded default model + tokenizer"),
        "pretrain": (pretrain.Config, pretrain.main, "pretrain the embedded default (the paper's pretrained start)"),
        "sft": (sft.Config, sft.main, "supervised fine-tuning, with per-epoch dev metrics"),
        "ei": (expert_iteration.Config, expert_iteration.main, "Expert Iteration: sample K, keep the correct, fine-tune"),
        "orm train": (orm.Config, orm.main, "train an outcome (or --stepwise) reward model on policy samples"),
        "ppo": (ppo.Config, ppo.main, "PPO with value head, GAE, KL penalty (--advantage grpo|rloo for group baselines)"),
        "grpo": (ppo.GRPOConfig, ppo.main, "GRPO: PPO's loop with group-normalised advantages, no critic"),
        "rcrl": (rcrl.Config, rcrl.main, "return-conditioned RL: train on good and bad samples marked by returns"),
        "eval": (commands.EvalConfig, commands.run_eval, "maj@1, maj@K, pass@K, rerank@K and more for a model"),
        "score": (commands.ScoreConfig, commands.run_score, "the same metrics for completions produced elsewhere"),
    }


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit 2) instead of a usage block."""

    def error(self, message):
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def build_parser(commands) -> argparse.ArgumentParser:
    from mathrl.config import add_arguments

    parser = _Parser(prog="mathrl", description="Reinforcement learning for math word problems.")
    parser.add_argument("--version", action="version", version=f"mathrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (cls, func, help_text) in commands.items():
        if " " in name:
            group, leaf = name.split(" ", 1)
            if group not in groups:
                gp = sub.add_parser(group, help=f"{group} commands")
                groups[group] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            p = groups[group].add_parser(leaf, help=help_text, description=help_text)
        else:
            p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p, cls)
        p.set_defaults(func=(cls, func))
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.filterwarnings("ignore", message=".*torch.utils._pytree.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mathrl.errors import MathRLError

    debug = os.environ.get("MATHRL_DEBUG") == "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        commands = _commands()
        parser = build_parser(commands)
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit as e:  # --help (0) or a bad flag (2, one line already printed)
            return int(e.code or 0)
        if not hasattr(args, "func"):
            parser.print_help()
            return 2
        from mathrl.config import from_args, unknown_flag

        cls, func = args.func
        if extra:
            raise unknown_flag(cls, extra)
        cfg = from_args(cls, args)
        func(cfg)
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
    finally:
        from mathrl import distributed

        distributed.teardown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
