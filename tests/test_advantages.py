"""Advantages, returns and KL shaping (advantages.py): expected numbers derived by hand in the comments."""

import math

import pytest
import torch

from mathrl.advantages import adaptive_kl_coef, gae, group_advantages, group_signal, kl_penalty_rewards, masked_mean, \
    masked_var, whiten, zero_signal_fraction

T, F = True, False


# ----------------------------------------------------------------------------------------------------------
# Masked statistics


def test_masked_mean_and_var_ignore_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, float("nan"), float("inf"), 6.0]])
    mask = torch.tensor([[T, T, T, F], [T, F, F, T]])
    # selected: 1, 2, 3, 4, 6 -> mean 16 / 5 = 3.2
    assert masked_mean(x, mask).item() == pytest.approx(3.2)
    # per row: (1 + 2 + 3) / 3 = 2, (4 + 6) / 2 = 5
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 5.0])
    # population variance: row 0 ((1-2)^2 + 0 + (3-2)^2) / 3 = 2/3, row 1 ((4-5)^2 + (6-5)^2) / 2 = 1
    assert masked_var(x, mask, dim=1).tolist() == pytest.approx([2 / 3, 1.0])
    # all: deviations from 3.2 are -2.2, -1.2, -0.2, 0.8, 2.8 -> squares 4.84 + 1.44 + 0.04 + 0.64 + 7.84 = 14.8
    assert masked_var(x, mask).item() == pytest.approx(14.8 / 5)
    assert masked_var(x, mask, unbiased=True).item() == pytest.approx(14.8 / 4)
    # an empty selection gives 0, not NaN
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_whiten_on_a_masked_vector():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([T, T, T, F])
    # mean over 1, 2, 3 = 2; population var = (1 + 0 + 1) / 3 = 2/3; std = sqrt(2/3)
    # whitened = (x - 2) / sqrt(2/3) = [-sqrt(3/2), 0, sqrt(3/2)] = [-1.2247, 0, 1.2247]; the masked 100 -> 0
    w = whiten(x, mask)
    assert w.tolist() == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5), 0.0], abs=1e-6)
    # shift_mean=False adds the mean 2 back: [2 - 1.2247, 2, 2 + 1.2247, 0]
    w = whiten(x, mask, shift_mean=False)
    assert w.tolist() == pytest.approx([2 - math.sqrt(1.5), 2.0, 2 + math.sqrt(1.5), 0.0], abs=1e-6)
    # the selected entries end with mean 0 and variance 1, whatever the masked entry holds
    w = whiten(torch.tensor([1.0, 2.0, 3.0, float("nan")]), mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# GAE


def test_gae_one_row_by_hand():
    # 2 prompt tokens, 3 action tokens, 1 padding token whose value (7) must not be used as V after the last action
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[9.0, 9.0, 0.5, 0.6, 0.8, 7.0]])
    mask = torch.tensor([[F, F, T, T, T, F]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # t=4 (last action, terminal): delta = 1 + 1*0 - 0.8 = 0.2;      A4 = 0.2
    # t=3: delta = 0 + 0.8 - 0.6 = 0.2;                               A3 = 0.2 + 0.95*0.2 = 0.39
    # t=2: delta = 0 + 0.6 - 0.5 = 0.1;                               A2 = 0.1 + 0.95*0.39 = 0.4705
    assert adv[0].tolist() == pytest.approx([0, 0, 0.4705, 0.39, 0.2, 0], abs=1e-6)
    # returns = A + V: 0.4705 + 0.5 = 0.9705, 0.39 + 0.6 = 0.99, 0.2 + 0.8 = 1.0; 0 outside the mask
    assert ret[0].tolist() == pytest.approx([0, 0, 0.9705, 0.99, 1.0, 0], abs=1e-6)


def test_gae_two_ragged_rows_by_hand():
    gamma, lam = 0.9, 0.5  # gamma * lam = 0.45
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0],
                            [0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[5.0, 0.5, 0.5, 0.5],
                           [5.0, 5.0, 0.4, 7.0]])
    mask = torch.tensor([[F, T, T, T],    # 1 prompt token, 3 actions
                         [F, F, T, F]])   # 2 prompt tokens, 1 action, 1 padding
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    # row 0, t=3 (terminal): delta = 1 + 0 - 0.5 = 0.5;                  A3 = 0.5
    #        t=2: delta = 0 + 0.9*0.5 - 0.5 = -0.05;                      A2 = -0.05 + 0.45*0.5 = 0.175
    #        t=1: delta = 0 + 0.9*0.5 - 0.5 = -0.05;                      A1 = -0.05 + 0.45*0.175 = 0.02875
    assert adv[0].tolist() == pytest.approx([0, 0.02875, 0.175, 0.5], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0, 0.52875, 0.675, 1.0], abs=1e-6)
    # row 1, t=2 (terminal, the padding value 7 is not V_{t+1}): delta = 1 + 0 - 0.4 = 0.6; A2 = 0.6; R2 = 1.0
    assert adv[1].tolist() == pytest.approx([0, 0, 0.6, 0], abs=1e-6)
    assert ret[1].tolist() == pytest.approx([0, 0, 1.0, 0], abs=1e-6)


