"""Advantages, returns and reward shaping as pure tensor functions (no model calls, no state).

- ``masked_mean`` / ``masked_var`` / ``whiten``: statistics over the mask-True entries only.
- ``gae``: per-token Generalized Advantage Estimation (Schulman et al. 2016) for PPO (Havrilla et al. 2024, 3.2).
- ``group_advantages``: outcome-reward baselines from G samples of one prompt: GRPO (Shao et al. 2024,
  DeepSeekMath, section 4.1.2), Dr.GRPO (Liu et al. 2025, no std scaling), RLOO (Ahmadian et al. 2024), and
  REINFORCE++ (Hu et al. 2025: the batch's mean and std; or, as REINFORCE++-baseline, the group's mean and the
  batch's std).
- ``zero_signal_fraction``: the fraction of groups whose rewards are all equal (their advantages are all 0).
- ``kl_penalty_rewards``: per-token KL(policy || reference) estimates k1, k2, k3 (Schulman,
  http://joschu.net/blog/kl-approx.html) as a reward penalty (Ziegler et al. 2019; Stiennon et al. 2020).
- ``adaptive_kl_coef``: the proportional KL-coefficient controller of Ziegler et al. 2019, section 2.2.

Mask convention, everywhere in mathrl: ``mask[b, t]`` is True where token t of row b counts (it is an action:
a completion token, predicted from tokens < t). Prompt and padding tokens are False. Values at False positions
never reach a result: every function selects with ``torch.where`` before computing, so padding may hold
anything, even inf or NaN. Inputs are never modified in place.

Shapes: B = rows, T = tokens per row, N = samples, G = samples per prompt (N = G * number of prompts).
"""

from __future__ import annotations

import math

import torch

# ----------------------------------------------------------------------------------------------------------
# Masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is True (over all of them, or along ``dim``).

    x: any shape; mask: bool, same shape. An empty selection gives 0 (not NaN).
    """
    mask = mask.bool()
    total = torch.where(mask, x, 0).sum(dim=dim)
    count = mask.sum(dim=dim).clamp(min=1)
    return total / count


def masked_var(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None,
               unbiased: bool = False) -> torch.Tensor:
    """Variance of ``x`` over the mask-True entries: population variance (divide by n) unless ``unbiased``
    (divide by n - 1, Bessel's correction). x: any shape; mask: bool, same shape. Fewer than 1 (or 2 when
    unbiased) selected entries give 0.
    """
    mask = mask.bool()
    count = mask.sum(dim=dim, keepdim=True)
    mean = torch.where(mask, x, 0).sum(dim=dim, keepdim=True) / count.clamp(min=1)
    squared_error = torch.where(mask, (x - mean) ** 2, 0).sum(dim=dim, keepdim=True)
    denominator = (count - 1) if unbiased else count
    var = squared_error / denominator.clamp(min=1)
    return var.squeeze() if dim is None else var.squeeze(dim)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Masked whitening: ``(x - mean) / sqrt(var + eps)`` with one mean and one population variance taken over
    all mask-True entries of ``x`` (PPO's per-batch advantage normalisation, as in OpenAI baselines and
    cleanrl's ``norm_adv``). With ``shift_mean=False`` the mean is added back (only the scale changes), as TRL does
    for rewards.

    x: any shape; mask: bool, same shape. Returns the same shape, 0 where mask is False.
    """
    mask = mask.bool()
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0)


