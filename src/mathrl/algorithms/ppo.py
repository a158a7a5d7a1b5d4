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
from mathrl.evaluate import append_question_records, evaluate, headline, summarize
from mathrl.losses import masked_token_mean, ppo_policy_loss, value_loss
from mathrl.models import kv_cache_arg, kv_cache_of, load_model
from mathrl.plots import metrics_vs_x
from mathrl.rewards import dense_step_rewards, outcome_rewards
from mathrl.run import prepare_run_dir, read_meta, resolve_device, write_meta
from mathrl.runlog import RunLogger, progress
from mathrl.sampler import SamplingParams, completion_stats, sample
from mathrl.tasks import task_options
from mathrl.training import make_optimizer, rng_state, seed_everything, set_rng_state, setup_threads


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
    microbatch_size: int = field(0, "rollouts per forward/backward pass (gradients accumulate; 0: the whole "
                                    "minibatch)")
    lr: float = field(1e-4, "learning rate (constant after warmup)")
    warmup_steps: int = field(5, "linear warmup steps")
    weight_decay: float = field(0.0, "AdamW weight decay (matrices only)")
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
    fsdp: bool = field(False, "under torchrun: shard the policy and the reference over the ranks with FSDP (models "
                              "too big for one device)")
    eval_every: int = field(10, "iterations between evaluations (0: only at the end)")
    eval_size: int = field(500, "test problems per evaluation (0: none)")
    eval_k: int = field(16, "samples per test problem for maj@K / pass@K")
    eval_split: str = field("test", "split evaluated")
    checkpoint_every: int = field(5, "iterations between checkpoints")
    token_budget: int = field(1 << 17, "sampler cache budget in tokens")
    seed: int = field(0, "random seed")
    threads: int = field(0, "torch threads (0: the cores this process may use)")
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
        if self.fsdp and self.lora_rank:
            raise UsageError("--fsdp with --lora-rank is not supported (LoRA keeps a full frozen copy per rank "
                             "anyway); use one or the other")
        if self.microbatch_size < 0:
            raise UsageError("microbatch_size must be >= 0 (0: the whole minibatch)")
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


