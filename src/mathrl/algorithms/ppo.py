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
shuffled pass over the train split -> **score** them through the task (``--reward``) -> **old passes**: pi_old
(``rollouts.old_policy``: with ``--engine vllm`` recomputed by the trainer, with truncated importance weights),
the reference's log-probs, the old values -> **advantages** -> **learn**: ``ppo_epochs`` passes of minibatch
updates -> **log** (divergence guard: a non-finite loss, or a mean KL per sequence above ``kl_bound``, stops the
run; the last good checkpoint is kept) -> **evaluate** every ``eval_every`` iterations -> **checkpoint**.

Shapes: N = rollouts in the batch, C = completion tokens (right-padded).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mathrl import checkpoint as ckpt
from mathrl import distributed, engines
from mathrl.advantages import adaptive_kl_coef, gae, kl_penalty_rewards, whiten
from mathrl.config import field, group, refuse, save as save_config
from mathrl.errors import UsageError
from mathrl.evaluate import evaluate_in_run
from mathrl.losses import ppo_policy_loss, value_loss
from mathrl.models import apply_lora, final_model, load_model
from mathrl.record import ModelRecord, read_record
from mathrl.rollouts import OPTIM, Experience, LearnStats, RolloutBatch, Scores, Scoring, checkpoint_every, clip, \
    eval_every, forward_policy, iterations, kl_bound, minibatches, next_problems, old_policy, optimizer_step, \
    pack_rollouts, ppo_epochs, prompts, reference_logprobs, sample, score, validate_shared, value_estimates, \
    vllm_is_cap
from mathrl.runlog import RunLogger, progress, write_history
from mathrl.reward_model import load_reward_model
from mathrl.runsetup import few_shot_examples, start_run, task_for, warn_tiny_default_lr, write_record
from mathrl.seeds import rng_state, set_rng_state
from mathrl.sampler import completion_stats
from mathrl.settings import Compute, Data, Evaluation, FewShot, Lora, Optim, Prompting, Run, Sampling, fsdp, \
    no_lora_with_fsdp, resume, validate_groups
from mathrl.tasks import task_options
from mathrl.tasks.prompting import prompt_record
from mathrl.training import lr_at, make_optimizer, set_lr

# the keys of the critic-free settings that config.yaml files of the single PPO/GRPO loop of earlier versions
# record: read back at these values (those of a PPO run), refused at any other (they belong to `mathrl grpo`)
_GRPO = "is a `mathrl grpo` setting (critic-free: mathrl grpo --advantage grpo|rloo|reinforce++)"
RETIRED = {"advantage": ("gae", _GRPO), "clip_high": (0.0, _GRPO), "policy_loss": ("ppo", _GRPO),
           "loss_aggregation": ("token", _GRPO), "advantage_scale": ("group", _GRPO), "overlong_buffer": (0, _GRPO),
           "mask_truncated": (False, _GRPO), "zero_signal": ("keep", _GRPO), "refill_rounds": (4, _GRPO),
           "max_rollouts": (0, _GRPO)}


@dataclass
class Config:
    model: str = field("", "starting policy (an SFT model, or a pretrained one, few-shot prompted) (required)")
    out: str = field("runs/ppo", "run directory (the final policy is written to OUT/model)")
    data: Data = group(Data)
    prompting: Prompting = group(Prompting)
    scoring: Scoring = group(Scoring)
    iterations: int = iterations()
    prompts: int = prompts()
    sampling: Sampling = group(Sampling)
    few_shot: FewShot = group(FewShot)
    ppo_epochs: int = ppo_epochs()
    optim: Optim = group(Optim, **OPTIM)
    clip: float = clip()
    value_clip: float = field(0.2, "value-loss clip")
    vf_coef: float = field(0.5, "value-loss weight")
    value_trunk_grad: bool = field(False, "let the value loss train the shared trunk too (default: the value head "
                                          "reads the trunk's hidden states but its gradient stops there)")
    gamma: float = field(1.0, "discount")
    lam: float = field(0.95, "GAE lambda")
    whiten_advantages: bool = field(True, "whiten GAE advantages over the batch")
    kl_coef: float = field(0.05, "KL-to-reference coefficient of the per-token reward penalty (0: no reference "
                                 "model)")
    kl_target: float = field(0.0, "adaptive KL: target KL per sequence (0: fixed coefficient)")
    kl_bound: float = kl_bound()
    lora: Lora = group(Lora)  # with LoRA the reference is the frozen base (the adapters disabled)
    vllm_is_cap: float = vllm_is_cap()
    fsdp: bool = fsdp()
    eval_every: int = eval_every()
    eval: Evaluation = group(Evaluation)
    checkpoint_every: int = checkpoint_every()
    run: Run = group(Run)
    compute: Compute = group(Compute)
    resume: bool = resume()

    RETIRED = RETIRED

    def validate(self) -> None:
        validate_groups(self)
        validate_shared(self)
        self.sampling.require_samples()
        no_lora_with_fsdp(self.lora, self.fsdp)
        if not self.model:
            raise UsageError("--model is required (the starting policy)")
        if self.kl_target < 0:
            raise UsageError("kl_target must be >= 0 (0: fixed coefficient)")
        if self.kl_coef == 0:
            refuse(self, ["kl_target"], "with --kl-coef 0 (the adaptive coefficient is a multiple of it: it stays 0)")


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
        return self.mlp(h).squeeze(-1)  # (N, T)


