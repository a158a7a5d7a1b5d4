"""mathrl GRPO vs TRL's GRPOTrainer on the same model, prompts and settings (needs ``pip install -e .[bench]``).

Both train the same tiny HF model (default: an SFT model of the embedded default) on the same training prompts
with the same group size, completion length, learning rate and sparse reward (our task's grader), at the same
torch thread count (default 1), on the CPU, with one optimizer step per generation batch. TRL runs with
use_cpu=True, bf16 off, gradient checkpointing off, no vLLM, beta 0 (as our `mathrl grpo` default). Runs
alternate A B A B (`--repeats` pairs, each starting from the same model); the median completions/s of each is
reported, over the training loop: TRL's ``trainer.train()`` (its trainer, model and data set are built before the
clock starts) and mathrl's iterations (the sum of their ``iteration_seconds``: collect, score, learn, log; the
model load and task set-up before the first one excluded in the same way); the end-to-end rate of mathrl's
``train()`` is printed beside it. After the same number of rollouts, each run's policy is evaluated greedily (maj@1) by the same
evaluator on the same test problems. The last line is `speedup_vs_trl_grpo=<x>`.

    python benchmarks/vs_trl.py --model runs/sft/model --steps 10 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps (= generation batches) per run")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (group size)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="A/B pairs")
    ap.add_argument("--eval-size", type=int, default=200, help="test problems for maj@1")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mathrl import engines
    from mathrl.evaluate import evaluate, summarize
    from mathrl.runsetup import task_for
    from mathrl.settings import Data, Sampling
    from mathrl.models import load_model

    task = task_for(args.model, Data())
    questions = task.problems("train")[: args.prompts * args.steps]
    test = task.problems("test")[: args.eval_size]
    work = Path(tempfile.mkdtemp(prefix="vs_trl-"))
    n_completions = args.steps * args.prompts * args.group

    def maj1(model_dir) -> float:
        model, tok = load_model(model_dir, device="cpu")
        greedy = Sampling(k=0, max_new_tokens=args.max_new_tokens)
        return summarize(evaluate(model, tok, task, test, greedy, engine=engines.Mathrl()))["maj@1"]

    def run_mathrl(rep: int) -> tuple[float, Path]:
        from mathrl.algorithms import grpo
        from mathrl.config import build

        out = work / f"mathrl-{rep}"
        cfg = build(grpo.Config, dict(model=args.model, out=str(out), iterations=args.steps, prompts=args.prompts,
                                         k=args.group, max_new_tokens=args.max_new_tokens, lr=args.lr, warmup_steps=0,
                                         ppo_epochs=1, batch_size=args.prompts * args.group, eval_size=0,
                                         checkpoint_every=args.steps, threads=args.threads, seed=args.seed + rep))
        t0 = time.perf_counter()
        grpo.train(cfg)
        end_to_end.append(n_completions / (time.perf_counter() - t0))
        loop = sum(h["iteration_seconds"] for h in json.loads((out / "history.json").read_text()))
        return n_completions / loop, out / "model"

    def run_trl(rep: int) -> tuple[float, Path]:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        model, tok = load_model(args.model, device="cpu", for_training=True)
        by_id = {p.id: p for p in questions}
        data = Dataset.from_list([{"prompt": task.prompt(p), "problem_id": p.id} for p in questions])

        def sparse_reward(completions, problem_id, **kwargs):
            return [float(task.grade(by_id[i], c).correct) for c, i in zip(completions, problem_id)]

        out = work / f"trl-{rep}"
        config = GRPOConfig(
            output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False, use_vllm=False,
            num_generations=args.group, per_device_train_batch_size=args.prompts * args.group,
            gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, max_steps=args.steps,
            max_completion_length=args.max_new_tokens, learning_rate=args.lr, lr_scheduler_type="constant",
            warmup_steps=0, beta=0.0, temperature=1.0, top_k=0, report_to="none", save_strategy="no",
            logging_steps=max(1, args.steps), seed=args.seed + rep, shuffle_dataset=False, disable_dropout=True,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=sparse_reward, args=config, train_dataset=data,
                              processing_class=tok)
        t0 = time.perf_counter()
        trainer.train()
        rate = n_completions / (time.perf_counter() - t0)
        (out / "model").mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
        shutil.copy(Path(args.model) / "mathrl.json", out / "model" / "mathrl.json")
        return rate, out / "model"

    start = maj1(args.model)  # also imports and warms up the model code before anything is timed
    end_to_end: list[float] = []
    rates = {"mathrl": [], "trl": []}
    accuracy = {"mathrl": [], "trl": []}
    for rep in range(args.repeats):
        for name, fn in (("mathrl", run_mathrl), ("trl", run_trl)):
            rate, model_dir = fn(rep)
            rates[name].append(rate)
            accuracy[name].append(maj1(model_dir))
            print(f"run {rep + 1} {name}: {rate:.1f} completions/s, maj@1 {accuracy[name][-1]:.3f}", flush=True)
    a, b = statistics.median(rates["mathrl"]), statistics.median(rates["trl"])
    print(json.dumps({"model": args.model, "threads": args.threads, "steps": args.steps, "prompts": args.prompts,
                      "group": args.group, "max_new_tokens": args.max_new_tokens, "lr": args.lr}))
    print(f"start maj@1 {start:.3f}; after {n_completions} rollouts: mathrl maj@1 "
          f"{statistics.mean(accuracy['mathrl']):.3f}, TRL maj@1 {statistics.mean(accuracy['trl']):.3f}")
    print(f"mathrl GRPO: {a:.1f} completions/s ({statistics.median(end_to_end):.1f} end to end, with model load and "
          f"task set-up); TRL GRPOTrainer: {b:.1f} completions/s")
    print(f"speedup_vs_trl_grpo={a / b:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
