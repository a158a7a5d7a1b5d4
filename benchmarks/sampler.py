"""mathrl's sampler vs Hugging Face ``model.generate`` on the same model and prompts.

Same model, same 32 prompts, K=16, at most 64 new tokens, torch at 1 thread (default). Runs alternate
A B A B ...; the median of ``--repeats`` runs of each is reported. Prints generated tokens/s of both, the rate at
K=96 (mathrl only: generate with 3,072 rows is the same comparison, just slower), and last a line
``speedup_vs_hf_generate=<x>``.

    python benchmarks/sampler.py --model runs/sft/model            # a trained model (realistic stop lengths)
    python benchmarks/sampler.py --device cuda --model DIR --dtype bfloat16   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mathrl.models import load_model
from mathrl.record import read_record
from mathrl.sampler import SamplingParams, sample
from mathrl.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--task", default="", help="task for the prompts (default: the model's, else synthetic)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="", help="float32 / bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--skip-k96", action="store_true")
    ap.add_argument("--memory-prompts", type=int, default=200,
                    help="K=96 over this many prompts, then peak RSS is printed (0: skip)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model, tok = load_model(args.model, device=args.device, dtype=dtype)
    meta = read_record(args.model).task
    name = args.task or meta.get("name", "synthetic")
    task = load_task(name, level=meta.get("level") if name == "synthetic" else None)
    problems = task.problems("test")[: args.prompts]
    prompts = [task.prompt(p) for p in problems]
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens)
    enc = tok(prompts, padding=True, return_tensors="pt", padding_side="left").to(args.device)

    def ours():
        rollouts = sample(model, tok, prompts, args.k, params)
        return sum(len(r.completion_ids) for r in rollouts)

    def hf():
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, num_return_sequences=args.k,
                                 max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)
        gen = out[:, enc["input_ids"].shape[1]:]
        # count tokens up to and including the first EOS, as the sampler does
        is_eos = gen == tok.eos_token_id
        first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, torch.full_like(gen[:, 0], gen.shape[1]))
        return int(first.sum())

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return n, time.perf_counter() - t0

    ours(), hf()  # warm-up
    rates = {"mathrl": [], "hf": []}
    for _ in range(args.repeats):
        for name_, fn in (("mathrl", ours), ("hf", hf)):
            n, dt = timed(fn)
            rates[name_].append(n / dt)
    a, b = statistics.median(rates["mathrl"]), statistics.median(rates["hf"])
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), device "
          f"{args.device}, {args.threads} thread(s), {args.prompts} prompts x K={args.k}, <= {args.max_new_tokens} "
          f"new tokens")
    print(f"mathrl sampler: {a:,.0f} generated tokens/s (runs: {', '.join(f'{r:,.0f}' for r in rates['mathrl'])})")
    print(f"HF generate:    {b:,.0f} generated tokens/s (runs: {', '.join(f'{r:,.0f}' for r in rates['hf'])})")
    if not args.skip_k96:
        n, dt = timed(lambda: sum(len(r.completion_ids) for r in sample(model, tok, prompts, 96, params)))
        print(f"mathrl sampler at K=96: {n / dt:,.0f} generated tokens/s ({args.prompts * 96} completions in {dt:.1f}s)")
    if args.memory_prompts:
        # memory stays bounded for any K: the token budget caps the cache, whatever the number of prompts
        import resource

        many = [task.prompt(p) for p in task.problems("test")[: args.memory_prompts]]
        n, dt = timed(lambda: sum(len(r.completion_ids) for r in sample(model, tok, many, 96, params)))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
        print(f"K=96 over {len(many)} prompts: {len(many) * 96} completions in {dt:.1f}s, peak RSS of this process "
              f"{peak:.2f} GiB")
    print(f"speedup_vs_hf_generate={a / b:.2f}")


if __name__ == "__main__":
    main()