@dataclass
class PPOState:
    """What a PPO run carries from one iteration to the next (saved in every checkpoint with the optimizer, the
    RNG state and the value head)."""

    iteration: int = 0
    kl_coef: float = 0.0  # changes with --kl-target (adaptive KL)
    opt_steps: int = 0
    rollouts_used: int = 0
    prompts_used: int = 0  # position in the shuffled pass over the train split
    history: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, prompts: int) -> PPOState:
        """From a checkpoint; one written before ``prompts_used`` existed drew ``prompts`` per iteration."""
        d = {"prompts_used": d["iteration"] * prompts, **d}
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclass
class Models:
    """The policy and what trains or scores beside it."""

    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None: no KL penalty, or LoRA (the base with adapters disabled)
    head: ValueHead
    use_reference: bool  # --kl-coef > 0


def build_models(cfg: Config, device: str) -> tuple[Models, object]:
    policy, tokenizer = load_model(cfg.model, device=device, for_training=True, precision=cfg.run.precision,
                                   compute=cfg.compute)
    warn_tiny_default_lr(cfg, policy)
    use_reference = cfg.kl_coef > 0  # without a KL penalty no reference: no copy in memory, no extra pass
    reference = None
    if cfg.lora.lora_rank:
        policy = apply_lora(policy, cfg.lora, cfg.model)
    elif use_reference:
        reference = copy.deepcopy(policy).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    if cfg.fsdp:  # before the optimizer sees the parameters; the small value head stays whole on every rank
        distributed.shard_model(policy)
        if reference is not None:
            distributed.shard_model(reference)
            # the frozen reference has no backward pass, where FSDP would reshard its root (embeddings, head)
            reference.set_reshard_after_forward(True, recurse=False)
    head = ValueHead(policy.config.hidden_size, cfg.value_trunk_grad).to(device)
    return Models(policy, reference, head, use_reference), tokenizer


