"""md5 of the final weights of same-seed eager runs of every training command on the embedded default.

Used to show that a refactor changed no behaviour: run it before and after, compare the printed md5s.
Tiny settings (a few steps each, 1 thread; GRPO and RLOO on the ORM's scores, so that groups carry signal), ~3 min on 2 CPU cores:

    python benchmarks/same_weights.py [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

from mathrl.cli import main


def md5(model_dir: Path) -> str:
    h = hashlib.md5()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def run(argv: list[str]) -> None:
    if main(argv + ["--threads", "1", "--device", "cpu"]) != 0:
        raise SystemExit(f"failed: mathrl {' '.join(argv)}")


def commands(d: Path) -> list[tuple[str, list[str]]]:
    sft, orm = str(d / "sft" / "model"), str(d / "orm" / "model")
    small_eval = ["--eval-size", "3", "--eval-k", "2", "--max-new-tokens", "16"]
    return [
        ("pretrain", ["pretrain", "--out", str(d / "pretrain"), "--steps", "6", "--batch-size", "8",
                      "--seq-len", "64", "--checkpoint-every", "3"]),
        ("sft", ["sft", "--model", str(d / "pretrain" / "model"), "--out", str(d / "sft"), "--epochs", "2",
                 "--train-size", "64", "--batch-size", "8", "--micro-batch-size", "4", "--eval-size", "3",
                 "--eval-k", "2", "--max-new-tokens", "16"]),
        ("ei", ["ei", "--model", sft, "--out", str(d / "ei"), "--rounds", "2", "--questions", "8", "-k", "2",
                "--patience", "0", "--include-references", *small_eval]),
        ("ppo", ["ppo", "--model", sft, "--out", str(d / "ppo"), "--iterations", "3", "--prompts", "4", "-k", "2",
                 "--batch-size", "4", "--eval-every", "2", *small_eval]),
        ("ppo-dense", ["ppo", "--model", sft, "--out", str(d / "ppo-dense"), "--iterations", "2", "--prompts", "4",
                       "-k", "2", "--batch-size", "4", "--reward", "dense", "--kl-target", "0.1", *small_eval]),
        ("orm", ["orm", "train", "--model", sft, "--out", str(d / "orm"), "--questions", "8", "-k", "2",
                 "--epochs", "1", "--max-new-tokens", "16"]),
        ("grpo", ["grpo", "--model", sft, "--out", str(d / "grpo"), "--iterations", "3", "--prompts", "4", "-k", "4",
                  "--batch-size", "8", "--reward", "orm", "--orm", orm, *small_eval]),
        ("rloo-kl", ["grpo", "--model", sft, "--out", str(d / "rloo"), "--advantage", "rloo", "--iterations", "2",
                     "--prompts", "4", "-k", "2", "--batch-size", "4", "--kl-coef", "0.1", "--reward", "orm",
                     "--orm", orm, "--orm-mode", "step", *small_eval]),
        # grpo's switches: dynamic sampling within a rollout budget, DAPO's length shaping and clip-higher
        ("grpo-refill", ["grpo", "--model", sft, "--out", str(d / "grpo-refill"), "--iterations", "3", "--prompts",
                         "4", "-k", "4", "--batch-size", "8", "--reward", "dense", "--zero-signal", "refill",
                         "--max-rollouts", "40", "--overlong-buffer", "4", "--mask-truncated", "--clip-high", "0.28",
                         *small_eval]),
        ("gspo-seq", ["grpo", "--model", sft, "--out", str(d / "gspo-seq"), "--iterations", "2", "--prompts", "4",
                      "-k", "4", "--batch-size", "8", "--reward", "orm", "--orm", orm, "--policy-loss", "gspo",
                      "--loss-aggregation", "sequence", "--clip", "0.05", "--zero-signal", "drop", *small_eval]),
        ("reinforce++", ["grpo", "--model", sft, "--out", str(d / "reinforce++"), "--advantage", "reinforce++",
                         "--iterations", "2", "--prompts", "4", "-k", "2", "--batch-size", "4", "--reward", "orm",
                         "--orm", orm, "--policy-loss", "cispo", "--clip-high", "0.28", "--loss-aggregation",
                         "constant", "--micro-batch-size", "2", *small_eval]),
        ("rcrl", ["rcrl", "--model", sft, "--out", str(d / "rcrl"), "--questions", "8", "-k", "2", *small_eval]),
        ("rcrl-dense", ["rcrl", "--model", sft, "--out", str(d / "rcrl-dense"), "--returns", "dense",
                        "--questions", "8", "-k", "2", *small_eval]),
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="")
    ap.add_argument("--pg", nargs=argparse.REMAINDER, default=[],
                    help="flags added to every ppo/grpo run, e.g. --pg --minibatch rollout (the minibatch order of "
                         "code before --minibatch existed: its md5s are the ones to compare with)")
    args = ap.parse_args()
    d = Path(args.out or tempfile.mkdtemp(prefix="same-weights-"))
    results = []
    for name, argv in commands(d):
        run(argv + (args.pg if argv[0] in ("ppo", "grpo") else []))
        results.append((name, md5(d / argv[argv.index("--out") + 1].split("/")[-1] / "model")))
    for name, h in results:
        print(f"{name:12s} {h}")
