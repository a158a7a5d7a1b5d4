"""PPO with a value head, GAE and a KL penalty to a reference model; GRPO and RLOO with group baselines.

The paper's PPO (Havrilla et al. 2024, section 3.2, following Ziegler et al. 2019 / trlX) and the critic-free
variants users run today, in one loop selected by ``--advantage``:

- ``gae`` (PPO): a value head **on the policy's trunk** (an MLP on the last hidden state, sharing every
  transformer layer with the policy, as trlX's "hydra" heads do). By default the value loss does not flow into
  the shared trunk (``--value-trunk-grad`` lets it, weighted by ``vf_coef``). Per-token
  rewards are the outcome reward at the last token (plus dense step rewards) minus ``kl_coef`` x the k1 KL
  estimate log pi - log pi_ref at every token; advantages by GAE (gamma 1, lambda 0.95), whitened; clipped
  ratio (0.2) and clipped value loss; ``kl_target`` > 0 makes the coefficient adaptive (Ziegler et al.).
- ``grpo`` (Shao et al. 2024): advantage (r - mean_group) / std_group, the same for every token of a sample;
  ``rloo`` (Ahmadian et al. 2024): r - mean of the other samples of the prompt. No critic. With ``kl_coef`` > 0
  the KL to the reference enters the loss (k3 estimator, as in GRPO). Groups whose samples all got the same
  reward carry no signal: their fraction is logged (``zero_signal_fraction``) and ``--skip-zero-signal``
  drops them. The loss of these methods sits near zero by construction (advantages average to zero within a
  group, trl#2703 / #3452): watch the reward and maj@1, not the loss.

Loop per iteration: **collect** K samples for a batch of training prompts -> **score** them through the task
(``--reward sparse|dense|orm``) -> reference log-probs, old values -> **advantages** -> **learn**:
``ppo_epochs`` passes of minibatch updates -> **evaluate** every ``eval_every`` iterations -> **checkpoint**.
Divergence guard: a non-finite loss, or a mean KL to the reference above ``kl_bound``, stops the run with a
message; the last good checkpoint is kept.

Shapes: N = rollouts in the batch, T = tokens (prompt + completion, right-padded).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mathrl import distributed
from mathrl import checkpoint as ckpt
from mathrl.advantages import adaptive_kl_coef, gae, group_advantages, kl_penalty_rewards, whiten, \
    zero_signal_fraction
from mathrl.config import field, save as save_config
from mathrl.errors import UsageError
from mathrl.evaluate import evaluate, headline, summarize
from mathrl.losses import masked_token_mean, ppo_policy_loss, value_loss
from mathrl.models import load_model
from mathrl.plots import metrics_vs_x
from mathrl.rewards import dense_step_rewards, outcome_rewards
from mathrl.run import prepare_run_dir, read_meta, resolve_device, write_meta
from mathrl.runlog import RunLogger, progress
from mathrl.sampler import SamplingParams, sample
from mathrl.tasks import task_options
from mathrl.training import rng_state, seed_everything, set_rng_state, setup_threads


@dataclass
class Config:
    model: str = field("", "starting policy (an SFT model, or a pretrained one, few-shot prompted) (required)")
    out: str = field("runs/ppo", "run directory (the final policy is written to OUT/model)")
    task: str = field("", "task (default: the one recorded with the model)")
    level: int | None = field(None, "synthetic task level (default: the model's)")
    data_dir: str | None = field(None, "gsm8k/svamp data directory")
    extract: str | None = field(None, "gsm8k/svamp answer extraction: strict or flexible")
    advantage: str = field("gae", "gae (PPO with a value head), grpo or rloo (group baselines, no critic)")
    reward: str = field("sparse", "sparse (answer correct), verified, dense (+ matched steps), orm")
    orm: str = field("", "reward-model directory (reward orm)")
    orm_mode: str = field("terminal", "orm reward: terminal (score at the end) or step (score changes at step ends)")
    iterations: int = field(40, "rollout batches")
    prompts: int = field(64, "prompts per rollout batch")
    k: int = field(4, "samples per prompt (group size for grpo/rloo: >= 2)")
    temperature: float = field(1.0, "sampling temperature")
    max_new_tokens: int = field(128, "completion length limit")
    shots: int = field(-1, "few-shot examples in prompts (-1: as recorded with the model)")
    ppo_epochs: int = field(2, "passes over each rollout batch")
    minibatch_size: int = field(64, "rollouts per optimizer step")
    lr: float = field(1e-4, "learning rate (constant after warmup)")
    warmup_steps: int = field(5, "linear warmup steps")
    weight_decay: float = field(0.0, "AdamW weight decay")
    grad_clip: float = field(1.0, "gradient norm clip (0: off)")
    clip: float = field(0.2, "PPO ratio clip")
    value_clip: float = field(0.2, "value-loss clip (gae)")
    vf_coef: float = field(0.5, "value-loss weight (gae)")
    value_trunk_grad: bool = field(False, "let the value loss train the shared trunk too (default: the value head "
                                          "reads the trunk's hidden states but its gradient stops there)")
    gamma: float = field(1.0, "discount (gae)")
    lam: float = field(0.95, "GAE lambda")
    whiten_advantages: bool = field(True, "whiten GAE advantages over the batch")
    kl_coef: float = field(0.05, "KL-to-reference coefficient (reward penalty for gae, loss term for grpo/rloo)")
    kl_target: float = field(0.0, "adaptive KL: target KL per sequence (0: fixed coefficient)")
    kl_bound: float = field(10.0, "stop (divergence) when the mean KL to the reference per sequence exceeds this")
    skip_zero_signal: bool = field(False, "grpo/rloo: drop groups whose samples all got the same reward")
    lora_rank: int = field(0, "LoRA rank through PEFT (0: full fine-tuning); the reference is the frozen base")
    eval_every: int = field(10, "iterations between evaluations (0: only at the end)")
    eval_size: int = field(500, "test problems per evaluation (0: none)")
    eval_k: int = field(16, "samples per test problem for maj@K / pass@K")
    eval_split: str = field("test", "split evaluated")
    checkpoint_every: int = field(5, "iterations between checkpoints")
    token_budget: int = field(1 << 17, "sampler cache budget in tokens")
    seed: int = field(0, "random seed")
    threads: int = field(0, "torch threads (0: the number of free cores)")
    device: str = field("auto", "cpu, cuda, cuda:N or auto")
    resume: bool = field(False, "continue the run in --out from its last good checkpoint")

    def validate(self) -> None:
        if not self.model:
            raise UsageError("--model is required (the starting policy)")
        if self.advantage not in ("gae", "grpo", "rloo"):
            raise UsageError(f"unknown advantage {self.advantage!r} (gae, grpo, rloo)")
        if self.advantage in ("grpo", "rloo") and self.k < 2:
            raise UsageError(f"--advantage {self.advantage} compares samples of one prompt: needs k >= 2 "
                             "(with k=1 every advantage is 0 and training is a silent no-op)")
        if self.reward not in ("sparse", "verified", "dense", "orm"):
            raise UsageError(f"unknown reward {self.reward!r} (sparse, verified, dense, orm)")
        if (self.reward == "orm") != bool(self.orm):
            raise UsageError("--reward orm and --orm DIR go together")
        if self.orm_mode not in ("terminal", "step"):
            raise UsageError("orm_mode must be terminal or step")
        if self.skip_zero_signal and self.advantage == "gae":
            raise UsageError("--skip-zero-signal applies to grpo/rloo")
        for name in ("iterations", "prompts", "k", "ppo_epochs", "minibatch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        if self.lr <= 0 or self.clip <= 0 or self.kl_coef < 0 or self.kl_bound <= 0:
            raise UsageError("lr, clip and kl_bound must be > 0; kl_coef >= 0")


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


def forward_policy(model, head, input_ids, attention_mask, with_values: bool):
    """(logprobs (N, T), values (N, T) or None). logprobs[:, t] = log pi(x_t | x_<t); values[:, t] = V(x_<t)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=with_values)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    logprobs = torch.nn.functional.pad(logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1), (1, 0))
    if not with_values:
        return logprobs, None
    v = head(out.hidden_states[-1])  # (N, T): value of the prefix ending at t
    return logprobs, torch.nn.functional.pad(v[:, :-1], (1, 0))


