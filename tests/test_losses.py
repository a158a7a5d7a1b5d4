"""Losses (losses.py): expected numbers derived by hand in the comments."""

import dataclasses
import math

import pytest
import torch

from mathrl.advantages import kl_penalty_rewards
from mathrl.losses import PolicyStats, aggregate, masked_token_mean, ppo_policy_loss, sft_loss, value_loss

T, F = True, False
e = math.e


# ----------------------------------------------------------------------------------------------------------
# masked_token_mean


def test_masked_token_mean_by_hand_and_exact_accumulation():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 5.0]])
    mask = torch.tensor([[T, T, F], [T, F, T]])
    # (1 + 2 + 3 + 5) / 4 = 2.75; the NaN and inf are masked out
    assert masked_token_mean(x, mask).item() == pytest.approx(2.75)
    # with the global count of 8 target tokens: 11 / 8
    assert masked_token_mean(x, mask, total=8).item() == pytest.approx(11 / 8)
    assert masked_token_mean(x, torch.zeros_like(mask)).item() == 0.0

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=gen, requires_grad=True)
    mask = torch.rand(6, 5, generator=gen) > 0.4
    full = masked_token_mean(w ** 2, mask)
    (g_full,) = torch.autograd.grad(full, w)
    total = mask.sum()
    parts = [masked_token_mean(w[i:i + 2] ** 2, mask[i:i + 2], total=total) for i in range(0, 6, 2)]
    (g_parts,) = torch.autograd.grad(sum(parts), w)
    torch.testing.assert_close(sum(parts), full)
    torch.testing.assert_close(g_parts, g_full)


# ----------------------------------------------------------------------------------------------------------
# PPO clipped surrogate


@pytest.mark.parametrize("log_ratio, advantage, loss, grad, clipped", [
    # ratio = e = 2.718 > 1.2, A = +1: clipped ratio becomes 1.2 (1 + eps); objective max(-e, -1.2) = -1.2,
    # constant in logprobs -> gradient 0 (no incentive to push the ratio further up)
    (1.0, 1.0, -1.2, 0.0, True),
    # ratio = e, A = -1: max(e, 1.2) = e, the unclipped term (pessimistic bound) -> d(-A*ratio)/dlogp = ratio = e
    (1.0, -1.0, e, e, False),
    # ratio = 1/e = 0.368 < 0.8, A = +1: max(-0.368, -0.8) = -0.368, unclipped -> gradient -A*ratio = -1/e
    (-1.0, 1.0, -1 / e, -1 / e, False),
    # ratio = 1/e, A = -1: clipped ratio becomes 0.8 (1 - eps); max(0.368, 0.8) = 0.8 -> gradient 0
    (-1.0, -1.0, 0.8, 0.0, True),
    # ratio = e^0.1 = 1.105, inside [0.8, 1.2]: both terms equal -A*1.105 -> gradient -A*1.105
    (0.1, 1.0, -math.exp(0.1), -math.exp(0.1), False),
    (0.1, -1.0, math.exp(0.1), math.exp(0.1), False),
])
def test_ppo_policy_loss_single_token_by_hand(log_ratio, advantage, loss, grad, clipped):
    old = torch.tensor([[0.0, -0.7]])
    logprobs = (old + torch.tensor([[0.0, log_ratio]])).requires_grad_()
    advantages = torch.tensor([[5.0, advantage]])
    mask = torch.tensor([[F, T]])  # the first token is the prompt
    out, stats = ppo_policy_loss(logprobs, old, advantages, mask, clip=0.2)
    out.backward()
    assert out.item() == pytest.approx(loss, rel=1e-6)
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, grad], rel=1e-6)
    assert stats.clipfrac == (1.0 if clipped else 0.0)
    # approx_kl = (ratio - 1) - log ratio, e.g. (e - 1) - 1 = 0.718 for log ratio 1
    assert stats.approx_kl == pytest.approx(math.exp(log_ratio) - 1 - log_ratio, rel=1e-5)
    assert stats.ratio_mean == pytest.approx(math.exp(log_ratio), rel=1e-6)
    assert stats.loss == pytest.approx(loss, rel=1e-6)


