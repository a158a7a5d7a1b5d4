"""Training outcome and stepwise reward models (``mathrl orm train [--stepwise]``).

Loop: **collect** K solutions per training question from the policy -> **label** them (ORM: the sparse reward
on every completion token; SORM: per step, whether any of M policy continuations from the prefix ending at that
step reaches a correct answer, an estimate of V*) -> **learn** a token-level binary classifier initialised from
the policy (``reward_model.py``): the token BCE plus ``--pairwise-weight`` times the within-question pairwise loss
(``reward_model.pairwise_loss``), over batches of whole questions -> **evaluate** on held-out questions: AUC of
the final score against correctness, pooled and within a question's own samples (what reranking needs), and on
tasks with an exact step check the agreement of step scores with it (a step is truly bad from the first wrong
step on; we report precision/recall of "score < 0.5" for bad steps) -> save OUT/model.

Label ratio: natural by default; ``--balance`` drops samples of the majority class to 1:1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path


import torch

from mathrl import distributed, engines
from mathrl import checkpoint as ckpt
from mathrl.algorithms.orm_config import Config
from mathrl.compile import compiled
from mathrl.errors import UsageError
from mathrl.metrics import auc, within_question_auc
from mathrl.models import apply_lora, autocast, final_model, gradient_checkpointing, load_model
from mathrl.record import ModelRecord, model_dir as local_model_dir
from mathrl.reward_model import RewardModel, pairwise_loss, token_classifier
from mathrl.runsetup import few_shot_examples, start_run, task_for, warn_tiny_default_lr, write_record
from mathrl.runlog import RunLogger, progress
from mathrl.sampler import sampling_params
from mathrl.seeds import rng_state, set_rng_state
from mathrl.tasks import task_options
from mathrl.tasks.prompting import completion_text, prompt_record
from mathrl.training import Batch, Example, StepStats, clip_and_step, collate, lr_at, make_optimizer, set_lr, train_steps


@dataclass
class Judged:
    """A policy sample and its labels: ``correct`` (the outcome), ``first_error`` (the exact step checker's, where
    the task has one) and, for a SORM, one rollout-estimated label per step (``step_labels``)."""

    id: str  # the question's id
    prompt_index: int
    text: str
    correct: bool
    first_error: int | None
    n_steps: int
    step_labels: list[float] | None = None


def _labels_per_token(tokenizer, text: str, spans, step_labels, final: float):
    """Token ids of ``text`` and one label per token: the label of the first step whose span ends at or after
    the token's end, the final correctness after the last step (the answer line)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [next((lab for (_, s1), lab in zip(spans, step_labels) if end <= s1), final)
              for _, end in enc["offset_mapping"]]
    return enc["input_ids"], labels


