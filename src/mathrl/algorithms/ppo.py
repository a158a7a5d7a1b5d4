"""PPO with a value head, GAE and a KL penalty in the reward (Havrilla et al. 2024, section 3.2, following
Ziegler et al. 2019 / trlX). The critic-free methods (GRPO, RLOO, REINFORCE++) are ``algorithms/grpo.py``.

- A value head **on the policy's trunk** (an MLP on the last hidden state, sharing every transformer layer with
  the policy, as trlX's "hydra" heads do). By default the value loss does not flow into the shared trunk
  (``--value-trunk-grad`` lets it, weighted by ``vf_coef``).
- Per-token rewards: the outcome reward at the last token (plus dense step rewards) minus ``kl_coef`` x the k1 KL
  estimate log pi_old - log pi_ref at every token (Ziegler et al. 2019, eq. 2); advantages by GAE (gamma 1,
  lambda 0.95), whitened over the batch; the clipped ratio (0.2) and the clipped value loss. ``--kl-target``
  makes the coefficient adaptive (Ziegler et al., section 2.2). With ``--kl-coef 0`` there is no reference model.

Loop per iteration (the same step names as grpo.py): **collect** K samples for the next ``prompts`` problems of a
shuffled pass over the train split (or those prioritized level replay draws: ``--question-sampling plr``,
``plr.py``; with ``--backtrack``, from their prompts + revealed reference steps: ``backtrack.py``) -> **score**
them through the task (``--reward``; the whole solution, prefix + completion) -> **old passes**: pi_old
(``rollouts.old_policy``: with ``--engine vllm`` recomputed by the trainer, with truncated importance weights),
the reference's log-probs, the old values -> **advantages** -> **learn**: ``ppo_epochs`` passes of minibatch
updates -> **log** (divergence guard: a non-finite loss, or a mean KL per sequence above ``kl_bound``, stops the
run; the last good checkpoint is kept) -> **evaluate** (``--eval-at``; ``--stop-at-plateau``) -> **checkpoint**.

Shapes: N = rollouts in the batch, C = completion tokens (right-padded).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mathrl import backtrack, distributed, engines
from mathrl.advantages import adaptive_kl_coef, gae, kl_penalty_rewards, whiten
from mathrl.algorithms.ppo_config import Config
from mathrl.compile import compiled
from mathrl.losses import ppo_policy_loss, value_loss
from mathrl.pg_run import check_kl, draw_questions, evaluate_policy, evaluation_due, fresh_plr, load_policy, \
    planned_steps, resume_checkpoint, run_inputs, save_iteration, schedule_lr, sequence_kl, stop_at_plateau, \
    update_plr, write_policy
from mathrl.plr import PLRState
from mathrl.rollouts import Experience, LearnStats, RolloutBatch, Scores, forward_policy, minibatches, old_policy, \
    optimizer_step, pack_rollouts, reference_logprobs, sample, score, value_estimates, \
    values_from_rollouts
from mathrl.plateau import stopped_at_plateau
from mathrl.runlog import RunLogger, progress, write_history
from mathrl.runsetup import start_run, task_for
from mathrl.sampler import completion_stats
from mathrl.training import make_optimizer


class ValueHead(torch.nn.Module):
    """V(prefix) from the policy's last hidden state: a 2-layer MLP (the trunk is shared with the policy).

    With ``trunk_grad`` False the hidden states are detached: the critic reads the policy's features but its
    loss does not move the policy (measured here: letting a freshly initialised value head push gradients into a
    0.9M-parameter trunk raised the KL and lowered the reward in the first iterations)."""

    def __init__(self, hidden: int, trunk_grad: bool = False):
        super().__init__()
        self.trunk_grad = trunk_grad
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        torch.nn.init.zeros_(self.mlp[2].weight)
        torch.nn.init.zeros_(self.mlp[2].bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = hidden_states.float() if self.trunk_grad else hidden_states.detach().float()
        # in float32 also under bf16 autocast (--precision bf16-mixed): the values feed GAE and the value loss,
        # and a bf16 value (3 significant digits) would also not fit the float32 buffers of the old values
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.mlp(h).squeeze(-1)  # (N, T)


@dataclass
class PPOState:
    """What a PPO run carries from one iteration to the next (saved in every checkpoint with the optimizer, the
    RNG state and the value head: ``pg_run.save_iteration``, ``pg_run.resume_checkpoint``)."""

    iteration: int = 0
    kl_coef: float = 0.0  # changes with --kl-target (adaptive KL)
    opt_steps: int = 0
    rollouts_used: int = 0
    prompts_used: int = 0  # questions drawn: the position in the shuffled pass over the train split (uniform)
    backtrack_j: dict[str, int] = dataclasses.field(default_factory=dict)  # --backtrack adaptive: j per question id
    history: list = dataclasses.field(default_factory=list)
    plr: PLRState | None = None  # the PLR sampler's scores and counters (--question-sampling plr)


@dataclass
class Models:
    """The policy and what trains or scores beside it."""

    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None: no KL penalty, or LoRA (the base with adapters disabled)
    head: ValueHead
    use_reference: bool  # --kl-coef > 0
    learner: torch.nn.Module  # the policy's passes over packed rollouts: the policy, or compiled (--compile)


def build_models(cfg: Config, device: str) -> tuple[Models, object]:
    policy, reference, tokenizer = load_policy(cfg, device, with_reference=cfg.kl_coef > 0)
    # after FSDP has sharded the policy: the small value head stays whole on every rank
    head = ValueHead(policy.config.hidden_size, cfg.value_trunk_grad).to(device)
    return Models(policy, reference, head, use_reference=cfg.kl_coef > 0,
                  learner=compiled(policy) if cfg.compile else policy), tokenizer


def train(cfg: Config) -> Path:
    ctx = start_run(cfg)
    run_dir, device = ctx.dir, ctx.device
    task = task_for(cfg.model, cfg.data, cfg.prompting)
    m, tokenizer = build_models(cfg, device)
    engine = engines.create(m.policy, cfg.sampling, cfg.model)  # after the reference copy and LoRA
    params = [p for p in m.policy.parameters() if p.requires_grad] + list(m.head.parameters())
    trained = torch.nn.ModuleDict({"policy": m.policy, "value_head": m.head})
    optimizer = make_optimizer(trained, cfg.optim.lr, cfg.optim.weight_decay)
    inputs = run_inputs(cfg, task, tokenizer, device)  # train questions, shots, eval problems, the ORM
    micro = cfg.optim.micro_batch_size
    backtrack.check_task(cfg.backtracking, task, inputs.questions)

    st, saved = resume_checkpoint(run_dir, cfg.resume, m.policy, trained, optimizer,
                                  PPOState(kl_coef=cfg.kl_coef, plr=fresh_plr(cfg)),
                                  cfg.pg.prompts)
    if saved is not None:
        m.head.load_state_dict(saved["value_head"])
    logger = RunLogger(run_dir, cfg, resume_step=None if saved is None else st.iteration)

    def run_eval() -> dict:
        return evaluate_policy(cfg, m.policy, tokenizer, task, engine, inputs, run_dir, st.iteration, st.rollouts_used)

    print(f"ppo: {cfg.pg.iterations} iterations x {cfg.pg.prompts} prompts x K={cfg.sampling.k}, reward "
          f"{cfg.scoring.reward}, {ctx.threads} threads, {device}")
    if st.iteration == 0 and inputs.eval_problems:
        st.history.append({"iteration": 0, "rollouts": 0, **run_eval()})
        logger.log(0, **st.history[-1])
    bar = progress(cfg.pg.iterations, "ppo", "iter", initial=st.iteration)
    while st.iteration < cfg.pg.iterations and not stopped_at_plateau(st.history):
        t0 = time.time()
        # collect: K samples for the next problems of the shuffled pass (or PLR's draws: --question-sampling), each
        # from its prompt + the reference steps --backtrack reveals (none by default)
        problems, drawn = draw_questions(cfg, inputs, st, cfg.pg.prompts)
        starts = backtrack.plan(cfg.backtracking, task, problems, st.iteration, cfg.pg.iterations, st.backtrack_j)
        # mathrl's sampler also keeps the hidden states the value head reads (the old values need no pass then)
        kept = engine.name == "mathrl"
        prompt_texts, rollouts = sample(engine, m.policy, tokenizer, task, problems, inputs.shots, cfg.sampling,
                                        seed=cfg.run.seed + 7919 * st.iteration, prefixes=starts.prefixes,
                                        hidden_states=kept)
        st.prompts_used, st.rollouts_used = st.prompts_used + len(problems), st.rollouts_used + len(rollouts)
        t_sample = time.time() - t0
        batch = pack_rollouts(rollouts, tokenizer.pad_token_id)
        # score: per-token rewards (N, C) and outcomes (N,) of the whole solutions (revealed steps + completion)
        scores = score(cfg.scoring, task, tokenizer, inputs.orm, rollouts, problems, prompt_texts,
                       prefixes=starts.prefixes)
        if cfg.backtracking.backtrack == "adaptive":  # each question one step earlier once its group succeeds
            st.backtrack_j = backtrack.advance(st.backtrack_j, task, problems, starts, rollouts,
                                               cfg.backtracking.backtrack_threshold)
        # reference / old passes (no gradient)
        old = old_policy(engine, m.policy, batch, cfg.pg.vllm_is_cap, micro, device)
        ref = reference_logprobs(m.policy, m.reference, batch, micro, device) if m.use_reference else None
        old_values = (values_from_rollouts(m.head, rollouts, batch.sampled_logprobs, micro, device) if kept
                      else value_estimates(m.learner, m.head, batch, micro, device))
        # advantages (GAE), the questions' PLR scores from them or from the pass rates, then whitening
        adv, returns = advantages(cfg, batch, scores, old.logprobs, ref, old_values, st.kl_coef)
        plr_record = update_plr(cfg, st, task, problems, rollouts, adv, batch.action_mask, starts.prefixes)
        if cfg.whiten_advantages:
            adv = whiten(adv, batch.action_mask)
        experience = Experience(batch, old.logprobs, adv, is_weights=old.is_weights, old_values=old_values,
                                returns=returns)
        # learn: ppo_epochs passes of minibatch updates
        stats = learn(cfg, m, optimizer, params, experience, st, device, run_dir)
        # log, guard against divergence, adapt the KL coefficient
        st.iteration += 1
        kl_seq = sequence_kl(old.logprobs, ref, batch.action_mask)
        record = {"iteration": st.iteration, "rollouts": st.rollouts_used, "reward": float(scores.outcome.mean()),
                  **(starts.record() if cfg.backtracking.backtrack != "none" else {}),
                  **completion_stats(rollouts), **({"kl": kl_seq} if ref is not None else {}),
                  "kl_coef": st.kl_coef, "sample_seconds": round(t_sample, 1),
                  "iteration_seconds": round(time.time() - t0, 3), **old.mismatch, **stats.record(value_head=True),
                  **drawn, **plr_record}
        if ref is not None:
            check_kl(run_dir, st.iteration, kl_seq, cfg.pg.kl_bound)
        if cfg.kl_target > 0:
            st.kl_coef = adaptive_kl_coef(st.kl_coef, kl_seq, cfg.kl_target, 10_000, len(rollouts))
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", **({"kl": f"{kl_seq:.3f}"} if ref is not None else {}))
        print(f"iteration {st.iteration}/{cfg.pg.iterations}: reward {record['reward']:.3f}"
              + (f", kl {kl_seq:.3f}" if ref is not None else "")
              + f" ({record['iteration_seconds']:.0f}s, sampling {t_sample:.0f}s)", flush=True)
        # evaluate
        last_iteration = st.iteration == cfg.pg.iterations
        if evaluation_due(cfg, inputs, st, last_iteration):
            record.update(run_eval())
            last_iteration = stop_at_plateau(cfg, st.history, record) or last_iteration
        st.history.append(record)
        logger.log(st.iteration, **{k: v for k, v in record.items() if isinstance(v, (int, float))})
        # checkpoint (with the value head)
        if st.iteration % cfg.checkpoint_every == 0 or last_iteration:
            save_iteration(run_dir, st, m.policy, tokenizer, trained, optimizer, cfg.eval.eval_k, "ppo",
                           value_head=m.head.state_dict())
    bar.close()
    logger.close()
    model_dir = write_policy(cfg, run_dir, m.policy, tokenizer, task, stage="gae")
    if distributed.is_main():
        torch.save(m.head.state_dict(), run_dir / "value_head.pt")
    engine.close()
    write_history(run_dir, st.history, cfg.eval.eval_k, "ppo")
    print(f"ppo policy written to {model_dir}")
    return model_dir


def advantages(cfg: Config, batch: RolloutBatch, scores: Scores, old_logprobs: torch.Tensor,
               ref_logprobs: torch.Tensor | None, old_values: torch.Tensor, kl_coef: float):
    """(advantages (N, C), returns (N, C)): GAE over the per-token rewards minus kl_coef x the k1 KL
    (Ziegler et al. 2019, eq. 2), not yet whitened (``train`` whitens them over the batch's action tokens unless
    --no-whiten-advantages, after PLR has scored the questions from the raw ones, as Jiang et al. do)."""
    action = batch.action_mask
    rewards = scores.token_rewards
    if ref_logprobs is not None:
        penalty, _ = kl_penalty_rewards(old_logprobs, ref_logprobs, action, kl_coef, "k1")
        rewards = rewards + penalty
    return gae(rewards, old_values, action, cfg.gamma, cfg.lam)


def learn(cfg: Config, m: Models, optimizer, params, exp: Experience, st: PPOState, device, run_dir) -> LearnStats:
    """``ppo_epochs`` passes over the batch in minibatches of ``batch_size``; each minibatch is one optimizer step
    (``rollouts.optimizer_step``). Token-level means over the whole minibatch: every micro-batch's loss is
    divided by the minibatch's token counts, as in training.py."""
    total_steps = planned_steps(cfg)
    sharded = distributed.is_sharded(m.policy)
    m.policy.train()
    steps = []
    groups = exp.batch.prompt_of if cfg.pg.minibatch == "group" else None
    for rows in minibatches(torch.arange(len(exp.advantages)), cfg.optim.batch_size, cfg.pg.ppo_epochs,
                            cfg.run.seed + st.iteration * 31, groups):
        mb = exp.select(rows)
        schedule_lr(optimizer, cfg.optim, st.opt_steps, total_steps)
        n_loss, n_action = int(mb.batch.loss_mask.sum()), int(mb.batch.action_mask.sum())
        steps.append(optimizer_step(mb, torch.arange(len(rows)), lambda part: _loss(cfg, m, part, n_loss, n_action,
                                                                                       device),
                                    optimizer, params, cfg.optim.micro_batch_size, cfg.optim.grad_clip, sharded,
                                    run_dir, st.iteration))
        st.opt_steps += 1
    return LearnStats.of(steps)


def _loss(cfg: Config, m: Models, part: Experience, n_loss: int, n_action: int, device):
    """The loss of one micro-batch, summed over its tokens and divided by the minibatch's token counts: the
    clipped policy loss (token mean) plus vf_coef x the clipped value loss."""
    logp, values = forward_policy(m.learner, m.head, part.batch, True, device)
    loss, pstats = ppo_policy_loss(logp, part.old_logprobs.to(device), part.advantages.to(device),
                                   part.batch.loss_mask.to(device), clip=cfg.pg.clip, total=max(1, n_loss),
                                   is_weights=part.is_weights.to(device) if part.is_weights is not None else None)
    v_loss, v_clipfrac = value_loss(values, part.old_values.to(device), part.returns.to(device),
                                    part.batch.action_mask.to(device), clip=cfg.value_clip, total=max(1, n_action))
    return loss + cfg.vf_coef * v_loss, pstats, v_clipfrac


def main(cfg: Config) -> None:
    train(cfg)
