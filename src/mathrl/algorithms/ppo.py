"""PPO with a value head, GAE and a KL penalty to a reference model; GRPO, RLOO and REINFORCE++ without a critic.

The paper's PPO (Havrilla et al. 2024, section 3.2, following Ziegler et al. 2019 / trlX) and the critic-free
variants users run today, in one loop selected by ``--advantage``:

- ``gae`` (PPO): a value head **on the policy's trunk** (an MLP on the last hidden state, sharing every
  transformer layer with the policy, as trlX's "hydra" heads do). By default the value loss does not flow into
  the shared trunk (``--value-trunk-grad`` lets it, weighted by ``vf_coef``). Per-token
  rewards are the outcome reward at the last token (plus dense step rewards) minus ``kl_coef`` x the k1 KL
  estimate log pi - log pi_ref at every token; advantages by GAE (gamma 1, lambda 0.95), whitened; clipped
  ratio (0.2) and clipped value loss; ``kl_target`` > 0 makes the coefficient adaptive (Ziegler et al.).
- ``grpo`` (Shao et al. 2024): advantage (r - mean_group) / std_group, the same for every token of a sample;
  ``rloo`` (Ahmadian et al. 2024): r - mean of the other samples of the prompt; ``reinforce++`` (Hu et al. 2025):
  (r - mean_batch) / std_batch (``--advantage grpo --advantage-scale batch``: the group baseline with the batch's
  std, their REINFORCE++-baseline). No critic. With ``kl_coef`` > 0 the KL to the reference enters the loss (k3
  estimator, as in GRPO; Hu et al. put it in the reward). Groups whose samples all got the same reward carry no
  signal: their fraction is logged (``zero_signal_fraction``); ``--zero-signal drop`` drops them
  and ``--zero-signal refill`` (DAPO's dynamic sampling) draws further prompts until the batch is full of groups
  with signal, every rollout drawn counted in the budget (``--max-rollouts``). The loss of these methods sits near
  zero by construction (advantages average to zero within a group, trl#2703 / #3452): watch the reward and maj@1,
  not the loss.

Loop per iteration: **collect** K samples for a batch of training prompts -> **score** them through the task
(``--reward sparse|dense|orm``) -> reference log-probs, old values -> **advantages** -> **learn**:
``ppo_epochs`` passes of minibatch updates -> **evaluate** every ``eval_every`` iterations -> **checkpoint**.
With ``--engine vllm`` the trainer recomputes the rollouts' log-probs (the engine's kernels differ from its own)
and each token's loss is weighted by the truncated importance weight min(pi_trainer / pi_engine, ``vllm_is_cap``)
(``engine_correction``; the mismatch KL, the capped fraction and the largest ratio are logged per iteration).
Divergence guard: a non-finite loss, or a mean KL to the reference above ``kl_bound``, stops the run with a
message; the last good checkpoint is kept.

Shapes: N = rollouts in the batch, T = tokens (prompt + completion, right-padded).
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
from mathrl.advantages import adaptive_kl_coef, gae, group_advantages, group_signal, kl_penalty_rewards, whiten, \
    zero_signal_fraction
from mathrl.config import field, group, save as save_config
from mathrl.errors import UsageError
from mathrl.evaluate import evaluate_in_run
from mathrl.losses import AGGREGATIONS, POLICY_LOSSES, masked_token_mean, ppo_policy_loss, \
    truncated_importance_weights, value_loss
from mathrl.models import apply_lora, final_model, load_model
from mathrl.rewards import dense_step_rewards, is_user_reward, outcome_rewards, overlong_penalty, user_reward
from mathrl.runlog import RunLogger, progress, write_history
from mathrl.runsetup import few_shot_examples, recorded_shots, rng_state, set_rng_state, start_run, task_of, \
    warn_tiny_default_lr, write_meta
from mathrl.sampler import SamplingParams, completion_stats
from mathrl.settings import Compute, Data, Evaluation, FewShot, Lora, Optim, Prompting, Run, Sampling, fsdp, \
    no_lora_with_fsdp, resume, validate_groups
from mathrl.tasks import task_options
from mathrl.tasks.prompting import prompt_record
from mathrl.training import RolloutBatch, clip_and_step, forward_policy, lr_at, make_optimizer, pack_rollouts, \
    set_lr, split_micro


@dataclass
class Config:
    model: str = field("", "starting policy (an SFT model, or a pretrained one, few-shot prompted) (required)")
    out: str = field("runs/ppo", "run directory (the final policy is written to OUT/model)")
    data: Data = group(Data)
    prompting: Prompting = group(Prompting)
    advantage: str = field("gae", "gae (PPO with a value head), grpo or rloo (group baselines, no critic), "
                                  "reinforce++ (the batch's mean and std, no critic: Hu et al. 2025)")
    reward: str = field("sparse", "sparse (answer correct), verified, dense (+ matched steps), orm, or "
                                  "module:function (your own, TRL's signature: f(prompts, completions, **columns))")
    orm: str = field("", "reward-model directory (reward orm)")
    orm_mode: str = field("terminal", "orm reward: terminal (score at the end) or step (score changes at step ends)")
    iterations: int = field(40, "rollout batches")
    prompts: int = field(64, "prompts per rollout batch")
    sampling: Sampling = group(Sampling)  # k: the group size for grpo/rloo (>= 2)
    few_shot: FewShot = group(FewShot)
    ppo_epochs: int = field(2, "passes over each rollout batch")
    # batch_size: rollouts per optimizer step (a minibatch); constant learning rate after warmup by default
    optim: Optim = group(Optim, lr=1e-4, warmup_steps=5, weight_decay=0.0, min_lr_ratio=1.0, batch_size=64)
    clip: float = field(0.2, "PPO ratio clip (the lower side, and the upper one unless --clip-high)")
    clip_high: float = field(0.0, "upper ratio clip (DAPO clip-higher: 0.28; 0: the same as --clip)")
    policy_loss: str = field("ppo", "ppo (clipped ratio per token), gspo (one ratio per sequence; grpo/rloo) or "
                                    "cispo (clipped, detached importance weight x log pi)")
    loss_aggregation: str = field("token", "token (DAPO: every token of the minibatch weighted equally), sequence "
                                           "(GRPO: mean per completion, then over completions) or constant "
                                           "(Dr.GRPO: / (completions x max_new_tokens))")
    advantage_scale: str = field("group", "grpo: divide by the group's std (group), the batch's std (batch: "
                                          "REINFORCE++-baseline) or not (none: Dr.GRPO)")
    overlong_buffer: int = field(0, "DAPO's soft overlong penalty: the reward falls linearly to -1 over the last N "
                                    "tokens before max_new_tokens (0: off)")
    mask_truncated: bool = field(False, "leave completions cut at max_new_tokens out of the policy loss (DAPO's "
                                        "overlong filtering)")
    value_clip: float = field(0.2, "value-loss clip (gae)")
    vf_coef: float = field(0.5, "value-loss weight (gae)")
    value_trunk_grad: bool = field(False, "let the value loss train the shared trunk too (default: the value head "
                                          "reads the trunk's hidden states but its gradient stops there)")
    gamma: float = field(1.0, "discount (gae)")
    lam: float = field(0.95, "GAE lambda")
    whiten_advantages: bool = field(True, "whiten GAE advantages over the batch")
    kl_coef: float = field(0.05, "KL-to-reference coefficient (reward penalty for gae, loss term for the others)")
    kl_target: float = field(0.0, "adaptive KL: target KL per sequence (0: fixed coefficient)")
    kl_bound: float = field(10.0, "stop (divergence) when the mean KL to the reference per sequence exceeds this")
    zero_signal: str = field("keep", "grpo/rloo groups whose samples all got the same return (no advantage): keep, "
                                     "drop them, or refill (DAPO's dynamic sampling: drop them and sample further "
                                     "prompts until --prompts groups carry signal; every rollout drawn counts)")
    refill_rounds: int = field(4, "--zero-signal refill: extra sampling rounds per iteration at most (then the "
                                  "iteration learns from the groups it has)")
    max_rollouts: int = field(0, "stop once this many rollouts were drawn (0: after --iterations); the budget of a "
                                 "run whose iterations draw a varying number (--zero-signal refill)")
    lora: Lora = group(Lora)  # with LoRA the reference is the frozen base (the adapters disabled)
    vllm_is_cap: float = field(2.0, "--engine vllm: cap of each token's importance weight pi_trainer / pi_engine (TIS)")
    fsdp: bool = fsdp()
    eval_every: int = field(10, "iterations between evaluations (0: only at the end)")
    eval: Evaluation = group(Evaluation)
    checkpoint_every: int = field(5, "iterations between checkpoints")
    run: Run = group(Run)
    compute: Compute = group(Compute)
    resume: bool = resume()

    def validate(self) -> None:
        validate_groups(self)
        self.sampling.require_samples()
        no_lora_with_fsdp(self.lora, self.fsdp)
        if not self.model:
            raise UsageError("--model is required (the starting policy)")
        if self.advantage not in ("gae", "grpo", "rloo", "reinforce++"):
            raise UsageError(f"unknown advantage {self.advantage!r} (gae, grpo, rloo, reinforce++)")
        if self.advantage in ("grpo", "rloo") and self.sampling.k < 2:
            raise UsageError(f"--advantage {self.advantage} compares samples of one prompt: needs k >= 2 "
                             "(with k=1 every advantage is 0 and training is a silent no-op)")
        if is_user_reward(self.reward):
            user_reward(self.reward)  # import it now: a typo fails before any work
        elif self.reward not in ("sparse", "verified", "dense", "orm"):
            raise UsageError(f"unknown reward {self.reward!r} (sparse, verified, dense, orm, module:function)")
        if (self.reward == "orm") != bool(self.orm):
            raise UsageError("--reward orm and --orm DIR go together")
        if self.orm_mode not in ("terminal", "step"):
            raise UsageError("orm_mode must be terminal or step")
        if self.zero_signal not in ZERO_SIGNAL:
            raise UsageError(f"unknown zero_signal {self.zero_signal!r} (known: {', '.join(ZERO_SIGNAL)})")
        if self.zero_signal != "keep" and self.advantage in ("gae", "reinforce++"):
            raise UsageError("--zero-signal drop/refill applies to grpo/rloo (a value or batch baseline gives every "
                             "sample an advantage)")
        if self.refill_rounds < 1 or self.max_rollouts < 0:
            raise UsageError("refill_rounds must be >= 1 and max_rollouts >= 0")
        if self.refill_rounds != 4 and self.zero_signal != "refill":
            raise UsageError("--refill-rounds applies to --zero-signal refill")
        for name in ("iterations", "prompts", "ppo_epochs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        if self.policy_loss not in POLICY_LOSSES or self.loss_aggregation not in AGGREGATIONS:
            raise UsageError(f"policy_loss must be one of {', '.join(POLICY_LOSSES)} and loss_aggregation one of "
                             f"{', '.join(AGGREGATIONS)}")
        if self.policy_loss == "gspo" and self.advantage == "gae":
            raise UsageError("--policy-loss gspo takes one advantage per completion: use it with grpo or rloo")
        if self.advantage_scale not in ("group", "batch", "none"):
            raise UsageError("advantage_scale must be group, batch or none")
        if self.advantage_scale != "group" and self.advantage != "grpo":
            raise UsageError("--advantage-scale applies to --advantage grpo")
        if not 0 <= self.overlong_buffer <= self.sampling.max_new_tokens:
            raise UsageError("overlong_buffer must lie in [0, max_new_tokens]")
        if self.clip_high < 0:
            raise UsageError("clip_high must be >= 0 (0: the same as clip)")
        if self.vllm_is_cap < 1 or (self.vllm_is_cap != 2.0 and self.sampling.engine != "vllm"):
            raise UsageError("--vllm-is-cap must be >= 1 and applies to --engine vllm")
        if self.clip <= 0 or self.kl_coef < 0 or self.kl_bound <= 0:
            raise UsageError("clip and kl_bound must be > 0; kl_coef >= 0")


ZERO_SIGNAL = ("keep", "drop", "refill")


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


def _token_positions(tokenizer, completion_ids, char_ends) -> list[int]:
    """For each character offset, the index of the completion token whose text reaches it."""
    out, cum, pos = [], 0, 0
    lengths = []
    for i in range(len(completion_ids)):
        cum = len(tokenizer.decode(completion_ids[: i + 1], skip_special_tokens=True))
        lengths.append(cum)
    for end in char_ends:
        while pos < len(lengths) - 1 and lengths[pos] < end:
            pos += 1
        out.append(pos)
    return out


@dataclass
class PPOState:
    """What a PPO/GRPO/RLOO run carries from one iteration to the next (saved in every checkpoint with the
    optimizer, the RNG state and the value head)."""

    iteration: int = 0
    kl_coef: float = 0.0  # changes with --kl-target (adaptive KL)
    opt_steps: int = 0
    rollouts_used: int = 0
    prompts_used: int = 0  # position in the shuffled pass over the train split
    history: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, prompts: int) -> "PPOState":
        """From a checkpoint; one written before ``prompts_used`` existed drew ``prompts`` per iteration."""
        d = {"prompts_used": d["iteration"] * prompts, **d}
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclass
class LearnStats:
    """Means over the optimizer steps of one iteration (NaN when no step ran)."""

    loss: float
    clipfrac: float
    approx_kl: float
    value_clipfrac: float
    grad_norm: float
    clipfrac_low: float  # ratio below 1 - clip where A < 0
    clipfrac_high: float  # ratio above 1 + clip_high where A > 0
    ratio_mean: float  # mean importance ratio pi / pi_old
    steps: int


@dataclass
class Models:
    """The policy and what trains or scores beside it."""

    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None: no KL term, or LoRA (the base with adapters disabled)
    head: ValueHead | None  # gae only
    use_reference: bool


def build_models(cfg: Config, device: str) -> tuple[Models, object]:
    policy, tokenizer = load_model(cfg.model, device=device, for_training=True, precision=cfg.run.precision,
                                   compute=cfg.compute)
    warn_tiny_default_lr(cfg, policy)
    # GRPO/RLOO without a KL term need no reference model (as TRL with beta=0): no copy in memory, no extra
    # forward pass per iteration; the KL is then not measured and kl_bound does not apply
    use_reference = cfg.advantage == "gae" or cfg.kl_coef > 0 or cfg.kl_target > 0
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
    head = ValueHead(policy.config.hidden_size, cfg.value_trunk_grad).to(device) if cfg.advantage == "gae" else None
    return Models(policy, reference, head, use_reference), tokenizer


def train(cfg: Config) -> Path:
    ctx = start_run(cfg.out, cfg.resume, cfg.run)
    run_dir, device = ctx.dir, ctx.device
    task = task_of(cfg.model, cfg.data, cfg.prompting)
    save_config(cfg, run_dir / "config.yaml")
    m, tokenizer = build_models(cfg, device)
    policy, head = m.policy, m.head
    engines.attach(policy, tokenizer, cfg.sampling, cfg.model)  # after the reference copy and LoRA
    params = [p for p in policy.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    trained = torch.nn.ModuleDict({"policy": policy, **({"value_head": head} if head is not None else {})})
    optimizer = make_optimizer(trained, cfg.optim.lr, cfg.optim.weight_decay)
    scorer = None
    if cfg.reward == "orm":
        from mathrl.reward_model import load_reward_model

        scorer = load_reward_model(cfg.orm, tokenizer, device=device)
    shots = few_shot_examples(task, cfg.model, cfg.few_shot.shots, cfg.few_shot.exemplars)
    questions = task.problems("train")
    eval_problems = task.problems(cfg.eval.eval_split)[: cfg.eval.eval_size] if cfg.eval.eval_size else []

    st = PPOState(kl_coef=cfg.kl_coef)
    last = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if last is not None:
        saved = ckpt.load_state(last)
        ckpt.load_weights_into(policy, last)  # with LoRA the adapters (the base weights are the start model's)
        if head is not None:
            head.load_state_dict(saved["value_head"])
        distributed.load_optimizer_state(trained, optimizer, saved["optimizer"])
        set_rng_state(saved["rng"])
        st = PPOState.from_dict(saved, cfg.prompts)
        print(f"resumed {run_dir} at iteration {st.iteration}")
    logger = RunLogger(run_dir, resume_step=st.iteration if last is not None else None)

    def save() -> None:
        extra = {"optimizer": distributed.optimizer_state(trained, optimizer), "rng": rng_state(),
                 "value_head": head.state_dict() if head is not None else None}
        ckpt.save_checkpoint(run_dir, st.iteration, policy, tokenizer, {**st.to_dict(), **extra})

    def run_eval() -> dict:
        return evaluate_in_run(policy, tokenizer, task, eval_problems, cfg.eval, cfg.sampling, seed=cfg.run.seed,
                               run_dir=run_dir, rollouts=st.rollouts_used, shots=shots,
                               when=f"at iteration {st.iteration} ({st.rollouts_used} rollouts)")

    k = cfg.sampling.k
    print(f"{cfg.advantage}: {cfg.iterations} iterations x {cfg.prompts} prompts x K={k}, reward {cfg.reward}, "
          f"{ctx.threads} threads, {device}")
    if st.iteration == 0 and eval_problems:
        st.history.append({"iteration": 0, "rollouts": 0, **run_eval()})
        logger.log(0, **st.history[-1])
    order = list(range(len(questions)))
    random.Random(cfg.run.seed).shuffle(order)
    bar = progress(cfg.iterations, cfg.advantage, "iter", initial=st.iteration)
    while st.iteration < cfg.iterations and not (cfg.max_rollouts and st.rollouts_used >= cfg.max_rollouts):
        t0 = time.time()
        # step 1: collect K samples for this iteration's prompts (a fixed shuffled pass over the train split);
        # step 2: score them through the task: per-token rewards (N, C) and each rollout's outcome return (N,)
        batch_q, prompts, rollouts, drawn = collect(cfg, st, policy, tokenizer, task, scorer, questions, order, shots)
        if not rollouts:  # --max-rollouts leaves less than one group to draw
            break
        t_sample = time.time() - t0
        batch = pack_rollouts(rollouts, tokenizer.pad_token_id)
        if cfg.mask_truncated:  # DAPO's overlong filtering: truncated completions teach the policy nothing
            truncated = torch.tensor([r.finish_reason == "length" for r in rollouts])
            batch.loss_mask[truncated] = False
        token_rewards, outcome = drawn.rewards(batch.action_mask.shape) if drawn else \
            score(cfg, task, tokenizer, scorer, rollouts, batch_q, prompts, batch.action_mask)

        # step 3: reference log-probs and old values (no gradient); step 4: advantages
        mismatch = engine_correction(m, batch, cfg, device) if engines.name(policy) != "mathrl" else {}
        batch.ref_logprobs, batch.old_values = old_passes(m, batch, cfg.optim.micro_batch_size, device)
        batch.outcome = outcome
        kl_seq = float(torch.where(batch.action_mask, batch.old_logprobs - batch.ref_logprobs, 0.0).sum(-1).mean()) \
            if m.use_reference else float("nan")  # mean KL per sequence (k1)
        batch.advantages, batch.returns, seq_returns = advantages(cfg, batch, token_rewards, st.kl_coef)
        zero_signal = float("nan") if head is not None else (
            drawn.zero_signal_fraction if drawn else zero_signal_fraction(seq_returns, k))  # refill: of all drawn
        keep = torch.arange(len(rollouts))
        if cfg.zero_signal == "drop":  # the groups whose returns differ (advantages.group_signal)
            keep = group_signal(seq_returns, k).repeat_interleave(k).nonzero().flatten()

        # step 5: learn: ppo_epochs passes of minibatch updates
        stats = learn(cfg, m, optimizer, params, batch, keep, st, device, run_dir)

        # step 6: log, adapt the KL coefficient, guard against divergence
        st.iteration += 1
        record = {"iteration": st.iteration, "rollouts": st.rollouts_used, "reward": float(outcome.mean()),
                  **({"sampling_rounds": drawn.rounds, "groups": len(batch_q)} if drawn else {}),
                  **completion_stats(rollouts), "kl": kl_seq, "kl_coef": st.kl_coef,
                  "sample_seconds": round(t_sample, 1), "iteration_seconds": round(time.time() - t0, 3), **mismatch}
        if not m.use_reference:
            del record["kl"]  # not measured (no reference model)
        if stats.steps:
            record.update(loss=stats.loss, clipfrac=stats.clipfrac, approx_kl=stats.approx_kl,
                          grad_norm=stats.grad_norm, clipfrac_low=stats.clipfrac_low,
                          clipfrac_high=stats.clipfrac_high, ratio_mean=stats.ratio_mean, **({"value_clipfrac": stats.value_clipfrac} if head else {}))
        if head is None:
            record["zero_signal_fraction"] = zero_signal
        if m.use_reference and (not math.isfinite(kl_seq) or kl_seq > cfg.kl_bound):
            raise ckpt.divergence_error(run_dir, st.iteration, f"KL to the reference reached {kl_seq:.2f} > kl_bound "
                                                               f"{cfg.kl_bound}")
        if cfg.kl_target > 0:
            st.kl_coef = adaptive_kl_coef(st.kl_coef, kl_seq, cfg.kl_target, 10_000, len(rollouts))
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{kl_seq:.3f}")
        print(f"iteration {st.iteration}/{cfg.iterations}: reward {record['reward']:.3f}"
              + (f", kl {kl_seq:.3f}" if m.use_reference else "")
              + (f", zero-signal groups {zero_signal:.2f}" if head is None else "")
              + f" ({record['iteration_seconds']:.0f}s, sampling {t_sample:.0f}s)", flush=True)
        last_iteration = st.iteration == cfg.iterations or bool(cfg.max_rollouts and
                                                                st.rollouts_used >= cfg.max_rollouts)
        if eval_problems and (last_iteration or (cfg.eval_every and st.iteration % cfg.eval_every == 0)):
            record.update(run_eval())
        st.history.append(record)
        logger.log(st.iteration, **{k: v for k, v in record.items() if isinstance(v, (int, float))})
        if st.iteration % cfg.checkpoint_every == 0 or last_iteration:
            save()
            write_history(run_dir, st.history, cfg.eval.eval_k, cfg.advantage)
    bar.close()
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(final_model(policy, cfg.lora), tokenizer, model_dir)
    if head is not None and distributed.is_main():
        torch.save(head.state_dict(), run_dir / "value_head.pt")
    write_meta(model_dir, task=task_options(task), stage=cfg.advantage, **recorded_shots(cfg.model),
               **prompt_record(task), base=cfg.model)
    write_history(run_dir, st.history, cfg.eval.eval_k, cfg.advantage)
    print(f"{cfg.advantage} policy written to {model_dir}")
    return model_dir


@dataclass
class Drawn:
    """What one iteration drew beyond the groups it learns from (``--zero-signal refill``): its sampling rounds,
    the fraction of all the groups drawn that carried no signal, and the kept rollouts' scores (each row's token
    rewards up to its completion length, and its outcome), so that they are not graded twice."""

    rounds: int
    zero_signal_fraction: float
    reward_rows: list[torch.Tensor]  # per kept rollout: (completion length,) token rewards
    outcome: torch.Tensor  # (N,) per kept rollout

    def rewards(self, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token rewards (N, C), outcome (N,)) laid out as ``score`` lays them out for the packed batch: each row
        left-aligned (completion tokens first), zero beyond its length."""
        token_rewards = torch.zeros(shape)
        for i, row in enumerate(self.reward_rows):
            token_rewards[i, : len(row)] = row
        return token_rewards, self.outcome


