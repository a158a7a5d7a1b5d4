"""Expert Iteration (EI): the paper's best algorithm (Havrilla et al. 2024, section 3.1; Anthony et al. 2017).

Each round:
1. **collect**: sample K solutions for each of the round's training questions with the current policy (few-shot
   prompted while the policy is still the untouched pretrained model, zero-shot after). The questions are fresh
   every round: the next ``questions`` of one seeded shuffled pass over the train split, continuing where the
   previous round stopped, a new pass (the same order) only once the whole split was used. The paper samples the
   whole train set every round; with ``questions`` below the split's size each round still sees unused questions,
   where taking the first ``questions`` every round would re-fit the same few (``questions 0``: the whole split
   every round, as the paper);
2. **score**: grade each through the task with the chosen reward and keep the high-return ones (``sparse``:
   answer correct; ``verified``: answer and every step correct, synthetic task; ``orm``: reward model score >=
   ``orm_threshold``); count answer-correct samples with a wrong step;
3. **dedupe and accumulate**: drop repeated (question, normalised solution) pairs and build D_i = R_i U D_{i-1}
   over every round's questions;
4. **learn**: fine-tune on D_i (plus the reference solutions of the questions sampled so far with
   ``include_references``), from the start model each round (``retrain_from initial``: the paper fine-tunes its
   initial checkpoint on D_i every round, as ReST-EM does, Singh et al. 2023, against over-fitting to the
   policy's own samples; the default) or continuing from the last policy (``retrain_from last``); with
   ``--backtranslated PATH --backtranslated-ratio R``, plus round(R x that data's size) synthetic pairs that ``mathrl
   backtranslate`` made, the first of one seeded pass over the file (so each round's pairs extend the last
   round's, as D_i extends D_{i-1}; ``backtranslated.py``);
5. **evaluate** maj@1 / maj@K / pass@K on ``eval_split`` and log them against the rollouts consumed so far: every
   round, or on the log-spaced schedule (``--eval-at log``; ``plateau.py``);
6. **checkpoint**; stop at ``rounds`` (the cap: rounds x questions x K rollouts), when dev maj@1 has plateaued
   (``--stop-at-plateau`` with ``--eval-split dev``: the number of rounds set by the plateau), or when greedy
   maj@1 on ``patience_size`` **dev** problems has not improved for ``patience`` rounds (model selection never
   reads the test split).

Deviation from the paper: fine-tuning runs a set number of epochs over D_i (capped by ``max_steps``) instead of
the paper's per-round early stopping on a validation set, to keep the rollout/compute budget explicit.

Writes OUT/history.json (one record per round) and OUT/sample_complexity.png (metrics vs rollouts consumed).
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

from mathrl import checkpoint as ckpt
from mathrl.backtranslated import added_count, read_pairs, select_pairs
from mathrl.algorithms.expert_iteration_config import Config
from mathrl.compile import compiled
from mathrl.record import ModelRecord, read_record
from mathrl.evaluate import evaluate, evaluate_in_run, summarize
from mathrl.metrics import normalize_solution
from mathrl.models import final_model, load_model
from mathrl.rewards import is_user_reward, outcome_rewards
from mathrl.reward_model import load_reward_model
from mathrl.runsetup import few_shot_examples, start_run, task_for, warn_tiny_default_lr, write_record
from mathrl.runlog import RunLogger, progress, write_history
from mathrl.sampler import completion_stats, sampling_params
from mathrl.tasks import task_options
from mathrl.tasks.prompting import completion_text, prompt_record
from mathrl.plateau import stopped_at_plateau
from mathrl.rollouts import next_problems
from mathrl.rounds import evaluation_due, fine_tune_round, restore, resume_round_run, round_policy, round_total_steps, \
    save_round_run, stop_at_plateau
from mathrl.training import completion_example, make_optimizer


@dataclass
class EIState:
    """What an EI run carries across rounds and phases (saved in every checkpoint, with the RNG state and, while
    fine-tuning, the optimizer). ``phase``: collect -> learn -> evaluate, then the next round's collect."""

    round: int = 0
    phase: str = "collect"
    ft_step: int = 0
    dataset: dict = dataclasses.field(default_factory=dict)  # (question id, normalised solution) -> text: D_i
    rollouts_used: int = 0
    questions_used: int = 0  # position in the shuffled pass over the train split (next_problems)
    best: float = -1.0  # the best dev maj@1 so far (patience)
    stale: int = 0  # rounds since it improved
    history: list = dataclasses.field(default_factory=list)
    policy_is_start: bool = True  # still the start model (few-shot prompted, as recorded with it)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "dataset": [[list(k), v] for k, v in self.dataset.items()]}

    @classmethod
    def from_dict(cls, d: dict) -> "EIState":
        # a checkpoint of an earlier version has no questions_used (it sampled the same questions every round)
        st = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})
        st.dataset = {tuple(k): v for k, v in d["dataset"]}
        return st


