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
5. **evaluate** with the good token in the prompt (dense: forced after every step too): every round, or on the
   log-spaced schedule (``--eval-at log``), stopping when dev maj@1 has plateaued (``--stop-at-plateau``;
   ``plateau.py``); checkpoint.

The return tokens are added to the tokenizer as special tokens (so decoded text never contains them) and the
embedding table grows by two rows. The model directory records ``condition`` in mathrl.json, so
``mathrl eval`` conditions on ``[GOOD]`` automatically.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mathrl import checkpoint as ckpt
from mathrl.algorithms.rcrl_config import Config
from mathrl.compile import compiled
from mathrl.record import ModelRecord
from mathrl.evaluate import evaluate_in_run
from mathrl.models import final_model, load_model
from mathrl.rewards import dense_step_rewards, outcome_rewards
from mathrl.reward_model import load_reward_model
from mathrl.runsetup import start_run, task_for, warn_tiny_default_lr, write_record
from mathrl.runlog import RunLogger, progress, write_history
from mathrl.sampler import sampling_params
from mathrl.tasks import task_options
from mathrl.tasks.prompting import completion_text, prompt_record
from mathrl.plateau import stopped_at_plateau
from mathrl.rounds import evaluation_due, fine_tune_round, restore, resume_round_run, round_policy, round_total_steps, \
    save_round_run, stop_at_plateau
from mathrl.training import Example, make_optimizer

GOOD, BAD = "[GOOD]", "[BAD]"


def add_return_tokens(model, tokenizer) -> tuple[int, int]:
    """Add [GOOD] / [BAD] (special: decoding skips them) and grow the embeddings; returns their ids.

    New rows start near the mean of the trained ones (``mean_resizing``: a new token's embedding is then like an
    average token's, not a random vector that shifts every logit). A checkpoint whose table is padded beyond its
    tokenizer (Qwen: 151,936 rows for 151,665 tokens) already has rows for the new ids, never trained: resizing
    would shrink the table and leave them as they are, so they get the trained rows' mean instead and the table
    keeps its size."""
    if GOOD not in tokenizer.get_vocab():
        trained = len(tokenizer)
        tokenizer.add_special_tokens({"additional_special_tokens": [GOOD, BAD]})
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        else:
            with torch.no_grad():
                tables = (model.get_input_embeddings(), model.get_output_embeddings())
                weights = {id(t.weight): t.weight for t in tables if t is not None}  # one when the two are tied
                for weight in weights.values():
                    weight[trained:len(tokenizer)] = weight[:trained].mean(0)
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


@dataclass
class Labelled:
    """One training solution and its returns: ``good`` (the answer is right) and, for dense returns, one label
    per step. ``q``: the index of its question in the round's questions."""

    q: int
    text: str
    good: bool
    steps: list[bool]


@dataclass
class RCRLState:
    """What an RCRL run carries across rounds and phases (saved in every checkpoint, with the RNG state and,
    while fine-tuning, the optimizer). ``phase``: collect -> learn -> evaluate, then the next round's collect."""

    round: int = 0
    phase: str = "collect"
    ft_step: int = 0
    history: list = dataclasses.field(default_factory=list)
    rollouts_used: int = 0
    conditioned: bool = False  # the policy has been trained on return tokens (sample it with [GOOD])
    data: list[Labelled] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RCRLState":
        st = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})
        st.data = [Labelled(**x) for x in d["data"]]
        return st