@dataclass
class RolloutBatch:
    """Tensors of one rollout batch (all (N, T) unless noted); masks follow training.py's convention."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor  # completion tokens (the episode)
    loss_mask: torch.Tensor  # completion tokens the policy sampled (not calculator insertions)
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor | None
    advantages: torch.Tensor
    returns: torch.Tensor | None
    outcome: torch.Tensor  # (N,) the outcome return of each rollout (before KL)

    def select(self, idx: torch.Tensor) -> "RolloutBatch":
        pick = lambda x: x.index_select(0, idx) if x is not None else None  # noqa: E731
        return RolloutBatch(*(pick(getattr(self, f)) for f in self.__dataclass_fields__))


def _pack(rollouts, pad_id: int):
    n = len(rollouts)
    t = max(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    ids = torch.full((n, t), pad_id, dtype=torch.long)
    att = torch.zeros((n, t), dtype=torch.long)
    action = torch.zeros((n, t), dtype=torch.bool)
    loss = torch.zeros((n, t), dtype=torch.bool)
    old = torch.zeros((n, t))
    for i, r in enumerate(rollouts):
        p, c = len(r.prompt_ids), len(r.completion_ids)
        ids[i, : p + c] = torch.tensor(r.prompt_ids + r.completion_ids)
        att[i, : p + c] = 1
        action[i, p : p + c] = True
        loss[i, p : p + c] = torch.tensor(r.sampled_mask, dtype=torch.bool)
        old[i, p : p + c] = torch.tensor(r.logprobs)
    return ids, att, action, loss, old


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


def train(cfg: Config) -> Path:
    from mathrl.commands import few_shot_examples, task_for_model

    run_dir = prepare_run_dir(cfg.out, cfg.resume)
    threads = setup_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    task = task_for_model(cfg.model, cfg.task, cfg.level, cfg.data_dir, cfg.extract)
    save_config(cfg, run_dir / "config.yaml")
    policy, tokenizer = load_model(cfg.model, device=device, for_training=True)
    # GRPO/RLOO without a KL term need no reference model (as TRL with beta=0): no copy in memory, no extra
    # forward pass per iteration; the KL is then not measured and kl_bound does not apply
    use_reference = cfg.advantage == "gae" or cfg.kl_coef > 0 or cfg.kl_target > 0
    if cfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                                                   target_modules="all-linear", task_type="CAUSAL_LM"))
        reference = None  # the base weights with adapters disabled
    elif not use_reference:
        reference = None
    else:
        reference = copy.deepcopy(policy).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    use_values = cfg.advantage == "gae"
    head = ValueHead(policy.config.hidden_size, cfg.value_trunk_grad).to(device) if use_values else None
    params = [p for p in policy.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    scorer = None
    if cfg.reward == "orm":
        from mathrl.reward_model import load_reward_model

        scorer = load_reward_model(cfg.orm, tokenizer, device=device)
    shots = few_shot_examples(task, cfg.model, cfg.shots)
    questions = task.problems("train")
    eval_problems = task.problems(cfg.eval_split)[: cfg.eval_size] if cfg.eval_size else []

    it, kl_coef, history, opt_steps, rollouts_used = 0, cfg.kl_coef, [], 0, 0
    last = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if last is not None:
        state = ckpt.load_state(last)
        if cfg.lora_rank:  # the base weights are the start model's; the adapters are in the state
            policy.load_state_dict(state["lora"], strict=False)
        else:
            ckpt.load_weights_into(policy, last)
        if head is not None:
            head.load_state_dict(state["value_head"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        it, kl_coef, history = state["iteration"], state["kl_coef"], state["history"]
        opt_steps, rollouts_used = state["opt_steps"], state["rollouts_used"]
        print(f"resumed {run_dir} at iteration {it}")
    logger = RunLogger(run_dir, resume_step=it if last is not None else None)

    def save(iteration: int):
        state = {"iteration": iteration, "kl_coef": kl_coef, "history": history, "opt_steps": opt_steps,
                 "rollouts_used": rollouts_used, "optimizer": optimizer.state_dict(), "rng": rng_state(),
                 "value_head": head.state_dict() if head is not None else None}
        if cfg.lora_rank:
            state["lora"] = {k: v for k, v in policy.state_dict().items() if "lora_" in k}
        ckpt.save_checkpoint(run_dir, iteration, policy, tokenizer, state)

    def run_eval(iteration: int) -> dict:
        policy.eval()
        results = evaluate(policy, tokenizer, task, eval_problems, k=cfg.eval_k,
                           max_new_tokens=cfg.max_new_tokens, shots=shots, seed=cfg.seed,
                           token_budget=cfg.token_budget)
        metrics = summarize(results)
        print(f"  eval at iteration {iteration} ({rollouts_used} rollouts): {headline(metrics)}", flush=True)
        return {k: v for k, v in metrics.items() if isinstance(v, float)}

    print(f"{cfg.advantage}: {cfg.iterations} iterations x {cfg.prompts} prompts x K={cfg.k}, reward {cfg.reward}, "
          f"{threads} threads, {device}")
    if it == 0 and eval_problems:
        record = {"iteration": 0, "rollouts": 0, **run_eval(0)}
        history.append(record)
        logger.log(0, **record)
    order_rng = random.Random(cfg.seed)
    order = list(range(len(questions)))
    order_rng.shuffle(order)
    bar = progress(cfg.iterations, cfg.advantage, "iter", initial=it)
    while it < cfg.iterations:
        t0 = time.time()
        # step 1: collect K samples for this iteration's prompts (a fixed shuffled pass over the train split)
        start = (it * cfg.prompts) % len(order)
        batch_q = [questions[order[(start + j) % len(order)]] for j in range(cfg.prompts)]
        prompts = [task.prompt(p, shots) for p in batch_q]
        policy.eval()
        rollouts = sample(policy, tokenizer, prompts, cfg.k, SamplingParams(
            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, stop_strings=task.stop_strings,
            seed=cfg.seed + 7919 * it, token_budget=cfg.token_budget), keys=[p.id for p in batch_q])
        rollouts_used += len(rollouts)
        t_sample = time.time() - t0

        # step 2: score through the task
        problems = [batch_q[r.prompt_index] for r in rollouts]
        texts = [r.text for r in rollouts]
        outcome_kind = "sparse" if cfg.reward == "dense" else cfg.reward
        if cfg.reward == "orm" and cfg.orm_mode == "step":
            outcome = [0.0] * len(rollouts)
        else:
            outcome = outcome_rewards(task, problems, texts, outcome_kind,
                                      scorer.score_texts if scorer else None, [prompts[r.prompt_index] for r in rollouts])
        outcome_t = torch.tensor(outcome, dtype=torch.float32)
        ids, att, action, loss_mask, old_logp = _pack(rollouts, tokenizer.pad_token_id)
        token_rewards = torch.zeros(ids.shape)
        last_pos = action.long().cumsum(-1).argmax(-1)  # (N,) index of each row's last completion token
        token_rewards[torch.arange(len(rollouts)), last_pos] = outcome_t
        if cfg.reward in ("dense",) or (cfg.reward == "orm" and cfg.orm_mode == "step"):
            _add_step_rewards(task, tokenizer, scorer, rollouts, problems, prompts, token_rewards, cfg)

        # step 3: reference log-probs and old values (no gradient)
        with torch.no_grad():
            ids_d, att_d = ids.to(device), att.to(device)
            if not use_reference:
                ref_logp = old_logp  # unused: no KL term
            elif reference is not None:
                ref_logp, _ = forward_policy(reference, None, ids_d, att_d, with_values=False)
            else:
                with policy.disable_adapter():
                    ref_logp, _ = forward_policy(policy, None, ids_d, att_d, with_values=False)
            old_values = None
            if use_values:
                _, old_values = forward_policy(policy, head, ids_d, att_d, with_values=True)
        ref_logp = ref_logp.cpu()
        kl_tokens = torch.where(action, old_logp - ref_logp, 0.0)
        kl_seq = float(kl_tokens.sum(-1).mean()) if use_reference else float("nan")  # mean KL per sequence (k1)

        # step 4: advantages
        zero_signal = float("nan")
        if use_values:
            penalty, _ = kl_penalty_rewards(old_logp, ref_logp, action, kl_coef, "k1")
            advantages, returns = gae(token_rewards + penalty, old_values.cpu(), action, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = whiten(advantages, action)
        else:
            seq_rewards = token_rewards.sum(-1)  # (N,) outcome (+ dense step credit)
            adv_seq = group_advantages(seq_rewards, cfg.k, cfg.advantage)
            zero_signal = zero_signal_fraction(seq_rewards, cfg.k)
            advantages = adv_seq.unsqueeze(-1).expand_as(old_logp) * action
            returns = None
        batch = RolloutBatch(ids, att, action, loss_mask, old_logp, ref_logp,
                             old_values.cpu() if old_values is not None else None, advantages, returns, outcome_t)
        keep = torch.arange(len(rollouts))
        if cfg.skip_zero_signal:
            grouped = outcome_t.view(-1, cfg.k)
            signal = (grouped.max(-1).values > grouped.min(-1).values).repeat_interleave(cfg.k)
            keep = signal.nonzero().flatten()

        # step 5: learn: ppo_epochs passes of minibatch updates
        policy.train()
        stats = []
        n_mb = max(1, math.ceil(len(keep) / cfg.minibatch_size)) if len(keep) else 0
        for epoch in range(cfg.ppo_epochs if len(keep) else 0):
            perm = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(cfg.seed + it * 31 + epoch))]
            for m in range(n_mb):
                mb = batch.select(perm[m * cfg.minibatch_size : (m + 1) * cfg.minibatch_size])
                if not use_values and not mb.advantages.any():
                    # no signal: the loss is (numerically almost) zero, and Adam would turn its rounding noise
                    # into full-size steps; skip the update
                    continue
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * min(1.0, (opt_steps + 1) / max(1, cfg.warmup_steps))
                # token-level means over the whole minibatch; under torchrun each rank computes rows r, r+N, ...
                # with the minibatch's token counts as denominators, and the gradients are summed over ranks
                n_loss, n_action = int(mb.loss_mask.sum()), int(mb.action_mask.sum())
                mb = mb.select(torch.tensor(distributed.local_rows(len(mb.input_ids)), dtype=torch.long))
                logp, values = forward_policy(policy, head, mb.input_ids.to(device), mb.attention_mask.to(device),
                                              with_values=use_values)
                lmask = mb.loss_mask.to(device)
                pg_loss, pstats = ppo_policy_loss(logp, mb.old_logprobs.to(device), mb.advantages.to(device), lmask,
                                                  clip=cfg.clip, total=max(1, n_loss))
                loss = pg_loss
                v_clipfrac = 0.0
                if use_values:
                    v_loss, v_clipfrac = value_loss(values, mb.old_values.to(device), mb.returns.to(device),
                                                    mb.action_mask.to(device), clip=cfg.value_clip,
                                                    total=max(1, n_action))
                    loss = loss + cfg.vf_coef * v_loss
                elif kl_coef > 0:
                    _, kl = kl_penalty_rewards(logp, mb.ref_logprobs.to(device), lmask, 1.0, "k3")
                    loss = loss + kl_coef * masked_token_mean(kl, lmask, max(1, n_loss))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                distributed.all_reduce_grads(params)
                (loss_value,) = distributed.all_reduce_sum([loss.item()])
                if not math.isfinite(loss_value):
                    raise ckpt.divergence_error(run_dir, it, f"loss became {loss_value}")
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                optimizer.step()
                opt_steps += 1
                stats.append((loss_value, pstats.clipfrac, pstats.approx_kl, float(v_clipfrac), float(norm)))

        # step 6: log, adapt the KL coefficient, guard against divergence
        it += 1
        record = {
            "iteration": it, "rollouts": rollouts_used, "reward": float(outcome_t.mean()),
            "kl": kl_seq, "kl_coef": kl_coef, "sample_seconds": round(t_sample, 1),
            "iteration_seconds": round(time.time() - t0, 1),
        }
        if not use_reference:
            del record["kl"]  # not measured (no reference model)
        if stats:
            record.update(loss=_mean(s[0] for s in stats), clipfrac=_mean(s[1] for s in stats),
                          approx_kl=_mean(s[2] for s in stats), grad_norm=_mean(s[4] for s in stats))
            if use_values:
                record["value_clipfrac"] = _mean(s[3] for s in stats)
        if not use_values:
            record["zero_signal_fraction"] = zero_signal
        if use_reference and (not math.isfinite(kl_seq) or kl_seq > cfg.kl_bound):
            raise ckpt.divergence_error(run_dir, it, f"KL to the reference reached {kl_seq:.2f} > kl_bound "
                                                     f"{cfg.kl_bound}")
        if cfg.kl_target > 0:
            kl_coef = adaptive_kl_coef(kl_coef, kl_seq, cfg.kl_target, 10_000, len(rollouts))
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{kl_seq:.3f}")
        print(f"iteration {it}/{cfg.iterations}: reward {record['reward']:.3f}"
              + (f", kl {kl_seq:.3f}" if use_reference else "")
              + (f", zero-signal groups {zero_signal:.2f}" if not use_values else "")
              + f" ({record['iteration_seconds']:.0f}s, sampling {t_sample:.0f}s)", flush=True)
        if eval_problems and (it == cfg.iterations or (cfg.eval_every and it % cfg.eval_every == 0)):
            record.update(run_eval(it))
        history.append(record)
        logger.log(it, **{k: v for k, v in record.items() if isinstance(v, (int, float))})
        if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
            save(it)
            _write_history(run_dir, history, cfg.eval_k, cfg.advantage)
    bar.close()
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(policy.merge_and_unload() if cfg.lora_rank else policy, tokenizer, model_dir)
    if head is not None and distributed.is_main():
        torch.save(head.state_dict(), run_dir / "value_head.pt")
    write_meta(model_dir, task=task_options(task), stage=cfg.advantage, shots=read_meta(cfg.model).get("shots", 0),
               base=cfg.model)
    _write_history(run_dir, history, cfg.eval_k, cfg.advantage)
    print(f"{cfg.advantage} policy written to {model_dir}")
    return model_dir


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
        prompt_len = len(r.prompt_ids)
        positions = _token_positions(tokenizer, r.completion_ids, [end for _, end in spans])
        if cfg.reward == "dense":
            step_rewards = dense_step_rewards(task, p, text)
        else:  # orm, step: potential-based shaping with the ORM's p(correct) after each step
            scores = scorer.score_texts([prompts[r.prompt_index]] * len(spans), [text[:end] for _, end in spans])
            step_rewards = [b - a for a, b in zip([0.5] + scores[:-1], scores)]
            final = scorer.score_texts([prompts[r.prompt_index]], [text])[0]
            token_rewards[i, prompt_len + len(r.completion_ids) - 1] += final - scores[-1]
        for pos, rew in zip(positions, step_rewards):
            token_rewards[i, prompt_len + pos] += rew


def _write_history(run_dir: Path, history: list, k: int, name: str) -> None:
    if not distributed.is_main():
        return
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    keys = [key for key in ("maj@1", f"maj@{k}", f"pass@{k}", "maj@1_verified") if any(key in h for h in history)]
    if keys:
        metrics_vs_x(history, "rollouts", keys, run_dir / "sample_complexity.png",
                     f"{name}: metrics vs rollouts consumed", "rollouts consumed (training samples)")


def main(cfg: Config) -> None:
    train(cfg)


@dataclass
class GRPOConfig(Config):
    """``mathrl grpo``: the same loop with group-normalised advantages and no critic."""

    out: str = field("runs/grpo", "run directory (the final policy is written to OUT/model)")
    advantage: str = field("grpo", "grpo (default here), rloo or gae")
    kl_coef: float = field(0.0, "KL-to-reference coefficient in the loss (k3; 0: none, as in Dr.GRPO / DAPO)")