def train(cfg: Config) -> Path:
    ctx = start_run(cfg)
    run_dir, device = ctx.dir, ctx.device
    task = task_for(cfg.model, cfg.data, cfg.prompting)
    policy, tokenizer = load_model(cfg.model, device=device, for_training=True, precision=cfg.run.precision,
                                   compute=cfg.compute)
    warn_tiny_default_lr(cfg, policy)
    policy, engine, initial_weights = round_policy(cfg, policy)  # LoRA or FSDP, the engine, the weights to restart from
    scorer = None
    if cfg.reward == "orm":
        scorer = load_reward_model(cfg.orm, tokenizer, device=device).score_texts
    start_shots = few_shot_examples(task, cfg.model, cfg.few_shot.shots, cfg.few_shot.exemplars)
    train_split = task.problems("train")
    per_round = min(cfg.questions or len(train_split), len(train_split))
    order = list(range(len(train_split)))
    random.Random(cfg.run.seed).shuffle(order)  # one seeded pass, walked round after round (next_problems)
    eval_problems = task.problems(cfg.eval.eval_split)[: cfg.eval.eval_size] if cfg.eval.eval_size else []
    # early stopping decides on dev problems, never on the test split the curves report
    dev_problems = task.problems("dev")[: cfg.patience_size] if cfg.patience else []
    pairs = read_pairs(task, cfg.backtranslation.backtranslated) if cfg.backtranslation.backtranslated else []

    st, optimizer, resumed = resume_round_run(run_dir, cfg.resume, policy, EIState(), EIState.from_dict, cfg.optim)
    logger = RunLogger(run_dir, cfg, resume_step=st.round if resumed else None)

    def save(tag: int) -> None:
        save_round_run(run_dir, tag, policy, tokenizer, st, optimizer)

    def run_eval(when: str) -> dict:
        return evaluate_in_run(policy, tokenizer, task, eval_problems, cfg.eval, cfg.sampling, engine=engine,
                               seed=cfg.run.seed, run_dir=run_dir, rollouts=st.rollouts_used, when=when,
                               shots=start_shots if st.policy_is_start else [])

    print(f"ei: {per_round} fresh questions x K={cfg.sampling.k} per round, reward {cfg.reward}, retrain from "
          f"{cfg.retrain_from}, up to {cfg.rounds} rounds, {ctx.threads} threads, {device}")
    if not st.history and eval_problems:
        # round 0: the starting policy at 0 rollouts, so metrics-vs-rollouts curves and the rollouts needed for a
        # gain are measured from where training starts (PPO evaluates its iteration 0 the same way)
        st.history.append({"round": 0, "rollouts": 0, **run_eval("before round 1 (0 rollouts)")})
        logger.log(0, **st.history[-1])
    while st.round < cfg.rounds and not stopped_at_plateau(st.history):
        if st.phase == "collect":
            # steps 1-3: collect K samples for the round's fresh questions, keep the high-return ones, add them
            # deduplicated to D_i
            questions = next_problems(train_split, order, st.questions_used, per_round)
            st.history.append(collect(cfg, task, engine, policy, tokenizer, scorer, questions,
                                      start_shots if st.policy_is_start else [], st))
            st.phase, st.ft_step, optimizer = "learn", 0, None
            if cfg.retrain_from == "initial":
                restore(policy, initial_weights)
            save(ckpt.round_tag(st.round))

        if st.phase == "learn":
            # step 4: fine-tune on D_i (from the initial checkpoint each round, or from the last policy)
            sampled = [train_split[i] for i in order[: st.questions_used]]  # every round's questions so far
            items = _items(cfg, task, train_split, sampled, st.dataset)
            added = []
            if pairs:
                # backtranslated pairs, ratio x the round's data, trained on as references are
                n = added_count(len(items), cfg.backtranslation.backtranslated_ratio)
                added = [(p, task.target(p).strip()) for p in select_pairs(pairs, n, cfg.run.seed)]
            examples = _examples(task, tokenizer, items + added, tokenizer.eos_token_id)
            total = round_total_steps(len(examples), cfg.optim, cfg.rounds_ft)
            if optimizer is None:
                optimizer = make_optimizer(policy, cfg.optim.lr, cfg.optim.weight_decay)
            t0 = time.time()
            learner = compiled(policy) if cfg.compile else policy  # the weights are policy's
            fine_tune_round(learner, optimizer, examples, cfg.optim, st, pad_id=tokenizer.pad_token_id, device=device,
                            total=total, seed=cfg.run.seed + st.round, label=f"ei round {st.round + 1}: fine-tuning",
                            checkpoint_every=cfg.rounds_ft.checkpoint_every, save=save, run_dir=run_dir)
            st.history[-1].update(train_steps=total, train_seconds=round(time.time() - t0, 1),
                                  **({"backtranslated": len(added)} if pairs else {}))
            st.policy_is_start = st.policy_is_start and total == 0
            st.phase, optimizer = "evaluate", None
            save(ckpt.round_tag(st.round, done=True))

        if st.phase == "evaluate":
            # step 5: evaluate (on the schedule), logged against rollouts consumed; step 6: early stopping on dev
            record = st.history[-1]
            plateau = False
            if eval_problems and evaluation_due(cfg.schedule, st.history, last=st.round + 1 == cfg.rounds):
                record.update(run_eval(f"after round {st.round + 1} ({st.rollouts_used} rollouts)"))
                plateau = stop_at_plateau(cfg.schedule, st.history)
            if dev_problems:
                record["dev_maj@1"] = dev_maj1(engine, policy, tokenizer, task, dev_problems, cfg,
                                               start_shots if st.policy_is_start else [])
                st.best, st.stale = (record["dev_maj@1"], 0) if record["dev_maj@1"] > st.best else (st.best,
                                                                                                  st.stale + 1)
            logger.log(st.round + 1, **{k: v for k, v in record.items() if isinstance(v, (int, float))})
            st.round, st.phase, st.ft_step = st.round + 1, "collect", 0
            save(ckpt.round_tag(st.round - 1, done=True))
            write_history(run_dir, st.history, cfg.eval.eval_k, "Expert Iteration")
            if plateau:
                break
            if cfg.patience and st.stale >= cfg.patience:
                print(f"stopping: dev maj@1 has not improved for {st.stale} rounds")
                break
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(final_model(policy, cfg.lora), tokenizer, model_dir)
    # a policy still the start model is prompted as it was (its few-shot examples); a trained one zero-shot
    start = read_record(cfg.model) if st.policy_is_start else ModelRecord()
    write_record(model_dir, ModelRecord(task=task_options(task), stage="ei", shots=start.shots,
                                        exemplars=start.exemplars, **prompt_record(task), base=cfg.model))
    engine.close()
    write_history(run_dir, st.history, cfg.eval.eval_k, "Expert Iteration")
    print(f"EI policy written to {model_dir}")
    return model_dir


