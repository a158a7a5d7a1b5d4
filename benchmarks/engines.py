"""Rollout engines side by side: mathrl's sampler vs vLLM (``--engine vllm``) vs Hugging Face ``model.generate``.

Same model, same prompts, same K, same length limit (temperature 1, no stop strings: every engine stops at EOS or
the limit), torch at a fixed thread count (1 by default; vLLM runs in this process on the same threads). Runs
alternate mathrl, vLLM, generate, mathrl, ...; the median of ``--repeats`` runs of each is reported as generated
tokens/s (completion tokens up to and including EOS). Two models: the embedded default (``--model``, default a
fresh ``mathrl model init``: random weights, trained tokenizer) and a ~20.7M-parameter random-weight Llama on the
same tokenizer (``--skip-large`` leaves it out). K = 16 over ``--prompts`` prompts and K = 96 over
``--prompts-k96`` prompts (fewer: generate at 96 x 32 rows takes minutes). For each (model, K) it prints the rates
and ``speedup_vs_vllm=`` (mathrl's tokens/s over vLLM's) and ``speedup_vs_hf_generate=`` (over generate's).

Needs the vllm extra (docs/engines.md):

    python benchmarks/engines.py [--model runs/sft/model] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mathrl import engines
from mathrl.models import count_parameters, load_model
from mathrl.record import read_record
from mathrl.sampler import SamplingParams, sample
from mathrl.settings import Sampling
from mathrl.tasks import load_task


def large_model(base: str, out: Path) -> Path:
    """A random-weight Llama of ~20.7M parameters (hidden 512, 6 layers, 8 heads, FFN 1536) on ``base``'s
    tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = load_model(base, device="cpu")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    shutil.copy(Path(base) / "mathrl.json", out / "mathrl.json")
    return out


def time_forward(engine) -> list[float]:
    """Accumulate the seconds vLLM's model spends in its forward passes (the engine runs in this process)."""
    module = engine.llm.apply_model(lambda m: m)[0]
    total, forward = [0.0], module.forward

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return forward(*a, **kw)
        finally:
            total[0] += time.perf_counter() - t0

    module.forward = timed
    return total


def bench(model_dir: str, args) -> None:
    model, tok = load_model(model_dir, device="cpu")
    meta = read_record(model_dir).task
    task = load_task(meta.get("name", "synthetic"), level=meta.get("level"))
    problems = task.problems("test")
    engine_model, _ = load_model(model_dir, device="cpu")  # the same weights; this copy carries the engine
    engine = engines.create(engine_model, Sampling(engine="vllm", token_budget=args.token_budget), model_dir)
    print(f"model {model_dir}: {count_parameters(model) / 1e6:.2f}M parameters, {args.threads} thread(s)", flush=True)
    for k, n_prompts in ((16, args.prompts), (96, args.prompts_k96)):
        prompts = [task.prompt(p) for p in problems[:n_prompts]]
        params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, token_budget=args.token_budget)
        enc = tok(prompts, padding=True, return_tensors="pt", padding_side="left")
        eos = tok.eos_token_id

        def ours():
            return sum(len(r.completion_ids) for r in sample(model, tok, prompts, k, params))

        def vllm():
            return sum(len(r.completion_ids) for r in engine.sample(engine_model, tok, prompts, k, params))

        def hf():
            with torch.no_grad():
                out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, num_return_sequences=k,
                                     max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            ended = (new == eos).int().cumsum(-1)  # tokens after the first EOS are padding
            return int(((ended == 0) | ((ended == 1) & (new == eos))).sum())

        vllm()  # the engine starts (and the weights go in) outside the timing
        forward_s = time_forward(engine)
        rates = {"mathrl": [], "vllm": [], "generate": []}
        vllm_s = 0.0
        for _ in range(args.repeats):
            for name, fn in (("mathrl", ours), ("vllm", vllm), ("generate", hf)):
                t0 = time.perf_counter()
                n = fn()
                dt = time.perf_counter() - t0
                rates[name].append(n / dt)
                vllm_s += dt if name == "vllm" else 0.0
        med = {name: statistics.median(r) for name, r in rates.items()}
        # where vLLM's time goes: its model's forward passes vs the rest (scheduling, batch preparation, sampling,
        # detokenizing for stop checks, output objects)
        print(f"  vllm: model forward {forward_s[0] / vllm_s:.0%} of its time")
        print(f"  K={k}, {n_prompts} prompts, <= {args.max_new_tokens} new tokens: tokens/s mathrl "
              f"{med['mathrl']:.0f}, vllm {med['vllm']:.0f}, generate {med['generate']:.0f}")
        print(f"  speedup_vs_vllm={med['mathrl'] / med['vllm']:.2f} speedup_vs_hf_generate="
              f"{med['mathrl'] / med['generate']:.2f}", flush=True)
    engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="the embedded default's directory (default: a fresh model init)")
    ap.add_argument("--prompts", type=int, default=32, help="prompts at K=16")
    ap.add_argument("--prompts-k96", type=int, default=8, help="prompts at K=96")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--token-budget", type=int, default=1 << 17)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-large", action="store_true", help="only the embedded default")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    base = args.model
    if not base:
        from mathrl.cli import main as cli

        base = str(tmp / "init")
        assert cli(["model", "init", "--out", base, "--level", "2"]) == 0
    bench(base, args)
    if not args.skip_large:
        bench(str(large_model(base, tmp / "llama-20m")), args)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
