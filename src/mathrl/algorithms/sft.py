"""Supervised fine-tuning on a task's reference solutions: the baseline every RL result is compared against.

Loop: optimizer steps on length-bucketed batches of reference completions (token-level cross-entropy,
completion tokens only by default; ``training.train_steps``), and at each epoch end: evaluate maj@1, maj@K and
pass@K on the held-out dev split -> checkpoint. Havrilla et al. (section 4.3) report that more SFT
epochs raise maj@1 while pass@96 falls; the per-epoch dev metrics in metrics.jsonl show whether that trade-off
appears here.

Dev problems are removed from the training set when they come from the same pool (GSM8K/SVAMP ``dev``). With
``--backtranslated PATH --backtranslated-ratio R``, round(R x the real problems) synthetic pairs that ``mathrl
backtranslate`` made are added to the training set, trained on like reference solutions (``backtranslated.py``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from mathrl import distributed, engines
from mathrl import checkpoint as ckpt
from mathrl.backtranslated import added_count, read_pairs, select_pairs
from mathrl.algorithms.sft_config import Config
from mathrl.record import ModelRecord
from mathrl.settings import Sampling
from mathrl.evaluate import append_question_records, evaluate, headline, summarize
from mathrl.models import apply_lora, count_parameters, final_model, init_model, load_model
from mathrl.runsetup import start_run, task_for, warn_tiny_default_lr, write_record
from mathrl.runlog import RunLogger, progress
from mathrl.seeds import rng_state, set_rng_state
from mathrl.tasks import task_options
from mathrl.tasks.prompting import prompt_record
from mathrl.compile import compiled
from mathrl.training import completion_example, make_optimizer, train_steps


def build_examples(task, tokenizer, problems, whole_sequence: bool):
    """One Example per problem: zero-shot prompt + reference completion + EOS."""
    prompts = tokenizer([task.prompt(p) for p in problems], add_special_tokens=False)["input_ids"]
    targets = tokenizer([task.target(p) for p in problems], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [completion_example(p, t + [eos], whole_sequence) for p, t in zip(prompts, targets)]


def train(cfg: Config) -> Path:
    ctx = start_run(cfg)
    run_dir, device, threads = ctx.dir, ctx.device, ctx.threads
    task = task_for(cfg.model or None, cfg.data, cfg.prompting, teaching=True, train_size=cfg.train_size)

    model_path = cfg.model
    if not model_path:
        model_path = run_dir / "init"
        if distributed.is_main() and not (model_path / "config.json").is_file():
            init_model(task, model_path, size=cfg.size, seed=cfg.run.seed)
        distributed.barrier()  # under torchrun, rank 0 writes the initial model and every rank loads it
    model, tokenizer = load_model(model_path, device=device, for_training=True, precision=cfg.run.precision,
                                  compute=cfg.compute)
    warn_tiny_default_lr(cfg, model)
    if cfg.lora.lora_rank:
        model = apply_lora(model, cfg.lora, model_path)

    dev = task.problems(cfg.eval.eval_split)[: cfg.eval.eval_size] if cfg.eval.eval_size else []
    dev_ids = {p.id for p in dev}
    train_problems = [p for p in task.problems("train") if p.id not in dev_ids]
    added = []
    if cfg.backtranslation.backtranslated:
        # synthetic pairs (backtranslate), ratio x the real problems of a seeded pass over the file, trained on as
        # references are
        pairs = read_pairs(task, cfg.backtranslation.backtranslated)
        added = select_pairs(pairs, added_count(len(train_problems), cfg.backtranslation.backtranslated_ratio),
                             cfg.run.seed)
    examples = build_examples(task, tokenizer, train_problems + added, cfg.whole_sequence_loss)
    steps_per_epoch = math.ceil(len(examples) / cfg.optim.batch_size)
    total_steps = cfg.epochs * steps_per_epoch

    step = 0
    last = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if last is not None:
        ckpt.load_weights_into(model, last)
    if cfg.fsdp:
        distributed.shard_model(model)  # after loading full weights, before the optimizer sees the parameters
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    if last is not None:
        state = ckpt.load_state(last)
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        set_rng_state(state["rng"])
        step = state["step"]
        print(f"resumed {run_dir} at step {step}")
    logger = RunLogger(run_dir, cfg, resume_step=step if last is not None else None)
    print(f"sft: {count_parameters(model) / 1e6:.2f}M parameters, {len(examples)} train problems"
          + (f" ({len(train_problems)} real + {len(added)} backtranslated)" if added else "") + ", "
          f"{cfg.epochs} epochs x {steps_per_epoch} steps, {threads} threads, {device}")

    def save(step):
        ckpt.save_checkpoint(run_dir, step, model, tokenizer,
                             {"step": step, "optimizer": distributed.optimizer_state(model, optimizer),
                              "rng": rng_state()})

    bar = progress(total_steps, "sft", "step", initial=step)
    tokens, t0 = 0, time.time()
    # --compile: the training passes go through a compiled wrapper sharing the parameters (sampling stays eager)
    steps = train_steps(compiled(model) if cfg.compile else model, optimizer, examples, cfg.optim,
                        pad_id=tokenizer.pad_token_id, device=device, total_steps=total_steps, seed=cfg.run.seed,
                        start_step=step)
    try:
        for stats in steps:
            # learn: one optimizer step on a length-bucketed batch of reference completions
            step = stats.step
            tokens += stats.n_tokens
            bar.update(1)
            bar.set_postfix(loss=f"{stats.loss:.3f}", epoch=f"{stats.epoch:.2f}")
            if stats.step % cfg.log_every == 0:
                logger.log(stats.step, loss=stats.loss, grad_norm=stats.grad_norm, lr=stats.lr, epoch=stats.epoch,
                           tokens_per_s=tokens / max(1e-9, time.time() - t0))
            end_of_epoch = stats.step % steps_per_epoch == 0
            if end_of_epoch:
                epoch = stats.step // steps_per_epoch
                print(f"epoch {epoch}/{cfg.epochs} done (step {stats.step}, loss {stats.loss:.3f}, "
                      f"{tokens / max(1e-9, time.time() - t0):.0f} tokens/s)", flush=True)
                if dev:
                    # evaluate: maj@1 (greedy), maj@K and pass@K on the held-out dev split
                    model.eval()
                    sampling = Sampling(k=cfg.eval.eval_k, temperature=cfg.eval.eval_temperature,
                                        max_new_tokens=cfg.max_new_tokens, token_budget=cfg.token_budget)
                    results = evaluate(model, tokenizer, task, dev, sampling, engine=engines.Mathrl(),
                                       seed=cfg.run.seed)
                    model.train()
                    metrics = summarize(results)
                    if distributed.is_main():
                        # per-question records: the study's paired interval on the epoch-to-epoch trade-off
                        append_question_records(results, run_dir / "dev_questions.jsonl", epoch=epoch)
                    logger.log(stats.step, epoch=epoch,
                               **{f"dev/{k}": v for k, v in metrics.items() if isinstance(v, float)})
                    print(f"  dev: {headline(metrics)}", flush=True)
            # checkpoint at each epoch end (after its evaluation) and every checkpoint_every steps
            if end_of_epoch or (cfg.checkpoint_every and stats.step % cfg.checkpoint_every == 0):
                save(stats.step)
    except FloatingPointError as e:
        raise ckpt.divergence_error(run_dir, step, str(e)) from None
    bar.close()
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(final_model(model, cfg.lora), tokenizer, model_dir)
    write_record(model_dir, ModelRecord(task=task_options(task), stage="sft", shots=0, **prompt_record(task),
                                        base=str(cfg.model or "scratch")))
    print(f"SFT model written to {model_dir}")
    return model_dir


def main(cfg: Config) -> None:
    train(cfg)
