"""The setup and bookkeeping that the two policy-gradient loops share (``algorithms/ppo.py``, ``algorithms/grpo.py``),
as plain functions each loop calls in its own ``train()``: the policy and its frozen reference (``load_policy``),
what a run draws from and evaluates on (``run_inputs``), resuming (``resume_checkpoint``), the in-run evaluation
(``evaluate_policy``), the divergence guard on the KL (``sequence_kl``, ``check_kl``), the learning-rate schedule
of the learning step (``planned_steps``, ``schedule_lr``), checkpoints (``save_iteration``) and the final model
(``write_policy``). The stages of an iteration (collect, score, the passes without gradient, the optimizer step)
are ``rollouts.py``; the settings both loops take are ``algorithms/policy_gradient_config.py``. When the in-run
evaluation runs and whether the run stops there: ``evaluation_due``, ``stop_at_plateau`` (``plateau.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from mathrl import checkpoint as ckpt
from mathrl import distributed, plr
from mathrl.compile import compiled
from mathrl.errors import UsageError
from mathrl.evaluate import evaluate_in_run
from mathrl.models import apply_lora, disable_dropout, final_model, load_model
from mathrl.plateau import log_point_crossed, mark_plateau
from mathrl.record import ModelRecord, read_record
from mathrl.reward_model import load_reward_model
from mathrl.rollouts import next_problems
from mathrl.runlog import write_history
from mathrl.runsetup import few_shot_examples, warn_tiny_default_lr, write_record
from mathrl.seeds import rng_state, set_rng_state
from mathrl.tasks import task_options
from mathrl.tasks.prompting import prompt_record
from mathrl.training import lr_at, set_lr


def load_policy(cfg, device: str, with_reference: bool):
    """(policy, reference or None, tokenizer): the start model ``cfg.model`` ready to train (LoRA adapters, or FSDP
    shards before the optimizer sees the parameters) and, ``with_reference`` (a KL term), a frozen copy of it. With
    LoRA the reference is the policy with its adapters disabled (``rollouts.reference_logprobs``): None here, and
    no copy in memory; without a KL term there is no reference and no extra pass. With --compile the copy is
    compiled (``compile.compiled``)."""
    policy, tokenizer = load_model(cfg.model, device=device, for_training=True, precision=cfg.run.precision,
                                   compute=cfg.compute)
    warn_tiny_default_lr(cfg, policy)
    reference = None
    if cfg.lora.lora_rank:
        policy = apply_lora(policy, cfg.lora, cfg.model)
    disable_dropout(policy)  # the learner's passes must compute the sampler's pi_old (models.disable_dropout)
    if with_reference and not cfg.lora.lora_rank:
        reference = copy.deepcopy(policy).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        if cfg.compile:  # it only runs passes over packed rollouts (the policy's are compiled by the loop)
            reference = compiled(reference)
    if cfg.fsdp:
        distributed.shard_model(policy)
        if reference is not None:
            distributed.shard_model(reference)
            # the frozen reference has no backward pass, where FSDP would reshard its root (embeddings, head)
            reference.set_reshard_after_forward(True, recurse=False)
    return policy, reference, tokenizer


@dataclass(frozen=True)
class Inputs:
    """What a run draws from and evaluates on, fixed for the run: the train ``questions`` walked in one shuffled
    ``order`` (``rollouts.next_problems``), the few-shot ``shots`` of every prompt, the ``eval_problems`` of the
    in-run evaluations, and the reward model ``orm`` (``--reward orm``; else None)."""

    questions: list
    order: list[int]
    shots: list
    eval_problems: list
    orm: object | None


def run_inputs(cfg, task, tokenizer, device) -> Inputs:
    orm = load_reward_model(cfg.scoring.orm, tokenizer, device=device) if cfg.scoring.reward == "orm" else None
    shots = few_shot_examples(task, cfg.model, cfg.few_shot.shots, cfg.few_shot.exemplars)
    questions = task.problems("train")
    eval_problems = task.problems(cfg.eval.eval_split)[: cfg.eval.eval_size] if cfg.eval.eval_size else []
    order = list(range(len(questions)))
    random.Random(cfg.run.seed).shuffle(order)
    return Inputs(questions, order, shots, eval_problems, orm)


def resume_checkpoint(run_dir: Path, resume: bool, policy, trained, optimizer, fresh, prompts: int):
    """(state, saved): with ``resume``, the last good checkpoint in ``run_dir`` read back (``saved``, the dict
    ``save_iteration`` wrote) and its loop state as an instance of ``fresh``'s dataclass, with the policy's weights
    (with LoRA the adapters: the base weights are the start model's), the optimizer's state over ``trained`` (the
    modules it steps) and the RNG state restored; else (``fresh``, None). A checkpoint written before
    ``prompts_used`` existed drew ``prompts`` per iteration, and one written before ``plr`` existed is a uniform
    run's; one written before another field of the state existed (``backtrack_j``) resumes it at ``fresh``'s value;
    keys the state does not have (the constant ``kl_coef`` that GRPO checkpoints of the single PPO/GRPO loop of
    earlier versions recorded) are left out. A checkpoint of the other ``--question-sampling`` is refused."""
    last = ckpt.latest_checkpoint(run_dir) if resume else None
    if last is None:
        return fresh, None
    saved = ckpt.load_state(last)
    ckpt.load_weights_into(policy, last)
    distributed.load_optimizer_state(trained, optimizer, saved["optimizer"])
    set_rng_state(saved["rng"])
    d = {"prompts_used": saved["iteration"] * prompts, "plr": None, **saved}
    # a field missing from an older checkpoint takes fresh's value; a state dataclass held by the loop state (the
    # PLR sampler's) was saved as a dict: rebuilt as its type
    d = {f.name: d.get(f.name, getattr(fresh, f.name)) for f in dataclasses.fields(fresh)}
    st = type(fresh)(**{f.name: type(getattr(fresh, f.name))(**d[f.name])
                        if dataclasses.is_dataclass(getattr(fresh, f.name)) and isinstance(d[f.name], dict)
                        else d[f.name] for f in dataclasses.fields(fresh)})
    if (st.plr is None) != (fresh.plr is None):
        written = "uniform" if st.plr is None else "plr"
        raise UsageError(f"--resume: {run_dir} was written with --question-sampling {written}; resume it with the same")
    print(f"resumed {run_dir} at iteration {st.iteration}")
    return st, saved


def fresh_plr(cfg) -> plr.PLRState | None:
    """The PLR sampler's state at the start of a run (``--question-sampling plr``), else None."""
    return plr.PLRState() if cfg.curriculum.plr else None


def draw_questions(cfg, inputs: Inputs, st, n: int) -> tuple[list, dict]:
    """(problems, record): the next ``n`` train questions of the run, and what the history logs of the draw.
    Uniform: the next ones of the shuffled pass (``rollouts.next_problems`` from ``st.prompts_used``). PLR: from
    the sampler's state ``st.plr`` (``plr.draw``: unseen ones in the same pass order, replayed ones from
    P_replay), seeded by the run's seed and the iteration, so a resumed run draws the same. Both log how many
    questions of each difficulty level were drawn (``plr_draws_level_<d>``), so that their curricula compare."""
    if st.plr is None:
        problems = next_problems(inputs.questions, inputs.order, st.prompts_used, n)
        record = {}
    else:
        if len(inputs.order) < n:
            raise UsageError(f"--question-sampling plr: the train split has {len(inputs.order)} questions, fewer "
                             f"than one iteration draws ({n}): PLR replays only questions it has scored")
        c = cfg.curriculum
        # min_seen: one iteration's questions, so the first iteration draws unseen ones only (plr.py)
        got = plr.draw(st.plr, n, [inputs.questions[i].id for i in inputs.order],
                       random.Random(f"plr/{cfg.run.seed}/{st.iteration}"), beta=c.plr_temperature,
                       rho=c.plr_staleness, replay_prob=c.plr_replay_prob, min_seen=cfg.pg.prompts)
        by_id = {p.id: p for p in inputs.questions}
        problems = [by_id[i] for i in got.ids]
        record = {"plr_replayed": sum(got.replayed)}
    levels = sorted({p.difficulty for p in inputs.questions})
    return problems, {**record, **plr.draws_by_level(levels, [p.difficulty for p in problems])}


def update_plr(cfg, st, task, problems: list, rollouts: list, advantages: torch.Tensor,
               action_mask: torch.Tensor, prefixes: tuple[str, ...]) -> dict:
    """Score each question of ``problems`` from its group in ``rollouts`` (K per problem, by problem) and record
    the scores in ``st.plr`` (``plr.update``); the history's summary of the scores. ``--plr-score p1mp``: p(1-p)
    of the group's pass rate, graded by the task on the whole solution (``prefixes[i]``, the reference steps
    --backtrack revealed to problem i, + the completion, as ``rollouts.score`` grades it); ``abs-advantage``: the
    group's mean |advantage| (N, C) over each sample's ``action_mask`` tokens. Nothing without PLR."""
    if st.plr is None:
        return {}
    groups = [[j for j, r in enumerate(rollouts) if r.prompt_index == g] for g in range(len(problems))]
    if cfg.curriculum.plr_score == "p1mp":
        passed = [task.grade(problems[r.prompt_index], prefixes[r.prompt_index] + r.text).correct for r in rollouts]
        scores = [plr.p1mp_score([passed[j] for j in rows]) for rows in groups]
    else:
        mask = action_mask.to(advantages.dtype)
        per_row = ((advantages.detach().abs() * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
        scores = [plr.abs_advantage_score([per_row[j] for j in rows]) for rows in groups]
    plr.update(st.plr, [p.id for p in problems], scores)
    return plr.score_summary(st.plr)


def evaluate_policy(cfg, policy, tokenizer, task, engine, inputs: Inputs, run_dir: Path, iteration: int,
                    rollouts: int) -> dict:
    """The in-run evaluation after ``iteration`` iterations (``rollouts`` drawn so far): its float metrics."""
    return evaluate_in_run(policy, tokenizer, task, inputs.eval_problems, cfg.eval, cfg.sampling, engine=engine,
                           seed=cfg.run.seed, run_dir=run_dir, rollouts=rollouts, shots=inputs.shots,
                           when=f"at iteration {iteration} ({rollouts} rollouts)")


def evaluation_due(cfg, inputs: Inputs, st, last: bool) -> bool:
    """Whether the iteration that just ended (``st``: the loop state, its record not yet in ``st.history``) ends
    with an evaluation: after the last, and besides, with ``--eval-at every``, every ``eval_every`` iterations, with
    ``--eval-at log`` when its rollouts passed a point of the log schedule (``plateau.log_point_crossed``)."""
    if not inputs.eval_problems:
        return False
    if cfg.schedule.eval_at == "log":
        before = st.history[-1]["rollouts"] if st.history else 0
        return last or log_point_crossed(cfg.schedule.eval_first, before, st.rollouts_used)
    return last or bool(cfg.pg.eval_every and st.iteration % cfg.pg.eval_every == 0)


def stop_at_plateau(cfg, history: list, record: dict) -> bool:
    """With ``--stop-at-plateau``, whether the dev curve of ``history`` and the just evaluated ``record`` has
    plateaued (``plateau.mark_plateau``: ``record`` gets ``plateau_at``); the run stops after this iteration."""
    if not cfg.schedule.stop_at_plateau or not mark_plateau([*history, record], cfg.schedule.plateau_margin,
                                                                cfg.schedule.plateau_min):
        return False
    print(f"stopping: dev maj@1 has plateaued at {record['rollouts']} rollouts", flush=True)
    return True


def sequence_kl(old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, action_mask: torch.Tensor) -> float:
    """The mean over rollouts of the k1 KL estimate log pi_old - log pi_ref summed over each completion (N, C)
    (NaN without a reference)."""
    if ref_logprobs is None:
        return float("nan")
    return float(torch.where(action_mask, old_logprobs - ref_logprobs, 0.0).sum(-1).mean())


def check_kl(run_dir: Path, iteration: int, kl_seq: float, bound: float) -> None:
    """Stop the run (divergence; the last good checkpoint is kept) when the KL per sequence is not finite or
    exceeds ``bound``."""
    if not math.isfinite(kl_seq) or kl_seq > bound:
        raise ckpt.divergence_error(run_dir, iteration, f"KL to the reference reached {kl_seq:.2f} > "
                                                        f"kl_bound {bound}")


def planned_steps(cfg) -> int:
    """The learning-rate schedule's length: every optimizer step the run plans (``ppo_epochs`` passes over each
    iteration's ``prompts`` x K rollouts in minibatches of ``batch_size``; skipped minibatches included)."""
    per_pass = max(1, math.ceil(cfg.pg.prompts * cfg.sampling.k / cfg.optim.batch_size))
    return cfg.pg.iterations * cfg.pg.ppo_epochs * per_pass


def schedule_lr(optimizer, optim, step: int, total: int) -> None:
    """Set the learning rate of optimizer step ``step`` of ``total`` (``settings.Optim``: warmup, then decay)."""
    set_lr(optimizer, optim.lr, lr_at(step, total, optim.warmup_steps, optim.min_lr_ratio))


def save_iteration(run_dir: Path, st, policy, tokenizer, trained, optimizer, eval_k: int, title: str,
                   **extra) -> None:
    """Checkpoint iteration ``st.iteration``: the policy's weights, the loop state ``st`` (a dataclass), the
    optimizer's state over ``trained``, the RNG state and ``extra`` (PPO's value head); and the history so far."""
    state = {**dataclasses.asdict(st), "optimizer": distributed.optimizer_state(trained, optimizer), "rng": rng_state()}
    ckpt.save_checkpoint(run_dir, st.iteration, policy, tokenizer, {**state, **extra})
    write_history(run_dir, st.history, eval_k, title)


def write_policy(cfg, run_dir: Path, policy, tokenizer, task, stage: str) -> Path:
    """RUN/model: the trained policy (LoRA: as ``--save-merged`` says) and its mathrl.json, which keeps the start
    model's few-shot prompting (``stage``: what trained it)."""
    model_dir = run_dir / "model"
    ckpt.save_model_dir(final_model(policy, cfg.lora), tokenizer, model_dir)
    start = read_record(cfg.model)
    write_record(model_dir, ModelRecord(task=task_options(task), stage=stage, shots=start.shots,
                                        exemplars=start.exemplars, **prompt_record(task), base=cfg.model))
    return model_dir