def _random_spans(gen, batch, n_tokens):
    mask = torch.zeros(batch, n_tokens, dtype=torch.bool)
    for b in range(batch):
        start = int(torch.randint(0, n_tokens, (1,), generator=gen))
        end = int(torch.randint(start, n_tokens + 1, (1,), generator=gen))  # end == start: an empty row
        mask[b, start:end] = True
    return mask


def _brute_force_gae(rewards, values, mask, gamma, lam):
    """A_t = sum_{l >= 0} (gamma*lam)^l delta_{t+l} over the rest of the span, V = 0 after its last token."""
    adv = torch.zeros_like(values)
    for b in range(values.shape[0]):
        idx = mask[b].nonzero().flatten().tolist()
        for i, t in enumerate(idx):
            total = 0.0
            for l, k in enumerate(idx[i:]):
                next_value = values[b, k + 1] if k != idx[-1] else 0.0
                delta = rewards[b, k] + gamma * next_value - values[b, k]
                total += (gamma * lam) ** l * delta
            adv[b, t] = total
    return adv


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_brute_force_sum_of_discounted_deltas(seed):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    values = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    mask = _random_spans(gen, 4, 9)
    gamma, lam = [float(x) for x in torch.rand(2, generator=gen)]
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    expected = _brute_force_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, torch.where(mask, expected + values, 0))


def test_gae_with_lambda_1_and_gamma_1_is_monte_carlo_return_minus_value():
    # with gamma = lam = 1 the deltas telescope: A_t = sum_{k>=t} r_k + V_end(=0) - V_t; with a single terminal
    # reward R on the last action, A_t = R - V_t and the returns are R everywhere on the span
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[F, T, T, T, T, F], [F, F, F, T, T, T], [T, T, F, F, F, F]])
    last = torch.tensor([4, 5, 1])
    outcome = torch.tensor([1.0, 0.0, -0.5], dtype=torch.float64)
    rewards = torch.zeros_like(values)
    rewards[torch.arange(3), last] = outcome
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.where(mask, outcome[:, None] - values, 0))
    torch.testing.assert_close(ret, torch.where(mask, outcome[:, None].expand(3, 6), 0))


def test_gae_detaches_validates_and_leaves_inputs_alone():
    rewards = torch.tensor([[0.0, 1.0, 2.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]], requires_grad=True)
    mask = torch.tensor([[F, T, T]])
    before = (rewards.clone(), values.detach().clone(), mask.clone())
    adv, ret = gae(rewards, values, mask)
    assert not adv.requires_grad and not ret.requires_grad
    assert torch.equal(rewards, before[0]) and torch.equal(values.detach(), before[1]) and torch.equal(mask, before[2])
    with pytest.raises(ValueError, match="contiguous"):
        gae(rewards, values.detach(), torch.tensor([[T, F, T]]))
    with pytest.raises(ValueError, match="shape"):
        gae(rewards, values.detach(), torch.tensor([T, F, T]))


# ----------------------------------------------------------------------------------------------------------
# GRPO / Dr.GRPO / RLOO


def test_grpo_two_groups_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4, kind="grpo")
    # group 1: mean 0.5; population std sqrt(4 * 0.25 / 4) = 0.5 (the unbiased one would be sqrt(1/3) = 0.577)
    #          A = (r - 0.5) / (0.5 + 1e-6) = +-0.999998
    # group 2: all rewards equal -> r - mean = 0 -> A = 0 / (0 + eps) = 0: no learning signal
    assert adv.tolist() == pytest.approx([1, -1, -1, 1, 0, 0, 0, 0], abs=1e-5)
    # Dr.GRPO: no std division -> r - mean = +-0.5
    adv = group_advantages(rewards, group_size=4, kind="grpo", scale="none")
    assert adv.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    assert zero_signal_fraction(rewards, group_size=4) == 0.5


