"""The cost of the embedded model's sizes relative to tiny's: a training step and sampling, on CPU threads.

    python benchmarks/model_sizes.py [--threads 1] [--steps 6]

For each size of ``models.SIZES`` (a fresh model: step time does not depend on the weights): a training step
(forward, backward, AdamW) on 8 x 256 random tokens, the pretraining batch, timed over ``--steps`` steps after
2 warm-up steps; and mathrl's sampler drawing 8 completions of up to 64 tokens for 16 synthetic test prompts.
Prints seconds and each size's ratio to tiny's; ``budgets.SIZE_COST`` (what ``--sizes`` adds to a study) comes from
these ratios (docs/results.md, "Model size (F7)").
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()

    import torch

    from mathrl.models import SIZES, init_model, load_model
    from mathrl.sampler import SamplingParams, sample
    from mathrl.tasks import load_task

    torch.set_num_threads(args.threads)
    task = load_task("synthetic")
    prompts = [task.prompt(p) for p in task.problems("test")[:16]]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            init_model(task, f"{tmp}/{size}", size=size, seed=0)
            model, tokenizer = load_model(f"{tmp}/{size}", device="cpu")
            params = sum(p.numel() for p in model.parameters())
            x = torch.randint(0, len(tokenizer), (8, 256))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
            model.train()

            def step():
                model(input_ids=x, labels=x).loss.backward()
                opt.step()
                opt.zero_grad()

            for _ in range(2):
                step()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            train = (time.perf_counter() - t0) / args.steps
            model.eval()
            sampling = SamplingParams(max_new_tokens=64, seed=0)
            with torch.no_grad():
                sample(model, tokenizer, prompts[:4], 4, sampling)  # warm-up
                t0 = time.perf_counter()
                sample(model, tokenizer, prompts, 8, sampling)
                sampled = time.perf_counter() - t0
            rows[size] = (params, train, sampled)
    base = rows["tiny"]
    print("| size | parameters | train step (s) | x tiny | sampling (s) | x tiny |")
    print("|---|---|---|---|---|---|")
    for size, (params, train, sampled) in rows.items():
        print(f"| {size} | {params / 1e6:.2f}M | {train:.3f} | {train / base[1]:.2f} | {sampled:.2f} | "
              f"{sampled / base[2]:.2f} |")


if __name__ == "__main__":
    main()
