"""Critic-free policy gradient with group or batch baselines: GRPO, RLOO and REINFORCE++ (PPO with a value head
is ``algorithms/ppo.py``).

- ``--advantage grpo`` (Shao et al. 2024): (r - mean_group) / std_group, the same for every token of a sample;
  ``--advantage-scale none`` drops the std (Dr.GRPO), ``batch`` divides by the batch's std (REINFORCE++-baseline).
  ``rloo`` (Ahmadian et al. 2024): r - the mean of the other samples of the prompt. ``reinforce++`` (Hu et al.
  2025): (r - mean_batch) / std_batch (``advantages.group_advantages``).
- The policy-loss family (``losses.ppo_policy_loss``): PPO's clipped ratio per token, GSPO's one ratio per
  sequence, CISPO's clipped, detached weight; DAPO's clip-higher (``--clip-high``); the aggregation over tokens
  (token: DAPO; sequence: GRPO eq. 3; constant: Dr.GRPO), applied to the policy term and the KL term alike.
- With ``--kl-coef`` > 0 the k3 estimate of KL(pi || pi_ref) enters the loss (as in GRPO; Hu et al. put it in the
  reward); with 0 (the default, as Dr.GRPO and DAPO) no reference model is built.
- Groups whose samples all got the same return carry no signal: their fraction is logged
  (``zero_signal_fraction``); ``--zero-signal drop`` leaves them out of the learning step and ``refill`` (DAPO's
  dynamic sampling) draws further prompts until the batch is full of groups with signal, every rollout drawn
  counted in the budget (``--max-rollouts``). DAPO's soft overlong penalty (``--overlong-buffer``) and overlong
  filtering (``--mask-truncated``).

The loss of these methods sits near zero by construction (advantages average to zero within a group): watch the
reward and maj@1, not the loss.

Loop per iteration (the same step names as ppo.py): **collect** (with refill: several sampling rounds; with
``--backtrack``, from the prompts + revealed reference steps: ``backtrack.py``) ->
**score** (``rollouts.score``, the one scoring function; refill scores each round to find the signal) ->
**old passes**: pi_old (``rollouts.old_policy``), the reference's log-probs -> **advantages** -> **learn** ->
**log** -> **evaluate** -> **checkpoint**.

Shapes: N = rollouts in the batch, C = completion tokens (right-padded), K = samples per prompt.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mathrl import backtrack, distributed, engines
from mathrl.advantages import group_advantages, group_signal, kl_penalty_rewards
from mathrl.algorithms.grpo_config import Config
from mathrl.compile import compiled
from mathrl.losses import aggregate, ppo_policy_loss
from mathrl.pg_run import Inputs, check_kl, draw_questions, evaluate_policy, evaluation_due, fresh_plr, \
    load_policy, planned_steps, resume_checkpoint, run_inputs, save_iteration, schedule_lr, sequence_kl, \
    stop_at_plateau, update_plr, write_policy
from mathrl.plr import PLRState
from mathrl.rollouts import Experience, LearnStats, Scores, forward_policy, minibatches, old_policy, optimizer_step, \
    pack_rollouts, reference_logprobs, sample, score
from mathrl.plateau import stopped_at_plateau
from mathrl.runlog import RunLogger, progress, write_history
from mathrl.runsetup import start_run, task_for
from mathrl.sampler import completion_stats
from mathrl.training import make_optimizer


@dataclass
class GRPOState:
    """What a run carries from one iteration to the next (saved in every checkpoint with the optimizer and the
    RNG state: ``pg_run.save_iteration``, ``pg_run.resume_checkpoint``)."""

    iteration: int = 0
    opt_steps: int = 0
    rollouts_used: int = 0  # every rollout drawn, kept or not (--max-rollouts)
    prompts_used: int = 0  # questions drawn: the position in the shuffled pass over the train split (uniform)
    backtrack_j: dict[str, int] = dataclasses.field(default_factory=dict)  # --backtrack adaptive: j per question id
    history: list = dataclasses.field(default_factory=list)
    plr: PLRState | None = None  # the PLR sampler's scores and counters (--question-sampling plr)


def train(cfg: Config) -> Path:
    ctx = start_run(cfg)
    run_dir, device = ctx.dir, ctx.device
    task = task_for(cfg.model, cfg.data, cfg.prompting)
    # a reference model for the KL term only (--kl-coef > 0; with LoRA: the adapters disabled)
    policy, reference, tokenizer = load_policy(cfg, device, with_reference=cfg.kl_coef > 0)
    engine = engines.create(policy, cfg.sampling, cfg.model)  # after the reference copy and LoRA
    learner = compiled(policy) if cfg.compile else policy  # the policy's passes over packed rollouts
    params = [p for p in policy.parameters() if p.requires_grad]
    trained = torch.nn.ModuleDict({"policy": policy})
    optimizer = make_optimizer(trained, cfg.optim.lr, cfg.optim.weight_decay)
    inputs = run_inputs(cfg, task, tokenizer, device)  # train questions, shots, eval problems, the ORM
    k, micro, with_kl = cfg.sampling.k, cfg.optim.micro_batch_size, cfg.kl_coef > 0
    backtrack.check_task(cfg.backtracking, task, inputs.questions)

    st, saved = resume_checkpoint(run_dir, cfg.resume, policy, trained, optimizer, GRPOState(plr=fresh_plr(cfg)),
                                  cfg.pg.prompts)
    logger = RunLogger(run_dir, cfg, resume_step=None if saved is None else st.iteration)

    def run_eval() -> dict:
        return evaluate_policy(cfg, policy, tokenizer, task, engine, inputs, run_dir, st.iteration, st.rollouts_used)

    print(f"{cfg.advantage}: {cfg.pg.iterations} iterations x {cfg.pg.prompts} prompts x K={k}, reward "
          f"{cfg.scoring.reward}, {ctx.threads} threads, {device}")
    if st.iteration == 0 and inputs.eval_problems:
        st.history.append({"iteration": 0, "rollouts": 0, **run_eval()})
        logger.log(0, **st.history[-1])
    bar = progress(cfg.pg.iterations, cfg.advantage, "iter", initial=st.iteration)
    while st.iteration < cfg.pg.iterations and not budget_spent(cfg, st) and not stopped_at_plateau(st.history):
        t0 = time.time()
        # collect and score: groups of K samples (refill: with signal), their per-token rewards and outcomes
        got = collect(cfg, st, engine, policy, tokenizer, task, inputs)
        if got is None:  # --max-rollouts leaves less than one group to draw
            break
        t_sample = time.time() - t0
        batch = pack_rollouts(got.rollouts, tokenizer.pad_token_id, mask_truncated=cfg.mask_truncated)
        # reference / old passes (no gradient)
        old = old_policy(engine, policy, batch, cfg.pg.vllm_is_cap, micro, device)
        ref = reference_logprobs(policy, reference, batch, micro, device) if with_kl else None
        # advantages: one per sample from the group (or batch) baseline of the returns, on each of its tokens
        returns = got.scores.returns  # (N,) outcome plus step rewards
        adv = group_advantages(returns, k, cfg.advantage, **({"scale": cfg.advantage_scale}
                                                             if cfg.advantage == "grpo" else {}))
        experience = Experience(batch, old.logprobs, adv.unsqueeze(-1).expand_as(old.logprobs) * batch.action_mask,
                                is_weights=old.is_weights, ref_logprobs=ref)
        # the questions' PLR scores (--question-sampling plr), from the pass rates or these advantages
        plr_record = update_plr(cfg, st, task, got.problems, got.rollouts, experience.advantages, batch.action_mask,
                                got.starts.prefixes)
        keep = torch.arange(len(got.rollouts))
        if cfg.zero_signal == "drop":  # the groups whose returns differ (advantages.group_signal)
            keep = group_signal(returns, k).repeat_interleave(k).nonzero().flatten()
        # learn: ppo_epochs passes of minibatch updates
        stats = learn(cfg, policy, learner, optimizer, params, experience, keep, st, device, run_dir)
        # log, guard against divergence
        st.iteration += 1
        kl_seq = sequence_kl(old.logprobs, ref, batch.action_mask)
        record = {"iteration": st.iteration, "rollouts": st.rollouts_used, "reward": float(got.scores.outcome.mean()),
                  **({"sampling_rounds": got.rounds, "groups": len(got.problems)}
                     if cfg.zero_signal == "refill" else {}),
                  **(got.starts.record() if cfg.backtracking.backtrack != "none" else {}),
                  **completion_stats(got.rollouts), **({"kl": kl_seq} if with_kl else {}), "kl_coef": cfg.kl_coef,
                  "sample_seconds": round(t_sample, 1), "iteration_seconds": round(time.time() - t0, 3),
                  **old.mismatch, **stats.record(value_head=False), "zero_signal_fraction": got.zero_signal_fraction,
                  **got.drawn, **plr_record}
        if with_kl:
            check_kl(run_dir, st.iteration, kl_seq, cfg.pg.kl_bound)
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", **({"kl": f"{kl_seq:.3f}"} if with_kl else {}))
        print(f"iteration {st.iteration}/{cfg.pg.iterations}: reward {record['reward']:.3f}"
              + (f", kl {kl_seq:.3f}" if with_kl else "")
              + f", zero-signal groups {got.zero_signal_fraction:.2f}"
              + f" ({record['iteration_seconds']:.0f}s, sampling {t_sample:.0f}s)", flush=True)
        # evaluate
        last_iteration = st.iteration == cfg.pg.iterations or budget_spent(cfg, st)
        if evaluation_due(cfg, inputs, st, last_iteration):
            record.update(run_eval())
            last_iteration = stop_at_plateau(cfg, st.history, record) or last_iteration
        st.history.append(record)
        logger.log(st.iteration, **{k: v for k, v in record.items() if isinstance(v, (int, float))})
        # checkpoint
        if st.iteration % cfg.checkpoint_every == 0 or last_iteration:
            save_iteration(run_dir, st, policy, tokenizer, trained, optimizer, cfg.eval.eval_k, cfg.advantage)
    bar.close()
    logger.close()
    model_dir = write_policy(cfg, run_dir, policy, tokenizer, task, stage=cfg.advantage)
    engine.close()
    write_history(run_dir, st.history, cfg.eval.eval_k, cfg.advantage)
    print(f"{cfg.advantage} policy written to {model_dir}")
    return model_dir


@dataclass(frozen=True)
class Collected:
    """One iteration's training groups: ``problems`` (G), their ``prompts``, where their rollouts started
    (``starts``: the reference steps --backtrack revealed), ``rollouts`` (G x K, by group; ``prompt_index`` indexes
    ``problems``) and their ``scores``; the sampling ``rounds`` it took and the ``zero_signal_fraction`` of every
    group drawn (with refill, the dropped ones too); ``drawn``, what the history logs of the draws
    (``pg_run.draw_questions``; with refill, summed over the rounds)."""

    problems: list
    prompts: list[str]
    starts: backtrack.Starts
    rollouts: list
    scores: Scores
    rounds: int
    zero_signal_fraction: float
    drawn: dict


def budget_spent(cfg: Config, st: GRPOState) -> bool:
    """True once ``--max-rollouts`` leaves less than one group of K to draw (whole groups are drawn)."""
    return bool(cfg.max_rollouts) and cfg.max_rollouts - st.rollouts_used < cfg.sampling.k


def collect(cfg: Config, st: GRPOState, engine, policy, tokenizer, task, inputs: Inputs) -> Collected | None:
    """Draw the next ``prompts`` problems of the shuffled pass (or PLR's: ``pg_run.draw_questions``) x K and score
    them (``rollouts.score``). With ``--zero-signal refill`` (DAPO's dynamic sampling, Yu et al. 2025, sec. 3.2 and
    Algorithm 1) keep only the groups whose returns differ (``advantages.group_signal``) and draw the next
    ``prompts`` problems, up to
    ``refill_rounds`` more times, until ``prompts`` groups carry signal (the first ones drawn are kept; with fewer
    after the last round the iteration learns from those; with none, from the last round's). Every rollout drawn
    counts in ``st.rollouts_used``, kept or not, and ``--max-rollouts`` caps the draws (None: no group left to
    draw). Each problem is sampled from its prompt + the reference steps ``--backtrack`` reveals and scored on
    the whole solution (``backtrack.plan``, ``rollouts.score``). Advances ``st.prompts_used``, ``st.rollouts_used``
    and, with ``--backtrack adaptive``, ``st.backtrack_j`` (every group drawn, kept or not)."""
    k, refill = cfg.sampling.k, cfg.zero_signal == "refill"
    kept_problems, kept_rollouts, kept_scores, kept_starts = [], [], [], []
    signal_groups = total_groups = rounds = 0
    drawn_record: dict = {}
    while rounds <= (cfg.refill_rounds if refill else 0) and len(kept_problems) < cfg.pg.prompts:
        n = cfg.pg.prompts
        if cfg.max_rollouts:
            n = min(n, (cfg.max_rollouts - st.rollouts_used) // k)
        if n <= 0:
            break
        problems, drawn_round = draw_questions(cfg, inputs, st, n)
        drawn_record = {key: drawn_record.get(key, 0) + v for key, v in drawn_round.items()}
        starts = backtrack.plan(cfg.backtracking, task, problems, st.iteration, cfg.pg.iterations, st.backtrack_j)
        prompt_texts, drawn = sample(engine, policy, tokenizer, task, problems, inputs.shots, cfg.sampling,
                                     seed=cfg.run.seed + 7919 * st.iteration + rounds, prefixes=starts.prefixes)
        st.prompts_used, st.rollouts_used, rounds = st.prompts_used + n, st.rollouts_used + len(drawn), rounds + 1
        scores = score(cfg.scoring, task, tokenizer, inputs.orm, drawn, problems, prompt_texts,
                       overlong_buffer=cfg.overlong_buffer, max_new_tokens=cfg.sampling.max_new_tokens,
                       prefixes=starts.prefixes)
        if cfg.backtracking.backtrack == "adaptive":  # each question one step earlier once its group succeeds
            st.backtrack_j = backtrack.advance(st.backtrack_j, task, problems, starts, drawn,
                                               cfg.backtracking.backtrack_threshold)
        signal = group_signal(scores.returns, k).tolist()
        signal_groups, total_groups = signal_groups + sum(signal), total_groups + n
        for j in [j for j in range(n) if signal[j] or not refill][: cfg.pg.prompts - len(kept_problems)]:
            kept_rollouts += [dataclasses.replace(r, prompt_index=len(kept_problems)) for r in drawn[j * k:(j + 1) * k]]
            kept_scores.append(scores.select(torch.arange(j * k, (j + 1) * k)))
            kept_problems.append(problems[j])
            kept_starts.append(starts.pick([j]))
    if rounds and not kept_problems:  # refill, and no group had signal in any round: the last round's
        kept_problems, kept_rollouts, kept_scores, kept_starts = problems, drawn, [scores], [starts]
    if not kept_rollouts:
        return None
    width = max(len(r.completion_ids) for r in kept_rollouts)
    return Collected(kept_problems, [task.prompt(p, inputs.shots) for p in kept_problems],
                     backtrack.Starts.concat(kept_starts), kept_rollouts,
                     Scores.concat(kept_scores, width), rounds, 1 - signal_groups / max(1, total_groups), drawn_record)


def learn(cfg: Config, policy, learner, optimizer, params, exp: Experience, keep: torch.Tensor, st: GRPOState, device,
          run_dir) -> LearnStats:
    """``ppo_epochs`` passes over the rows ``keep`` in minibatches of ``batch_size``; each minibatch is one
    optimizer step (``rollouts.optimizer_step``), its loss divided by the minibatch's counts (``loss_aggregation``).
    ``learner`` runs the forward passes: ``policy`` itself, or its compiled wrapper (--compile)."""
    total_steps = planned_steps(cfg)
    sharded = distributed.is_sharded(policy)
    policy.train()
    steps = []
    groups = exp.batch.prompt_of if cfg.pg.minibatch == "group" else None
    for rows in minibatches(keep, cfg.optim.batch_size, cfg.pg.ppo_epochs, cfg.run.seed + st.iteration * 31, groups):
        mb = exp.select(rows)
        if not mb.advantages.any():
            # no signal: the loss is (numerically almost) zero, and Adam would turn its rounding noise into full-size
            # steps; skip the update
            continue
        schedule_lr(optimizer, cfg.optim, st.opt_steps, total_steps)
        n_loss, n_rows = int(mb.batch.loss_mask.sum()), len(rows)
        rows = torch.arange(len(rows))
        if cfg.kl_coef == 0:
            # a row whose advantage is 0 contributes exactly 0 to the loss and its gradient (no KL term): leave it
            # out of the forward and backward passes (with GRPO often half the batch)
            rows = mb.advantages.any(-1).nonzero().flatten()

        def micro_loss(part: Experience):
            logp, _ = forward_policy(learner, None, part.batch, False, device)
            return objective(cfg, logp, part, n_loss, n_rows, device)

        steps.append(optimizer_step(mb, rows, micro_loss, optimizer, params, cfg.optim.micro_batch_size,
                                    cfg.optim.grad_clip, sharded, run_dir, st.iteration))
        st.opt_steps += 1
    return LearnStats.of(steps)


def objective(cfg: Config, logprobs: torch.Tensor, part: Experience, n_loss: int, n_rows: int, device):
    """(loss, PolicyStats, NaN) of a micro-batch ``part`` with its log-probs under the current policy ``logprobs``
    (n, C): the policy term (``--policy-loss``) plus kl_coef x the k3 KL to the reference, reduced over the
    minibatch's ``n_loss`` loss tokens and ``n_rows`` rows (``--loss-aggregation``)."""
    lmask = part.batch.loss_mask.to(device)
    # the policy term and the KL term reduced alike (losses.aggregate): GRPO's eq. 3 averages both inside each
    # sequence, then over sequences; the reduction is linear, so aggregating the sum or each term is the same
    how, total, max_len = cfg.loss_aggregation, max(1, n_loss), cfg.sampling.max_new_tokens
    loss, pstats = ppo_policy_loss(logprobs, part.old_logprobs.to(device), part.advantages.to(device), lmask,
                                   clip=cfg.pg.clip, total=total, clip_high=cfg.clip_high or None, kind=cfg.policy_loss,
                                   aggregation=how, n_rows=n_rows, max_len=max_len,
                                   is_weights=part.is_weights.to(device) if part.is_weights is not None else None)
    if cfg.kl_coef > 0:
        _, kl = kl_penalty_rewards(logprobs, part.ref_logprobs.to(device), lmask, 1.0, "k3")
        loss = loss + cfg.kl_coef * aggregate(kl, lmask, how, total, n_rows, max_len)
    return loss, pstats, float("nan")


def main(cfg: Config) -> None:
    train(cfg)