def test_rloo_two_groups_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4, kind="rloo")
    # group 1: r = 1 -> the others are {0, 0, 1}, mean 1/3 -> A = 1 - 1/3 = 2/3
    #          r = 0 -> the others are {1, 0, 1}, mean 2/3 -> A = 0 - 2/3 = -2/3
    # group 2: A = 1 - 1 = 0
    # (RLOO = G/(G-1) * (r - mean_g): 4/3 * 0.5 = 2/3)
    assert adv.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])


def test_reinforce_plus_plus_and_its_group_baseline_variant_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    # REINFORCE++ (batch baseline, batch std): mean_B = 3/8 = 0.375; population var = E[r^2] - mean^2
    #   = 0.375 - 0.140625 = 0.234375, std_B = 0.484123 -> A(1) = 0.625 / 0.484123 = 1.290994,
    #   A(0) = -0.375 / 0.484123 = -0.774597
    a, b = 0.625 / math.sqrt(0.234375), -0.375 / math.sqrt(0.234375)
    adv = group_advantages(rewards, group_size=4, kind="reinforce++")
    assert adv.tolist() == pytest.approx([a, b, b, b, a, a, b, b], abs=1e-5)
    # no group baseline: G = 1 works and gives the same numbers
    assert group_advantages(rewards, group_size=1, kind="reinforce++").tolist() == pytest.approx(adv.tolist())
    # REINFORCE++-baseline (GRPO's group baseline, the batch's std): centred r - mean_g =
    #   [0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5], mean 0, E[x^2] = (0.5625 + 3 * 0.0625 + 4 * 0.25) / 8
    #   = 1.75 / 8 = 0.21875, std_B = 0.467707 -> 0.75 / 0.467707 = 1.603567, -0.25 / . = -0.534522, 0.5 / . = 1.069045
    sd = math.sqrt(0.21875)
    adv = group_advantages(rewards, group_size=4, kind="grpo", scale="batch")
    assert adv.tolist() == pytest.approx([0.75 / sd, -0.25 / sd, -0.25 / sd, -0.25 / sd, 0.5 / sd, 0.5 / sd,
                                          -0.5 / sd, -0.5 / sd], abs=1e-5)
    # a group whose rewards are all equal: 0 under the group baseline, not under REINFORCE++'s batch baseline
    same = torch.tensor([1.0, 1.0, 0.0, 1.0])  # groups of 2: [1, 1] and [0, 1]; batch mean 0.75, std sqrt(3)/4
    assert group_advantages(same, 2, "grpo", scale="batch").tolist()[:2] == [0, 0]
    assert group_advantages(same, 2, "reinforce++").tolist() == pytest.approx(
        [0.25 / (math.sqrt(3) / 4), 0.25 / (math.sqrt(3) / 4), -0.75 / (math.sqrt(3) / 4), 0.25 / (math.sqrt(3) / 4)],
        abs=1e-5)
    # NaN (unscorable) samples: out of the batch statistics, advantage 0. Valid {1, 0, 1}: mean 2/3, var 2/9
    nan = float("nan")
    adv = group_advantages(torch.tensor([1.0, nan, 0.0, 1.0]), 2, "reinforce++")
    assert adv.tolist() == pytest.approx([(1 / 3) / (math.sqrt(2) / 3), 0, (-2 / 3) / (math.sqrt(2) / 3),
                                          (1 / 3) / (math.sqrt(2) / 3)], abs=1e-5)


def test_group_advantages_exclude_nan_rewards():
    nan = float("nan")
    rewards = torch.tensor([1.0, nan, 0.0, 0.0, nan, nan, nan, nan])
    # group 1 valid {1, 0, 0}: mean 1/3; population var = ((2/3)^2 + 2*(1/3)^2) / 3 = (6/9) / 3 = 2/9,
    #   std = sqrt(2)/3 = 0.4714 -> A(1) = (2/3) / (sqrt(2)/3) = sqrt(2); A(0) = (-1/3) / (sqrt(2)/3) = -1/sqrt(2)
    # group 2 has nothing valid -> all 0; every NaN sample -> 0
    adv = group_advantages(rewards, group_size=4, kind="grpo")
    assert adv.tolist() == pytest.approx([math.sqrt(2), 0, -1 / math.sqrt(2), -1 / math.sqrt(2), 0, 0, 0, 0], abs=1e-5)
    # RLOO: A(1) = 1 - mean(0, 0) = 1; A(0) = 0 - mean(1, 0) = -0.5
    adv = group_advantages(rewards, group_size=4, kind="rloo")
    assert adv.tolist() == pytest.approx([1, 0, -0.5, -0.5, 0, 0, 0, 0])
    assert not torch.isnan(adv).any()
    # a lone valid sample has no peer to compare with -> 0 under both
    lone = torch.tensor([nan, 1.0, nan])
    assert group_advantages(lone, 3, "grpo").tolist() == [0, 0, 0]
    assert group_advantages(lone, 3, "rloo").tolist() == [0, 0, 0]
    # zero signal: group 1 has signal; group 2 (nothing valid) has none; [nan, 1, 1, 1] has none
    assert zero_signal_fraction(rewards, 4) == 0.5
    assert zero_signal_fraction(torch.tensor([nan, 1.0, 1.0, 1.0]), 4) == 1.0