def forward_policy(model, head, batch: "RolloutBatch", with_values: bool, device="cpu"):
    """(logprobs (N, C), values (N, C) or None) of the completion tokens of a rollout batch.

    logprobs[n, c] = log pi(completion token c | prompt, completion tokens < c); values[n, c] = V(the same prefix).
    Each distinct prompt is forwarded once (left-padded, P rows) and its key/value cache is shared by its
    completions (N rows, right-padded): with K samples per prompt this saves (K - 1) / K of the prompt tokens'
    compute in the forward and the backward pass, and the gradient flows through the shared cache. The vocabulary
    projection runs only where a completion token is predicted. Equal to one plain forward pass over
    prompt + completion (tests/test_training.py checks log-probs and gradients).
    """
    from transformers import DynamicCache

    pids, pmask = batch.prompt_ids.to(device), batch.prompt_mask.to(device)
    cids, cmask = batch.completion_ids.to(device), batch.action_mask.to(device)
    rows = batch.prompt_of.to(device)
    out_p = model(input_ids=pids, attention_mask=pmask, position_ids=(pmask.cumsum(-1) - 1).clamp(min=0),
                  **kv_cache_arg(DynamicCache(config=model.config)), use_cache=True, logits_to_keep=1,
                  output_hidden_states=with_values)
    cache = kv_cache_of(out_p)
    for layer in cache.layers:  # (P, ...) -> (N, ...): each completion row reads its prompt's keys and values
        layer.batch_select_indices(rows)
    attention = torch.cat([pmask.index_select(0, rows), cmask.long()], dim=-1)  # (N, Lp + C)
    positions = pmask.sum(-1, keepdim=True).index_select(0, rows) + torch.arange(cids.shape[1], device=device)
    out_c = model(input_ids=cids, attention_mask=attention, position_ids=positions, **kv_cache_arg(cache),
                  use_cache=True, output_hidden_states=with_values)
    # the prediction of completion token c is read at the position before it: the prompt's last token for c = 0
    logits = torch.cat([out_p.logits[:, -1:].index_select(0, rows), out_c.logits[:, :-1]], dim=1).float()
    logprobs = logits.gather(-1, cids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    if not with_values:
        return logprobs, None
    hidden = torch.cat([out_p.hidden_states[-1][:, -1:].index_select(0, rows), out_c.hidden_states[-1][:, :-1]], 1)
    return logprobs, head(hidden)


@dataclass
class RolloutBatch:
    """One rollout batch, prompts stored once. Completion-aligned tensors are (N, C), right-padded; the mask
    convention is training.py's (True = a token the loss counts); position c is completion token c."""

    prompt_ids: torch.Tensor  # (P, Lp) distinct prompts, left-padded
    prompt_mask: torch.Tensor  # (P, Lp) 1 on prompt tokens
    prompt_of: torch.Tensor  # (N,) row -> its prompt's row in prompt_ids
    completion_ids: torch.Tensor  # (N, C)
    action_mask: torch.Tensor  # (N, C) completion tokens (the episode)
    loss_mask: torch.Tensor  # (N, C) completion tokens the policy sampled (not calculator insertions)
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    outcome: torch.Tensor | None = None  # (N,) the outcome return of each rollout (before KL)

    def select(self, idx: torch.Tensor) -> "RolloutBatch":
        """Rows ``idx``, with only their prompts, and padding trimmed to the longest selected row and prompt."""
        used, prompt_of = torch.unique(self.prompt_of.index_select(0, idx), return_inverse=True)
        pmask = self.prompt_mask.index_select(0, used)
        lp = int(pmask.sum(-1).max()) if len(used) else 0
        c = int(self.action_mask.index_select(0, idx).sum(-1).max()) if len(idx) else 0

        def pick(x):
            if x is None:
                return None
            x = x.index_select(0, idx)
            return x[:, :c] if x.dim() == 2 else x

        return RolloutBatch(self.prompt_ids.index_select(0, used)[:, pmask.shape[1] - lp :],
                            pmask[:, pmask.shape[1] - lp :], prompt_of,
                            *(pick(getattr(self, f)) for f in list(self.__dataclass_fields__)[3:]))


def _pack(rollouts, pad_id: int) -> RolloutBatch:
    """Rollouts -> a RolloutBatch (old log-probs from the sampler; the rest is filled in later)."""
    firsts = {}
    for r in rollouts:
        firsts.setdefault(r.prompt_index, r.prompt_ids)
    order = sorted(firsts)
    lp = max(len(firsts[i]) for i in order)
    prompt_ids = torch.full((len(order), lp), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(order), lp), dtype=torch.long)
    for j, i in enumerate(order):
        prompt_ids[j, lp - len(firsts[i]) :] = torch.tensor(firsts[i])
        prompt_mask[j, lp - len(firsts[i]) :] = 1
    slot = {i: j for j, i in enumerate(order)}
    n, c = len(rollouts), max(len(r.completion_ids) for r in rollouts)
    ids = torch.full((n, c), pad_id, dtype=torch.long)
    action = torch.zeros((n, c), dtype=torch.bool)
    loss = torch.zeros((n, c), dtype=torch.bool)
    old = torch.zeros((n, c))
    for i, r in enumerate(rollouts):
        m = len(r.completion_ids)
        ids[i, :m] = torch.tensor(r.completion_ids)
        action[i, :m] = True
        loss[i, :m] = torch.tensor(r.sampled_mask, dtype=torch.bool)
        old[i, :m] = torch.tensor(r.logprobs)
    return RolloutBatch(prompt_ids, prompt_mask, torch.tensor([slot[r.prompt_index] for r in rollouts]), ids,
                        action, loss, old)