def train(cfg: Config) -> Path:
    ctx = start_run(cfg.out, cfg.resume, cfg.run)
    run_dir, device = ctx.dir, ctx.device
    task = task_for(cfg.model, cfg.data, cfg.prompting)
    save_config(cfg, run_dir / "config.yaml")
    m, tokenizer = build_models(cfg, device)
    engine = engines.create(m.policy, cfg.sampling, cfg.model)  # after the reference copy and LoRA
    params = [p for p in m.policy.parameters() if p.requires_grad] + list(m.head.parameters())
    trained = torch.nn.ModuleDict({"policy": m.policy, "value_head": m.head})
    optimizer = make_optimizer(trained, cfg.optim.lr, cfg.optim.weight_decay)
    orm = _load_orm(cfg.scoring, tokenizer, device)
    shots = few_shot_examples(task, cfg.model, cfg.few_shot.shots, cfg.few_shot.exemplars)
    questions = task.problems("train")
    eval_problems = task.problems(cfg.eval.eval_split)[: cfg.eval.eval_size] if cfg.eval.eval_size else []
    micro = cfg.optim.micro_batch_size

    st = PPOState(kl_coef=cfg.kl_coef)
    last = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if last is not None:
        saved = ckpt.load_state(last)
        ckpt.load_weights_into(m.policy, last)  # with LoRA the adapters (the base weights are the start model's)
        m.head.load_state_dict(saved["value_head"])
        distributed.load_optimizer_state(trained, optimizer, saved["optimizer"])
        set_rng_state(saved["rng"])
        st = PPOState.from_dict(saved, cfg.prompts)
        print(f"resumed {run_dir} at iteration {st.iteration}")
    logger = RunLogger(run_dir, cfg, resume_step=st.iteration if last is not None else None)

    def run_eval() -> dict:
        return evaluate_in_run(m.policy, tokenizer, task, eval_problems, cfg.eval, cfg.sampling, engine=engine,
                               seed=cfg.run.seed,
                               run_dir=run_dir, rollouts=st.rollouts_used, shots=shots,
                               when=f"at iteration {st.iteration} ({st.rollouts_used} rollouts)")

    print(f"ppo: {cfg.iterations} iterations x {cfg.prompts} prompts x K={cfg.sampling.k}, reward "
          f"{cfg.scoring.reward}, {ctx.threads} threads, {device}")
    if st.iteration == 0 and eval_problems:
        st.history.append({"iteration": 0, "rollouts": 0, **run_eval()})
        logger.log(0, **st.history[-1])
    order = list(range(len(questions)))
    random.Random(cfg.run.seed).shuffle(order)
    bar = progress(cfg.iterations, "ppo", "iter", initial=st.iteration)
    while st.iteration < cfg.iterations:
        t0 = time.time()
        # collect: K samples for the next problems of the shuffled pass
        problems = next_problems(questions, order, st.prompts_used, cfg.prompts)
        prompt_texts, rollouts = sample(engine, m.policy, tokenizer, task, problems, shots, cfg.sampling,
                                    seed=cfg.run.seed + 7919 * st.iteration)
        st.prompts_used, st.rollouts_used = st.prompts_used + len(problems), st.rollouts_used + len(rollouts)
        t_sample = time.time() - t0
        batch = pack_rollouts(rollouts, tokenizer.pad_token_id)
        # score: per-token rewards (N, C) and outcomes (N,)
        scores = score(cfg.scoring, task, tokenizer, orm, rollouts, problems, prompt_texts)
        # reference / old passes (no gradient)
        old = old_policy(engine, m.policy, batch, cfg.vllm_is_cap, micro, device)
        ref = reference_logprobs(m.policy, m.reference, batch, micro, device) if m.use_reference else None
        old_values = value_estimates(m.policy, m.head, batch, micro, device)
        # advantages
        adv, returns = advantages(cfg, batch, scores, old.logprobs, ref, old_values, st.kl_coef)
        experience = Experience(batch, old.logprobs, adv, is_weights=old.is_weights, old_values=old_values,
                                returns=returns)
        # learn: ppo_epochs passes of minibatch updates
        stats = learn(cfg, m, optimizer, params, experience, st, device, run_dir)
        # log, guard against divergence, adapt the KL coefficient
        st.iteration += 1
        kl_seq = sequence_kl(old.logprobs, ref, batch.action_mask)
        record = {"iteration": st.iteration, "rollouts": st.rollouts_used, "reward": float(scores.outcome.mean()),
                  **completion_stats(rollouts), **({"kl": kl_seq} if ref is not None else {}),
                  "kl_coef": st.kl_coef, "sample_seconds": round(t_sample, 1),
                  "iteration_seconds": round(time.time() - t0, 3), **old.mismatch, **stats.record(value_head=True)}
        if ref is not None and (not math.isfinite(kl_seq) or kl_seq > cfg.kl_bound):
            raise ckpt.divergence_error(run_dir, st.iteration, f"KL to the reference reached {kl_seq:.2f} > "
                                                               f"kl_bound {cfg.kl_bound}")
        if cfg.kl_target > 0:
            st.kl_coef = adaptive_kl_coef(st.kl_coef, kl_seq, cfg.kl_target, 10_000, len(rollouts))
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{kl_seq:.3f}")
        print(f"iteration {st.iteration}/{cfg.iterations}: reward {record['reward']:.3f}"
              + (f", kl {kl_seq:.3f}" if ref is not None else "")
              + f" ({record['iteration_seconds']:.0f}s, sampling {t_sample:.0f}s)", flush=True)
        # evaluate
        last_iteration = st.iteration == cfg.iterations
        if eval_problems and (last_iteration or (cfg.eval_every and st.iteration % cfg.eval_every == 0)):
            record.update(run_eval())
        st.history.append(record)
        logger.log(st.iteration, **{k: v for k, v in record.items() if isinstance(v, (int, float))})
        # checkpoint
        if st.iteration % cfg.checkpoint_every == 0 or last_iteration:
            extra = {"optimizer": distributed.optimizer_state(trained, optimizer), "rng": rng_state(),
                     "value_head": m.head.state_dict()}
            ckpt.save_checkpoint(run_dir, st.iteration, m.policy, tokenizer, {**st.to_dict(), **extra})
            write_history(run_dir, st.history, cfg.eval.eval_k, "ppo")
    bar.close()
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(final_model(m.policy, cfg.lora), tokenizer, model_dir)
    if distributed.is_main():
        torch.save(m.head.state_dict(), run_dir / "value_head.pt")
    start = read_record(cfg.model)
    write_record(model_dir, ModelRecord(task=task_options(task), stage="gae", shots=start.shots,
                                        exemplars=start.exemplars, **prompt_record(task), base=cfg.model))
    engine.close()
    write_history(run_dir, st.history, cfg.eval.eval_k, "ppo")
    print(f"ppo policy written to {model_dir}")
    return model_dir