def test_group_advantages_reject_bad_arguments():
    rewards = torch.tensor([1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="RLOO"):
        group_advantages(rewards, group_size=1, kind="rloo")
    # GRPO with G = 1: every group is one sample, no signal
    assert group_advantages(rewards, group_size=1, kind="grpo").tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="groups of 2"):
        group_advantages(rewards, group_size=2, kind="grpo")
    with pytest.raises(ValueError, match="kind"):
        group_advantages(rewards, group_size=3, kind="ppo")
    with pytest.raises(ValueError, match="scale"):
        group_advantages(rewards, group_size=3, kind="grpo", scale="global")


def test_group_advantages_accept_integer_rewards_and_leave_them_alone():
    rewards = torch.tensor([1, 0, 1, 1])
    adv = group_advantages(rewards, 2, "rloo")
    assert adv.dtype.is_floating_point and adv.tolist() == [1, -1, 0, 0]
    assert rewards.tolist() == [1, 0, 1, 1]


# ----------------------------------------------------------------------------------------------------------
# KL penalty


def test_kl_estimators_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.25), 123.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5), -456.0]])
    mask = torch.tensor([[T, T, F]])  # the third token is padding holding garbage
    ln2 = math.log(2)
    # log r = logp - ref = [ln 2, -ln 2]
    # k1 = log r = [0.6931, -0.6931]: can be negative
    penalty, kl = kl_penalty_rewards(logp, ref, mask, coef=0.1, estimator="k1")
    assert kl[0].tolist() == pytest.approx([ln2, -ln2, 0])
    assert penalty[0].tolist() == pytest.approx([-0.1 * ln2, 0.1 * ln2, 0])
    # k2 = 0.5 * (log r)^2 = 0.5 * 0.4805 = 0.2402 for both
    _, kl = kl_penalty_rewards(logp, ref, mask, coef=0.1, estimator="k2")
    assert kl[0].tolist() == pytest.approx([0.5 * ln2 ** 2, 0.5 * ln2 ** 2, 0])
    # k3 = exp(-log r) - 1 + log r: 0.5 - 1 + 0.6931 = 0.1931 and 2 - 1 - 0.6931 = 0.3069 (exp of the masked
    # garbage, exp(579), would overflow: it is masked before the exp)
    penalty, kl = kl_penalty_rewards(logp, ref, mask, coef=0.1, estimator="k3")
    assert kl[0].tolist() == pytest.approx([0.5 - 1 + ln2, 2 - 1 - ln2, 0])
    assert penalty[0].tolist() == pytest.approx([-0.1 * (ln2 - 0.5), -0.1 * (1 - ln2), 0])
    assert torch.isfinite(penalty).all()
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty_rewards(logp, ref, mask, coef=0.1, estimator="k4")


def test_kl_estimators_signs_and_expectations():
    gen = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(50, generator=gen, dtype=torch.float64), dim=0)
    logp = torch.log_softmax(ref + 0.05 * torch.randn(50, generator=gen, dtype=torch.float64), dim=0)
    p = logp.exp()
    exact = (p * (logp - ref)).sum()  # KL(p || ref)
    mask = torch.ones(1, 50, dtype=torch.bool)
    kls = {e: kl_penalty_rewards(logp[None], ref[None], mask, coef=1.0, estimator=e)[1][0] for e in ("k1", "k2", "k3")}
    assert (kls["k1"] < 0).any()  # k1 is negative where the policy is below the reference
    assert (kls["k2"] >= 0).all() and (kls["k3"] >= 0).all()
    # expectations under the policy (every token weighted by p): k1 and k3 are unbiased, exactly
    # E_p[k1] = sum p log(p/q) = KL; E_p[k3] = sum p (q/p - 1 - log(q/p)) = sum q - 1 + KL = KL
    assert (p * kls["k1"]).sum().item() == pytest.approx(exact.item(), rel=1e-9)
    assert (p * kls["k3"]).sum().item() == pytest.approx(exact.item(), rel=1e-9)
    # k2 is biased but agrees to second order for a policy this close to the reference
    assert (p * kls["k2"]).sum().item() == pytest.approx(exact.item(), rel=0.05)