def collect(cfg: Config, task, engine, policy, tokenizer, scorer, questions, shots, st: EIState) -> dict:
    """Steps 1-3 of a round: sample K solutions per question, keep those whose return passes the filter, add the
    new (question, normalised solution) pairs to ``st.dataset``; returns the round's record."""
    t0 = time.time()
    st.questions_used += len(questions)
    prompts = [task.prompt(p, shots) for p in questions]
    policy.eval()
    bar = progress(len(questions) * cfg.sampling.k, f"ei round {st.round + 1}: sampling", "sample")
    rollouts = engine.sample(policy, tokenizer, prompts, cfg.sampling.k,
                             sampling_params(cfg.sampling, task.stop_strings, seed=cfg.run.seed + 1000 * st.round),
                             keys=[p.id for p in questions], progress=bar.update)
    bar.close()
    st.rollouts_used += len(rollouts)
    sample_time = time.time() - t0
    problems = [questions[r.prompt_index] for r in rollouts]
    texts = [r.text for r in rollouts]
    returns = outcome_rewards(task, problems, texts, cfg.reward, scorer, [prompts[r.prompt_index] for r in rollouts])
    grades = [task.grade(p, t) for p, t in zip(problems, texts)]
    keep_threshold = cfg.orm_threshold if cfg.reward == "orm" or is_user_reward(cfg.reward) else 1.0
    kept = [(p, t) for p, t, ret in zip(problems, texts, returns) if ret >= keep_threshold]
    before = len(st.dataset)
    for p, t in kept:  # D_i = R_i U D_{i-1}, deduplicated
        st.dataset.setdefault((p.id, normalize_solution(t)), t)
    stats = {
        "round": st.round + 1, "rollouts": st.rollouts_used, "questions_used": st.questions_used,
        "sample_seconds": round(sample_time, 1),
        "sample_accuracy": sum(g.correct for g in grades) / len(grades),
        "questions_solved": len({p.id for p, _ in kept}) / len(questions), "kept": len(kept),
        "new_unique": len(st.dataset) - before, "dataset_size": len(st.dataset), **completion_stats(rollouts),
    }
    if grades and grades[0].steps is not None:
        correct = [g for g in grades if g.correct]
        stats["answer_correct_wrong_step"] = sum(not g.verified for g in correct)
        stats["answer_correct"] = len(correct)
    print(f"round {st.round + 1}: {len(rollouts)} samples in {sample_time:.0f}s, accuracy "
          f"{stats['sample_accuracy']:.3f}, solved {stats['questions_solved']:.3f} of questions, kept "
          f"{len(kept)}, D={len(st.dataset)}" + (f", {stats['answer_correct_wrong_step']} answer-correct samples "
                                                 f"with a wrong step" if "answer_correct" in stats else ""),
          flush=True)
    return stats


