"""Probe what a pretrained embedded model has learned, skill by skill (the study's pretrained start).

Prints, for a model written by `mathrl pretrain` (or a checkpoint's model directory):

- arithmetic: greedy accuracy of `a op b =` per kind of step the task has (+k, -k, *2, *3, the sum of two
  quantities), 200 facts each over the task's number range, after one solved fact as context;
- copying: teacher-forced next-token accuracy on ledger documents (``corpus._recall``) in their first half (new
  statements) and their "Again:" half (the same statements repeated in another order: predictable only by looking
  them up); a gap between the two is the copying that quoting statements needs;
- solutions: with `--k K`, the zero-shot prose profile on `-n` test problems (greedy maj@1, answer-only and
  step-verified pass@K, the fraction of samples that write an answer sentence), through the task's own grader.

    python benchmarks/pretrained_probe.py --model runs/pretrain/model [--k 96 -n 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import random

import torch

from mathrl import engines
from mathrl.evaluate import evaluate, summarize
from mathrl.models import load_model
from mathrl.sampler import SamplingParams, sample
from mathrl.settings import Sampling
from mathrl.tasks.corpus import _recall
from mathrl.tasks.synthetic import LEVELS
from mathrl.tasks.synthetic_prose import SyntheticProseTask


def arithmetic(model, tokenizer, level, n: int = 200, seed: int = 7) -> dict:
    rng, vmax, kmax = random.Random(seed), level.value_max, level.k_max
    draws = {"+k": lambda: (lambda a, b: (f"{a} + {b} =", a + b))(rng.randint(0, vmax - kmax), rng.randint(1, kmax)),
             "-k": lambda: (lambda a, b: (f"{a} - {b} =", a - b))(rng.randint(kmax, vmax), rng.randint(1, kmax)),
             "*2": lambda: (lambda a: (f"{a} * 2 =", 2 * a))(rng.randint(0, vmax // 2)),
             "*3": lambda: (lambda a: (f"{a} * 3 =", 3 * a))(rng.randint(0, vmax // 3)),
             "sum": lambda: (lambda a: (lambda b: (f"{a} + {b} =", a + b))(rng.randint(0, vmax - a)))(
                 rng.randint(0, vmax))}
    out = {}
    for kind, draw in draws.items():
        facts = [draw() for _ in range(n)]
        rollouts = sample(model, tokenizer, [f"12 + 5 = 17. {q}" for q, _ in facts], 1,
                          SamplingParams(temperature=0, max_new_tokens=6, seed=0))
        out[kind] = sum(r.text.strip().split(".")[0].strip() == str(v) for r, (_, v) in zip(rollouts, facts)) / n
    return out


@torch.no_grad()
def copying(model, tokenizer, level, n: int = 100, seed: int = 3) -> tuple[float, float]:
    rng = random.Random(seed)
    right, total = [0, 0], [0, 0]
    for _ in range(n):
        doc = _recall(rng, level)
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        cut = len(tokenizer(doc.split(" Again:")[0], add_special_tokens=False)["input_ids"])
        hit = (model(torch.tensor([ids])).logits[0, :-1].argmax(-1) == torch.tensor(ids[1:])).tolist()
        for half, span in ((0, hit[: cut - 1]), (1, hit[cut + 1:])):  # the "Again:" tokens themselves skipped
            right[half] += sum(span)
            total[half] += len(span)
    return right[0] / total[0], right[1] / total[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--k", type=int, default=0, help="samples per problem for the solution profile (0: skip it)")
    ap.add_argument("-n", type=int, default=100, help="test problems for the solution profile")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device="cpu")
    model.eval()
    task = SyntheticProseTask()
    level = LEVELS[task.level]
    acc = arithmetic(model, tokenizer, level)
    print("arithmetic (greedy, 200 facts each): " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    first, again = copying(model, tokenizer, level)
    print(f"copying (teacher-forced next-token accuracy on ledgers): new statements {first:.3f}, repeated {again:.3f}")
    if args.k:
        results = evaluate(model, tokenizer, task, task.problems("test")[: args.n],
                           Sampling(k=args.k, temperature=1.0, max_new_tokens=96), engine=engines.Mathrl(), seed=0)
        m = summarize(results)
        print(f"prose, zero-shot, {args.n} test problems: maj@1 {m['maj@1']:.3f}, pass@{args.k} {m[f'pass@{args.k}']:.3f}, "
              f"pass@{args.k}_verified {m[f'pass@{args.k}_verified']:.3f}, samples with an answer "
              f"{1 - m['no_answer_rate']:.3f}")


if __name__ == "__main__":
    main()