def test_ppo_policy_loss_token_mean_over_a_batch_by_hand():
    old = torch.zeros(2, 3)
    logprobs = torch.tensor([[0.0, 1.0, -1.0],
                             [0.0, 0.0, 1.0]], requires_grad=True)
    advantages = torch.tensor([[0.0, 1.0, 1.0],
                               [0.0, 2.0, -1.0]])
    mask = torch.tensor([[F, T, T],
                         [F, T, T]])
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, clip=0.2)
    # token (0,1): ratio e, A=1   -> max(-e, -1.2) = -1.2         (clipped)
    # token (0,2): ratio 1/e, A=1 -> max(-1/e, -0.8) = -1/e
    # token (1,1): ratio 1, A=2   -> -2
    # token (1,2): ratio e, A=-1  -> max(e, 1.2) = e
    # mean over 4 tokens = (-1.2 - 1/e - 2 + e) / 4
    assert loss.item() == pytest.approx((-1.2 - 1 / e - 2 + e) / 4, rel=1e-6)
    assert stats.clipfrac == pytest.approx(0.25)
    # ratio mean = (e + 1/e + 1 + e) / 4
    assert stats.ratio_mean == pytest.approx((2 * e + 1 / e + 1) / 4, rel=1e-6)
    # per-row advantages (GRPO/RLOO) broadcast over the tokens: (B, 1) gives the same as repeating them
    adv_row = torch.tensor([[1.0], [-1.0]])
    a, _ = ppo_policy_loss(logprobs, old, adv_row, mask)
    b, _ = ppo_policy_loss(logprobs, old, adv_row.expand(2, 3), mask)
    torch.testing.assert_close(a, b)


def test_ppo_gradients_flow_only_through_logprobs():
    logprobs = torch.tensor([[0.0, 0.3, -0.2]], requires_grad=True)
    old = torch.tensor([[0.0, 0.1, 0.1]], requires_grad=True)
    advantages = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[F, T, T]])
    loss, _ = ppo_policy_loss(logprobs, old, advantages, mask)
    loss.backward()
    assert logprobs.grad is not None
    assert old.grad is None  # old_logprobs detached
    assert advantages.grad is None  # advantages detached


def test_ppo_masked_positions_have_no_effect_on_loss_or_gradient():
    old = torch.tensor([[0.0, 0.1, 0.2, 0.0]])
    advantages = torch.tensor([[0.0, 1.0, -0.5, 0.0]])
    mask = torch.tensor([[F, T, T, F]])
    clean = torch.tensor([[0.0, 0.3, 0.0, 0.0]], requires_grad=True)
    loss_clean, stats_clean = ppo_policy_loss(clean, old, advantages, mask)
    loss_clean.backward()
    # garbage at the masked positions: a huge log-ratio (exp would overflow), -inf, NaN advantages and old logprobs
    dirty = torch.tensor([[1e4, 0.3, 0.0, -math.inf]], requires_grad=True)
    old_dirty = torch.tensor([[float("nan"), 0.1, 0.2, -1e4]])
    adv_dirty = torch.tensor([[float("nan"), 1.0, -0.5, math.inf]])
    loss_dirty, stats_dirty = ppo_policy_loss(dirty, old_dirty, adv_dirty, mask)
    loss_dirty.backward()
    assert loss_dirty.item() == loss_clean.item()
    assert stats_dirty == stats_clean
    assert torch.equal(dirty.grad, clean.grad)
    assert dirty.grad[0, 0].item() == 0.0 and dirty.grad[0, 3].item() == 0.0


def test_ppo_leaves_inputs_alone_and_stats_are_frozen():
    logprobs = torch.tensor([[0.0, 1.0, -1.0]])
    old = torch.zeros(1, 3)
    advantages = torch.tensor([[3.0, 1.0, -1.0]])
    mask = torch.tensor([[F, T, T]])
    before = [t.clone() for t in (logprobs, old, advantages, mask)]
    _, stats = ppo_policy_loss(logprobs, old, advantages, mask)
    for t, b in zip((logprobs, old, advantages, mask), before):
        assert torch.equal(t, b)
    assert isinstance(stats, PolicyStats) and all(isinstance(v, float) for v in dataclasses.astuple(stats))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.loss = 0.0


# ----------------------------------------------------------------------------------------------------------
# Clipped value loss