def train(cfg: Config) -> Path:
    ctx = start_run(cfg)
    run_dir, device = ctx.dir, ctx.device
    task = task_for(cfg.model, cfg.data, cfg.prompting)
    policy, tokenizer = load_model(cfg.model, device=device, for_training=True, precision=cfg.run.precision,
                                   compute=cfg.compute)
    warn_tiny_default_lr(cfg, policy)
    good, bad = add_return_tokens(policy, tokenizer)
    # then LoRA (the return tokens' embeddings train in full) or FSDP, the engine, the weights to restart from
    policy, engine, initial_weights = round_policy(cfg, policy, trainable_tokens=(good, bad))
    how = cfg.step_labels
    if how == "auto":
        how = "exact" if task.name == "synthetic" else "reference"
    sorm = None
    if how == "sorm":
        sorm = load_reward_model(cfg.sorm, None, device=device)
    dense = cfg.returns == "dense"
    condition = {"token": GOOD, "dense": dense}
    questions = task.problems("train")[: cfg.questions or None]
    eval_problems = task.problems(cfg.eval.eval_split)[: cfg.eval.eval_size] if cfg.eval.eval_size else []

    st, optimizer, resumed = resume_round_run(run_dir, cfg.resume, policy, RCRLState(), RCRLState.from_dict,
                                              cfg.optim)
    logger = RunLogger(run_dir, cfg, resume_step=st.round if resumed else None)

    def save(tag: int) -> None:
        save_round_run(run_dir, tag, policy, tokenizer, st, optimizer)

    def run_eval(when: str, condition_on) -> dict:
        return evaluate_in_run(policy, tokenizer, task, eval_problems, cfg.eval, cfg.sampling, engine=engine,
                               seed=cfg.run.seed, run_dir=run_dir, rollouts=st.rollouts_used, when=when,
                               condition=condition_on)

    print(f"rcrl: {cfg.returns} returns ({how} step labels)" if dense else "rcrl: sparse returns",
          f"{len(questions)} questions x K={cfg.sampling.k}, {cfg.rounds} round(s), label ratio {cfg.label_ratio}, "
          f"{ctx.threads} threads, {device}")
    if not st.history and eval_problems:
        # round 0: the starting policy (unconditioned: it has not seen a return token yet) at 0 rollouts, so the
        # metrics-vs-rollouts curve starts where training starts
        st.history.append({"round": 0, "rollouts": 0, **run_eval("before round 1 (0 rollouts)", None)})
        logger.log(0, **st.history[-1])
    while st.round < cfg.rounds and not stopped_at_plateau(st.history):
        if st.phase == "collect":
            # steps 1-3: collect K samples per question (conditioned on the good token once trained), label them
            # (and each step, for dense returns), balance the labels if asked
            st.history.append(collect(cfg, task, engine, policy, tokenizer, questions, good, how, sorm, st))
            st.phase, st.ft_step, optimizer = "learn", 0, None
            restore(policy, initial_weights)
            save(ckpt.round_tag(st.round))

        if st.phase == "learn":
            # step 4: fine-tune on the labelled mix (loss on solution tokens only), from the initial checkpoint
            prompt_ids = tokenizer([task.prompt(p) for p in questions], add_special_tokens=False)["input_ids"]
            examples = [labelled_example(tokenizer, prompt_ids[d.q], d.text, task.step_spans(d.text), d.steps, d.good,
                                         good, bad, tokenizer.eos_token_id, dense) for d in st.data]
            total = round_total_steps(len(examples), cfg.optim, cfg.rounds_ft)
            if optimizer is None:
                optimizer = make_optimizer(policy, cfg.optim.lr, cfg.optim.weight_decay)
            learner = compiled(policy) if cfg.compile else policy  # the weights are policy's
            fine_tune_round(learner, optimizer, examples, cfg.optim, st, pad_id=tokenizer.pad_token_id, device=device,
                            total=total, seed=cfg.run.seed + st.round, label=f"rcrl round {st.round + 1}: fine-tuning",
                            checkpoint_every=cfg.rounds_ft.checkpoint_every, save=save, run_dir=run_dir)
            st.conditioned, st.phase, optimizer = True, "evaluate", None
            save(ckpt.round_tag(st.round, done=True))

        if st.phase == "evaluate":
            # step 5: evaluate conditioned on the good return
            record = st.history[-1]
            plateau = False
            if eval_problems and evaluation_due(cfg.schedule, st.history, last=st.round + 1 == cfg.rounds):
                record.update(run_eval(f"after round {st.round + 1}", condition))
                plateau = stop_at_plateau(cfg.schedule, st.history)
            logger.log(st.round + 1, **{k: v for k, v in record.items() if isinstance(v, (int, float))})
            st.round, st.phase, st.ft_step = st.round + 1, "collect", 0
            save(ckpt.round_tag(st.round - 1, done=True))
            if plateau:
                break
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(final_model(policy, cfg.lora), tokenizer, model_dir)
    write_record(model_dir, ModelRecord(task=task_options(task), stage=f"rcrl-{cfg.returns}", shots=0,
                                        **prompt_record(task), base=cfg.model, condition=condition,
                                        label_ratio=cfg.label_ratio))
    engine.close()
    write_history(run_dir, st.history, cfg.eval.eval_k, f"RCRL ({cfg.returns})")
    print(f"RCRL policy written to {model_dir}")
    return model_dir