def collect(cfg: Config, st: PPOState, policy, tokenizer, task, scorer, questions, order, shots):
    """One iteration's training groups: (problems, prompts, rollouts, Drawn or None). Draws the next ``prompts``
    prompts of the shuffled pass x K. With ``--zero-signal refill`` (DAPO's dynamic sampling, Yu et al. 2025,
    sec. 3.2 and Algorithm 1) it keeps only the groups whose returns differ (``advantages.group_signal``) and
    draws the next ``prompts`` prompts, up to ``refill_rounds`` more times, until ``prompts`` groups carry signal
    (the first ones drawn are kept; with fewer after the last round the iteration learns from those). Refill
    scores each round to find the signal and hands the kept rollouts' scores to the caller in ``Drawn`` (graded
    once). Every rollout drawn counts in ``st.rollouts_used``, kept or not, and
    ``--max-rollouts`` caps the draws (no group left to draw: empty lists). Advances ``st.prompts_used`` and
    ``st.rollouts_used``."""
    k, refill = cfg.sampling.k, cfg.zero_signal == "refill"
    batch_q: list = []
    rollouts: list = []
    reward_rows: list = []
    outcomes: list = []
    signal_groups = total_groups = rounds = 0
    while rounds <= (cfg.refill_rounds if refill else 0) and len(batch_q) < cfg.prompts:
        n = cfg.prompts
        if cfg.max_rollouts:
            n = min(n, (cfg.max_rollouts - st.rollouts_used) // k)
        if n <= 0:
            break
        round_q = [questions[order[(st.prompts_used + j) % len(order)]] for j in range(n)]
        prompts = [task.prompt(p, shots) for p in round_q]
        policy.eval()
        drawn = engines.sample(policy, tokenizer, prompts, k, SamplingParams(
            temperature=cfg.sampling.temperature, max_new_tokens=cfg.sampling.max_new_tokens,
            stop_strings=task.stop_strings, seed=cfg.run.seed + 7919 * st.iteration + rounds,
            token_budget=cfg.sampling.token_budget), keys=[p.id for p in round_q])
        st.prompts_used += n
        st.rollouts_used += len(drawn)
        rounds += 1
        if not refill:
            return round_q, prompts, drawn, None
        # the returns the group advantages are computed from (advantages(): outcome plus step rewards)
        returns, outcome = score(cfg, task, tokenizer, scorer, drawn, round_q, prompts,
                                 pack_rollouts(drawn, 0).action_mask)
        rows = [returns[i, : len(r.completion_ids)] for i, r in enumerate(drawn)]
        signal = group_signal(returns.sum(-1), k).tolist()
        signal_groups, total_groups = signal_groups + sum(signal), total_groups + n
        for j in [j for j in range(n) if signal[j]][: cfg.prompts - len(batch_q)]:
            rollouts += [dataclasses.replace(r, prompt_index=len(batch_q)) for r in drawn[j * k:(j + 1) * k]]
            reward_rows += rows[j * k:(j + 1) * k]
            outcomes.append(outcome[j * k:(j + 1) * k])
            batch_q.append(round_q[j])
    if rounds and not batch_q:  # no group had signal in any round: the last round's (no advantage; a KL term acts)
        batch_q, rollouts, reward_rows, outcomes = round_q, drawn, rows, [outcome]
    prompts = [task.prompt(p, shots) for p in batch_q]
    return batch_q, prompts, rollouts, Drawn(rounds, 1 - signal_groups / max(1, total_groups), reward_rows,
                                             torch.cat(outcomes) if outcomes else torch.zeros(0))


def score(cfg: Config, task, tokenizer, scorer, rollouts, batch_q, prompts, action: torch.Tensor):
    """(token rewards (N, C), outcome returns (N,)): the outcome reward at each row's last token, plus step
    rewards at step-end tokens (dense: matched reference steps; orm step: the ORM's score changes)."""
    problems = [batch_q[r.prompt_index] for r in rollouts]
    texts = [r.text for r in rollouts]
    outcome_kind = "sparse" if cfg.reward == "dense" else cfg.reward
    if cfg.reward == "orm" and cfg.orm_mode == "step":
        outcome = [0.0] * len(rollouts)  # the ORM's final score arrives through the step rewards
    else:
        outcome = outcome_rewards(task, problems, texts, outcome_kind, scorer.score_texts if scorer else None,
                                  [prompts[r.prompt_index] for r in rollouts])
    outcome_t = torch.tensor(outcome, dtype=torch.float32)
    token_rewards = torch.zeros(action.shape)  # (N, C)
    token_rewards[torch.arange(len(rollouts)), action.sum(-1) - 1] = outcome_t  # at each row's last token
    if cfg.reward == "dense" or (cfg.reward == "orm" and cfg.orm_mode == "step"):
        _add_step_rewards(task, tokenizer, scorer, rollouts, problems, prompts, token_rewards, cfg)
    if cfg.overlong_buffer:  # DAPO's soft length penalty, at the last token (not part of the logged outcome)
        penalty = torch.tensor([overlong_penalty(len(r.completion_ids), cfg.sampling.max_new_tokens,
                                                 cfg.overlong_buffer) for r in rollouts])
        token_rewards[torch.arange(len(rollouts)), action.sum(-1) - 1] += penalty
    return token_rewards, outcome_t


@torch.no_grad()
def engine_correction(m: Models, batch: RolloutBatch, cfg: Config, device) -> dict:
    """--engine vllm: the rollouts' log-probs are the engine's (mu), computed by its kernels and batching, not the
    trainer's. Recompute them with the trainer (pi_old, the denominator of the PPO ratio from here on) and weight
    each token's loss by the truncated importance weight min(pi_old / mu, vllm_is_cap) (``batch.is_weights``).
    Returns the iteration's mismatch diagnostics for the log."""
    engine_logp = batch.old_logprobs
    old = torch.zeros_like(engine_logp)
    for rows in split_micro(torch.arange(len(engine_logp)), cfg.optim.micro_batch_size):
        lp, _ = forward_policy(m.policy, None, batch.select(rows), False, device)
        old[rows, : lp.shape[1]] = lp.cpu()
    batch.old_logprobs = old
    batch.is_weights, stats = truncated_importance_weights(old, engine_logp, batch.loss_mask, cfg.vllm_is_cap)
    return {"mismatch_kl": stats.kl, "is_capped_fraction": stats.capped_fraction, "is_max_ratio": stats.max_ratio}


@torch.no_grad()
def old_passes(m: Models, batch: RolloutBatch, micro: int, device):
    """(reference log-probs (N, C), old values (N, C) or None), in micro-batches. Without a reference model the
    old log-probs stand in (no KL term reads them)."""
    old_logp = batch.old_logprobs
    ref_logp, old_values = old_logp, None
    if m.use_reference:
        ref_logp = torch.zeros_like(old_logp)
        for rows in split_micro(torch.arange(len(old_logp)), micro):
            mb = batch.select(rows)
            if m.reference is not None:
                lp, _ = forward_policy(m.reference, None, mb, False, device)
            else:
                with m.policy.disable_adapter():
                    lp, _ = forward_policy(m.policy, None, mb, False, device)
            ref_logp[rows, : lp.shape[1]] = lp.cpu()
    if m.head is not None:
        old_values = torch.zeros_like(old_logp)
        for rows in split_micro(torch.arange(len(old_logp)), micro):
            _, v = forward_policy(m.policy, m.head, batch.select(rows), True, device)
            old_values[rows, : v.shape[1]] = v.cpu()
    return ref_logp, old_values


def advantages(cfg: Config, batch: RolloutBatch, token_rewards: torch.Tensor, kl_coef: float):
    """(advantages (N, C), returns (N, C) or None, sequence returns (N,)).

    gae: GAE over the per-token rewards minus kl_coef x the k1 KL, whitened. grpo/rloo/reinforce++: the group (or
    batch) baseline of the sequence returns (outcome + step rewards), the same advantage for every token of a
    sample."""
    action = batch.action_mask
    seq_returns = token_rewards.sum(-1)  # (N,) outcome (+ dense step credit)
    if cfg.advantage == "gae":
        penalty, _ = kl_penalty_rewards(batch.old_logprobs, batch.ref_logprobs, action, kl_coef, "k1")
        adv, returns = gae(token_rewards + penalty, batch.old_values, action, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            adv = whiten(adv, action)
        return adv, returns, seq_returns
    adv_seq = group_advantages(seq_returns, cfg.sampling.k, cfg.advantage,
                               **({"scale": cfg.advantage_scale} if cfg.advantage == "grpo" else {}))
    return adv_seq.unsqueeze(-1).expand_as(batch.old_logprobs) * action, None, seq_returns


def learn(cfg: Config, m: Models, optimizer, params, batch: RolloutBatch, keep: torch.Tensor, st: PPOState,
          device, run_dir) -> LearnStats:
    """``ppo_epochs`` passes over the rows ``keep`` in minibatches of ``batch_size``; each minibatch is one
    optimizer step, its gradient accumulated over micro-batches of similar length (and, under torchrun, ranks).
    Token-level means over the whole minibatch: every micro-batch's loss is divided by the minibatch's token
    count, as in training.py."""
    use_values, kl_coef = m.head is not None, st.kl_coef
    size, micro = cfg.optim.batch_size, cfg.optim.micro_batch_size
    sharded = distributed.is_sharded(m.policy)
    n_mb = max(1, math.ceil(len(keep) / size)) if len(keep) else 0
    # the schedule's length: every planned step (skipped minibatches included)
    total_steps = cfg.iterations * cfg.ppo_epochs * max(1, math.ceil(cfg.prompts * cfg.sampling.k / size))
    m.policy.train()
    stats = []
    for epoch in range(cfg.ppo_epochs if len(keep) else 0):
        perm = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(
            cfg.run.seed + st.iteration * 31 + epoch))]
        for j in range(n_mb):
            mb = batch.select(perm[j * size : (j + 1) * size])
            if not use_values and not mb.advantages.any():
                # no signal: the loss is (numerically almost) zero, and Adam would turn its rounding noise into
                # full-size steps; skip the update
                continue
            set_lr(optimizer, cfg.optim.lr, lr_at(st.opt_steps, total_steps, cfg.optim.warmup_steps,
                                                  cfg.optim.min_lr_ratio))
            n_loss, n_action = int(mb.loss_mask.sum()), int(mb.action_mask.sum())
            rows = torch.arange(len(mb.prompt_of))
            if not use_values and kl_coef == 0:
                # a row whose advantage is 0 contributes exactly 0 to the loss and its gradient (no KL term): leave
                # it out of the forward and backward passes (with GRPO often half the batch)
                rows = mb.advantages.any(-1).nonzero().flatten()
            all_rows, rows = rows, rows[torch.tensor(distributed.local_rows(len(rows)), dtype=torch.long)]
            # micro-batches of rows of similar length (less padding); the gradients accumulate
            rows = rows[torch.argsort(mb.action_mask.index_select(0, rows).sum(-1), stable=True)]
            chunks = list(split_micro(rows, micro))
            if sharded:
                # FSDP gathers weights in every forward pass, so all ranks must run as many passes as rank 0 (which
                # has the most rows); the extra ones forward a row with weight 0 in the loss
                n_passes = len(list(split_micro(range(math.ceil(len(all_rows) / distributed.world_size())), micro)))
                chunks += [None] * (n_passes - len(chunks))
            optimizer.zero_grad(set_to_none=True)
            loss_value, parts = 0.0, []
            for chunk in chunks:
                part = mb.select(chunk if chunk is not None else all_rows[:1])
                loss, pstats, v_clipfrac = _loss(cfg, m, part, kl_coef, n_loss, n_action, len(mb.prompt_of), device)
                if chunk is None:
                    loss.mul(0.0).backward()
                    continue
                loss.backward()
                loss_value += loss.item()
                parts.append((pstats.clipfrac, pstats.approx_kl, float(v_clipfrac), pstats.clipfrac_low,
                              pstats.clipfrac_high, pstats.ratio_mean))
            distributed.all_reduce_grads(params)
            (loss_value,) = distributed.all_reduce_sum([loss_value])
            if not math.isfinite(loss_value):
                raise ckpt.divergence_error(run_dir, st.iteration, f"loss became {loss_value}")
            norm = clip_and_step(params, optimizer, cfg.optim.grad_clip)  # frees the gradients before sampling
            st.opt_steps += 1
            stats.append((loss_value, *(_mean(p[i] for p in parts) for i in range(3)), float(norm),
                          *(_mean(p[i] for p in parts) for i in range(3, 6))))
    return LearnStats(*(_mean(s[i] for s in stats) for i in range(8)), steps=len(stats))