def test_value_loss_clipping_by_hand():
    values = torch.tensor([[9.0, 0.1, 0.5, -0.5]], requires_grad=True)
    old_values = torch.tensor([[9.0, 0.0, 0.0, 0.0]], requires_grad=True)
    returns = torch.tensor([[9.0, 1.0, 1.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[F, T, T, T]])
    loss, clipfrac = value_loss(values, old_values, returns, mask, clip=0.2)
    # v = 0.1:  inside [-0.2, 0.2] of old 0: both terms (0.1 - 1)^2 = 0.81          -> 0.5 * 0.81 = 0.405
    # v = 0.5:  clipped to 0.2: max((0.5 - 1)^2, (0.2 - 1)^2) = max(0.25, 0.64) = 0.64 -> 0.32   (clipped term)
    # v = -0.5: clipped to -0.2: max((-0.5 - 1)^2, (-0.2 - 1)^2) = max(2.25, 1.44)     -> 1.125
    # mean over 3 tokens = (0.405 + 0.32 + 1.125) / 3 = 1.85 / 3
    assert loss.item() == pytest.approx(1.85 / 3, rel=1e-6)
    assert clipfrac == pytest.approx(1 / 3)
    loss.backward()
    # d/dv of 0.5 * (v - R)^2 / 3 = (v - R) / 3: (0.1 - 1)/3 = -0.3; clipped -> 0; (-0.5 - 1)/3 = -0.5
    assert values.grad[0].tolist() == pytest.approx([0.0, -0.3, 0.0, -0.5], abs=1e-6)
    assert old_values.grad is None and returns.grad is None


def test_value_loss_masked_positions_have_no_effect():
    mask = torch.tensor([[T, T, F]])
    clean = torch.tensor([[0.3, -0.1, 0.0]], requires_grad=True)
    dirty = torch.tensor([[0.3, -0.1, math.inf]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0, float("nan")]])
    ret = torch.tensor([[1.0, 0.0, float("nan")]])
    a, fa = value_loss(clean, old.nan_to_num(), ret.nan_to_num(), mask)
    b, fb = value_loss(dirty, old, ret, mask)
    a.backward()
    b.backward()
    assert a.item() == b.item() and fa == fb
    assert torch.equal(clean.grad, dirty.grad) and dirty.grad[0, 2].item() == 0.0


# ----------------------------------------------------------------------------------------------------------
# SFT


def test_sft_loss_by_hand():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25), -math.inf]], requires_grad=True)
    mask = torch.tensor([[T, T, F]])
    # (-log 0.5 - log 0.25) / 2 = (ln 2 + 2 ln 2) / 2 = 1.5 ln 2 = 1.0397; the -inf is padding
    loss = sft_loss(logprobs, mask)
    assert loss.item() == pytest.approx(1.5 * math.log(2))
    loss.backward()
    # d/dlogp = -1/2 on the two targets, 0 on the padding
    assert logprobs.grad.tolist() == [[-0.5, -0.5, 0.0]]
    # with the global count 4: 3 ln 2 / 4
    assert sft_loss(logprobs, mask, total=4).item() == pytest.approx(0.75 * math.log(2))


# ----------------------------------------------------------------------------------------------------------
# The objective family: one loss, named switches (DAPO, Dr.GRPO, GSPO, CISPO)


