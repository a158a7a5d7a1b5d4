"""Policy-gradient, value and likelihood losses as pure tensor functions (no model calls, no state).

- ``masked_token_mean``: the token-level mean every loss here reduces with; pass ``total`` (the number of
  target tokens in the whole optimizer batch) for exact gradient accumulation over micro-batches, as
  ``training.sft_grads`` does.
- ``ppo_policy_loss``: PPO's clipped surrogate (Schulman et al. 2017, eq. 7), used by PPO, GRPO and RLOO
  (Havrilla et al. 2024, section 3.2).
- ``value_loss``: the clipped value loss of PPO implementations (OpenAI baselines ppo2, cleanrl ``clip_vloss``).
- ``sft_loss``: negative log-likelihood of the target tokens, the loss of pretraining, SFT and the fine-tuning of
  Expert Iteration and RCRL (through ``training.sft_grads``).
- ``truncated_importance_weights``: the correction for a rollout engine whose log-probs differ from the
  trainer's (vLLM): per-token weights min(pi_trainer / pi_engine, cap) and the mismatch diagnostics.

Mask convention, everywhere in mathrl: ``mask[b, t]`` is True where token t of row b is a target the loss
counts (position t is predicted from tokens < t). Prompt and padding tokens are False. Values at False positions
have no effect on a loss or its gradient: every function selects with ``torch.where`` before computing, so
padding may hold anything, even inf or NaN. Inputs are never modified in place. Targets (old log-probabilities,
advantages, old values, returns) are detached: gradients flow only into ``logprobs`` / ``values`` / ``logits``.

Shapes: B = rows, T = tokens per row, V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_token_mean(x: torch.Tensor, mask: torch.Tensor, total: int | torch.Tensor | None = None) -> torch.Tensor:
    """``sum(x * mask) / total``: the mean over target tokens, every token weighted equally (token-level, not a
    mean of per-row means; DAPO, Yu et al. 2025, section 3.3).

    x: (B, T) float (any shape); mask: bool, same shape; total: the denominator, by default ``mask.sum()``. Pass
    the number of target tokens in the whole optimizer batch to make the sum of micro-batch losses equal the
    full-batch loss exactly. A total of 0 is read as 1 (the loss is then 0).
    """
    mask = mask.bool()
    if total is None:
        total = mask.sum()
    if isinstance(total, torch.Tensor):
        total = total.clamp(min=1)
    else:
        total = max(total, 1)
    return torch.where(mask, x, 0).sum() / total


@dataclass(frozen=True)
class PolicyStats:
    """Diagnostics of one ``ppo_policy_loss`` call, means over its target tokens.

    loss: the loss value; clipfrac: fraction of tokens where the clipped objective is the active one (their
    gradient is 0); approx_kl: k3 estimate of KL(pi_old || pi), mean((ratio - 1) - log ratio); ratio_mean: mean
    of pi / pi_old (1 on the first epoch over fresh samples).
    """

    loss: float
    clipfrac: float
    approx_kl: float
    ratio_mean: float
    clipfrac_low: float = 0.0
    clipfrac_high: float = 0.0


AGGREGATIONS = ("token", "sequence", "constant")
POLICY_LOSSES = ("ppo", "gspo", "cispo")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str = "token", total=None,
              n_rows: int | None = None, max_len: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar, the way the objective family differs (one reduction for every
    term of an objective: ``ppo_policy_loss`` reduces the policy term with it and ``mathrl grpo`` its k3 KL term,
    as GRPO's eq. 3 averages both together inside each sequence):

    - ``token`` (DAPO, Yu et al. 2025 eq. 12; the default): sum over all target tokens / ``total`` target tokens of
      the optimizer batch, every token weighted equally;
    - ``sequence`` (GRPO, Shao et al. 2024 eq. 3): each row's mean over its own tokens, then the sum over rows /
      ``n_rows`` rows of the optimizer batch (long completions weigh less per token);
    - ``constant`` (Dr.GRPO, Liu et al. 2025 eq. 5): sum over tokens / (``n_rows`` x ``max_len``), a normaliser
      that depends on neither the lengths nor the batch's content.

    ``total``/``n_rows`` count the whole optimizer batch, so that micro-batch losses sum to the batch loss.
    """
    mask = mask.bool()
    if how == "token":
        return masked_token_mean(per_token, mask, total)
    rows = n_rows if n_rows is not None else per_token.shape[0]
    if how == "sequence":
        lengths = mask.sum(-1).clamp(min=1)
        return (torch.where(mask, per_token, 0).sum(-1) / lengths).sum() / max(1, rows)
    if how == "constant":
        return torch.where(mask, per_token, 0).sum() / (max(1, rows) * max(1, max_len or per_token.shape[-1]))
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2,
                    total: int | torch.Tensor | None = None, *, clip_high: float | None = None,
                    kind: str = "ppo", aggregation: str = "token", n_rows: int | None = None,
                    max_len: int | None = None, is_weights: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, PolicyStats]:
    """The clipped policy-gradient objective of PPO and its family, negated to be minimised.

    ``kind="ppo"`` (Schulman et al. 2017, eq. 7), per token:

        ratio_t = pi(a_t | s_t) / pi_old(a_t | s_t) = exp(logprobs_t - old_logprobs_t)
        L_t = -min(ratio_t * A_t, clip(ratio_t, 1 - clip, 1 + clip_high) * A_t)

    with ``clip_high`` = ``clip`` by default (symmetric); DAPO's clip-higher sets it larger (0.28 for clip 0.2,
    Yu et al. 2025 eq. 10). ``kind="gspo"`` (Zheng et al. 2025, eq. 5-7): one ratio per sequence, the geometric
    mean s_i = exp(mean_t (logprobs - old_logprobs)) over the row's tokens, and one advantage per sequence (the
    mean of its tokens' advantages), clipped as above; a row's loss is spread evenly over its tokens, so any
    ``aggregation`` applies. ``kind="cispo"`` (MiniMax-M1, 2025, eq. 4): the importance weight clipped from above
    at 1 + ``clip_high`` and detached, times A_t x log pi_t: L_t = -sg(min(ratio_t, 1 + clip_high)) A_t log pi_t;
    no token's gradient is dropped by the clip (PPO drops those whose clipped term is active).

    ``aggregation``: see ``aggregate`` (token-level by default; ``total``, ``n_rows`` and ``max_len`` are the
    optimizer batch's target tokens, rows and completion-length limit).

    ``is_weights`` (B, T), optional: per-token importance weights for samples drawn by another engine
    (``truncated_importance_weights``), detached; each token's L_t is multiplied by its weight before aggregating.

    logprobs: (B, T) float, log pi of the sampled tokens under the current policy (differentiable);
    old_logprobs: (B, T) float, the same under the policy that sampled them (detached here);
    advantages: (B, T) float per-token (PPO with GAE), or (B, 1) one per completion (GRPO, RLOO), detached here;
    mask: (B, T) bool, True on the completion tokens.

    Returns ``(loss, PolicyStats)``: a scalar tensor and float diagnostics over this call's target tokens
    (``clipfrac``: tokens whose clipped term is active; ``clipfrac_low``/``clipfrac_high``: those below 1 - clip
    with A < 0 / above 1 + clip_high with A > 0, the two sides DAPO tunes apart).
    """
    if kind not in POLICY_LOSSES:
        raise ValueError(f"kind must be one of {POLICY_LOSSES}, got {kind!r}")
    high = clip if clip_high is None else clip_high
    mask = mask.bool()
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), 0)  # masked before exp: no overflow
    advantages = torch.where(mask, advantages.detach().expand_as(log_ratio), 0)
    if kind == "gspo":
        lengths = mask.sum(-1, keepdim=True).clamp(min=1)
        log_ratio = (log_ratio.sum(-1, keepdim=True) / lengths).expand_as(mask)  # log s_i on every token
        advantages = (advantages.sum(-1, keepdim=True) / lengths).expand_as(mask)
        log_ratio, advantages = torch.where(mask, log_ratio, 0), torch.where(mask, advantages, 0)
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1 - clip, 1 + high)
    if kind == "cispo":
        weight = torch.clamp(ratio, max=1 + high).detach()
        pg_loss = -weight * advantages * torch.where(mask, logprobs, 0)
        active = torch.zeros_like(mask)
    else:
        pg_loss1 = -advantages * ratio
        pg_loss2 = -advantages * clipped_ratio
        pg_loss = torch.max(pg_loss1, pg_loss2)
        active = pg_loss2 > pg_loss1
    if is_weights is not None:
        pg_loss = torch.where(mask, is_weights.detach(), 0) * pg_loss
    loss = aggregate(pg_loss, mask, aggregation, total, n_rows, max_len)

    with torch.no_grad():
        clipfrac = masked_token_mean(active.float(), mask)
        clip_low = masked_token_mean(((ratio < 1 - clip) & (advantages < 0)).float(), mask)
        clip_hi = masked_token_mean(((ratio > 1 + high) & (advantages > 0)).float(), mask)
        approx_kl = masked_token_mean((ratio - 1) - log_ratio, mask)
        ratio_mean = masked_token_mean(ratio, mask)
    stats = PolicyStats(loss=float(loss.detach()), clipfrac=float(clipfrac), approx_kl=float(approx_kl),
                        ratio_mean=float(ratio_mean), clipfrac_low=float(clip_low), clipfrac_high=float(clip_hi))
    return loss, stats


