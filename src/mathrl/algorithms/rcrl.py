"""Return-conditioned RL (RCRL): behaviour cloning on good *and* bad samples, each marked by its return.

Havrilla et al. 2024 (section 3.3), after decision-transformer-style conditioning (Brandfonbrener et al. 2022):
the policy learns p(solution | question, return) and is then asked for a high return.

Each round:
1. **collect** K solutions per training question with the current policy (conditioned on the good token after
   the first round);
2. **label** them: ``sparse``: one return token, ``[GOOD]`` if the answer is correct else ``[BAD]``, placed
   before the solution; ``dense``: a return token before every step, ``[GOOD]`` while the step is right.
   Step labels come from the exact step checker (synthetic task: a step is good before the first wrong step),
   from a SORM (``--sorm DIR``: score >= 0.5), or on GSM8K/SVAMP from matching the reference's intermediate
   results (``rewards.dense_step_rewards``);
3. **balance** (optional): ``--label-ratio balanced`` keeps as many bad samples as good ones (natural by
   default: the paper found balancing hurts);
4. **learn**: SFT-style on the labelled mix, loss on solution tokens only (never on return tokens), from the
   initial checkpoint each round;
5. **evaluate** with the good token in the prompt (dense: forced after every step too), checkpoint.

The return tokens are added to the tokenizer as special tokens (so decoded text never contains them) and the
embedding table grows by two rows. The model directory records ``condition`` in mathrl.json, so
``mathrl eval`` conditions on ``[GOOD]`` automatically.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from mathrl import distributed
from mathrl import checkpoint as ckpt
from mathrl.config import field, save as save_config
from mathrl.errors import UsageError
from mathrl.evaluate import append_question_records, evaluate, headline, summarize
from mathrl.models import load_model
from mathrl.plots import metrics_vs_x
from mathrl.rewards import dense_step_rewards
from mathrl.run import prepare_run_dir, resolve_device, write_meta
from mathrl.runlog import RunLogger, progress
from mathrl.sampler import SamplingParams, sample
from mathrl.tasks import task_options
from mathrl.training import Example, make_optimizer, rng_state, seed_everything, set_rng_state, setup_threads, \
    train_steps

GOOD, BAD = "[GOOD]", "[BAD]"


@dataclass
class Config:
    model: str = field("", "starting checkpoint (an SFT model) (required)")
    out: str = field("runs/rcrl", "run directory (the final policy is written to OUT/model)")
    task: str = field("", "task (default: the one recorded with the model)")
    level: int | None = field(None, "synthetic task level (default: the model's)")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    extract: str | None = field(None, "gsm8k/svamp answer extraction: strict or flexible")
    returns: str = field("sparse", "sparse (one return token per solution) or dense (one per step)")
    step_labels: str = field("auto", "dense: exact (synthetic step checker), sorm, reference (matched results), "
                                     "or auto (exact where the task checks steps, else reference)")
    sorm: str = field("", "SORM directory (step_labels sorm)")
    label_ratio: str = field("natural", "natural, or balanced (as many bad samples as good ones)")
    rounds: int = field(1, "rounds of collect -> label -> fine-tune")
    k: int = field(4, "samples per training question per round")
    questions: int = field(4000, "training questions per round (0: the whole train split)")
    temperature: float = field(1.0, "sampling temperature for collection")
    max_new_tokens: int = field(128, "completion length limit")
    include_references: bool = field(True, "also train on the reference solutions, marked good")
    epochs: float = field(2.0, "passes over the round's labelled data")
    max_steps: int = field(0, "cap on optimizer steps per round (0: none)")
    batch_size: int = field(32, "sequences per optimizer step")
    lr: float = field(5e-4, "peak learning rate")
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = field(20, "linear warmup steps per round")
    weight_decay: float = field(0.1, "AdamW weight decay")
    grad_clip: float = field(1.0, "gradient norm clip (0: off)")
    eval_size: int = field(500, "test problems evaluated after each round (0: none)")
    eval_k: int = field(16, "samples per test problem for maj@K / pass@K")
    eval_split: str = field("test", "split evaluated")
    fsdp: bool = field(False, "under torchrun: shard the policy over the ranks with FSDP (models too big for one "
                              "device)")
    checkpoint_every: int = field(100, "fine-tuning steps between checkpoints inside a round")
    token_budget: int = field(1 << 17, "sampler cache budget in tokens")
    seed: int = field(0, "random seed")
    threads: int = field(0, "torch threads (0: the cores this process may use)")
    device: str = field("auto", "cpu, cuda, cuda:N or auto")
    resume: bool = field(False, "continue the run in --out from its last good checkpoint")

    def validate(self) -> None:
        if not self.model:
            raise UsageError("--model is required (an SFT model directory)")
        if self.returns not in ("sparse", "dense"):
            raise UsageError("returns must be sparse or dense")
        if self.step_labels not in ("auto", "exact", "sorm", "reference"):
            raise UsageError("step_labels must be auto, exact, sorm or reference")
        if self.returns == "sparse" and self.step_labels != "auto":
            raise UsageError("--step-labels applies to --returns dense")
        if (self.step_labels == "sorm") != bool(self.sorm):
            raise UsageError("--step-labels sorm and --sorm DIR go together")
        if self.label_ratio not in ("natural", "balanced"):
            raise UsageError("label_ratio must be natural or balanced")
        for name in ("rounds", "k", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        if self.epochs <= 0 or self.lr <= 0:
            raise UsageError("epochs and lr must be > 0")


def add_return_tokens(model, tokenizer) -> tuple[int, int]:
    """Add [GOOD] / [BAD] (special: decoding skips them) and grow the embeddings; returns their ids."""
    if GOOD not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [GOOD, BAD]})
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return tokenizer.convert_tokens_to_ids(GOOD), tokenizer.convert_tokens_to_ids(BAD)


def step_labels_for(task, problem, text: str, how: str, sorm=None, prompt: str = "") -> list[bool]:
    """Whether each step of ``text`` is good, by the exact checker, a SORM, or matching the reference."""
    spans = task.step_spans(text)
    if how == "exact":
        check = task.grade(problem, text).steps
        first = check.first_error if check.first_error is not None else len(spans)
        return [j < first for j in range(len(spans))]
    if how == "sorm":
        scores = sorm.score_texts([prompt] * len(spans), [text[:end] for _, end in spans])
        return [s >= 0.5 for s in scores]
    matched = dense_step_rewards(task, problem, text)  # one entry per step result found
    return [r > 0 for r in matched] + [False] * (len(spans) - len(matched))


def labelled_example(tokenizer, prompt_ids, text: str, spans, labels, final_good: bool, good: int, bad: int,
                     eos: int, dense: bool) -> Example:
    """prompt, return token(s), solution (+ EOS); loss on solution tokens only."""
    ids, mask = list(prompt_ids), [False] * len(prompt_ids)
    if not dense:
        pieces = [(good if final_good else bad, text)]
    else:
        cuts = [0] + [end for _, end in spans] + [len(text)]
        marks = [good if ok else bad for ok in labels] + [good if final_good else bad]
        pieces = [(m, text[a:b]) for m, a, b in zip(marks, cuts[:-1], cuts[1:]) if text[a:b]]
    for mark, piece in pieces:
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids += [mark] + piece_ids
        mask += [False] + [True] * len(piece_ids)
    ids.append(eos)
    mask.append(True)
    return Example(tuple(ids), tuple(mask))


def train(cfg: Config) -> Path:
    from mathrl.commands import task_for_model

    run_dir = prepare_run_dir(cfg.out, cfg.resume)
    threads = setup_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    task = task_for_model(cfg.model, cfg.task, cfg.level, cfg.data_dir, cfg.extract)
    save_config(cfg, run_dir / "config.yaml")
    policy, tokenizer = load_model(cfg.model, device=device, for_training=True)
    good, bad = add_return_tokens(policy, tokenizer)
    if cfg.fsdp:
        distributed.shard_model(policy)  # after the return tokens resized the embeddings
    initial_weights = {k: v.detach().clone() for k, v in policy.state_dict().items()}  # this rank's shards under FSDP
    how = cfg.step_labels
    if how == "auto":
        how = "exact" if task.name == "synthetic" else "reference"
    sorm = None
    if how == "sorm":
        from mathrl.reward_model import load_reward_model

        sorm = load_reward_model(cfg.sorm, None, device=device)
    dense = cfg.returns == "dense"
    condition = {"token": GOOD, "dense": dense}
    questions = task.problems("train")[: cfg.questions or None]
    eval_problems = task.problems(cfg.eval_split)[: cfg.eval_size] if cfg.eval_size else []
    eos = tokenizer.eos_token_id

    round_, phase, ft_step, history, rollouts_used, conditioned = 0, "collect", 0, [], 0, False
    data: list[dict] = []
    optimizer = None
    last = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if last is not None:
        state = ckpt.load_state(last)
        ckpt.load_weights_into(policy, last)
        set_rng_state(state["rng"])
        round_, phase, ft_step, history = state["round"], state["phase"], state["ft_step"], state["history"]
        rollouts_used, conditioned, data = state["rollouts_used"], state["conditioned"], state["data"]
        if state.get("optimizer") is not None:
            optimizer = make_optimizer(policy, cfg.lr, cfg.weight_decay)
            distributed.load_optimizer_state(policy, optimizer, state["optimizer"])
        print(f"resumed {run_dir}: round {round_ + 1}, phase {phase}")
    logger = RunLogger(run_dir, resume_step=round_ if last is not None else None)

    def save(tag: int):
        ckpt.save_checkpoint(run_dir, tag, policy, tokenizer, {
            "round": round_, "phase": phase, "ft_step": ft_step, "history": history, "data": data,
            "rollouts_used": rollouts_used, "conditioned": conditioned, "rng": rng_state(),
            "optimizer": distributed.optimizer_state(policy, optimizer) if optimizer is not None and phase == "learn"
            else None})

    print(f"rcrl: {cfg.returns} returns ({how} step labels)" if dense else "rcrl: sparse returns",
          f"{len(questions)} questions x K={cfg.k}, {cfg.rounds} round(s), label ratio {cfg.label_ratio}, "
          f"{threads} threads, {device}")

    def run_eval(when: str, condition_on) -> dict:
        """Evaluate the policy, print its headline, return the float metrics (as PPO's ``run_eval``)."""
        policy.eval()
        results = evaluate(policy, tokenizer, task, eval_problems, k=cfg.eval_k, max_new_tokens=cfg.max_new_tokens,
                           seed=cfg.seed, token_budget=cfg.token_budget, condition=condition_on)
        metrics = summarize(results)
        if distributed.is_main():
            append_question_records(results, run_dir / "eval_questions.jsonl", rollouts=rollouts_used)
        print(f"  eval {when}: {headline(metrics)}", flush=True)
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    if not history and eval_problems:
        # round 0: the starting policy (unconditioned: it has not seen a return token yet) at 0 rollouts, so the
        # metrics-vs-rollouts curve starts where training starts
        history.append({"round": 0, "rollouts": 0, **run_eval("before round 1 (0 rollouts)", None)})
        logger.log(0, **history[-1])
    while round_ < cfg.rounds:
        tag = (round_ + 1) * 100_000
        if phase == "collect":
            # step 1: collect K samples per question (conditioned on the good token once trained)
            t0 = time.time()
            prompts = [task.prompt(p) for p in questions]
            prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
            params = dict(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                          stop_strings=task.stop_strings, seed=cfg.seed + 1000 * round_, token_budget=cfg.token_budget)
            sample_prompts = prompt_ids
            if conditioned:
                sample_prompts = [ids + [good] for ids in prompt_ids]
                if dense:
                    params.update(step_end=task.step_end, step_marker=(good,))
            policy.eval()
            bar = progress(len(questions) * cfg.k, f"rcrl round {round_ + 1}: sampling", "sample")
            rollouts = sample(policy, tokenizer, sample_prompts, cfg.k, SamplingParams(**params),
                              keys=[p.id for p in questions], progress=bar.update)
            bar.close()
            rollouts_used += len(rollouts)
            # step 2: label each sample (and each step, for dense returns)
            data = []
            for r in rollouts:
                p = questions[r.prompt_index]
                text = " " + r.text.strip()
                correct = task.grade(p, text).correct
                labels = step_labels_for(task, p, text, how, sorm, prompts[r.prompt_index]) if dense else []
                data.append({"q": r.prompt_index, "text": text, "good": correct, "steps": labels})
            if cfg.include_references:
                for i, p in enumerate(questions):
                    text = task.target(p)
                    data.append({"q": i, "text": text, "good": True,
                                 "steps": [True] * len(task.step_spans(text)) if dense else []})
            n_good = sum(d["good"] for d in data)
            # step 3: label ratio
            if cfg.label_ratio == "balanced":
                rng = random.Random(cfg.seed + round_)
                goods = [d for d in data if d["good"]]
                bads = [d for d in data if not d["good"]]
                n = min(len(goods), len(bads))
                data = rng.sample(goods, n) + rng.sample(bads, n)
            stats = {"round": round_ + 1, "rollouts": rollouts_used, "sample_seconds": round(time.time() - t0, 1),
                     "sample_accuracy": sum(task.grade(questions[r.prompt_index], r.text).correct for r in rollouts)
                     / len(rollouts), "good_fraction": n_good / len(data) if data else 0.0, "dataset_size": len(data)}
            print(f"round {round_ + 1}: {len(rollouts)} samples, accuracy {stats['sample_accuracy']:.3f}, "
                  f"training on {len(data)} labelled solutions ({stats['good_fraction']:.2f} good)", flush=True)
            history.append(stats)
            phase, ft_step, optimizer = "learn", 0, None
            policy.load_state_dict(initial_weights)
            save(tag)

        if phase == "learn":
            # step 4: fine-tune on the labelled mix (loss on solution tokens only), from the initial checkpoint
            prompt_ids = tokenizer([task.prompt(p) for p in questions], add_special_tokens=False)["input_ids"]
            examples = [labelled_example(tokenizer, prompt_ids[d["q"]], d["text"], task.step_spans(d["text"]),
                                         d["steps"], d["good"], good, bad, eos, dense) for d in data]
            total = math.ceil(math.ceil(len(examples) / cfg.batch_size) * cfg.epochs)
            if cfg.max_steps:
                total = min(total, cfg.max_steps)
            if optimizer is None:
                optimizer = make_optimizer(policy, cfg.lr, cfg.weight_decay)
            policy.train()
            bar = progress(total, f"rcrl round {round_ + 1}: fine-tuning", "step", initial=ft_step)
            try:
                for st in train_steps(policy, optimizer, examples, pad_id=tokenizer.pad_token_id, device=device,
                                      batch_size=cfg.batch_size, micro_batch_size=cfg.batch_size, total_steps=total,
                                      lr=cfg.lr, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
                                      grad_clip=cfg.grad_clip, seed=cfg.seed + round_, start_step=ft_step):
                    ft_step = st.step
                    bar.update(1)
                    if cfg.checkpoint_every and ft_step % cfg.checkpoint_every == 0 and ft_step < total:
                        save(tag + ft_step)
            except FloatingPointError as e:
                raise ckpt.divergence_error(run_dir, ft_step, str(e)) from None
            bar.close()
            conditioned, phase, optimizer = True, "evaluate", None
            save(tag + 99_999)

        if phase == "evaluate":
            # step 5: evaluate conditioned on the good return
            record = history[-1]
            if eval_problems:
                record.update(run_eval(f"after round {round_ + 1}", condition))
            logger.log(round_ + 1, **{k: v for k, v in record.items() if isinstance(v, (int, float))})
            round_, phase, ft_step = round_ + 1, "collect", 0
            save((round_ + 1) * 100_000 - 1)
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(policy, tokenizer, model_dir)
    write_meta(model_dir, task=task_options(task), stage=f"rcrl-{cfg.returns}", shots=0, base=cfg.model,
               condition=condition, label_ratio=cfg.label_ratio)
    if distributed.is_main():
        (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    keys = [k for k in ("maj@1", f"maj@{cfg.eval_k}", f"pass@{cfg.eval_k}") if any(k in h for h in history)]
    if keys:
        metrics_vs_x(history, "rollouts", keys, run_dir / "sample_complexity.png",
                     f"RCRL ({cfg.returns}): metrics vs rollouts consumed", "rollouts consumed")
    print(f"RCRL policy written to {model_dir}")
    return model_dir


def main(cfg: Config) -> None:
    train(cfg)
