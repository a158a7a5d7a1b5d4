"""The training core shared by pretraining, SFT, Expert Iteration, RCRL and reward models, and the optimizer of
every algorithm.

Small building blocks, no trainer class: ``Example`` and ``collate`` make batches, ``token_logprobs`` is the one
place a model turns token ids into log pi(token | prefix), ``sft_grads`` accumulates the gradient of
``losses.sft_loss`` (the masked token-level cross-entropy) over micro-batches and ``bce_grads`` that of a reward
model's per-token binary cross-entropy, ``make_optimizer``/``lr_at``/``clip_and_step`` give AdamW with linear
warmup, cosine decay and gradient clipping, ``length_bucketed_batches``/``split_micro`` cut an epoch into batches
and micro-batches, and ``train_steps`` is the fine-tuning step loop of SFT, EI, RCRL and reward models. Each
algorithm's own loop lives in its module, on screen.

Mask convention, everywhere in mathrl: ``loss_mask[b, t]`` is True where token t of row b is a target the loss
counts (position t is predicted from tokens < t). Padding and prompt tokens are False.

Gradient accumulation is exact: every micro-batch's loss is a *sum* over its target tokens divided by the number
of target tokens in the whole optimizer batch, so 1 micro-batch of 8 and 8 micro-batches of 1 give the same
gradient (tested).

Shapes: B = rows, T = tokens per row, V = vocabulary.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import torch

from mathrl import distributed
from mathrl.losses import sft_loss
from mathrl.models import autocast

T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    """A token sequence and which of its tokens are targets (``loss_mask``, same length as ``input_ids``).

    ``labels`` (reward models only): a target probability per token, read where ``loss_mask`` is True.
    """

    input_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]
    labels: tuple[float, ...] | None = None


def completion_example(prompt_ids: Sequence[int], completion_ids: Sequence[int], whole_sequence: bool = False) -> Example:
    """Prompt + completion, with loss on the completion only (or on every token after the first)."""
    ids = tuple(prompt_ids) + tuple(completion_ids)
    if whole_sequence:
        mask = (False,) + (True,) * (len(ids) - 1)
    else:
        mask = (False,) * len(prompt_ids) + (True,) * len(completion_ids)
    return Example(ids, mask)


@dataclass
class Batch:
    """Right-padded tensors: input_ids (B, T) long, attention_mask (B, T) long (or, for packed documents, an
    additive (B, 1, T, T) float mask: ``pretrain.lm_batch``), loss_mask (B, T) bool, and for reward models labels
    (B, T) float."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device) -> "Batch":
        labels = self.labels.to(device) if self.labels is not None else None
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device), labels)

    def select(self, rows) -> "Batch":
        """The rows ``rows`` (an index tensor or a slice) of every tensor."""
        labels = self.labels[rows] if self.labels is not None else None
        return Batch(self.input_ids[rows], self.attention_mask[rows], self.loss_mask[rows], labels)

    @property
    def n_targets(self) -> int:
        return int(self.loss_mask.sum())


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    t = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    att = torch.zeros((len(examples), t), dtype=torch.long)
    loss = torch.zeros((len(examples), t), dtype=torch.bool)
    labels = torch.zeros((len(examples), t)) if examples[0].labels is not None else None
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        att[i, :n] = 1
        loss[i, :n] = torch.tensor(e.loss_mask)
        if labels is not None:
            labels[i, :n] = torch.tensor(e.labels)
    return Batch(ids, att, loss, labels)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log pi(x_t | x_<t) for every position: (B, T) float32, 0 at t = 0 (which has no prefix)."""
    # no KV cache: a training pass never reuses one, and under torch.compile its bookkeeping recompiles every block
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return torch.nn.functional.pad(picked, (1, 0))  # (B, T)


def sft_grads(model, micro_batches: Sequence[Batch], device, total: int | None = None) -> tuple[float, int]:
    """Accumulate the gradient of ``losses.sft_loss`` (the mean target-token NLL) over all micro-batches; returns
    (loss, n_targets).

    ``total``: the target tokens of the whole optimizer batch when these micro-batches are only part of it (data
    parallelism: each rank holds a share); default, the targets of these micro-batches."""
    total = total if total is not None else sum(mb.n_targets for mb in micro_batches)
    if total == 0:
        return 0.0, 0
    loss_value = 0.0
    for mb in micro_batches:
        mb = mb.to(device)
        with autocast(model):  # bf16 compute for a bf16-mixed model; the loss and its sum stay float32
            logp = token_logprobs(model, mb.input_ids, mb.attention_mask)  # (B, T)
        loss = sft_loss(logp, mb.loss_mask, total)  # sum over this micro-batch / targets in the whole batch
        loss.backward()
        loss_value += loss.item()
    return loss_value, total


def bce_grads(model, micro_batches: Sequence[Batch], device, total: int | None = None) -> tuple[float, int]:
    """Like ``sft_grads`` for a token-classification reward model: binary cross-entropy of the per-token logit
    against ``labels`` where ``loss_mask`` is True (no shift: the score at token t judges the prefix up to t)."""
    total = total if total is not None else sum(mb.n_targets for mb in micro_batches)
    if total == 0:
        return 0.0, 0
    loss_value = 0.0
    for mb in micro_batches:
        mb = mb.to(device)
        with autocast(model):
            logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[..., 0].float()  # (B, T)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, mb.labels, reduction="none")
        loss = (bce * mb.loss_mask).sum() / total
        loss.backward()
        loss_value += loss.item()
    return loss_value, total


def make_optimizer(model, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.98)) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms or biases), as in nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for the whole update (~2 ms instead of ~5 ms per step on the embedded default). Under FSDP
    # torch picks the implementation: PPO mixes sharded (DTensor) and whole (value head) parameters, which the
    # fused and multi-tensor kernels refuse
    if distributed.is_sharded(model):
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)


def lr_at(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based).

    1) linear warmup over ``warmup_steps``; 2) cosine decay from 1 to ``min_ratio`` at ``total_steps``;
    3) ``min_ratio`` after that.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer, base_lr: float, multiplier: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * multiplier


def clip_and_step(model, optimizer, grad_clip: float) -> float:
    """Clip the global gradient norm (if ``grad_clip`` > 0), step, zero the gradients; returns the norm.
    ``model``: a module, or the list of parameters the optimizer updates."""
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else list(model)
    norm = distributed.clip_grad_norm(params, grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def length_bucketed_batches(examples: Sequence[Example], batch_size: int, rng: random.Random,
                            bucket_batches: int = 16) -> list[list[int]]:
    """Indices of a shuffled epoch cut into batches of similar length (less padding), batches in random order.

    Examples are shuffled, taken ``batch_size * bucket_batches`` at a time, sorted by length inside that window
    and cut into batches; the batches are then shuffled. Every example appears exactly once.
    """
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * bucket_batches
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: len(examples[i].input_ids))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def split_micro(items: Sequence[T], micro_batch_size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``micro_batch_size`` items (a list or a tensor of row indices; 0: one slice)."""
    size = micro_batch_size if micro_batch_size > 0 else max(1, len(items))
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ----------------------------------------------------------------------------------------------------------
# The fine-tuning inner loop shared by SFT, Expert Iteration, RCRL and reward models