def _family_batch():
    # two completions of 2 and 1 tokens (row 1 padded); log ratios ln 1.5 and 0 on row 0, ln 0.5 on row 1
    old = torch.zeros(2, 2)
    logp = torch.tensor([[math.log(1.5), 0.0], [math.log(0.5), 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([[1.0], [-1.0]])  # one advantage per completion (GRPO)
    return logp, old, adv, mask


def test_clip_higher_moves_only_the_upper_bound():
    logp, old, adv, mask = _family_batch()
    # symmetric clip 0.2: row 0 token 0 ratio 1.5 clipped to 1.2 (A > 0): -1.2; token 1 ratio 1: -1;
    # row 1 ratio 0.5, A = -1: max(0.5, 0.8) = 0.8. Token mean: (-1.2 - 1 + 0.8) / 3 = -0.4667
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    assert float(loss) == pytest.approx(-1.4 / 3)
    assert stats.clipfrac_high == pytest.approx(1 / 3) and stats.clipfrac_low == pytest.approx(1 / 3)
    # clip-higher 0.6 (DAPO): 1.5 < 1.6 is not clipped: -1.5; the lower side is unchanged: (-1.5 - 1 + 0.8) / 3
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip=0.2, clip_high=0.6)
    assert float(loss) == pytest.approx(-1.7 / 3) and stats.clipfrac_high == 0.0


def test_aggregations_token_sequence_constant():
    logp, old, adv, mask = _family_batch()
    # per-token losses (clip 0.2): row 0 [-1.2, -1.0], row 1 [0.8]
    token, _ = ppo_policy_loss(logp, old, adv, mask, clip=0.2, aggregation="token")
    sequence, _ = ppo_policy_loss(logp, old, adv, mask, clip=0.2, aggregation="sequence", n_rows=2)
    constant, _ = ppo_policy_loss(logp, old, adv, mask, clip=0.2, aggregation="constant", n_rows=2, max_len=4)
    assert float(token) == pytest.approx((-1.2 - 1.0 + 0.8) / 3)  # every token equal
    assert float(sequence) == pytest.approx(((-1.2 - 1.0) / 2 + 0.8) / 2)  # row means, then the mean: -0.15
    assert float(constant) == pytest.approx((-1.2 - 1.0 + 0.8) / (2 * 4))  # / (rows x max_len): -0.175


def test_gspo_clips_one_ratio_per_sequence():
    logp, old, adv, mask = _family_batch()
    # row 0: s = exp((ln 1.5 + 0) / 2) = sqrt(1.5) = 1.2247 > 1.2, A = 1: clipped, -1.2 on each of its 2 tokens;
    # row 1: s = 0.5 < 0.8, A = -1: max(0.5, 0.8) = 0.8. Sequence aggregation: (-1.2 + 0.8) / 2 = -0.2
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip=0.2, kind="gspo", aggregation="sequence", n_rows=2)
    assert float(loss) == pytest.approx(-0.2)
    assert stats.clipfrac == pytest.approx(1.0)  # every token's sequence is clipped
    loss.backward()
    assert torch.all(logp.grad == 0)  # clipped everywhere: no gradient (PPO semantics, per sequence)


def test_cispo_keeps_the_gradient_of_clipped_tokens():
    logp, old, adv, mask = _family_batch()
    # weights sg(min(ratio, 1 + 0.2)): row 0 [1.2, 1.0], row 1 [0.5]; L_t = -w A log pi_t, token mean:
    # value -(1.2 * ln 1.5 + 1.0 * 0) / 3 + (0.5 * ln 0.5) / 3 = -(0.4866 + 0.3466) / 3 = -0.2777
    loss, _ = ppo_policy_loss(logp, old, adv, mask, clip=0.2, kind="cispo")
    assert float(loss) == pytest.approx((-(1.2 * math.log(1.5)) + 0.5 * math.log(0.5)) / 3)
    loss.backward()
    # d/d logp = -w A / 3: the clipped token (ratio 1.5) still gets -1.2 / 3, unlike PPO where it gets 0
    assert logp.grad.flatten().tolist() == pytest.approx([-0.4, -1 / 3, 0.5 / 3, 0.0])


def test_truncated_importance_weights_by_hand():
    from mathrl.losses import truncated_importance_weights

    # row 0: trainer p = 0.5, 0.2 where the engine had 0.25, 0.4 -> ratios r = 2.0, 0.5; row 0 position 2 and
    # row 1 are masked out (they hold nonsense that must not count). cap 1.5:
    #   weights = min(r, 1.5) = 1.5, 0.5
    #   k3 KL = mean((r - 1) - log r) = ((1 - ln 2) + (-0.5 + ln 2)) / 2 = 0.5 / 2 = 0.25 (exactly)
    #   capped fraction = 1 of 2 tokens = 0.5; max ratio = 2.0
    trainer = torch.log(torch.tensor([[0.5, 0.2, 1e-30], [0.9, 0.9, 0.9]]))
    engine = torch.log(torch.tensor([[0.25, 0.4, 1.0], [1e-30, 0.1, 0.1]]))
    mask = torch.tensor([[True, True, False], [False, False, False]])
    w, stats = truncated_importance_weights(trainer, engine, mask, cap=1.5)
    assert torch.allclose(w, torch.tensor([[1.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    assert stats.kl == pytest.approx(0.25, abs=1e-6)
    assert stats.capped_fraction == pytest.approx(0.5)
    assert stats.max_ratio == pytest.approx(2.0)
    # the same distributions: every weight 1, no KL, nothing capped
    w, stats = truncated_importance_weights(trainer, trainer, mask, cap=1.5)
    assert torch.equal(w[mask], torch.ones(2)) and stats.kl == 0 and stats.capped_fraction == 0
    assert math.isnan(truncated_importance_weights(trainer, engine, torch.zeros_like(mask), 2.0)[1].max_ratio)
    # engine and trainer nearly equal (log-ratios x of a few 1e-4, as between two kernels): r - 1 - log r ~ x^2 / 2,
    # x^2 = 9, 4, 1, 9, 0.25, 6.25 (x 1e-8) -> sum 29.5e-8 / 2 / 6 tokens = 2.458e-8; exp(x) - 1 - x in float32 gave
    # 1.99e-8 here (cancellation; it can come out below 0), expm1 keeps it
    engine = torch.log(torch.tensor([[0.3, 0.6, 0.45, 0.2, 0.7, 0.55]]))
    trainer = engine + torch.tensor([[3e-4, -2e-4, 1e-4, -3e-4, 5e-5, 2.5e-4]])
    stats = truncated_importance_weights(trainer, engine, torch.ones_like(trainer, dtype=torch.bool), 2.0)[1]
    assert stats.kl == pytest.approx(2.458e-8, rel=1e-2)


def test_ppo_loss_importance_weights_scale_each_token():
    # two tokens at ratio 1 (first epoch), advantages 1 and -2, IS weights 1.5 and 0.5: the per-token losses
    # -A * r = -1 and 2 become -1.5 and 1.0; token mean over the 2 tokens = -0.25 (without weights: 0.5). The
    # gradient w.r.t. logprob t is -w_t A_t / 2: -0.75 and 0.5
    logp = torch.zeros(1, 2, requires_grad=True)
    adv, mask = torch.tensor([[1.0, -2.0]]), torch.ones(1, 2, dtype=torch.bool)
    loss, _ = ppo_policy_loss(logp, torch.zeros(1, 2), adv, mask, is_weights=torch.tensor([[1.5, 0.5]]))
    loss.backward()
    assert float(loss) == pytest.approx(-0.25)
    assert torch.allclose(logp.grad, torch.tensor([[-0.75, 0.5]]))
    plain, _ = ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), adv, mask)
    ones, _ = ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), adv, mask, is_weights=torch.ones(1, 2))
    assert float(plain) == pytest.approx(0.5) and float(ones) == float(plain)


def test_kl_term_aggregates_like_the_policy_term():
    """``aggregate`` reduces any per-token term the same way: here GRPO's k3 KL. Row 0 has one token with
    log(pi / pi_ref) = ln 2, so k3 = exp(-ln 2) - 1 + ln 2 = 0.5 - 1 + 0.6931472 = 0.1931472; row 1 has three
    tokens with log ratio 0 (k3 = 0). token: 0.1931472 / 4 tokens = 0.0482868; sequence (GRPO eq. 3): the row
    means 0.1931472 and 0, then their mean = 0.0965736; constant (Dr.GRPO): 0.1931472 / (2 rows x 4) = 0.0241434."""
    mask = torch.tensor([[T, F, F], [T, T, T]])
    logp = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]])
    _, kl = kl_penalty_rewards(logp, torch.zeros(2, 3), mask, 1.0, "k3")
    assert float(aggregate(kl, mask, "token", total=4)) == pytest.approx(0.1931472 / 4)
    assert float(aggregate(kl, mask, "sequence", n_rows=2)) == pytest.approx(0.1931472 / 2)
    assert float(aggregate(kl, mask, "constant", n_rows=2, max_len=4)) == pytest.approx(0.1931472 / 8)


