"""Pretraining the embedded default: the paper's "pretrained, not fine-tuned" starting point at toy scale.

Havrilla et al. start RL from pretrained Llama-2 checkpoints prompted few-shot, and from SFT checkpoints. Our
pretrained checkpoint is a tiny Llama trained from scratch as a language model on a web-like synthetic corpus
(``tasks.corpus.web_documents``). By default, of its documents (tokens): 45% (53%) arithmetic drill lines over
the task's operations, 15% (20%) ledger lists that repeat their statements, 29% (14%) problem texts without a
solution, and 10% (14%) worked solutions in a prose format that is not the task's step format (the statements
used, quoted from the question, then ``So X has a + b = v pens.`` computations, then ``The answer is N.``). It is
prompted in that prose format (``surface``: the bare question, zero-shot; recorded in mathrl.json), which is how
the paper's pretrained models are used, in a format they can follow (prompted 2-shot in the task's
``Question:/Answer:`` format, models of this size ignored the examples: docs/results.md).

The profile this gives (docs/results.md, measured): greedy maj@1 near 0 (after a question, the corpus ends the
document twice as often as it solves it), while sampling solves some problems, step-verified. It needs 6,000 steps
of 8 x 256 tokens: the copying of names and numbers and three-digit addition each appear late and suddenly, and
the short budgets measured before (240 steps of 32 x 256) solved nothing. Attention stays within each packed
document (``document_mask``): with it the copying formed in fewer steps.

Loop: documents are packed into rows of ``seq_len`` tokens separated by EOS (no padding), loss on every token with
a prefix in its document; AdamW with warmup and cosine decay; checkpoint every ``checkpoint_every`` steps; resume
exact. The data of step s is a pure function of (seed, s), so the data position is the step.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import torch

from mathrl import distributed
from mathrl import checkpoint as ckpt
from mathrl.algorithms.pretrain_config import Config
from mathrl.record import ModelRecord
from mathrl.models import count_parameters, init_model, load_model
from mathrl.runsetup import start_run, write_record
from mathrl.runlog import RunLogger, progress
from mathrl.seeds import rng_state, set_rng_state
from mathrl.tasks import load_task, task_options
from mathrl.tasks.corpus import web_documents
from mathrl.training import Batch, clip_and_step, lr_at, make_optimizer, set_lr, sft_grads


def packed_rows(cfg: Config, tokenizer, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (batch_size, seq_len) token rows of optimizer step ``step``, a pure function of (seed, step), and the
    index of the document each token belongs to (its EOS included), counted along the row."""
    docs = web_documents(cfg.level, seed=cfg.run.seed * 1_000_003 + step, solution_fraction=cfg.solution_fraction,
                         drill_fraction=cfg.drill_fraction, recall_fraction=cfg.recall_fraction)
    need = cfg.optim.batch_size * cfg.seq_len
    ids: list[int] = []
    doc_of: list[int] = []
    eos = tokenizer.eos_token_id
    while len(ids) < need:
        batch = list(itertools.islice(docs, 64))
        for row in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            doc_of += [doc_of[-1] + 1 if doc_of else 0] * (len(row) + 1)
            ids += row + [eos]
    shape = (cfg.optim.batch_size, cfg.seq_len)
    return torch.tensor(ids[:need]).view(shape), torch.tensor(doc_of[:need]).view(shape)


def lm_batch(rows: torch.Tensor, doc_of: torch.Tensor, document_mask: bool) -> Batch:
    """The language-model batch of packed rows (B, T): loss on every token that has a prefix.

    With ``document_mask`` each token attends to the earlier tokens of its own document only (a (B, 1, T, T)
    mask, which transformers passes to the attention kernel as it is), and the first token of a document is no
    target: as at evaluation, where a prompt is the only document, nothing before a document is read. Without it,
    tokens also see the end of the previous documents in their row, whose names and numbers are the same kind as
    their own: copying from the current document then has to learn to skip look-alikes (measured in
    docs/results.md: with the mask the copying that solving needs forms earlier). Positions need no reset: the
    rotary attention of the embedded Llama depends on relative positions only."""
    targets = torch.ones_like(rows, dtype=torch.bool)
    targets[:, 0] = False  # the first token of a row has no prefix to be predicted from
    if not document_mask:
        return Batch(rows, torch.ones_like(rows), targets)
    same_doc = doc_of[:, :, None] == doc_of[:, None, :]  # (B, T, T)
    causal = torch.ones(rows.shape[1], rows.shape[1], dtype=torch.bool).tril()
    targets[:, 1:] &= doc_of[:, 1:] == doc_of[:, :-1]  # a document's first token is no target
    allowed = (same_doc & causal)[:, None]  # (B, 1, T, T)
    # additive (0 where a token may attend, the float32 minimum where not), which every attention kernel reads
    # alike: the matmul-softmax ("eager") attention, which bf16 training on CPU and --compile use, adds the mask
    # to its scores, so a boolean mask there would add 1s and 0s and mask nothing, the future included. SDPA gives
    # bit-identical gradients with either form
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return Batch(rows, mask, targets)