def test_adaptive_kl_coef_by_hand():
    # horizon 10000, batch 256: n_steps / horizon = 0.0256
    # KL 0.11 vs target 0.1: error = 0.1 -> coef * (1 + 0.1 * 0.0256) = 0.1 * 1.00256
    assert adaptive_kl_coef(0.1, 0.11, 0.1, 10000, 256) == pytest.approx(0.100256)
    # KL 1.0: error 9 clipped to 0.2 -> 0.1 * (1 + 0.2 * 0.0256) = 0.1 * 1.00512
    assert adaptive_kl_coef(0.1, 1.0, 0.1, 10000, 256) == pytest.approx(0.100512)
    # KL 0.05: error -0.5 clipped to -0.2 -> 0.1 * (1 - 0.00512)
    assert adaptive_kl_coef(0.1, 0.05, 0.1, 10000, 256) == pytest.approx(0.099488)
    # on target: unchanged
    assert adaptive_kl_coef(0.1, 0.1, 0.1, 10000, 256) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        adaptive_kl_coef(0.1, 0.1, 0.0, 10000, 256)


def test_group_signal_is_the_one_definition_of_signal():
    from mathrl.advantages import group_signal

    # groups of 2: [1, 1] none; [0, 0.3] yes (step rewards only: the outcome part may be all 0); [nan, 1] < 2 valid
    returns = torch.tensor([1.0, 1.0, 0.0, 0.3, float("nan"), 1.0])
    assert group_signal(returns, 2).tolist() == [False, True, False]
    assert zero_signal_fraction(returns, 2) == pytest.approx(2 / 3)


def test_overlong_penalty_by_hand():
    from mathrl.rewards import overlong_penalty

    # DAPO eq. 13 with L_max 100, L_buf 20: 0 up to 80 tokens, (80 - |y|) / 20 in (80, 100], -1 beyond
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert overlong_penalty(100, 100, 20) == pytest.approx(-1.0)
    assert overlong_penalty(101, 100, 20) == -1.0 and overlong_penalty(99, 100, 0) == 0.0


def test_a_group_of_equal_non_binary_rewards_gets_exactly_zero_advantage():
    """Eight rewards of 0.7 (a user's reward function): 0.7 is not exact in float32, and a float32 mean of the eight
    misses it by a rounding step, which the std epsilon (1e-6) used to blow up into the same non-zero advantage for
    every sample. The group carries no signal (``group_signal``): every advantage is exactly 0, under every baseline
    that is the group's. Binary groups are unchanged, by hand: [1, 0 x 7] has mean 1/8, centred 7/8 and -1/8,
    population std sqrt((49 + 7) / 64 / 8) = sqrt(7) / 8, so A = 7/8 / (sqrt(7)/8) = sqrt(7) = 2.6457513 and
    -1/8 / (sqrt(7)/8) = -1/sqrt(7) = -0.3779645 (RLOO: 1 - 0 = 1 and 0 - 1/7 = -0.1428571)."""
    equal = torch.full((8,), 0.7)
    binary = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    rewards = torch.cat([equal, binary])
    for kind, kw in (("grpo", {}), ("grpo", {"scale": "none"}), ("grpo", {"scale": "batch"}), ("rloo", {})):
        adv = group_advantages(rewards, 8, kind, **kw)
        assert torch.equal(adv[:8], torch.zeros(8)), (kind, kw, adv[:8])
    grpo = group_advantages(rewards, 8, "grpo")[8:]
    assert grpo[0].item() == pytest.approx(math.sqrt(7), rel=1e-5)
    assert grpo[1:].tolist() == pytest.approx([-1 / math.sqrt(7)] * 7, rel=1e-5)
    assert group_advantages(rewards, 8, "rloo")[8:].tolist() == pytest.approx([1.0] + [-1 / 7] * 7, rel=1e-6)
    # the same groups count as without signal
    assert group_signal(rewards, 8).tolist() == [False, True] and zero_signal_fraction(rewards, 8) == 0.5
