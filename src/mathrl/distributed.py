"""Data parallelism on torch.distributed, for runs launched with ``torchrun``.

Every command runs unchanged under ``torchrun --nproc_per_node N -m mathrl ...``. The design keeps each
algorithm's loop as it reads on one process; three shared building blocks do the distributing:

- ``sampler.sample`` shards its prompts across ranks (prompt i goes to rank i mod N), samples its shard and
  all-gathers the rollouts, so every rank holds the same complete list. The sampler's random numbers are keyed by
  (seed, question, sample index, step), not by rank or batch position, so the union of the samples does not
  depend on the number of ranks (up to the last-bit differences that a different batch shape can cause in the
  logits).
- ``training.train_steps`` (SFT, EI, RCRL, reward models) gives each rank rows ``r, r+N, ...`` of every batch,
  normalises each rank's loss by the target tokens of the *whole* batch, and sums the gradients over ranks with
  ``all_reduce_grads`` before clipping and stepping: the same update as one process with the same global batch.
  PPO/GRPO split each minibatch the same way (``local_rows`` and ``all_reduce_grads``).
- Files (checkpoints, model directories, logs) are written by rank 0 only (``is_main``); other ranks print
  nothing to stdout.

Gradients are summed with one flat ``all_reduce`` per optimizer step (what DistributedDataParallel does, without
its bucketing and compute overlap, which would matter for large models only). FSDP is not wired in: a model that
does not fit one device needs it (documented in docs/distributed.md).

Backends: gloo on CPU, NCCL on CUDA (each rank takes ``cuda:LOCAL_RANK``). A rank that cannot reach the others
within ``MATHRL_DIST_TIMEOUT`` seconds (default 300) stops with a one-line error; torchrun ends the remaining
ranks when one exits with an error.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Sequence, TypeVar

import torch

from mathrl.errors import RunError, UsageError

T = TypeVar("T")


def _dist():
    return torch.distributed if torch.distributed.is_available() and torch.distributed.is_initialized() else None


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> str:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns the device this rank uses.

    Idempotent; on one process it returns ``device`` unchanged and starts nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or _dist() is not None:
        return _rank_device(device) if _dist() is not None else device
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise UsageError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get("MATHRL_DIST_TIMEOUT", "300")))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        torch.distributed.init_process_group(backend=backend, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - store timeouts and refused connections come in many types
        raise RunError(f"rank {os.environ['RANK']}: could not join the {world} ranks at {os.environ['MASTER_ADDR']}:"
                       f"{os.environ['MASTER_PORT']} within {timeout.seconds} s ({str(e).splitlines()[0][:160]}); "
                       "check --nproc_per_node/--nnodes and that every node was started") from None
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # one copy of the logs (rank 0's); errors still reach stderr
    return _rank_device(device)


def _rank_device(device: str) -> str:
    if device.startswith("cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share: items r, r+N, r+2N, ..."""
    return list(items[rank() :: world_size()])


def gather_shards(local: list[T], n_items: int) -> list[T]:
    """Inverse of ``shard`` over all ranks: the full list, in the original order, on every rank."""
    world = world_size()
    if world == 1:
        return local
    parts: list = [None] * world
    _collective(lambda: torch.distributed.all_gather_object(parts, local), "gathering rollouts")
    out: list = [None] * n_items
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def local_rows(n_rows: int) -> list[int]:
    """Indices of the rows of an n_rows batch that this rank computes."""
    return list(range(rank(), n_rows, world_size()))


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over ranks (a parameter without a gradient counts as zeros)."""
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    _collective(lambda: torch.distributed.all_reduce(flat), "summing gradients")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sum a few numbers over ranks (losses and token counts, so every rank logs and checks the same values)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    _collective(lambda: torch.distributed.all_reduce(t), "summing statistics")
    return t.tolist()


def barrier() -> None:
    if world_size() > 1:
        _collective(torch.distributed.barrier, "waiting for the other ranks")


def _collective(fn, what: str):
    try:
        return fn()
    except RuntimeError as e:  # a peer died or timed out: say so in one line instead of a gloo traceback
        raise RunError(f"rank {rank()}: lost contact with the other ranks while {what} "
                       f"({str(e).splitlines()[0][:160]})") from None


def teardown() -> None:
    if _dist() is not None:
        torch.distributed.destroy_process_group()