def _load_orm(scoring: Scoring, tokenizer, device):
    if scoring.reward != "orm":
        return None
    return load_reward_model(scoring.orm, tokenizer, device=device)


def sequence_kl(old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, action_mask: torch.Tensor) -> float:
    """The mean over rollouts of the k1 KL estimate summed over each completion (NaN without a reference)."""
    if ref_logprobs is None:
        return float("nan")
    return float(torch.where(action_mask, old_logprobs - ref_logprobs, 0.0).sum(-1).mean())


def advantages(cfg: Config, batch: RolloutBatch, scores: Scores, old_logprobs: torch.Tensor,
               ref_logprobs: torch.Tensor | None, old_values: torch.Tensor, kl_coef: float):
    """(advantages (N, C), returns (N, C)): GAE over the per-token rewards minus kl_coef x the k1 KL
    (Ziegler et al. 2019, eq. 2), whitened over the batch's action tokens unless --no-whiten-advantages."""
    action = batch.action_mask
    rewards = scores.token_rewards
    if ref_logprobs is not None:
        penalty, _ = kl_penalty_rewards(old_logprobs, ref_logprobs, action, kl_coef, "k1")
        rewards = rewards + penalty
    adv, returns = gae(rewards, old_values, action, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        adv = whiten(adv, action)
    return adv, returns


def learn(cfg: Config, m: Models, optimizer, params, exp: Experience, st: PPOState, device, run_dir) -> LearnStats:
    """``ppo_epochs`` passes over the batch in minibatches of ``batch_size``; each minibatch is one optimizer step
    (``rollouts.optimizer_step``). Token-level means over the whole minibatch: every micro-batch's loss is
    divided by the minibatch's token counts, as in training.py."""
    size = cfg.optim.batch_size
    # the schedule's length: every planned step
    total_steps = cfg.iterations * cfg.ppo_epochs * max(1, math.ceil(cfg.prompts * cfg.sampling.k / size))
    sharded = distributed.is_sharded(m.policy)
    m.policy.train()
    steps = []
    for rows in minibatches(torch.arange(len(exp.advantages)), size, cfg.ppo_epochs, cfg.run.seed + st.iteration * 31):
        mb = exp.select(rows)
        set_lr(optimizer, cfg.optim.lr, lr_at(st.opt_steps, total_steps, cfg.optim.warmup_steps,
                                              cfg.optim.min_lr_ratio))
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
    logp, values = forward_policy(m.policy, m.head, part.batch, True, device)
    loss, pstats = ppo_policy_loss(logp, part.old_logprobs.to(device), part.advantages.to(device),
                                   part.batch.loss_mask.to(device), clip=cfg.clip, total=max(1, n_loss),
                                   is_weights=part.is_weights.to(device) if part.is_weights is not None else None)
    v_loss, v_clipfrac = value_loss(values, part.old_values.to(device), part.returns.to(device),
                                    part.batch.action_mask.to(device), clip=cfg.value_clip, total=max(1, n_action))
    return loss + cfg.vf_coef * v_loss, pstats, v_clipfrac


def main(cfg: Config) -> None:
    train(cfg)