# ----------------------------------------------------------------------------------------------------------
# Per-token advantages for PPO


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, eq. 16) over each row's action tokens.

    rewards: (B, T) float, the reward received for emitting token t (typically the outcome reward on the
        last action token plus a per-token KL penalty, see ``kl_penalty_rewards``);
    values: (B, T) float, V(s_t), the value estimate of the state in which token t is chosen;
    mask: (B, T) bool, True on the action tokens of each row: one contiguous span (the completion), possibly
        starting after the prompt and followed by padding. Rows may be empty.

    The episode ends after the last action token: V_{t+1} = 0 and A_{t+1} = 0 there (terminal). Returns
    ``(advantages, returns)``, both (B, T), ``returns = advantages + values`` (the value-function targets), both
    0 where mask is False. Inputs are detached: advantages and returns are targets, never differentiated.
    Raises ValueError on mismatched shapes or a row whose mask is not one contiguous span.
    """
    if not rewards.shape == values.shape == mask.shape or values.dim() != 2:
        raise ValueError(f"gae needs (B, T) rewards, values and mask of one shape, got "
                         f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}")
    mask = mask.bool()
    starts = mask[:, :1].sum(dim=1) + (mask[:, 1:] & ~mask[:, :-1]).sum(dim=1)  # False->True edges per row
    if (starts > 1).any():
        raise ValueError("gae needs each row's mask to be one contiguous span of action tokens")
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    rewards = torch.where(mask, rewards.detach().to(dtype), 0)
    values = torch.where(mask, values.detach().to(dtype), 0)  # 0 after the span: V = 0 past the terminal token

    batch_size, n_tokens = values.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(batch_size, dtype=dtype, device=values.device)      # V_{t+1}
    next_advantage = torch.zeros(batch_size, dtype=dtype, device=values.device)  # A_{t+1}
    for t in reversed(range(n_tokens)):
        # delta_t = r_t + gamma * V_{t+1} - V_t
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # A_t = delta_t + gamma * lam * A_{t+1}   (0 outside the span, so A_{t+1} = 0 after the last action)
        advantage = torch.where(mask[:, t], delta + gamma * lam * next_advantage, 0)
        advantages[:, t] = advantage
        next_value = values[:, t]
        next_advantage = advantage
    returns = torch.where(mask, advantages + values, 0)
    return advantages, returns


# ----------------------------------------------------------------------------------------------------------
# Group baselines for outcome rewards (GRPO, Dr.GRPO, RLOO)


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N,) rewards -> (N/G, G) float, one row per prompt; ValueError unless G >= 1 divides N."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards cannot be cut into groups of {group_size}")
    if not rewards.dtype.is_floating_point:
        rewards = rewards.to(torch.get_default_dtype())
    return rewards.reshape(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, kind: str, eps: float = 1e-6,
                     scale: str = "group") -> torch.Tensor:
    """One advantage per sample from outcome rewards, with a baseline from the other samples of its prompt (or,
    for REINFORCE++, of the batch).

    rewards: (N,) float, laid out as N/G consecutive groups of G = ``group_size`` samples of one prompt. NaN
    marks an unscorable sample: it is left out of its group's statistics and gets advantage 0.

    - ``kind="grpo"`` (Shao et al. 2024, DeepSeekMath, section 4.1.2, outcome supervision):
      A_i = (r_i - mean_g) / (std_g + eps), std_g the *population* standard deviation (divide by n, not n - 1)
      of the group's valid rewards. ``scale="none"``: A_i = r_i - mean_g, Dr.GRPO (Liu et al. 2025, "Understanding
      R1-Zero-Like Training"), which drops the std division that up-weights near-uniform groups. ``scale="batch"``:
      A_i = (r_i - mean_g) / (std_B + eps), std_B the population standard deviation of the centred values
      r - mean_g over every valid sample of the batch: REINFORCE++-baseline (Hu et al. 2025, "REINFORCE++", arXiv
      2501.03262: a group baseline, then normalisation over the global batch instead of per group).
    - ``kind="rloo"`` (Ahmadian et al. 2024; Kool et al. 2019): A_i = r_i - mean of the other G - 1 valid
      rewards of the group (leave-one-out, an unbiased baseline). Needs G >= 2 (ValueError otherwise); a
      sample with no valid peer gets 0. ``scale`` does not apply (RLOO never divides by a std).
    - ``kind="reinforce++"`` (Hu et al. 2025, arXiv 2501.03262, with an outcome reward):
      A_i = (r_i - mean_B) / (std_B + eps) over every valid sample of the batch: no group baseline, so G may be 1
      and a group whose rewards are all equal still gets advantages (the batch decides their sign). ``scale`` does
      not apply (always the batch).
      Deviation: Hu et al. subtract the KL penalty from the reward per token; here, as for GRPO, the KL is a loss
      term (``--kl-coef``).

    A group whose valid rewards are all equal carries no signal (``group_signal``): under grpo and rloo all its
    advantages are exactly 0 (detected by comparing the rewards, not through their rounded mean), whatever the
    rewards' values. Returns (N,) float, no gradient (rewards are data).
    """
    if kind not in ("grpo", "rloo", "reinforce++"):
        raise ValueError(f"kind must be 'grpo', 'rloo' or 'reinforce++', got {kind!r}")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    if kind == "rloo" and group_size < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got group_size={group_size}")
    r = _grouped(rewards.detach(), group_size)  # (N/G, G)
    valid = ~torch.isnan(r)
    r0 = torch.where(valid, r, 0)
    n_valid = valid.sum(dim=1, keepdim=True)  # (N/G, 1)
    group_sum = r0.sum(dim=1, keepdim=True)
    # a group whose valid rewards are all equal gets exactly 0 from a group baseline: its float32 mean can miss the
    # common value by a rounding step (eight rewards of 0.7), which the std division would scale up
    no_signal = ~_signal(r, valid).unsqueeze(-1)  # (N/G, 1)

    if kind == "reinforce++":
        centred = r0 - group_sum.sum() / n_valid.sum().clamp(min=1)
        advantages = centred / (_batch_std(centred, valid) + eps)
    elif kind == "grpo":
        mean = group_sum / n_valid.clamp(min=1)
        advantages = torch.where(no_signal, 0, r0 - mean)
        if scale == "group":
            std = torch.sqrt(torch.where(valid, advantages ** 2, 0).sum(dim=1, keepdim=True) / n_valid.clamp(min=1))
            advantages = advantages / (std + eps)
        elif scale == "batch":
            advantages = advantages / (_batch_std(advantages, valid) + eps)
    else:
        mean_others = (group_sum - r0) / (n_valid - 1).clamp(min=1)
        advantages = torch.where((n_valid >= 2) & ~no_signal, r0 - mean_others, 0)
    return torch.where(valid, advantages, 0).reshape(-1)


def _batch_std(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Population standard deviation of the valid entries of x (any shape), around their mean; 0 if none."""
    n = valid.sum().clamp(min=1)
    mean = torch.where(valid, x, 0).sum() / n
    return torch.sqrt(torch.where(valid, (x - mean) ** 2, 0).sum() / n)