def train(cfg: Config) -> Path:
    ctx = start_run(cfg)
    run_dir, device = ctx.dir, ctx.device
    task = task_for(cfg.model, cfg.data, cfg.prompting)
    policy, tokenizer = load_model(cfg.model, device=device, precision=cfg.run.precision, compute=cfg.compute)
    engine = engines.create(policy, cfg.sampling, cfg.model)
    shots = few_shot_examples(task, cfg.model, -1)
    questions = task.problems("train")[: cfg.questions]
    n_held = max(1, int(len(questions) * cfg.heldout))
    held_ids = {p.id for p in random.Random(cfg.run.seed).sample(questions, n_held)}
    data_file = run_dir / "labelled.jsonl"
    t_start = time.time()

    if not data_file.is_file():
        # step 1: collect K samples per question from the policy
        prompts = [task.prompt(p, shots) for p in questions]
        params = sampling_params(cfg.sampling, task.stop_strings, seed=cfg.run.seed)
        bar = progress(len(prompts) * cfg.sampling.k, "orm: sampling", "sample")
        rollouts = engine.sample(policy, tokenizer, prompts, cfg.sampling.k, params, keys=[p.id for p in questions],
                                 progress=bar.update)
        bar.close()
        records = []
        for r in rollouts:
            p = questions[r.prompt_index]
            g = task.grade(p, r.text)
            records.append(Judged(p.id, r.prompt_index, r.text, g.correct,
                                  g.steps.first_error if g.steps is not None else None, len(task.step_spans(r.text))))
        # step 2 (SORM): label each step by whether the policy can still finish correctly from it
        if cfg.stepwise:
            _label_steps(task, engine, policy, tokenizer, questions, prompts, records, cfg, held_ids)
        if distributed.is_main():
            data_file.write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in records))
        distributed.barrier()
        print(f"orm: labelled {len(records)} samples ({sum(r.correct for r in records) / len(records):.3f} "
              f"correct) in {time.time() - t_start:.0f}s", flush=True)
    records = [Judged(**json.loads(line)) for line in data_file.read_text().splitlines()]
    engine.close()
    policy = policy.cpu()
    del policy

    train_records = [r for r in records if r.id not in held_ids]
    held_records = [r for r in records if r.id in held_ids]
    if cfg.stepwise:
        # the SORM trains only on samples with rollout step labels (the paper's SORM, section 3.2): the others
        # would carry their outcome on every step, an ORM's labels
        train_records = [r for r in train_records if r.step_labels is not None]
    if cfg.balance:
        pos = [r for r in train_records if r.correct]
        neg = [r for r in train_records if not r.correct]
        n = min(len(pos), len(neg))
        rng = random.Random(cfg.run.seed)
        train_records = rng.sample(pos, n) + rng.sample(neg, n)
    by_id = {p.id: p for p in questions}
    examples = [_example(task, tokenizer, by_id[r.id], r, shots) for r in train_records]
    if not examples:
        raise UsageError("no labelled training samples")

    # step 3: learn a per-token classifier initialised from the policy
    model = token_classifier(local_model_dir(cfg.model), attn_implementation=cfg.compute.attn_implementation,
                             precision=cfg.run.precision, device=device)
    model.to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    warn_tiny_default_lr(cfg, model)
    if cfg.compute.gradient_checkpointing:
        gradient_checkpointing(model, cfg.model)
    if cfg.lora.lora_rank:
        model = apply_lora(model, cfg.lora, cfg.model, task_type="TOKEN_CLS")
    if cfg.fsdp:
        distributed.shard_model(model)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    total = math.ceil(math.ceil(len(examples) / cfg.optim.batch_size) * cfg.epochs)
    step = 0
    last = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if last is not None:
        ckpt.load_weights_into(model, last)
        state = ckpt.load_state(last)
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        set_rng_state(state["rng"])
        step = state["step"]
    logger = RunLogger(run_dir, cfg, resume_step=step if last is not None else None)
    bar = progress(total, "orm: training", "step", initial=step)
    model.train()
    t_train = time.time()
    learner = compiled(model) if cfg.compile else model  # the weights are model's
    if cfg.pairwise_weight > 0:
        steps = _ranked_steps(learner, optimizer, examples, [r.correct for r in train_records],
                              [r.id for r in train_records], cfg, pad_id=tokenizer.pad_token_id, device=device,
                              total_steps=total, start_step=step)
    else:
        steps = train_steps(learner, optimizer, examples, cfg.optim, pad_id=tokenizer.pad_token_id, device=device,
                            total_steps=total, seed=cfg.run.seed, start_step=step, objective="bce")
    for st in steps:
        bar.update(1)
        bar.set_postfix(loss=f"{st.loss:.3f}")
        if st.step % 20 == 0 or st.step == total:
            logger.log(st.step, loss=st.loss, lr=st.lr)
        if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.step < total:
            state = {"step": st.step, "optimizer": distributed.optimizer_state(model, optimizer), "rng": rng_state()}
            ckpt.save_checkpoint(run_dir, st.step, model, tokenizer, state)
    bar.close()
    train_seconds = time.time() - t_train

    # step 4: evaluate on held-out questions
    rm = RewardModel(model, tokenizer, kind="sorm" if cfg.stepwise else "orm")
    report = evaluate_reward_model(rm, task, [by_id[r.id] for r in held_records], held_records, shots)
    if cfg.stepwise:
        report["n_train_step_labelled"] = sum(r.step_labels is not None for r in train_records)
    report.update({"kind": rm.kind, "n_train_samples": len(examples), "train_positive_fraction":
                   sum(r.correct for r in train_records) / len(train_records),
                   "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - t_start, 1)})
    if distributed.is_main():
        (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    logger.log(total, **{k: v for k, v in report.items() if isinstance(v, (int, float))})
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(final_model(model, cfg.lora), tokenizer, model_dir)
    write_record(model_dir, ModelRecord(task=task_options(task), stage=rm.kind, kind=rm.kind, **prompt_record(task),
                                        policy=cfg.model))
    within = report.get("auc_within_question", float("nan"))
    print(f"{rm.kind}: held-out AUC {report['auc']:.3f} (within a question's samples {within:.3f})"
          + (f", bad-step precision {report['step_precision']:.3f} recall {report['step_recall']:.3f}"
             if "step_precision" in report else "") + f"; written to {model_dir}")
    return model_dir


def by_question(rows, questions: list[str]) -> list[list[int]]:
    """``rows`` (sample indices) grouped by their question (``questions[i]``), in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i in rows:
        groups.setdefault(questions[i], []).append(i)
    return list(groups.values())


def pack(groups: list[list[int]], size: int) -> list[list[int]]:
    """Consecutive whole groups cut into batches of at most ``size`` samples (a group larger than that alone)."""
    batches: list[list[int]] = []
    for g in groups:
        if batches and len(batches[-1]) + len(g) <= size:
            batches[-1] += g
        else:
            batches.append(list(g))
    return batches


def question_batches(questions: list[str], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches of whole questions (``questions``: a question id per sample): the questions shuffled and
    packed, a batch closing before it would exceed ``batch_size`` samples. Every sample appears exactly once."""
    groups = by_question(range(len(questions)), questions)
    rng.shuffle(groups)
    return pack(groups, batch_size)


@dataclass
class RankedBatch:
    """A micro-batch of whole questions: the token batch (``labels``: the BCE targets), each row's outcome
    ``correct`` (B,) bool and question ``question`` (B,) long."""

    batch: Batch
    correct: torch.Tensor
    question: torch.Tensor


def ranked_grads(model, micro_batches: list[RankedBatch], device, total: int, n_mixed: int, weight: float) -> float:
    """Accumulate the gradient of the BCE + pairwise objective over micro-batches of whole questions; returns the
    loss. The loss of the optimizer batch: the token BCE summed over its ``total`` targets / ``total`` +
    ``weight`` x ``pairwise_loss`` summed over its questions / its ``n_mixed`` questions with both labels; each
    micro-batch adds its share, so accumulation is exact (as ``training.bce_grads``)."""
    loss_value = 0.0
    for rb in micro_batches:
        mb = rb.batch.to(device)
        with autocast(model):
            logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[..., 0].float()  # (B, T)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, mb.labels, reduction="none")
        # the ORM's score is its logit at the last completion token (a row without targets: the last position)
        last = mb.loss_mask.shape[1] - 1 - mb.loss_mask.flip(1).int().argmax(1)  # (B,)
        scores = logits[torch.arange(len(last), device=logits.device), last]  # (B,)
        pair_sum, _ = pairwise_loss(scores, rb.correct.to(logits.device), rb.question.to(logits.device))
        loss = (bce * mb.loss_mask).sum() / max(total, 1) + weight * pair_sum / max(n_mixed, 1)
        loss.backward()
        loss_value += loss.item()
    return loss_value


def _ranked_steps(model, optimizer, examples: list[Example], correct: list[bool], questions: list[str], cfg: Config,
                  *, pad_id: int, device, total_steps: int, start_step: int = 0):
    """``training.train_steps`` for the BCE + pairwise objective (``ranked_grads``): the same schedule, clipping
    and data-parallel sums, over batches of whole questions; each rank and micro-batch takes whole questions too,
    so that every within-question pair meets in one pass."""
    optim, world = cfg.optim, distributed.world_size()
    qid = {q: n for n, q in enumerate(dict.fromkeys(questions))}

    def epoch(e: int) -> list[list[int]]:  # a pure function of (seed, epoch): a resumed run replays its batches
        return question_batches(questions, optim.batch_size, random.Random(f"{cfg.run.seed}/epoch{e}"))

    def ranked(rows: list[int]) -> RankedBatch:
        if not rows:  # FSDP's blank pass: a row without targets, alone in its question (no pair)
            first = examples[0]
            blank = Example(first.input_ids, (False,) * len(first.input_ids), first.labels)
            return RankedBatch(collate([blank], pad_id), torch.tensor([False]), torch.tensor([-1]))
        return RankedBatch(collate([examples[i] for i in rows], pad_id), torch.tensor([correct[i] for i in rows]),
                           torch.tensor([qid[questions[i]] for i in rows]))

    per_epoch = len(epoch(0))
    e, batches, step = 0, epoch(0), 0
    while step < start_step:  # the data position is the step
        skip = min(len(batches), start_step - step)
        step, batches = step + skip, batches[skip:]
        if not batches:
            e, batches = e + 1, epoch(e + 1)
    while step < total_steps:
        batch = batches.pop(0)
        if not batches:
            e, batches = e + 1, epoch(e + 1)
        total = sum(sum(examples[i].loss_mask) for i in batch)
        n_mixed = len({questions[i] for i in batch if correct[i]} & {questions[i] for i in batch if not correct[i]})
        # data parallel (torchrun): rank r takes the batch's questions r, r+N, ...; micro-batches of whole questions
        groups = by_question(batch, questions)
        local = pack(groups[distributed.rank() :: world], optim.micro or len(batch))
        if distributed.is_sharded(model):  # FSDP: every rank runs as many passes
            passes = max(len(pack(groups[r::world], optim.micro or len(batch))) for r in range(world))
            local += [[]] * (passes - len(local))
        multiplier = lr_at(step, total_steps, optim.warmup_steps, optim.min_lr_ratio)
        set_lr(optimizer, optim.lr, multiplier)
        loss = ranked_grads(model, [ranked(rows) for rows in local], device, total, n_mixed, cfg.pairwise_weight)
        n_tokens = sum(len(examples[i].input_ids) for rows in local for i in rows)
        distributed.all_reduce_grads(model.parameters())
        loss, n_tokens = distributed.all_reduce_sum([loss, n_tokens])
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss}")
        norm = clip_and_step(model, optimizer, optim.grad_clip)
        step += 1
        yield StepStats(step=step, epoch=step / per_epoch, loss=loss, grad_norm=norm, lr=optim.lr * multiplier,
                        n_tokens=int(n_tokens))


def _example(task, tokenizer, problem, record: "Judged", shots) -> Example:
    prompt = task.prompt(problem, shots)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    final = float(record.correct)
    text = completion_text(prompt, record.text)
    spans = task.step_spans(text)
    step_labels = record.step_labels or [final] * len(spans)
    comp_ids, labels = _labels_per_token(tokenizer, text, spans, step_labels, final)
    ids = tuple(prompt_ids) + tuple(comp_ids)
    mask = (False,) * len(prompt_ids) + (True,) * len(comp_ids)
    return Example(ids, mask, labels=(0.0,) * len(prompt_ids) + tuple(labels))


def _label_steps(task, engine, policy, tokenizer, questions, prompts, records, cfg: Config,
                 held_ids=frozenset()) -> None:
    """SORM labels: for each step prefix of a training sample (not a held-out one), sample M continuations; good
    if any is correct."""
    rng = random.Random(cfg.run.seed + 1)
    pool = [i for i, r in enumerate(records) if r.id not in held_ids]
    chosen = rng.sample(pool, min(cfg.sorm_samples, len(pool)))
    prefix_prompts, owners = [], []
    for i in chosen:
        r = records[i]
        text = completion_text(prompts[r.prompt_index], r.text)
        spans = task.step_spans(text)
        r.step_labels = [float(r.correct)] * len(spans)
        for j, (_, end) in enumerate(spans[:-1]):  # the last step's label is the sample's own outcome
            prefix_prompts.append(prompts[r.prompt_index] + text[: end + 1])
            owners.append((i, j))
    if not prefix_prompts:
        return
    bar = progress(len(prefix_prompts) * cfg.m, "sorm: step rollouts", "sample")
    conts = engine.sample(policy, tokenizer, prefix_prompts, cfg.m,
                          sampling_params(cfg.sampling, task.stop_strings, seed=cfg.run.seed + 7),
                          keys=[f"{records[i].id}/{j}" for i, j in owners], progress=bar.update)
    bar.close()
    for n, (i, j) in enumerate(owners):
        r = records[i]
        text = completion_text(prompts[r.prompt_index], r.text)
        end = task.step_spans(text)[j][1]
        problem = questions[r.prompt_index]
        good = any(task.grade(problem, text[: end + 1] + c.text).correct for c in conts[n * cfg.m : (n + 1) * cfg.m])
        r.step_labels[j] = float(good)


def evaluate_reward_model(rm, task, problems, records, shots) -> dict:
    """AUC of final scores vs correctness; where the task checks steps exactly, bad-step precision/recall."""
    if not records:
        return {"auc": float("nan")}
    prompts = [task.prompt(p, shots) for p in problems]
    texts = [r.text for r in records]
    probs = rm.token_probs(prompts, texts)
    finals = [p[-1] if p else 0.5 for _, p in probs]
    report = {"auc": auc(finals, [bool(r.correct) for r in records]), "n_heldout": len(records),
              "heldout_positive_fraction": sum(r.correct for r in records) / len(records)}
    # within one question's samples (what reranking needs; the pooled AUC also rewards knowing easy questions)
    report["auc_within_question"] = within_question_auc(finals, [bool(r.correct) for r in records],
                                                        [r.id for r in records])
    report["n_heldout_mixed_questions"] = len({r.id for r in records if r.correct} & {r.id for r in records
                                                                                     if not r.correct})
    if any(r.first_error is not None for r in records):
        tp = fp = fn = 0
        for (ids, p), r, prompt in zip(probs, records, prompts):
            text = completion_text(prompt, r.text)
            spans = task.step_spans(text)
            step_probs = _step_end_probs(rm.tokenizer, text, spans, p)
            first_error = r.first_error
            for j, sp in enumerate(step_probs):
                truly_bad = first_error is not None and j >= first_error
                flagged = sp < 0.5
                tp += flagged and truly_bad
                fp += flagged and not truly_bad
                fn += (not flagged) and truly_bad
        report["step_precision"] = tp / (tp + fp) if tp + fp else float("nan")
        report["step_recall"] = tp / (tp + fn) if tp + fn else float("nan")
    return report


def _step_end_probs(tokenizer, text, spans, probs) -> list[float]:
    """The score at the last token of each step."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = [e for _, e in enc["offset_mapping"]]
    out = []
    for _, s1 in spans:
        idx = max((i for i, e in enumerate(ends) if e <= s1), default=None)
        out.append(probs[idx] if idx is not None and idx < len(probs) else 0.5)
    return out


def main(cfg: Config) -> None:
    train(cfg)