def collect(cfg: Config, task, engine, policy, tokenizer, questions, good: int, how: str, sorm, st: RCRLState) -> dict:
    """Steps 1-3 of a round: sample, label (``st.data``), balance; returns the round's record."""
    t0 = time.time()
    dense = cfg.returns == "dense"
    prompts = [task.prompt(p) for p in questions]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    fields = dict(seed=cfg.run.seed + 1000 * st.round)
    sample_prompts = prompt_ids
    if st.conditioned:
        sample_prompts = [ids + [good] for ids in prompt_ids]
        if dense:
            fields.update(step_end=task.step_end, step_marker=(good,))
    policy.eval()
    bar = progress(len(questions) * cfg.sampling.k, f"rcrl round {st.round + 1}: sampling", "sample")
    rollouts = engine.sample(policy, tokenizer, sample_prompts, cfg.sampling.k,
                             sampling_params(cfg.sampling, task.stop_strings, **fields), keys=[p.id for p in questions],
                             progress=bar.update)
    bar.close()
    st.rollouts_used += len(rollouts)
    texts = [completion_text(prompts[r.prompt_index], r.text) for r in rollouts]
    problems = [questions[r.prompt_index] for r in rollouts]
    # the final return mark: the task's grade (sparse), or the user's reward at 0.5
    goods = [r >= 0.5 for r in outcome_rewards(task, problems, texts, cfg.reward, None,
                                                [prompts[r.prompt_index] for r in rollouts])]
    data = []
    for r, p, text, good in zip(rollouts, problems, texts, goods):
        labels = step_labels_for(task, p, text, how, sorm, prompts[r.prompt_index]) if dense else []
        data.append(Labelled(r.prompt_index, text, good, labels))
    if cfg.include_references:
        for i, p in enumerate(questions):
            text = task.target(p)
            data.append(Labelled(i, text, True, [True] * len(task.step_spans(text)) if dense else []))
    # the natural ratio, before any balancing: what the study's F8 reads (balancing is a change only where it is
    # far from 1:1)
    n_good, n_labelled = sum(d.good for d in data), len(data)
    if cfg.label_ratio == "balanced":
        rng = random.Random(cfg.run.seed + st.round)
        goods, bads = [d for d in data if d.good], [d for d in data if not d.good]
        n = min(len(goods), len(bads))
        data = rng.sample(goods, n) + rng.sample(bads, n)
    st.data = data
    stats = {"round": st.round + 1, "rollouts": st.rollouts_used, "sample_seconds": round(time.time() - t0, 1),
             "sample_accuracy": sum(task.grade(questions[r.prompt_index], r.text).correct for r in rollouts)
             / len(rollouts), "good_fraction": n_good / n_labelled if n_labelled else 0.0, "dataset_size": len(data)}
    before = " before balancing" if cfg.label_ratio == "balanced" else ""
    print(f"round {st.round + 1}: {len(rollouts)} samples, accuracy {stats['sample_accuracy']:.3f}, "
          f"training on {len(data)} labelled solutions ({stats['good_fraction']:.2f} good{before})", flush=True)
    return stats


def main(cfg: Config) -> None:
    train(cfg)
