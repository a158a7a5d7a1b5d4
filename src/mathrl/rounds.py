"""Round-based runs (Expert Iteration and RCRL): each round fine-tunes on that round's samples, and a run
checkpoints between phases so that a resumed run continues the round where it stopped.

``round_total_steps`` sizes a round's fine-tuning, ``fine_tune_round`` runs it through ``training.train_steps``,
``round_policy`` readies the start model (adapters or shards, its engine, its initial weights),
``snapshot``/``restore`` keep the initial weights to restart each round from (ReST-EM, Singh et al. 2023: the
paper's choice for EI, Havrilla et al. 2024 section 3.1), ``save_round_run``/``resume_round_run`` write and read a
round-based run's checkpoint, ``evaluation_due``/``stop_at_plateau`` say whether a round ends with an evaluation
and whether the run stops there (``plateau.py``). Shared here because the two algorithms never import each other.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

from mathrl import checkpoint as ckpt
from mathrl import distributed, engines
from mathrl.models import apply_lora
from mathrl.plateau import log_point_crossed, mark_plateau
from mathrl.runlog import progress
from mathrl.seeds import rng_state, set_rng_state
from mathrl.training import Example, make_optimizer, train_steps


LOG_EVERY = 20  # fine-tuning steps between the lines of fine_tune.jsonl


def evaluation_due(schedule, history: list, last: bool) -> bool:
    """Whether the round whose record is ``history[-1]`` (with the rollouts consumed so far) ends with an
    evaluation (``settings.EvalSchedule``): every round with ``--eval-at every``; with ``--eval-at log`` the last
    round and those whose sampling passed a point of the log schedule (``plateau.log_point_crossed``)."""
    if schedule.eval_at == "every" or last:
        return True
    before = history[-2]["rollouts"] if len(history) > 1 else 0
    return log_point_crossed(schedule.eval_first, before, history[-1]["rollouts"])


def stop_at_plateau(schedule, history: list) -> bool:
    """With ``--stop-at-plateau``, whether the dev curve of ``history`` (its last record just evaluated) has
    plateaued (``plateau.mark_plateau``: the record gets ``plateau_at``); the run stops after this round."""
    if not schedule.stop_at_plateau or not mark_plateau(history, schedule.plateau_margin, schedule.plateau_min):
        return False
    print(f"stopping: dev maj@1 has plateaued at {history[-1]['rollouts']} rollouts", flush=True)
    return True


def round_total_steps(n_examples: int, optim, rounds) -> int:
    """Optimizer steps of a round: ``rounds.epochs`` passes over ``n_examples`` in batches of
    ``optim.batch_size``, capped by ``rounds.max_steps`` if > 0 (``settings.Optim``, ``settings.Rounds``)."""
    total = math.ceil((math.ceil(n_examples / optim.batch_size) if n_examples else 0) * rounds.epochs)
    return min(total, rounds.max_steps) if rounds.max_steps else total


def fine_tune_round(policy, optimizer, examples: Sequence[Example], optim, st, *, pad_id: int, device, total: int,
                    seed: int, label: str, checkpoint_every: int, save, run_dir) -> None:
    """The learn phase of a round: steps ``st.ft_step + 1 .. total`` over ``examples`` (``st.ft_step`` kept
    current, so a resumed round continues where it stopped), ``save(tag)`` every ``checkpoint_every`` steps; a
    non-finite loss stops the run naming the last good checkpoint. Every ``LOG_EVERY`` steps and at the last,
    a line of ``fine_tune.jsonl`` in ``run_dir`` (round, step, loss, wall-clock time): the run's metrics have one
    record per round, and a round's fine-tune can take minutes (benchmarks/stage_rates.py reads its rate)."""
    policy.train()
    bar = progress(total, label, "step", initial=st.ft_step)
    log = open(Path(run_dir) / "fine_tune.jsonl", "a") if distributed.is_main() else None
    try:
        for step in train_steps(policy, optimizer, examples, optim, pad_id=pad_id, device=device, total_steps=total,
                                seed=seed, start_step=st.ft_step):
            st.ft_step = step.step
            bar.update(1)
            bar.set_postfix(loss=f"{step.loss:.3f}")
            if log is not None and (st.ft_step % LOG_EVERY == 0 or st.ft_step == total):
                log.write(json.dumps({"round": st.round + 1, "step": st.ft_step, "loss": round(step.loss, 5),
                                      "time": round(time.time(), 2)}) + "\n")
                log.flush()
            if checkpoint_every and st.ft_step % checkpoint_every == 0 and st.ft_step < total:
                save(ckpt.round_tag(st.round, st.ft_step))
    except FloatingPointError as e:
        raise ckpt.divergence_error(run_dir, st.ft_step, str(e)) from None
    finally:
        if log is not None:
            log.close()
    bar.close()


def round_policy(cfg, policy, trainable_tokens=()):
    """(policy, engine, initial weights) of a round-based run: the loaded start model with LoRA adapters
    (``trainable_tokens``: embeddings that train in full beside them) or, under ``--fsdp``, sharded; the rollout
    engine created after both; and the ``snapshot`` each round restarts from (``restore``)."""
    if cfg.lora.lora_rank:
        policy = apply_lora(policy, cfg.lora, cfg.model, trainable_tokens=trainable_tokens)
    if cfg.fsdp:
        distributed.shard_model(policy)
    engine = engines.create(policy, cfg.sampling, cfg.model)
    return policy, engine, snapshot(policy)


def snapshot(model) -> dict:
    """A copy of the weights that training changes, to restart from (EI and RCRL fine-tune from the initial
    weights each round): every weight (this rank's shards under FSDP), or with LoRA the adapters alone (the
    base stays frozen; copying it would double the memory of a large model)."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def restore(model, weights: dict) -> None:
    """Load a ``snapshot`` back."""
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
    else:
        model.load_state_dict(weights)


def resume_round_run(run_dir, resume: bool, policy, fresh, from_dict, optim):
    """(state, optimizer or None, resumed) of a round-based run: with ``resume`` and a checkpoint in ``run_dir``,
    the last one's state (``from_dict``), its weights and RNG state restored, and the optimizer too when it was
    taken while fine-tuning; else (``fresh``, None, False)."""
    last = ckpt.latest_checkpoint(run_dir) if resume else None
    if last is None:
        return fresh, None, False
    saved = ckpt.load_state(last)
    ckpt.load_weights_into(policy, last)
    set_rng_state(saved["rng"])
    optimizer = None
    if saved.get("optimizer") is not None:
        optimizer = make_optimizer(policy, optim.lr, optim.weight_decay)
        distributed.load_optimizer_state(policy, optimizer, saved["optimizer"])
    st = from_dict(saved)
    print(f"resumed {run_dir}: round {st.round + 1}, phase {st.phase}, fine-tuning step {st.ft_step}")
    return st, optimizer, True


def save_round_run(run_dir, tag: int, policy, tokenizer, st, optimizer) -> None:
    """Checkpoint ``tag`` of a round-based run: weights, ``st.to_dict()``, the RNG state, and the optimizer while
    fine-tuning (``st.phase == "learn"``; between phases the next round starts a new one)."""
    opt = distributed.optimizer_state(policy, optimizer) if optimizer is not None and st.phase == "learn" else None
    ckpt.save_checkpoint(run_dir, tag, policy, tokenizer, {**st.to_dict(), "rng": rng_state(), "optimizer": opt})