def group_signal(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups (N/G consecutive groups of G samples of one prompt) carry signal: their returns differ, so
    that GRPO and RLOO give some sample a non-zero advantage. The one definition of "signal" (logged as
    ``zero_signal_fraction``, used by ``--zero-signal drop|refill``; DAPO's "dynamic sampling" filters the same groups,
    Yu et al. 2025). ``returns`` are the sequence returns the advantages are computed from (outcome plus any
    step rewards: with ``--reward orm --orm-mode step`` the outcome part is all zeros and the signal is in the
    steps). NaN returns are ignored, as in ``group_advantages``: a group with fewer than 2 valid returns has no
    signal.

    returns: (N,) float -> (N/G,) bool.
    """
    r = _grouped(returns.detach(), group_size)  # (N/G, G)
    return _signal(r, ~torch.isnan(r))


def _signal(r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N/G, G) grouped values and their validity -> (N/G,) bool: at least 2 valid values, not all equal (compared
    exactly, never through a rounded mean)."""
    highest = torch.where(valid, r, -math.inf).max(dim=1).values
    lowest = torch.where(valid, r, math.inf).min(dim=1).values
    return (valid.sum(dim=1) >= 2) & (highest != lowest)


def zero_signal_fraction(returns: torch.Tensor, group_size: int) -> float:
    """The fraction of groups without signal (``group_signal``): a float in [0, 1]."""
    return float((~group_signal(returns, group_size)).float().mean())


# ----------------------------------------------------------------------------------------------------------
# KL penalty


def kl_penalty_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, coef: float,
                       estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token estimate of KL(pi || pi_ref) at the sampled tokens, as a reward penalty (Ziegler et al. 2019,
    eq. 2: R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)), applied per token as in Stiennon et al. 2020).

    With log r = logp - ref (tokens sampled from pi), the estimators of Schulman's
    http://joschu.net/blog/kl-approx.html:
    - ``k1 = log r``: unbiased, high variance, can be negative;
    - ``k2 = 0.5 * (log r)^2``: biased (good for small differences), always >= 0;
    - ``k3 = exp(-log r) - 1 + log r = exp(ref - logp) - (ref - logp) - 1``: unbiased, always >= 0.

    logprobs, ref_logprobs: (B, T) float, log-probabilities of the sampled tokens under the policy and the
    reference; mask: (B, T) bool, True on action tokens. Returns ``(-coef * kl * mask, kl * mask)``, both (B, T).
    Differentiable (GRPO puts k3 in its loss); compute under ``torch.no_grad()`` when it is a reward.
    """
    mask = mask.bool()
    log_ratio = torch.where(mask, logprobs - ref_logprobs, 0)  # masked before exp: padding cannot overflow
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio ** 2
    elif estimator == "k3":
        kl = torch.exp(-log_ratio) - 1 + log_ratio
    else:
        raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")
    kl = torch.where(mask, kl, 0)
    return -coef * kl, kl


def adaptive_kl_coef(coef: float, observed_kl: float, target: float, horizon_steps: int, batch_size: int) -> float:
    """The next KL coefficient beta from the proportional controller of Ziegler et al. 2019, section 2.2:

        e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta_{t+1} = beta_t * (1 + e_t * n_steps / horizon)

    with n_steps = ``batch_size``, the number of episodes in this update, as in the paper's code
    (lm-human-preferences) and TRL. ``observed_kl`` is the batch mean of the per-sequence KL(pi || pi_ref) (summed
    over tokens).
    """
    if target <= 0 or horizon_steps <= 0:
        raise ValueError(f"need target > 0 and horizon_steps > 0, got {target}, {horizon_steps}")
    error = min(max(observed_kl / target - 1, -0.2), 0.2)
    return coef * (1 + error * batch_size / horizon_steps)