def train(cfg: Config) -> Path:
    ctx = start_run(cfg)
    run_dir, device, threads = ctx.dir, ctx.device, ctx.threads
    task = load_task(cfg.task, level=cfg.level)

    init_dir = run_dir / "init"
    if distributed.is_main() and not (init_dir / "config.json").is_file():
        init_model(task, init_dir, size=cfg.size, seed=cfg.run.seed)
    distributed.barrier()  # under torchrun, rank 0 writes the initial model and every rank loads it
    model, tokenizer = load_model(init_dir, device=device, for_training=True, precision=cfg.run.precision)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    start = 0
    last = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if last is not None:
        ckpt.load_weights_into(model, last)
        state = ckpt.load_state(last)
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        set_rng_state(state["rng"])
        start = state["step"]
        print(f"resumed {run_dir} at step {start}")
    logger = RunLogger(run_dir, cfg, resume_step=start if last is not None else None)
    print(f"pretrain: {count_parameters(model) / 1e6:.2f}M parameters, {cfg.steps} steps x {cfg.optim.batch_size} x "
          f"{cfg.seq_len} tokens, {threads} threads, {device}")

    bar = progress(cfg.steps, "pretrain", "step", initial=start)
    tokens, t0 = 0, time.time()
    for step in range(start, cfg.steps):
        # collect: this step's packed rows; learn: one optimizer step on the whole-sequence LM loss
        rows, doc_of = packed_rows(cfg, tokenizer, step)
        batch = lm_batch(rows, doc_of, cfg.document_mask)
        total = batch.n_targets  # targets in the whole batch (all ranks together under torchrun)
        mine = distributed.local_rows(len(rows))  # this rank's rows r, r+N, ...
        batch = batch.select(mine)
        mb = cfg.optim.micro_batch_size or cfg.optim.batch_size
        micro = [batch.select(slice(i, i + mb)) for i in range(0, len(batch.input_ids), mb)]
        set_lr(optimizer, cfg.optim.lr, lr_at(step, cfg.steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio))
        loss, _ = sft_grads(model, micro, device, total)
        distributed.all_reduce_grads(model.parameters())
        loss, n = distributed.all_reduce_sum([loss, total])[0], total
        if not math.isfinite(loss):
            raise ckpt.divergence_error(run_dir, step, f"loss became {loss}")
        grad_norm = clip_and_step(model, optimizer, cfg.optim.grad_clip)
        tokens += n
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rate = tokens / max(1e-9, time.time() - t0)
            logger.log(step + 1, loss=loss, grad_norm=grad_norm, lr=optimizer.param_groups[0]["lr"], tokens_per_s=rate)
            print(f"step {step + 1}/{cfg.steps} loss {loss:.3f} ({rate:.0f} tokens/s)", flush=True)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            ckpt.save_checkpoint(run_dir, step + 1, model, tokenizer,
                                 {"step": step + 1, "optimizer": optimizer.state_dict(), "rng": rng_state()})
    bar.close()
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(model, tokenizer, model_dir)
    task_meta = {**task_options(task), **({"surface": cfg.surface} if cfg.surface != "qa" else {})}
    shots = cfg.shots if cfg.shots >= 0 else (0 if cfg.surface == "prose" else 2)
    write_record(model_dir, ModelRecord(task=task_meta, stage="pretrained", shots=shots, size=cfg.size))
    print(f"pretrained model written to {model_dir}")
    return model_dir


def main(cfg: Config) -> None:
    train(cfg)
