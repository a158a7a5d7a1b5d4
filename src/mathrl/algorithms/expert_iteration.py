"""Expert Iteration (EI): the paper's best algorithm (Havrilla et al. 2024, section 3.1; Anthony et al. 2017).

Each round:
1. **collect**: sample K solutions for every training question with the current policy (few-shot prompted while
   the policy is still the untouched pretrained model, zero-shot after);
2. **score**: grade each through the task with the chosen reward and keep the high-return ones (``sparse``:
   answer correct; ``verified``: answer and every step correct, synthetic task; ``orm``: reward model score >=
   ``orm_threshold``); count answer-correct samples with a wrong step;
3. **dedupe and accumulate**: drop repeated (question, normalised solution) pairs and build D_i = R_i U D_{i-1};
4. **learn**: fine-tune on D_i (plus the reference solutions with ``include_references``), from the initial
   checkpoint each round (``retrain_from initial``, the ReST-EM variant of Singh et al. 2023, the paper's
   choice) or continuing from the last policy (``retrain_from last``);
5. **evaluate** maj@1 / maj@K / pass@K on the test split and log them against the rollouts consumed so far;
6. **checkpoint**; stop at ``rounds`` or when maj@1 has not improved for ``patience`` rounds.

Deviation from the paper: fine-tuning runs a set number of epochs over D_i (capped by ``max_steps``) instead of
the paper's per-round early stopping on a validation set, to keep the rollout/compute budget explicit.

Writes OUT/history.json (one record per round) and OUT/sample_complexity.png (metrics vs rollouts consumed).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from mathrl import distributed
from mathrl import checkpoint as ckpt
from mathrl.config import field, save as save_config
from mathrl.errors import UsageError
from mathrl.evaluate import append_question_records, evaluate, headline, summarize
from mathrl.metrics import normalize_solution
from mathrl.models import load_model
from mathrl.plots import metrics_vs_x
from mathrl.rewards import OUTCOME_REWARDS, outcome_rewards
from mathrl.run import prepare_run_dir, read_meta, resolve_device, write_meta
from mathrl.runlog import RunLogger, progress
from mathrl.sampler import SamplingParams, completion_stats, sample
from mathrl.tasks import task_options
from mathrl.training import completion_example, make_optimizer, rng_state, seed_everything, set_rng_state, \
    setup_threads, train_steps


@dataclass
class Config:
    model: str = field("", "starting checkpoint: an SFT model, or a pretrained one (few-shot prompted) (required)")
    out: str = field("runs/ei", "run directory (the final policy is written to OUT/model)")
    task: str = field("", "task (default: the one recorded with the model)")
    level: int | None = field(None, "synthetic task level (default: the model's)")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    extract: str | None = field(None, "gsm8k/svamp answer extraction: strict or flexible")
    rounds: int = field(3, "maximum number of rounds")
    patience: int = field(2, "stop after this many rounds without a maj@1 improvement (0: never)")
    k: int = field(4, "samples per training question per round (the paper's efficient setting is 4)")
    questions: int = field(4000, "training questions per round (0: the whole train split)")
    temperature: float = field(1.0, "sampling temperature for collection")
    max_new_tokens: int = field(128, "completion length limit")
    shots: int = field(-1, "few-shot examples while the policy is the start model (-1: as recorded with it)")
    reward: str = field("sparse", "filter: sparse (answer correct), verified (answer and steps), orm")
    orm: str = field("", "reward-model directory (reward orm)")
    orm_threshold: float = field(0.5, "keep samples whose reward-model score is at least this")
    include_references: bool = field(False, "also train on the reference solutions of the sampled questions")
    retrain_from: str = field("initial", "initial (ReST-EM: fine-tune the start model each round) or last")
    epochs: float = field(2.0, "passes over the round's dataset D_i")
    max_steps: int = field(0, "cap on optimizer steps per round (0: none)")
    batch_size: int = field(32, "sequences per optimizer step")
    micro_batch_size: int = field(0, "sequences per forward pass; smaller than batch_size accumulates gradients (0: batch_size)")
    lr: float = field(5e-4, "peak learning rate of each round's fine-tuning")
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = field(20, "linear warmup steps per round")
    weight_decay: float = field(0.1, "AdamW weight decay (matrices only)")
    grad_clip: float = field(1.0, "gradient norm clip (0: off)")
    eval_size: int = field(500, "test problems evaluated after each round (0: none)")
    eval_k: int = field(16, "samples per test problem for maj@K / pass@K")
    eval_temperature: float = field(1.0, "sampling temperature for evaluation")
    eval_split: str = field("test", "split evaluated after each round")
    fsdp: bool = field(False, "under torchrun: shard the policy over the ranks with FSDP (models too big for one "
                              "device)")
    checkpoint_every: int = field(100, "fine-tuning steps between checkpoints inside a round")
    token_budget: int = field(1 << 17, "sampler cache budget in tokens")
    seed: int = field(0, "random seed (sampling and data order)")
    threads: int = field(0, "torch threads (0: the cores this process may use)")
    device: str = field("auto", "cpu, cuda, cuda:N or auto")
    resume: bool = field(False, "continue the run in --out from its last good checkpoint")

    def validate(self) -> None:
        if not self.model:
            raise UsageError("--model is required (an SFT or pretrained model directory)")
        if self.reward not in OUTCOME_REWARDS:
            raise UsageError(f"unknown reward {self.reward!r} (known: {', '.join(OUTCOME_REWARDS)})")
        if self.reward == "orm" and not self.orm:
            raise UsageError("--reward orm needs --orm DIR")
        if self.orm and self.reward != "orm":
            raise UsageError("--orm is only used with --reward orm")
        if self.retrain_from not in ("initial", "last"):
            raise UsageError("retrain_from must be 'initial' or 'last'")
        for name in ("rounds", "k", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        if self.micro_batch_size < 0 or (self.micro_batch_size and self.batch_size % self.micro_batch_size):
            raise UsageError("batch_size must be a multiple of micro_batch_size")
        if self.epochs <= 0 or self.lr <= 0:
            raise UsageError("epochs and lr must be > 0")
        if min(self.patience, self.questions, self.eval_size, self.eval_k, self.max_steps) < 0:
            raise UsageError("patience, questions, eval_size, eval_k and max_steps must be >= 0")


def train(cfg: Config) -> Path:
    from mathrl.commands import few_shot_examples, task_for_model

    run_dir = prepare_run_dir(cfg.out, cfg.resume)
    threads = setup_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    task = task_for_model(cfg.model, cfg.task, cfg.level, cfg.data_dir, cfg.extract)
    save_config(cfg, run_dir / "config.yaml")
    policy, tokenizer = load_model(cfg.model, device=device, for_training=True)
    if cfg.fsdp:
        distributed.shard_model(policy)
    initial_weights = {k: v.detach().clone() for k, v in policy.state_dict().items()}  # this rank's shards under FSDP
    scorer = None
    if cfg.reward == "orm":
        from mathrl.reward_model import load_reward_model

        scorer = load_reward_model(cfg.orm, tokenizer, device=device).score_texts
    start_shots = few_shot_examples(task, cfg.model, cfg.shots)

    questions = task.problems("train")
    if cfg.questions:
        questions = questions[: cfg.questions]
    eval_problems = task.problems(cfg.eval_split)[: cfg.eval_size] if cfg.eval_size else []
    by_id = {p.id: p for p in questions}
    eos = tokenizer.eos_token_id

    # state carried across rounds (and saved in every checkpoint)
    round_, phase, ft_step = 0, "collect", 0
    dataset: dict[tuple[str, str], str] = {}  # (question id, normalised solution) -> solution text: D_i
    rollouts_used, best, stale, history, policy_is_start = 0, -1.0, 0, [], True
    optimizer = None
    last = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if last is not None:
        state = ckpt.load_state(last)
        ckpt.load_weights_into(policy, last)
        set_rng_state(state["rng"])
        round_, phase, ft_step = state["round"], state["phase"], state["ft_step"]
        dataset = {tuple(k): v for k, v in state["dataset"]}
        rollouts_used, best, stale = state["rollouts_used"], state["best"], state["stale"]
        history, policy_is_start = state["history"], state["policy_is_start"]
        if state.get("optimizer") is not None:
            optimizer = make_optimizer(policy, cfg.lr, cfg.weight_decay)
            distributed.load_optimizer_state(policy, optimizer, state["optimizer"])
        print(f"resumed {run_dir}: round {round_ + 1}, phase {phase}, fine-tuning step {ft_step}")
    logger = RunLogger(run_dir, resume_step=round_ if last is not None else None)

    def save(step_tag: int):
        ckpt.save_checkpoint(run_dir, step_tag, policy, tokenizer, {
            "round": round_, "phase": phase, "ft_step": ft_step, "dataset": [[list(k), v] for k, v in dataset.items()],
            "rollouts_used": rollouts_used, "best": best, "stale": stale, "history": history,
            "policy_is_start": policy_is_start, "rng": rng_state(),
            "optimizer": distributed.optimizer_state(policy, optimizer) if optimizer is not None and phase == "learn"
            else None})

    def run_eval(when: str) -> dict:
        """Evaluate the policy, print its headline, return the float metrics (as PPO's ``run_eval``)."""
        policy.eval()
        results = evaluate(policy, tokenizer, task, eval_problems, k=cfg.eval_k, temperature=cfg.eval_temperature,
                           max_new_tokens=cfg.max_new_tokens, shots=start_shots if policy_is_start else [],
                           seed=cfg.seed, token_budget=cfg.token_budget)
        metrics = summarize(results)
        if distributed.is_main():
            append_question_records(results, run_dir / "eval_questions.jsonl", rollouts=rollouts_used)
        print(f"  eval {when}: {headline(metrics)}", flush=True)
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    print(f"ei: {len(questions)} questions x K={cfg.k} per round, reward {cfg.reward}, retrain from "
          f"{cfg.retrain_from}, up to {cfg.rounds} rounds, {threads} threads, {device}")
    if not history and eval_problems:
        # round 0: the starting policy at 0 rollouts, so metrics-vs-rollouts curves and the rollouts needed for a
        # gain are measured from where training starts (PPO evaluates its iteration 0 the same way)
        history.append({"round": 0, "rollouts": 0, **run_eval("before round 1 (0 rollouts)")})
        logger.log(0, **history[-1])
    while round_ < cfg.rounds:
        tag = (round_ + 1) * 100_000  # checkpoint step numbers: round * 100000 + fine-tuning step
        if phase == "collect":
            # step 1: collect K samples per training question with the current policy
            t0 = time.time()
            shots = start_shots if policy_is_start else []
            prompts = [task.prompt(p, shots) for p in questions]
            policy.eval()
            bar = progress(len(questions) * cfg.k, f"ei round {round_ + 1}: sampling", "sample")
            rollouts = sample(policy, tokenizer, prompts, cfg.k, SamplingParams(
                temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, stop_strings=task.stop_strings,
                seed=cfg.seed + 1000 * round_, token_budget=cfg.token_budget), keys=[p.id for p in questions],
                progress=bar.update)
            bar.close()
            rollouts_used += len(rollouts)
            sample_time = time.time() - t0
            # step 2: score through the task and keep the high-return samples
            problems = [questions[r.prompt_index] for r in rollouts]
            texts = [r.text for r in rollouts]
            returns = outcome_rewards(task, problems, texts, cfg.reward, scorer,
                                      [prompts[r.prompt_index] for r in rollouts])
            grades = [task.grade(p, t) for p, t in zip(problems, texts)]
            keep_threshold = cfg.orm_threshold if cfg.reward == "orm" else 1.0
            kept = [(p, t) for p, t, ret in zip(problems, texts, returns) if ret >= keep_threshold]
            solved = {p.id for p, _ in kept}
            # step 3: deduplicate (question, normalised solution) and accumulate D_i = R_i U D_{i-1}
            before = len(dataset)
            for p, t in kept:
                dataset.setdefault((p.id, normalize_solution(t)), t)
            stats = {
                "round": round_ + 1, "rollouts": rollouts_used, "sample_seconds": round(sample_time, 1),
                "sample_accuracy": sum(g.correct for g in grades) / len(grades),
                "questions_solved": len(solved) / len(questions), "kept": len(kept),
                "new_unique": len(dataset) - before, "dataset_size": len(dataset), **completion_stats(rollouts),
            }
            if grades and grades[0].steps is not None:
                correct = [g for g in grades if g.correct]
                stats["answer_correct_wrong_step"] = sum(not g.verified for g in correct)
                stats["answer_correct"] = len(correct)
            print(f"round {round_ + 1}: {len(rollouts)} samples in {sample_time:.0f}s, accuracy "
                  f"{stats['sample_accuracy']:.3f}, solved {stats['questions_solved']:.3f} of questions, kept "
                  f"{len(kept)}, D={len(dataset)}" + (f", {stats['answer_correct_wrong_step']} answer-correct samples "
                                                      f"with a wrong step" if "answer_correct" in stats else ""),
                  flush=True)
            history.append(stats)
            phase, ft_step, optimizer = "learn", 0, None
            if cfg.retrain_from == "initial":
                policy.load_state_dict(initial_weights)
            save(tag)

        if phase == "learn":
            # step 4: fine-tune on D_i (from the initial checkpoint each round, or from the last policy)
            items = [(by_id[qid], text) for (qid, _), text in dataset.items() if qid in by_id]
            if cfg.include_references:
                items += [(p, task.target(p).strip()) for p in questions]
            examples = _examples(task, tokenizer, items, eos)
            per_epoch = math.ceil(len(examples) / cfg.batch_size) if examples else 0
            total = math.ceil(per_epoch * cfg.epochs)
            if cfg.max_steps:
                total = min(total, cfg.max_steps)
            if optimizer is None:
                optimizer = make_optimizer(policy, cfg.lr, cfg.weight_decay)
            policy.train()
            t0 = time.time()
            bar = progress(total, f"ei round {round_ + 1}: fine-tuning", "step", initial=ft_step)
            try:
                for st in train_steps(policy, optimizer, examples, pad_id=tokenizer.pad_token_id, device=device,
                                      batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size or cfg.batch_size,
                                      total_steps=total, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                                      min_lr_ratio=cfg.min_lr_ratio, grad_clip=cfg.grad_clip,
                                      seed=cfg.seed + round_, start_step=ft_step):
                    ft_step = st.step
                    bar.update(1)
                    bar.set_postfix(loss=f"{st.loss:.3f}")
                    if cfg.checkpoint_every and ft_step % cfg.checkpoint_every == 0 and ft_step < total:
                        save(tag + ft_step)
            except FloatingPointError as e:
                raise ckpt.divergence_error(run_dir, ft_step, str(e)) from None
            bar.close()
            history[-1]["train_steps"] = total
            history[-1]["train_seconds"] = round(time.time() - t0, 1)
            if total > 0:
                policy_is_start = False
            phase, optimizer = "evaluate", None
            save(tag + 99_999)

        if phase == "evaluate":
            # step 5: evaluate on the test split; log against rollouts consumed
            record = history[-1]
            if eval_problems:
                record.update(run_eval(f"after round {round_ + 1} ({rollouts_used} rollouts)"))
            logger.log(round_ + 1, **{k: v for k, v in record.items() if isinstance(v, (int, float))})
            # step 6: early stopping on maj@1
            score = record.get("maj@1", -1.0)
            if score > best:
                best, stale = score, 0
            else:
                stale += 1
            round_, phase, ft_step = round_ + 1, "collect", 0
            save((round_ + 1) * 100_000 - 1)
            _write_history(run_dir, history, cfg.eval_k)
            if cfg.patience and stale >= cfg.patience:
                print(f"stopping: maj@1 has not improved for {stale} rounds")
                break
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(policy, tokenizer, model_dir)
    meta = read_meta(cfg.model)
    write_meta(model_dir, task=task_options(task), stage="ei", shots=meta.get("shots", 0) if policy_is_start else 0,
               base=cfg.model)
    _write_history(run_dir, history, cfg.eval_k)
    print(f"EI policy written to {model_dir}")
    return model_dir


def _examples(task, tokenizer, items, eos):
    if not items:
        return []
    prompts = tokenizer([task.prompt(p) for p, _ in items], add_special_tokens=False)["input_ids"]
    completions = tokenizer([" " + t.strip() for _, t in items], add_special_tokens=False)["input_ids"]
    return [completion_example(p, c + [eos]) for p, c in zip(prompts, completions)]


def _write_history(run_dir: Path, history: list, k: int) -> None:
    if not distributed.is_main():
        return
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    keys = [key for key in ("maj@1", f"maj@{k}", f"pass@{k}", "maj@1_verified", f"pass@{k}_verified")
            if any(key in h for h in history)]
    if keys:
        metrics_vs_x(history, "rollouts", keys, run_dir / "sample_complexity.png",
                     "Expert Iteration: metrics vs rollouts consumed", "rollouts consumed (training samples)")


def main(cfg: Config) -> None:
    train(cfg)