def _loss(cfg: Config, m: Models, part: RolloutBatch, kl_coef: float, n_loss: int, n_action: int, n_rows: int,
          device):
    """The loss of one micro-batch, summed over its tokens and divided by the minibatch's token counts:
    the clipped policy loss, plus vf_coef x the clipped value loss (gae) or kl_coef x the k3 KL (grpo/rloo)."""
    logp, values = forward_policy(m.policy, m.head, part, m.head is not None, device)
    lmask = part.loss_mask.to(device)
    loss, pstats = ppo_policy_loss(logp, part.old_logprobs.to(device), part.advantages.to(device), lmask,
                                   clip=cfg.clip, total=max(1, n_loss), clip_high=cfg.clip_high or None,
                                   kind=cfg.policy_loss, aggregation=cfg.loss_aggregation, n_rows=n_rows,
                                   max_len=cfg.sampling.max_new_tokens,
                                   is_weights=part.is_weights.to(device) if part.is_weights is not None else None)
    v_clipfrac = 0.0
    if m.head is not None:
        v_loss, v_clipfrac = value_loss(values, part.old_values.to(device), part.returns.to(device),
                                        part.action_mask.to(device), clip=cfg.value_clip, total=max(1, n_action))
        loss = loss + cfg.vf_coef * v_loss
    elif kl_coef > 0:
        _, kl = kl_penalty_rewards(logp, part.ref_logprobs.to(device), lmask, 1.0, "k3")
        loss = loss + kl_coef * masked_token_mean(kl, lmask, max(1, n_loss))
    return loss, pstats, v_clipfrac


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _add_step_rewards(task, tokenizer, scorer, rollouts, problems, prompts, token_rewards, cfg: Config) -> None:
    """Dense rewards at step-end tokens: matched reference steps (dense) or ORM score changes (orm, step)."""
    for i, (r, p) in enumerate(zip(rollouts, problems)):
        text = r.text
        spans = task.step_spans(text)
        if not spans:
            continue
        positions = _token_positions(tokenizer, r.completion_ids, [end for _, end in spans])
        if cfg.reward == "dense":
            step_rewards = dense_step_rewards(task, p, text)
        else:  # orm, step: potential-based shaping with the ORM's p(correct) after each step
            scores = scorer.score_texts([prompts[r.prompt_index]] * len(spans), [text[:end] for _, end in spans])
            step_rewards = [b - a for a, b in zip([0.5] + scores[:-1], scores)]
            final = scorer.score_texts([prompts[r.prompt_index]], [text])[0]
            token_rewards[i, len(r.completion_ids) - 1] += final - scores[-1]
        for pos, rew in zip(positions, step_rewards):
            token_rewards[i, pos] += rew


def main(cfg: Config) -> None:
    train(cfg)


@dataclass
class GRPOConfig(Config):
    """``mathrl grpo``: the same loop with group-normalised advantages and no critic."""

    out: str = field("runs/grpo", "run directory (the final policy is written to OUT/model)")
    advantage: str = field("grpo", "grpo (default here), rloo, reinforce++ or gae")
    kl_coef: float = field(0.0, "KL-to-reference coefficient in the loss (k3; 0: none, as in Dr.GRPO / DAPO)")