@dataclass(frozen=True)
class MismatchStats:
    """How far a rollout engine's log-probs are from the trainer's, over the target tokens: ``kl``, the k3
    estimate of KL(engine || trainer) per token, mean((r - 1) - log r) with r = pi_trainer / pi_engine (>= 0,
    unbiased under the engine's samples); ``capped_fraction``, the tokens whose r exceeds the cap; ``max_ratio``,
    the largest r (NaN without target tokens)."""

    kl: float
    capped_fraction: float
    max_ratio: float


def truncated_importance_weights(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor,
                                 cap: float) -> tuple[torch.Tensor, MismatchStats]:
    """Truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"): the samples were drawn by an engine whose token probabilities pi_engine differ from
    the trainer's pi_trainer (other kernels, batching, precision), so the policy-gradient estimate is corrected by

        w_t = min(pi_trainer(a_t) / pi_engine(a_t), cap)

    the cap bounding the variance a near-zero pi_engine would bring. Watch ``capped_fraction``: a cap that clips
    most tokens (trl#4772) silently turns the correction into a reweighting by a constant.

    trainer_logprobs, engine_logprobs: (B, T) float, log-probs of the sampled tokens; mask: (B, T) bool, the tokens
    the loss counts. Returns (weights (B, T), 0 where mask is False, detached; ``MismatchStats``).
    """
    mask = mask.bool()
    with torch.no_grad():
        log_ratio = torch.where(mask, trainer_logprobs - engine_logprobs, 0)  # masked before exp: no overflow
        ratio = torch.exp(log_ratio)
        weights = torch.where(mask, ratio.clamp(max=cap), 0)
        # the k3 estimate of KL(engine || trainer) per token, r - 1 - log r >= 0: expm1 keeps it accurate where r is
        # near 1 (exp(x) - 1 - x in float32 loses it to cancellation and can come out below 0 by rounding)
        kl = masked_token_mean((torch.expm1(log_ratio) - log_ratio).clamp(min=0), mask)
        capped = masked_token_mean((ratio > cap).float(), mask)
        max_ratio = float(ratio[mask].max()) if mask.any() else float("nan")
    return weights, MismatchStats(kl=float(kl), capped_fraction=float(capped), max_ratio=max_ratio)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2, total: int | torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Clipped value loss of PPO implementations (OpenAI baselines ppo2, cleanrl ``clip_vloss``, trlx):

        v_clipped_t = old_values_t + clip(values_t - old_values_t, -clip, clip)
        L_t = 0.5 * max((values_t - R_t)^2, (v_clipped_t - R_t)^2)

    reduced with ``masked_token_mean``.

    values: (B, T) float, current value estimates (differentiable); old_values: (B, T) float, the estimates at
    rollout time (detached here); returns: (B, T) float, targets R_t (e.g. from ``advantages.gae``, detached
    here); mask: (B, T) bool, True on the completion tokens; total: denominator for gradient accumulation.

    Returns ``(loss, clipfrac)``: a scalar tensor, and the fraction of target tokens where the clipped term is
    the larger (their gradient is 0).
    """
    mask = mask.bool()
    values = torch.where(mask, values, 0)
    old_values = torch.where(mask, old_values.detach(), 0)
    returns = torch.where(mask, returns.detach(), 0)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    v_loss_unclipped = (values - returns) ** 2
    v_loss_clipped = (v_clipped - returns) ** 2
    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped)
    loss = masked_token_mean(v_loss, mask, total)
    with torch.no_grad():
        clipfrac = masked_token_mean((v_loss_clipped > v_loss_unclipped).float(), mask)
    return loss, float(clipfrac)


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, total: int | torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of the target tokens, -log pi(x_t | x_<t), token-level mean (maximum likelihood;
    Expert Iteration fine-tunes on its filtered samples with it, Havrilla et al. 2024, section 3.1).

    logprobs: (B, T) float, e.g. from ``training.token_logprobs``; mask: (B, T) bool; total: denominator for
    gradient accumulation. Returns a scalar tensor.
    """
    mask = mask.bool()
    return masked_token_mean(-torch.where(mask, logprobs, 0), mask, total)
