"""What the two policy-gradient loops share (``algorithms/ppo.py`` with a critic, ``algorithms/grpo.py`` without):
drawing rollouts, scoring them through the task, the passes that need no gradient, and one optimizer step over a
minibatch of rollouts.

Each stage returns a frozen value that the next takes as an argument, never filled in later, so the order of the
calls is the order of the data (torchtune's ``Trajectory`` is the model): ``sample`` -> ``pack_rollouts``
(``RolloutBatch``) -> ``score`` (``Scores``) -> ``old_policy`` (``OldPolicy``: pi_old of the PPO ratio, with
--engine vllm the trainer's, with truncated IS weights), ``reference_logprobs``, ``value_estimates`` ->
``Experience`` (what the learning step reads) -> ``optimizer_step`` per minibatch (``UpdateStats``).

The settings both loops take are ``algorithms/policy_gradient_config.py`` (``Scoring``, ``PolicyGradient``; no
torch there, for ``--help``), the setup and bookkeeping of their runs ``pg_run.py``.

Mask convention (training.py's): True = a token the loss counts. Shapes: N rollouts, C completion tokens
(right-padded; position c is completion token c), P distinct prompts, Lp prompt tokens (left-padded).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from mathrl import checkpoint as ckpt
from mathrl import distributed
from mathrl.losses import truncated_importance_weights
from mathrl.models import autocast, kv_cache_arg, kv_cache_of
from mathrl.rewards import dense_step_rewards, outcome_rewards, overlong_penalty
from mathrl.sampler import sampling_params
from mathrl.training import clip_and_step, split_micro

# ----------------------------------------------------------------------------------------------------------
# Collect


def next_problems(questions: list, order: list[int], start: int, n: int) -> list:
    """The ``n`` problems after position ``start`` of a fixed shuffled pass (``order``) over ``questions``."""
    return [questions[order[(start + j) % len(order)]] for j in range(n)]


def sample(engine, policy, tokenizer, task, problems: list, shots, sampling, seed: int,
           prefixes: Sequence[str] | None = None, hidden_states: bool = False) -> tuple[list[str], list]:
    """(prompts, rollouts): ``engine`` draws ``sampling.k`` completions of each problem's prompt, ordered by (prompt,
    sample); ``rollout.prompt_index`` indexes ``problems``. With ``prefixes`` (backtracking: revealed reference
    steps, ``backtrack.Starts``) problem i is sampled from its prompt + ``prefixes[i]``: the prefix is prompt
    text, so its tokens are in ``rollout.prompt_ids``, never in the completion that is trained. ``prompts`` are the
    task's prompts of the bare questions (what ``score`` hands a reward model or a reward function).
    ``hidden_states``: each rollout also carries the last hidden states before its tokens (``Rollout.hidden``;
    mathrl's sampler only), from which ``values_from_rollouts`` reads PPO's old values."""
    prompts = [task.prompt(p, shots) for p in problems]
    starts = prompts if prefixes is None else [q + prefix for q, prefix in zip(prompts, prefixes, strict=True)]
    policy.eval()
    rollouts = engine.sample(policy, tokenizer, starts, sampling.k,
                             sampling_params(sampling, task.stop_strings, seed=seed, hidden_states=hidden_states),
                             keys=[p.id for p in problems])
    return prompts, rollouts


@dataclass(frozen=True)
class RolloutBatch:
    """One rollout batch, prompts stored once. Completion-aligned tensors are (N, C), right-padded."""

    prompt_ids: torch.Tensor  # (P, Lp) distinct prompts, left-padded
    prompt_mask: torch.Tensor  # (P, Lp) 1 on prompt tokens
    prompt_of: torch.Tensor  # (N,) row -> its prompt's row in prompt_ids
    completion_ids: torch.Tensor  # (N, C)
    action_mask: torch.Tensor  # (N, C) completion tokens (the episode)
    loss_mask: torch.Tensor  # (N, C) completion tokens the policy loss counts (sampled, not calculator insertions)
    sampled_logprobs: torch.Tensor  # (N, C) log-probs of the tokens under the engine that sampled them

    def select(self, idx: torch.Tensor) -> RolloutBatch:
        """Rows ``idx``, with only their prompts, and padding trimmed to the longest selected row and prompt."""
        used, prompt_of = torch.unique(self.prompt_of.index_select(0, idx), return_inverse=True)
        pmask = self.prompt_mask.index_select(0, used)
        lp = int(pmask.sum(-1).max()) if len(used) else 0
        c = int(self.action_mask.index_select(0, idx).sum(-1).max()) if len(idx) else 0
        pick = lambda x: x.index_select(0, idx)[:, :c]  # noqa: E731
        return RolloutBatch(self.prompt_ids.index_select(0, used)[:, pmask.shape[1] - lp :],
                            pmask[:, pmask.shape[1] - lp :], prompt_of, pick(self.completion_ids),
                            pick(self.action_mask), pick(self.loss_mask), pick(self.sampled_logprobs))


def pack_rollouts(rollouts, pad_id: int, mask_truncated: bool = False) -> RolloutBatch:
    """Rollouts -> a RolloutBatch. ``mask_truncated``: completions cut at the length limit get no loss tokens
    (DAPO's overlong filtering, Yu et al. 2025, section 3.4)."""
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
    logprobs = torch.zeros((n, c))
    for i, r in enumerate(rollouts):
        m = len(r.completion_ids)
        ids[i, :m] = torch.tensor(r.completion_ids)
        action[i, :m] = True
        loss[i, :m] = torch.tensor(r.sampled_mask, dtype=torch.bool)
        logprobs[i, :m] = torch.tensor(r.logprobs)
    if mask_truncated:
        loss &= ~torch.tensor([r.finish_reason == "length" for r in rollouts]).unsqueeze(-1)
    return RolloutBatch(prompt_ids, prompt_mask, torch.tensor([slot[r.prompt_index] for r in rollouts]), ids,
                        action, loss, logprobs)


# ----------------------------------------------------------------------------------------------------------
# Score


@dataclass(frozen=True)
class Scores:
    """The scores of N rollouts: ``token_rewards`` (N, C), the outcome reward at each row's last token plus step
    rewards at step-end tokens and any overlong penalty, 0 beyond the row's length; ``outcome`` (N,), each
    rollout's outcome reward (the logged ``reward``)."""

    token_rewards: torch.Tensor
    outcome: torch.Tensor

    @property
    def returns(self) -> torch.Tensor:
        """(N,) each rollout's return: outcome plus step rewards (what group baselines compare)."""
        return self.token_rewards.sum(-1)

    def select(self, idx: torch.Tensor) -> Scores:  # rows idx
        return Scores(self.token_rewards.index_select(0, idx), self.outcome.index_select(0, idx))

    @staticmethod
    def concat(parts: list[Scores], width: int) -> Scores:
        """The rows of ``parts`` in order, as (N, ``width``) token rewards (rows are 0 beyond their length)."""
        rows = [torch.nn.functional.pad(p.token_rewards, (0, max(0, width - p.token_rewards.shape[1])))[:, :width]
                for p in parts]
        return Scores(torch.cat(rows), torch.cat([p.outcome for p in parts]))


def score(scoring, task, tokenizer, orm, rollouts, problems: list, prompts: list[str], *,
          overlong_buffer: int = 0, max_new_tokens: int = 0, prefixes: Sequence[str] | None = None) -> Scores:
    """Score ``rollouts`` (``rollout.prompt_index`` indexes ``problems``, ``prompts`` and ``prefixes``) through the
    task, as ``scoring`` (``policy_gradient_config.Scoring``) says: the outcome reward (``--reward``; ``orm`` is the
    loaded reward model with ``--reward orm``) at each row's last token, step rewards at step-end tokens (dense:
    matched reference steps; orm step: the ORM's score changes), and DAPO's soft overlong penalty (Yu et al. 2025,
    eq. 13) at the last token, not part of the outcome.

    With ``prefixes`` (backtracking: the revealed reference steps each rollout continued) every reward sees the
    whole solution, prefix + completion, after the bare question's prompt: the grade, the reward model and a reward
    function judge it as if the model had written all of it; step rewards go to the model's own steps only (a
    revealed step earns nothing; a step the model finished counts)."""
    row_problems = [problems[r.prompt_index] for r in rollouts]
    row_prefixes = [prefixes[r.prompt_index] if prefixes is not None else "" for r in rollouts]
    texts = [prefix + r.text for prefix, r in zip(row_prefixes, rollouts)]
    if scoring.orm_steps:
        outcome = [0.0] * len(rollouts)  # the ORM's final score arrives through the step rewards
    else:
        kind = "sparse" if scoring.reward == "dense" else scoring.reward
        outcome = outcome_rewards(task, row_problems, texts, kind, orm.score_texts if orm else None,
                                  [prompts[r.prompt_index] for r in rollouts])
    outcome_t = torch.tensor(outcome, dtype=torch.float32)
    last = torch.tensor([len(r.completion_ids) - 1 for r in rollouts])
    token_rewards = torch.zeros((len(rollouts), int(last.max()) + 1))  # (N, C)
    token_rewards[torch.arange(len(rollouts)), last] = outcome_t
    if scoring.reward == "dense" or scoring.orm_steps:
        _add_step_rewards(task, tokenizer, orm, rollouts, row_problems, row_prefixes, prompts, token_rewards,
                          scoring.reward)
    if overlong_buffer:
        penalty = torch.tensor([overlong_penalty(len(r.completion_ids), max_new_tokens, overlong_buffer)
                                for r in rollouts])
        token_rewards[torch.arange(len(rollouts)), last] += penalty
    return Scores(token_rewards, outcome_t)


def _add_step_rewards(task, tokenizer, orm, rollouts, problems, prefixes, prompts, token_rewards,
                      reward: str) -> None:
    """Dense rewards at step-end tokens, added into ``token_rewards`` (N, C), which ``score`` owns: matched
    reference steps (dense) or ORM score changes (orm, step). Each row's steps are those of ``prefixes[i]`` +
    its completion; the steps that end inside the prefix (revealed, not written) get no reward: dense matching
    still consumes the reference results they state (so a revealed result is not credited again), and the ORM's
    potential after the prefix is where the model's shaping starts."""
    for i, (r, p, prefix) in enumerate(zip(rollouts, problems, prefixes)):
        text = prefix + r.text
        spans = task.step_spans(text)
        if not spans:
            continue
        if reward == "dense":
            step_rewards = dense_step_rewards(task, p, text)
        else:  # orm, step: potential-based shaping with the ORM's p(correct) after each step
            scores = orm.score_texts([prompts[r.prompt_index]] * len(spans), [text[:end] for _, end in spans])
            step_rewards = [b - a for a, b in zip([0.5] + scores[:-1], scores)]
            final = orm.score_texts([prompts[r.prompt_index]], [text])[0]
            token_rewards[i, len(r.completion_ids) - 1] += final - scores[-1]
        own = [(end - len(prefix), rew) for (_, end), rew in zip(spans, step_rewards) if end > len(prefix)]
        positions = _token_positions(tokenizer, r.completion_ids, [end for end, _ in own])
        for pos, (_, rew) in zip(positions, own):
            token_rewards[i, pos] += rew


def _token_positions(tokenizer, completion_ids, char_ends) -> list[int]:
    """For each character offset, the index of the completion token whose text reaches it."""
    out, pos = [], 0
    lengths = [len(tokenizer.decode(completion_ids[: i + 1], skip_special_tokens=True))
               for i in range(len(completion_ids))]
    for end in char_ends:
        while pos < len(lengths) - 1 and lengths[pos] < end:
            pos += 1
        out.append(pos)
    return out


# ----------------------------------------------------------------------------------------------------------
# The passes without gradient: old policy, reference, values


@dataclass(frozen=True)
class OldPolicy:
    """pi_old, the denominator of the PPO ratio: ``logprobs`` (N, C); ``is_weights`` (N, C), the truncated
    importance weights of an engine whose log-probs differ from the trainer's (None with mathrl's sampler);
    ``mismatch``, that engine's diagnostics for the log (empty with mathrl's sampler)."""

    logprobs: torch.Tensor
    is_weights: torch.Tensor | None
    mismatch: dict


@torch.no_grad()
def old_policy(engine, policy, batch: RolloutBatch, cap: float, micro: int, device) -> OldPolicy:
    """mathrl's sampler computes its log-probs with the trainer's model: they are pi_old. vLLM's come from its own
    kernels and batching (mu): recompute them with the trainer (pi_old from here on) and weight each token's loss
    by min(pi_old / mu, ``cap``) (``losses.truncated_importance_weights``)."""
    if engine.name == "mathrl":
        return OldPolicy(batch.sampled_logprobs, None, {})
    old = _no_grad_pass(policy, None, batch, micro, device, values=False)
    weights, stats = truncated_importance_weights(old, batch.sampled_logprobs, batch.loss_mask, cap)
    return OldPolicy(old, weights, {"mismatch_kl": stats.kl, "is_capped_fraction": stats.capped_fraction,
                                    "is_max_ratio": stats.max_ratio})


@torch.no_grad()
def reference_logprobs(policy, reference, batch: RolloutBatch, micro: int, device) -> torch.Tensor:
    """(N, C) log-probs of the rollouts under the reference: the frozen copy ``reference``, or with LoRA
    (``reference`` None) the policy with its adapters disabled (the start model)."""
    if reference is not None:
        return _no_grad_pass(reference, None, batch, micro, device, values=False)
    with policy.disable_adapter():
        return _no_grad_pass(policy, None, batch, micro, device, values=False)


@torch.no_grad()
def value_estimates(policy, head, batch: RolloutBatch, micro: int, device) -> torch.Tensor:
    """(N, C) the value head's V of each completion prefix, at rollout time (PPO's old values)."""
    return _no_grad_pass(policy, head, batch, micro, device, values=True)


@torch.no_grad()
def values_from_rollouts(head, rollouts, like: torch.Tensor, micro: int, device) -> torch.Tensor:
    """(N, C) the value head's V of each completion prefix from the hidden states the sampler kept while it drew
    the rollouts (``Rollout.hidden``): what ``value_estimates`` computes with a pass of its own, equal to float
    tolerance (the sampler's batch shapes and cached attention differ from the trainer's forward pass). ``like``:
    the batch's (N, C) log-probs, for the shape; positions past a row's completion stay 0 (masked downstream)."""
    out = torch.zeros_like(like)
    for rows in split_micro(torch.arange(len(rollouts)), micro):
        part = [rollouts[i] for i in rows.tolist()]
        lengths = torch.tensor([len(r.hidden) for r in part])
        c = int(lengths.max())
        hidden = torch.zeros(len(part), c, part[0].hidden.shape[-1])  # (n, c, H), right-padded
        for j, r in enumerate(part):
            hidden[j, : len(r.hidden)] = r.hidden
        filled = torch.arange(c)[None, :] < lengths[:, None]  # (n, c)
        out[rows, :c] = torch.where(filled, head(hidden.to(device)).float().cpu(), 0.0)
    return out


def _no_grad_pass(model, head, batch: RolloutBatch, micro: int, device, values: bool) -> torch.Tensor:
    out = torch.zeros_like(batch.sampled_logprobs)
    for rows in split_micro(torch.arange(len(out)), micro):
        lp, v = forward_policy(model, head, batch.select(rows), values, device)
        x = v if values else lp
        out[rows, : x.shape[1]] = x.cpu()
    return out


# ----------------------------------------------------------------------------------------------------------
# Learn


@dataclass(frozen=True)
class Experience:
    """What the learning step reads, built once per iteration from the stages above. (N, C) each, or None
    where a loop has no such term."""

    batch: RolloutBatch
    old_logprobs: torch.Tensor  # pi_old (OldPolicy.logprobs)
    advantages: torch.Tensor  # 0 outside action_mask
    is_weights: torch.Tensor | None = None  # OldPolicy.is_weights
    ref_logprobs: torch.Tensor | None = None  # GRPO with a KL term
    old_values: torch.Tensor | None = None  # PPO
    returns: torch.Tensor | None = None  # PPO: the value targets

    def select(self, idx: torch.Tensor) -> Experience:
        batch = self.batch.select(idx)
        c = batch.action_mask.shape[1]
        picked = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "batch"}
        return Experience(batch, **{k: None if x is None else x.index_select(0, idx)[:, :c] for k, x in picked.items()})


def minibatches(keep: torch.Tensor, size: int, epochs: int, seed: int, groups: torch.Tensor | None = None):
    """``epochs`` passes over the rows ``keep`` (N',) in a random order each, cut into minibatches of ``size``.

    With ``groups`` (N,), each row's group (its prompt: ``RolloutBatch.prompt_of``), the random order is one of
    whole groups, a group's rows kept together: with ``size`` a multiple of K every minibatch holds whole groups,
    so ``forward_policy`` forwards each prompt once per minibatch for its K samples. With rows in a random order
    a minibatch of 64 rows of 64 x 4 holds ~44 distinct prompts, each forwarded for its ~1.5 rows, and every prompt
    is forwarded ~2.7 times per epoch instead of once (measured: the learning step of a PPO iteration at the
    study's shapes took 0.70 of the time). Both orders draw every row once per epoch, so each epoch's expected
    gradient is the same; what changes is which rows share a minibatch (a group's samples always do)."""
    n_mb = max(1, math.ceil(len(keep) / size)) if len(keep) else 0
    for epoch in range(epochs if len(keep) else 0):
        generator = torch.Generator().manual_seed(seed + epoch)
        if groups is None:
            perm = keep[torch.randperm(len(keep), generator=generator)]
        else:
            g = groups[keep]
            distinct = torch.unique(g)  # sorted
            rank = torch.empty(int(distinct[-1]) + 1, dtype=torch.long)
            rank[distinct[torch.randperm(len(distinct), generator=generator)]] = torch.arange(len(distinct))
            perm = keep[torch.argsort(rank[g], stable=True)]  # groups in a random order, rows in keep's order
        for j in range(n_mb):
            yield perm[j * size : (j + 1) * size]


@dataclass(frozen=True)
class UpdateStats:
    """One optimizer step's diagnostics (means over its micro-batches); ``LearnStats`` averages them by name."""

    loss: float
    grad_norm: float
    clipfrac: float
    approx_kl: float
    clipfrac_low: float  # ratio below 1 - clip where A < 0
    clipfrac_high: float  # ratio above 1 + clip_high where A > 0
    ratio_mean: float  # mean importance ratio pi / pi_old
    value_clipfrac: float  # PPO's value loss; NaN without a critic


@dataclass(frozen=True)
class LearnStats(UpdateStats):
    """Means over the optimizer steps of one iteration (NaN when no step ran)."""

    steps: int = 0

    @classmethod
    def of(cls, steps: list[UpdateStats]) -> LearnStats:
        return cls(steps=len(steps), **{f.name: _mean(getattr(s, f.name) for s in steps)
                                        for f in dataclasses.fields(UpdateStats)})

    def record(self, value_head: bool) -> dict:
        """The iteration record's learning metrics (none when no step ran; ``value_clipfrac`` with a critic)."""
        if not self.steps:
            return {}
        names = [f.name for f in dataclasses.fields(UpdateStats) if value_head or f.name != "value_clipfrac"]
        return {name: getattr(self, name) for name in names}


def optimizer_step(mb: Experience, rows: torch.Tensor, micro_loss, optimizer, params, micro: int, grad_clip: float,
                   sharded: bool, run_dir, iteration: int) -> UpdateStats:
    """One optimizer step on minibatch ``mb``, its gradient accumulated over micro-batches of ``rows`` (this
    rank's share, similar lengths together: less padding) and, under torchrun, over ranks. ``micro_loss(part)``
    -> (loss, losses.PolicyStats, value clipfrac) of a micro-batch ``part`` of ``mb``, a sum over its tokens divided by
    the minibatch's counts (exact accumulation, as in training.py). A non-finite loss stops the run."""
    all_rows, rows = rows, rows[torch.tensor(distributed.local_rows(len(rows)), dtype=torch.long)]
    rows = rows[torch.argsort(mb.batch.action_mask.index_select(0, rows).sum(-1), stable=True)]
    chunks = list(split_micro(rows, micro))
    if sharded:
        # FSDP gathers weights in every forward pass, so all ranks must run as many passes as rank 0 (which has the
        # most rows); the extra ones forward a row with weight 0 in the loss
        n_passes = len(list(split_micro(range(math.ceil(len(all_rows) / distributed.world_size())), micro)))
        chunks += [None] * (n_passes - len(chunks))
    optimizer.zero_grad(set_to_none=True)
    loss_value, parts = 0.0, []
    for chunk in chunks:
        loss, pstats, v_clipfrac = micro_loss(mb.select(chunk if chunk is not None else all_rows[:1]))
        if chunk is None:
            loss.mul(0.0).backward()
            continue
        loss.backward()
        loss_value += loss.item()
        parts.append((pstats, v_clipfrac))
    distributed.all_reduce_grads(params)
    (loss_value,) = distributed.all_reduce_sum([loss_value])
    if not math.isfinite(loss_value):
        raise ckpt.divergence_error(run_dir, iteration, f"loss became {loss_value}")
    norm = clip_and_step(params, optimizer, grad_clip)  # frees the gradients before sampling
    # the diagnostics: means over the micro-batches of every rank (under torchrun each rank holds a share)
    names = ("clipfrac", "approx_kl", "clipfrac_low", "clipfrac_high", "ratio_mean")
    sums = [sum(float(getattr(p, name)) for p, _ in parts) for name in names] + [sum(float(v) for _, v in parts)]
    *sums, n_parts = distributed.all_reduce_sum(sums + [len(parts)])
    means = [x / n_parts if n_parts else float("nan") for x in sums]
    return UpdateStats(loss=loss_value, grad_norm=float(norm), value_clipfrac=means[-1], **dict(zip(names, means)))


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


# ----------------------------------------------------------------------------------------------------------
# The forward pass of the learning step


def forward_policy(model, head, batch: RolloutBatch, with_values: bool, device="cpu"):
    """(logprobs (N, C), values (N, C) or None) of the completion tokens of a rollout batch.

    logprobs[n, c] = log pi(completion token c | prompt, completion tokens < c); values[n, c] = V(the same prefix).
    Each distinct prompt is forwarded once (left-padded, P rows) and its key/value cache is shared by its
    completions (N rows, right-padded): with K samples per prompt this saves (K - 1) / K of the prompt tokens'
    compute in the forward and the backward pass, and the gradient flows through the shared cache. The vocabulary
    projection runs only where a completion token is predicted. Equal to one plain forward pass over
    prompt + completion (tests/test_training.py checks log-probs and gradients).
    """
    with autocast(model):
        if getattr(model, "mathrl_checkpointing", False) and model.training and torch.is_grad_enabled():
            return _forward_policy_whole(model, head, batch, with_values, device)
        return _forward_policy(model, head, batch, with_values, device)


def _forward_policy_whole(model, head, batch: RolloutBatch, with_values: bool, device):
    """``forward_policy`` by one pass over each row's prompt + completion, without a shared prompt cache: a
    checkpointed training pass cannot keep a KV cache (transformers drops it so that the recomputation in the
    backward pass does not write it twice), so gradient checkpointing pays the prompt once per completion."""
    rows = batch.prompt_of.to(device)
    pids = batch.prompt_ids.to(device).index_select(0, rows)  # (N, Lp) left-padded
    pmask = batch.prompt_mask.to(device).index_select(0, rows)
    cids, cmask = batch.completion_ids.to(device), batch.action_mask.to(device)
    attention = torch.cat([pmask, cmask.long()], dim=-1)  # (N, Lp + C)
    c = cids.shape[1]
    # the logits of the last C + 1 positions: the prompt's last token predicts completion token 0
    out = model(input_ids=torch.cat([pids, cids], dim=-1), attention_mask=attention,
                position_ids=(attention.cumsum(-1) - 1).clamp(min=0), use_cache=False, logits_to_keep=c + 1,
                output_hidden_states=with_values)
    logits = out.logits[:, :-1].float()  # (N, C, V)
    logprobs = logits.gather(-1, cids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    if not with_values:
        return logprobs, None
    return logprobs, head(out.hidden_states[-1][:, -c - 1 : -1])


def _forward_policy(model, head, batch: RolloutBatch, with_values: bool, device):
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