def test_grpo_objective_aggregates_its_kl_term_with_the_policy_term():
    """`mathrl grpo --kl-coef 0.5`: with advantages 0 the objective is 0.5 x the KL term alone, aggregated as
    --loss-aggregation says (numbers of test_kl_term_aggregates_like_the_policy_term): token 0.5 x 0.0482868,
    sequence 0.5 x 0.0965736, constant 0.5 x 0.0241434. (The KL term used to be a token mean under every
    aggregation.)"""
    from mathrl.algorithms import grpo
    from mathrl.config import build
    from mathrl.rollouts import Experience, RolloutBatch

    mask = torch.tensor([[T, F, F], [T, T, T]])
    logp = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]])
    batch = RolloutBatch(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long),
                         torch.zeros(2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), mask, mask, logp)
    part = Experience(batch, old_logprobs=logp, advantages=torch.zeros(2, 3), ref_logprobs=torch.zeros(2, 3))
    for aggregation, kl in (("token", 0.1931472 / 4), ("sequence", 0.1931472 / 2), ("constant", 0.1931472 / 8)):
        cfg = build(grpo.Config, {"model": "m", "kl_coef": 0.5, "loss_aggregation": aggregation,
                                  "max_new_tokens": 4})
        loss, _, _ = grpo.objective(cfg, logp, part, n_loss=4, n_rows=2, device="cpu")
        assert float(loss) == pytest.approx(0.5 * kl), aggregation
