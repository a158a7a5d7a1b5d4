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
its bucketing and compute overlap, which would matter for large models only).

``--fsdp`` (sft, ei, rcrl, ppo/grpo, orm train) shards the model instead (torch's FSDP2 ``fully_shard``: each
transformer block, then the root): parameters, gradients and optimizer state live in 1/N shards, every forward
pass all-gathers a block's weights and every backward pass reduce-scatters its gradients (summed, like
``all_reduce_grads``, because each rank's loss is already normalised by the whole batch). What FSDP changes for
the loops is kept in the helpers below: ``shard_model``; ``unsharded`` (sampling gathers the whole model once,
since ranks sample different questions and so run different numbers of forward passes, which FSDP's per-forward
all-gathers cannot follow); ``clip_grad_norm`` (global norm over shards and whole tensors); ``full_state_dict``,
``load_full_state_dict`` and ``optimizer_state``/``load_optimizer_state`` (checkpoints hold full tensors, written
by rank 0, so a run can resume with any number of ranks, with or without FSDP). The loops themselves only make
every rank run the same number of forward/backward passes per step.

Backends: gloo on CPU, NCCL on CUDA (each rank takes ``cuda:LOCAL_RANK``). A rank that cannot reach the others
within ``MATHRL_DIST_TIMEOUT`` seconds (default 300) stops with a one-line error; torchrun ends the remaining
ranks when one exits with an error.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import warnings
from typing import Iterator, Sequence, TypeVar

import torch

from mathrl.errors import RunError, UsageError
from mathrl.models import block_class_names

T = TypeVar("T")


def _dist():
    # a group of one is not mathrl's (it joins only when WORLD_SIZE > 1): vLLM's in-process engine starts one of its
    # own (engines.py), which mathrl must neither use nor destroy
    ok = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed if ok and torch.distributed.get_world_size() > 1 else None


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
    # on GPUs: NCCL for CUDA tensors, gloo for the few CPU tensors (statistics in all_reduce_sum)
    backend = "cuda:nccl,cpu:gloo" if device.startswith("cuda") else "gloo"
    timeout = datetime.timedelta(seconds=float(os.environ.get("MATHRL_DIST_TIMEOUT", "300")))
    if device.startswith("cuda"):
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
    # FSDP-sharded parameters (DTensors) had their gradients reduce-scattered in the backward pass already
    params = [p for p in params if p.requires_grad and not _is_dtensor(p)]
    if not params:
        return
    # one flat buffer per gradient dtype: a bf16 policy's gradients and its float32 value head's concatenated
    # together would come back as float32, which a bf16 parameter's .grad refuses
    for dtype in dict.fromkeys(p.dtype for p in params):
        group = [p for p in params if p.dtype == dtype]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        _collective(lambda: torch.distributed.all_reduce(flat), "summing gradients")
        offset = 0
        for p in group:
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


# ----------------------------------------------------------------------------------------------------------
# FSDP (--fsdp): sharded parameters, gradients and optimizer state


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _fsdp_modules(model) -> list:
    if _dist() is None:
        return []
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model) -> bool:
    return bool(_fsdp_modules(model))


def shard_model(model, what: str = "--fsdp") -> None:
    """Shard ``model`` over the ranks with FSDP2: each transformer block (the classes a Hugging Face model lists in
    ``_no_split_modules``), then the root (embeddings, final norm, head). A no-op on one process."""
    if world_size() == 1:
        return
    from torch.distributed.fsdp import fully_shard

    block_types = block_class_names(model)
    blocks = [m for m in model.modules() if type(m).__name__ in block_types]
    if not blocks:
        raise UsageError(f"{what}: cannot find the transformer blocks of {type(model).__name__} "
                         "(its _no_split_modules is empty)")
    # FSDP warns when a forward returns a view (HF slices its logits); mathrl never edits model outputs in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    for m in _fsdp_modules(model):
        # Sum, not average, the gradients over ranks: each rank's loss is normalised by the whole batch already
        # (as for all_reduce_grads). Sum-only collectives also run on gloo, which has no pre-scaled reduction.
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)