@dataclass(frozen=True)
class StepStats:
    step: int  # optimizer steps done (1-based)
    epoch: float  # epochs done, fractional
    loss: float
    grad_norm: float
    lr: float
    n_tokens: int  # tokens processed in this step (padding excluded)


def epoch_batches(examples: Sequence[Example], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a pure function of (seed, epoch), so a resumed run replays them exactly."""
    return length_bucketed_batches(examples, batch_size, random.Random(f"{seed}/epoch{epoch}"))


def train_steps(model, optimizer, examples: Sequence[Example], optim, *, pad_id: int, device, total_steps: int,
                seed: int, start_step: int = 0, objective: str = "lm") -> Iterator[StepStats]:
    """Run optimizer steps ``start_step+1 .. total_steps`` over ``examples`` (epoch after epoch), yielding after
    each so the caller can log, evaluate and checkpoint. The data position is the step itself.

    ``optim``: a ``settings.Optim`` (batch and micro-batch sizes, learning-rate schedule, clipping);
    ``objective``: "lm" (token cross-entropy, ``sft_grads``) or "bce" (reward models, ``bce_grads``)."""
    if not examples:
        return
    batch_size, micro_batch_size, lr = optim.batch_size, optim.micro, optim.lr
    grads = {"lm": sft_grads, "bce": bce_grads}[objective]
    per_epoch = math.ceil(len(examples) / batch_size)
    sharded = distributed.is_sharded(model)
    step = start_step
    while step < total_steps:
        epoch, offset = divmod(step, per_epoch)
        batches = epoch_batches(examples, batch_size, seed, epoch)
        for b in range(offset, per_epoch):
            if step >= total_steps:
                return
            # data parallel (torchrun): this rank takes rows r, r+N, ... of the batch; the loss is normalised by the
            # targets of the whole batch and the gradients are summed over ranks, so the update is the same
            rows = distributed.shard(batches[b])
            total = sum(sum(examples[i].loss_mask) for i in batches[b])
            local = [examples[i] for i in rows]
            n_tokens = sum(len(e.input_ids) for e in local)
            if sharded:
                # FSDP gathers weights in every forward pass, so all ranks must run the same number of passes: a
                # rank with fewer rows than rank 0 adds a row without targets (it adds nothing to the gradient)
                first = examples[batches[b][0]]
                blank = Example(first.input_ids, (False,) * len(first.input_ids), first.labels)
                local += [blank] * (math.ceil(len(batches[b]) / distributed.world_size()) - len(local))
            micro = [collate(mb, pad_id) for mb in split_micro(local, micro_batch_size)]
            multiplier = lr_at(step, total_steps, optim.warmup_steps, optim.min_lr_ratio)
            set_lr(optimizer, lr, multiplier)
            loss, _ = grads(model, micro, device, total)
            distributed.all_reduce_grads(model.parameters())
            loss, n_tokens = distributed.all_reduce_sum([loss, n_tokens])
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss}")
            norm = clip_and_step(model, optimizer, optim.grad_clip)
            step += 1
            yield StepStats(step=step, epoch=step / per_epoch, loss=loss, grad_norm=norm, lr=lr * multiplier,
                            n_tokens=int(n_tokens))


# ----------------------------------------------------------------------------------------------------------
