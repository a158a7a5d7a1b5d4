"""SFT step time: eager vs ``sft --compile`` (the transformer blocks compiled, ``compile.compiled``) vs the whole
model compiled, and foreach vs fused AdamW; all on one model in one process, alternating.

    python benchmarks/sft_step.py [--model DIR] [--threads 2] [--rounds 6] [--steps 20]

Each variant first runs 3 steps (for the compiled ones: the compile, from an empty compile cache unless --warm),
then the variants take turns, ``--steps`` steps each, ``--rounds`` times, on the same length-bucketed batches of
the synthetic task (batch 16, whole-sequence loss, as the embedded default's SFT). The variants share the
parameters, so they train one model in turns; the learning rate is tiny so the model barely moves. Prints ms per
step and each variant's ratio to eager, measured side by side (the shared machine's speed drifts between runs,
not within a round). Without --model a fresh tiny model is initialised (step time does not depend on weights).
The whole model compiles after the blocks, in the same cache, so its compile time printed here is a lower bound.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="model directory (default: a fresh tiny model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warm", action="store_true", help="keep torch's compile cache (default: an empty one)")
    args = ap.parse_args()
    if not args.warm:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mathrl-bench-inductor-")

    import torch

    from mathrl.algorithms.sft import build_examples
    from mathrl.compile import compiled
    from mathrl.models import init_model, load_model
    from mathrl.tasks import load_task
    from mathrl.training import clip_and_step, collate, epoch_batches, sft_grads

    torch.set_num_threads(args.threads)
    needed = 3 * 4 + args.rounds * args.steps * 4  # batches: 3 warm-up steps and the rounds, for 4 variants
    task = load_task("synthetic", level=1, train_size=16 * needed + 400)
    path = args.model or tempfile.mkdtemp(prefix="mathrl-bench-model-")
    if not args.model:
        init_model(task, path)
    model, tok = load_model(path, device="cpu", for_training=True)
    examples = build_examples(task, tok, task.problems("train"), whole_sequence=True)
    batches = [collate([examples[i] for i in b], tok.pad_token_id) for b in epoch_batches(examples, 16, 0, 0)]

    fused = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=True)
    foreach = torch.optim.AdamW(model.parameters(), lr=1e-7, foreach=True)
    whole = torch.compile(model, dynamic=True)
    variants = {  # name: (forward, optimizer)
        "eager, foreach AdamW": (model, foreach),
        "eager, fused AdamW": (model, fused),
        "compiled blocks (sft --compile), fused": (compiled(model), fused),
        "compiled whole model, fused": (whole, fused),
    }
    it = iter(batches)

    def run(forward, optimizer, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            sft_grads(forward, [next(it)], "cpu")
            clip_and_step(model, optimizer, 1.0)
        return time.perf_counter() - t0

    print(f"{len(examples)} examples, batch 16, {args.threads} threads, "
          f"{'warm' if args.warm else 'empty'} compile cache")
    for name, (forward, optimizer) in variants.items():
        print(f"  first 3 steps (incl. compiling): {run(forward, optimizer, 3):6.1f} s  {name}", flush=True)
    total = dict.fromkeys(variants, 0.0)
    for _ in range(args.rounds):
        for name, (forward, optimizer) in variants.items():
            total[name] += run(forward, optimizer, args.steps)
    n = args.rounds * args.steps
    base = total["eager, foreach AdamW"]
    for name, t in total.items():
        print(f"  {1000 * t / n:6.1f} ms/step  ratio to eager {t / base:.3f}  {name}")


if __name__ == "__main__":
    main()