@contextlib.contextmanager
def unsharded(model) -> Iterator[None]:
    """Hold the whole (unsharded) model on every rank inside the block: for sampling, where ranks run different
    numbers of forward passes. Costs one all-gather of the parameters and full-model memory while it lasts."""
    modules = _fsdp_modules(model)
    if not modules:
        yield
        return
    _collective(lambda: [m.unshard() for m in modules], "gathering the sharded model")
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            m.set_reshard_after_forward(m is not model, recurse=False)  # fully_shard's default: root False, blocks True
            m.reshard()


def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm of ``params`` to ``max_norm``; returns the norm before clipping (as
    ``torch.nn.utils.clip_grad_norm_``). Parameters may be FSDP shards (DTensors), whole tensors, or a mix
    (PPO's value head beside a sharded policy): the squares of the local shards are summed over ranks in one
    all-reduce, those of whole tensors (the same on every rank) are added once."""
    with_grad = [p for p in params if p.grad is not None]
    grads = [p.grad for p in with_grad]
    if world_size() == 1 or not any(_is_dtensor(g) for g in grads):
        return float(torch.nn.utils.clip_grad_norm_(with_grad, max_norm))
    zero = torch.zeros((), dtype=torch.float32, device=grads[0].device)  # (a DTensor's device is its shard's)
    sharded = sum((g.to_local().detach().float().norm(2) ** 2 for g in grads if _is_dtensor(g)), zero)
    _collective(lambda: torch.distributed.all_reduce(sharded), "summing gradient norms")
    whole = sum((g.detach().float().norm(2) ** 2 for g in grads if not _is_dtensor(g)), zero)
    total = float((sharded + whole).sqrt())
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 or not math.isfinite(total):  # a non-finite norm makes the gradients non-finite, as torch does
        for g in grads:
            (g.to_local() if _is_dtensor(g) else g).detach().mul_(coef)
    return total


def full_state_dict(model) -> dict | None:
    """Full (unsharded) CPU tensors of a sharded model, on rank 0 (None elsewhere); None for a model that is not
    sharded (save it as it is). Every rank must call it (it gathers)."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = _collective(lambda: get_model_state_dict(model, options=options), "gathering the model")
    if not is_main():
        return None
    # tied parameters (embeddings and head) come back as two copies: share one tensor again, so save_pretrained
    # writes it once, as it does for the unsharded model
    shared: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(name)
    for names in shared.values():
        for name in names[1:]:
            if names[0] in state and name in state:
                state[name] = state[names[0]]
    return state


def load_full_state_dict(model, state: dict):
    """Load full tensors into ``model``, sharded or not (strict=False); returns (missing, unexpected) keys."""
    if not is_sharded(model):
        return model.load_state_dict(state, strict=False)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    return set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state dict; for a sharded model the full one (on rank 0), so it loads at any world size.
    Every rank must call it."""
    if not is_sharded(model) or not optimizer.state:
        # (an optimizer that has not stepped yet has no sharded state; FSDP's gatherer would initialise it by a
        # hidden step, which changes Adam's step count)
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return _collective(lambda: get_optimizer_state_dict(model, optimizer, options=options), "gathering the optimizer")


def load_optimizer_state(model, optimizer, state: dict) -> None:
    if not is_sharded(model) or not state.get("state"):
        try:
            optimizer.load_state_dict(state)  # (torch matches parameters by position, whatever their saved names)
        except ValueError as e:  # another parameter count or shape: the checkpoint is not this run's
            raise UsageError(f"--resume: the checkpoint's optimizer state does not fit this run's trainable "
                             f"parameters (was it written with other --lora-* or model settings?): {e}") from None
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    saved = [p for g in state.get("param_groups", []) for p in g["params"]]
    if saved and isinstance(saved[0], int):
        # saved by an unsharded run (torch's format: parameters by position): name them, as FSDP's loader wants;
        # the optimizer holds the parameters in the same order either way
        names = {p: n for n, p in model.named_parameters()}
        order = [names[p] for g in optimizer.param_groups for p in g["params"]]
        state = {"state": {order[i]: v for i, v in state["state"].items()},
                 "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def teardown() -> None:
    if _dist() is not None:
        torch.distributed.destroy_process_group()