def _chunks(n: int, size: int) -> list[torch.Tensor]:
    size = size if size > 0 else max(n, 1)
    return [torch.arange(i, min(n, i + size)) for i in range(0, n, size)]


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
    if cfg.fsdp:  # before the optimizer sees the parameters; the small value head stays whole on every rank
        distributed.shard_model(policy)
        if reference is not None:
            distributed.shard_model(reference)
            # the frozen reference has no backward pass, where FSDP would reshard its root (embeddings, head)
            reference.set_reshard_after_forward(True, recurse=False)
    sharded = distributed.is_sharded(policy)
    use_values = cfg.advantage == "gae"
    head = ValueHead(policy.config.hidden_size, cfg.value_trunk_grad).to(device) if use_values else None
    params = [p for p in policy.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    trained = torch.nn.ModuleDict({"policy": policy, **({"value_head": head} if head is not None else {})})
    optimizer = make_optimizer(trained, cfg.lr, cfg.weight_decay)
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
        distributed.load_optimizer_state(trained, optimizer, state["optimizer"])
        set_rng_state(state["rng"])
        it, kl_coef, history = state["iteration"], state["kl_coef"], state["history"]
        opt_steps, rollouts_used = state["opt_steps"], state["rollouts_used"]
        print(f"resumed {run_dir} at iteration {it}")
    logger = RunLogger(run_dir, resume_step=it if last is not None else None)

    def save(iteration: int):
        state = {"iteration": iteration, "kl_coef": kl_coef, "history": history, "opt_steps": opt_steps,
                 "rollouts_used": rollouts_used, "optimizer": distributed.optimizer_state(trained, optimizer),
                 "rng": rng_state(), "value_head": head.state_dict() if head is not None else None}
        if cfg.lora_rank:
            state["lora"] = {k: v for k, v in policy.state_dict().items() if "lora_" in k}
        ckpt.save_checkpoint(run_dir, iteration, policy, tokenizer, state)

    def run_eval(iteration: int) -> dict:
        policy.eval()
        results = evaluate(policy, tokenizer, task, eval_problems, k=cfg.eval_k,
                           max_new_tokens=cfg.max_new_tokens, shots=shots, seed=cfg.seed,
                           token_budget=cfg.token_budget)
        metrics = summarize(results)
        if distributed.is_main():
            append_question_records(results, run_dir / "eval_questions.jsonl", rollouts=rollouts_used)
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
        batch = _pack(rollouts, tokenizer.pad_token_id)
        action, old_logp = batch.action_mask, batch.old_logprobs
        token_rewards = torch.zeros(old_logp.shape)  # (N, C)
        token_rewards[torch.arange(len(rollouts)), action.sum(-1) - 1] = outcome_t  # at each row's last token
        if cfg.reward in ("dense",) or (cfg.reward == "orm" and cfg.orm_mode == "step"):
            _add_step_rewards(task, tokenizer, scorer, rollouts, problems, prompts, token_rewards, cfg)

        # step 3: reference log-probs and old values (no gradient), in micro-batches
        ref_logp, old_values = old_logp, None  # ref_logp unused without a KL term
        with torch.no_grad():
            if use_reference:
                ref_logp = torch.zeros_like(old_logp)
                for rows in _chunks(len(rollouts), cfg.microbatch_size):
                    mb = batch.select(rows)
                    if reference is not None:
                        lp, _ = forward_policy(reference, None, mb, False, device)
                    else:
                        with policy.disable_adapter():
                            lp, _ = forward_policy(policy, None, mb, False, device)
                    ref_logp[rows, : lp.shape[1]] = lp.cpu()
            if use_values:
                old_values = torch.zeros_like(old_logp)
                for rows in _chunks(len(rollouts), cfg.microbatch_size):
                    _, v = forward_policy(policy, head, batch.select(rows), True, device)
                    old_values[rows, : v.shape[1]] = v.cpu()
        kl_tokens = torch.where(action, old_logp - ref_logp, 0.0)
        kl_seq = float(kl_tokens.sum(-1).mean()) if use_reference else float("nan")  # mean KL per sequence (k1)

        # step 4: advantages
        zero_signal = float("nan")
        if use_values:
            penalty, _ = kl_penalty_rewards(old_logp, ref_logp, action, kl_coef, "k1")
            advantages, returns = gae(token_rewards + penalty, old_values, action, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = whiten(advantages, action)
        else:
            seq_rewards = token_rewards.sum(-1)  # (N,) outcome (+ dense step credit)
            adv_seq = group_advantages(seq_rewards, cfg.k, cfg.advantage)
            zero_signal = zero_signal_fraction(seq_rewards, cfg.k)
            advantages = adv_seq.unsqueeze(-1).expand_as(old_logp) * action
            returns = None
        batch.ref_logprobs, batch.old_values, batch.outcome = ref_logp, old_values, outcome_t
        batch.advantages, batch.returns = advantages, returns
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
                # token-level means over the whole minibatch (the denominators), summed over micro-batches and,
                # under torchrun, over ranks (each rank computes rows r, r+N, ... of the minibatch)
                n_loss, n_action = int(mb.loss_mask.sum()), int(mb.action_mask.sum())
                rows = torch.arange(len(mb.prompt_of))
                if not use_values and kl_coef == 0:
                    # a row whose advantage is 0 contributes exactly 0 to the loss and its gradient (no KL term):
                    # leave it out of the forward and backward passes (with GRPO often half the batch)
                    rows = mb.advantages.any(-1).nonzero().flatten()
                all_rows, rows = rows, rows[torch.tensor(distributed.local_rows(len(rows)), dtype=torch.long)]
                # micro-batches of rows of similar length (less padding); the gradients accumulate
                rows = rows[torch.argsort(mb.action_mask.index_select(0, rows).sum(-1), stable=True)]
                chunks = _chunks(len(rows), cfg.microbatch_size) if len(rows) else []
                if sharded:
                    # FSDP gathers weights in every forward pass, so all ranks must run as many passes as rank 0
                    # (which has the most rows); the extra ones forward a row with weight 0 in the loss
                    n_passes = len(_chunks(math.ceil(len(all_rows) / distributed.world_size()), cfg.microbatch_size))
                    chunks += [None] * (n_passes - len(chunks))
                optimizer.zero_grad(set_to_none=True)
                loss_value, parts = 0.0, []
                for chunk in chunks:
                    part = mb.select(rows[chunk] if chunk is not None else all_rows[:1])
                    logp, values = forward_policy(policy, head, part, use_values, device)
                    lmask = part.loss_mask.to(device)
                    pg_loss, pstats = ppo_policy_loss(logp, part.old_logprobs.to(device), part.advantages.to(device),
                                                      lmask, clip=cfg.clip, total=max(1, n_loss))
                    loss = pg_loss
                    v_clipfrac = 0.0
                    if use_values:
                        v_loss, v_clipfrac = value_loss(values, part.old_values.to(device), part.returns.to(device),
                                                        part.action_mask.to(device), clip=cfg.value_clip,
                                                        total=max(1, n_action))
                        loss = loss + cfg.vf_coef * v_loss
                    elif kl_coef > 0:
                        _, kl = kl_penalty_rewards(logp, part.ref_logprobs.to(device), lmask, 1.0, "k3")
                        loss = loss + kl_coef * masked_token_mean(kl, lmask, max(1, n_loss))
                    if chunk is None:
                        loss.mul(0.0).backward()
                        continue
                    loss.backward()
                    loss_value += loss.item()
                    parts.append((pstats.clipfrac, pstats.approx_kl, float(v_clipfrac)))
                distributed.all_reduce_grads(params)
                (loss_value,) = distributed.all_reduce_sum([loss_value])
                if not math.isfinite(loss_value):
                    raise ckpt.divergence_error(run_dir, it, f"loss became {loss_value}")
                norm = distributed.clip_grad_norm(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)  # free the gradients before the next sampling
                opt_steps += 1
                stats.append((loss_value, *(_mean(p[j] for p in parts) for j in range(3)), float(norm)))

        # step 6: log, adapt the KL coefficient, guard against divergence
        it += 1
        record = {
            "iteration": it, "rollouts": rollouts_used, "reward": float(outcome_t.mean()),
            **completion_stats(rollouts),
            "kl": kl_seq, "kl_coef": kl_coef, "sample_seconds": round(t_sample, 1),
            "iteration_seconds": round(time.time() - t0, 3),
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