def _items(cfg: Config, task, train_split, sampled, dataset: dict) -> list:
    """(problem, solution text) pairs to fine-tune on: D_i (over every round's questions), plus with
    ``include_references`` the reference solution of each question sampled so far (``sampled``, a part of one
    pass: each once)."""
    by_id = {p.id: p for p in train_split}
    items = [(by_id[qid], text) for (qid, _), text in dataset.items()]
    if cfg.include_references:
        items += [(p, task.target(p).strip()) for p in sampled]
    return items


def dev_maj1(engine, policy, tokenizer, task, problems, cfg: Config, shots) -> float:
    """Greedy maj@1 on dev problems: what early stopping decides on."""
    policy.eval()
    results = evaluate(policy, tokenizer, task, problems, dataclasses.replace(cfg.sampling, k=0), engine=engine,
                       shots=shots, seed=cfg.run.seed)
    return summarize(results)["maj@1"]


def _examples(task, tokenizer, items, eos):
    if not items:
        return []
    texts = [task.prompt(p) for p, _ in items]
    prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    completions = tokenizer([completion_text(pt, t) for pt, (_, t) in zip(texts, items)],
                            add_special_tokens=False)["input_ids"]
    return [completion_example(p, c + [eos]) for p, c in zip(prompts, completions)]


def main(cfg: Config) -> None:
    train(cfg)
