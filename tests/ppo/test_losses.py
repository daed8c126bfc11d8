"""The clipped surrogate, REINFORCE, the KL term, the loss aggregations and the clipped value
loss against plain per-token references."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_rm.ppo.kl import kl_loss
from megatron_rm.ppo.losses import PolicyLossSettings, policy_loss, value_loss

MASK = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]])


def reference_policy_loss(new, old, advantages, mask, clip, dual_clip=None, clip_high=None):
    total = 0.0
    for row, col in mask.nonzero().tolist():
        ratio = float(torch.exp(new[row, col].double() - old[row, col].double()))
        a = float(advantages[row, col])
        loss = max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + (clip if clip_high is None else clip_high)))
        if dual_clip is not None and a < 0:
            loss = min(loss, -a * dual_clip)
        total += loss
    return total


def test_ratio_is_exactly_one_before_the_first_update():
    generator = torch.Generator().manual_seed(0)
    old = torch.randn(3, 5, generator=generator)
    advantages = torch.randn(3, 5, generator=generator)
    loss, count, stats = policy_loss(old.clone(), old, advantages, MASK)
    assert int(count) == int(MASK.sum())
    assert float(stats["clipped"]) == 0.0 and float(stats["approx_kl"]) == 0.0
    assert float(loss) == float(-(advantages * MASK).sum())


def test_clipped_surrogate_equals_the_reference_and_its_gradient_flows_through_unclipped_tokens():
    generator = torch.Generator().manual_seed(1)
    old = torch.randn(3, 5, generator=generator)
    new = (old + 0.4 * torch.randn(3, 5, generator=generator)).requires_grad_()
    advantages = torch.randn(3, 5, generator=generator)
    for settings in (PolicyLossSettings(clip=0.2), PolicyLossSettings(clip=0.1, dual_clip=3.0),
                     PolicyLossSettings(clip=0.2, clip_high=0.28)):
        loss, _, stats = policy_loss(new, old, advantages, MASK, settings)
        expected = reference_policy_loss(new.detach(), old, advantages, MASK, settings.clip, settings.dual_clip,
                                         settings.clip_high)
        assert abs(float(loss.detach()) - expected) < 1e-5
        assert 0 < float(stats["clipped"]) < int(MASK.sum())
    new.grad = None
    policy_loss(new, old, advantages, MASK)[0].backward()
    assert float(new.grad[~MASK.bool()].abs().sum()) == 0.0


def test_clip_higher_lets_a_positive_advantage_raise_the_ratio_further():
    """DAPO: with clip 0.2 and clip_high 0.28 a ratio of 1.25 on a positive advantage still has a
    gradient; a ratio of 0.75 on a negative one is clipped at 0.8 as before."""
    mask = torch.ones(1, 1)
    for ratio, advantage, symmetric, higher in ((1.25, 1.0, 1.2, 1.25), (1.35, 1.0, 1.2, 1.28), (0.75, -1.0, 0.8, 0.8)):
        new = torch.full((1, 1), float(torch.tensor(ratio).log()), requires_grad=True)
        old, a = torch.zeros(1, 1), torch.full((1, 1), advantage)
        for settings, bound in ((PolicyLossSettings(clip=0.2), symmetric),
                                (PolicyLossSettings(clip=0.2, clip_high=0.28), higher)):
            loss = policy_loss(new, old, a, mask, settings)[0]
            assert float(loss.detach()) == pytest.approx(-advantage * bound, rel=1e-6), (ratio, settings)


def test_dual_clip_caps_the_loss_of_a_negative_advantage():
    old = torch.zeros(1, 1)
    new = torch.full((1, 1), 3.0)  # ratio e^3 ~ 20
    advantage = torch.full((1, 1), -1.0)
    mask = torch.ones(1, 1)
    plain = policy_loss(new, old, advantage, mask, PolicyLossSettings(clip=0.2))[0]
    capped = policy_loss(new, old, advantage, mask, PolicyLossSettings(clip=0.2, dual_clip=3.0))[0]
    assert float(plain) > 20 and float(capped) == 3.0


def test_entropy_bonus_lowers_the_loss_by_its_coefficient():
    old = torch.zeros(3, 5)
    entropy = torch.rand(3, 5, generator=torch.Generator().manual_seed(2))
    advantages = torch.ones(3, 5)
    without = policy_loss(old, old, advantages, MASK, entropy=entropy)
    with_bonus = policy_loss(old, old, advantages, MASK, PolicyLossSettings(entropy_coef=0.1), entropy=entropy)
    torch.testing.assert_close(with_bonus[0], without[0] - 0.1 * (entropy * MASK).sum())
    torch.testing.assert_close(without[2]["entropy"], (entropy * MASK).sum().double())


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    old_values = torch.zeros(3, 5)
    values = torch.tensor([[0.0, 1.0, -1.0, 0.1, 9.0]] * 3)
    returns = torch.tensor([[0.0, 2.0, 0.5, 0.0, 0.0]] * 3)
    loss, count, stats = value_loss(values, old_values, returns, MASK, clip=0.2)
    expected = 0.0
    for row, col in MASK.nonzero().tolist():
        v, r = float(values[row, col]), float(returns[row, col])
        bounded = min(max(v, -0.2), 0.2)
        expected += 0.5 * max((v - r) ** 2, (bounded - r) ** 2)
    assert abs(float(loss) - expected) < 1e-6 and int(count) == int(MASK.sum())
    unclipped = value_loss(values, old_values, returns, MASK, clip=None)[0]
    assert float(unclipped) == 0.5 * float(((values - returns) ** 2 * MASK).sum())
    assert float(stats["clipped"]) > 0


def test_a_kl_term_in_the_loss_is_verls_low_var_kl_with_its_clamps():
    """k3 = exp(-d) + d - 1 with d clamped to [-20, 20] and the estimate to at most 10
    (verl kl_penalty_forward("low_var_kl"), NeMo-RL)."""
    d = torch.tensor([[-30.0, -3.0, -0.5, 0.0, 0.5, 3.0, 30.0]])
    ref = torch.zeros_like(d)
    expected = [min(math.exp(-x) + x - 1, 10.0) for x in d.clamp(-20, 20)[0].tolist()]
    assert kl_loss(d, ref, "k3")[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert kl_loss(d, ref, "k2").tolist() == (0.5 * d.square()).tolist()
    # k2's gradient in log pi is d, the unbiased gradient of KL(pi || pi_ref).
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    kl_loss(logprobs, torch.tensor([[-1.5, -1.0]]), "k2").sum().backward()
    assert logprobs.grad.tolist() == [[0.5, -1.0]]


def test_the_kl_term_enters_each_tokens_loss_and_is_reported():
    old = torch.full((1, 4), -1.0)
    ref = old - 0.3
    mask = torch.tensor([[True, True, True, False]])
    settings = PolicyLossSettings(kl_coef=0.1, kl_estimator="k1")
    loss, count, stats = policy_loss(old.clone(), old, torch.zeros(1, 4), mask, settings, ref_logprobs=ref)
    assert float(loss) == pytest.approx(0.1 * 0.3 * 3) and int(count) == 3
    assert float(stats["kl_loss"]) == pytest.approx(0.9) and float(stats["tokens"]) == 3


def test_reinforce_is_minus_advantage_times_log_probability():
    logprobs = torch.tensor([[-0.5, -2.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, -2.0]])
    loss, count, stats = policy_loss(logprobs, logprobs.detach() - 1.0, advantages, torch.ones(1, 2, dtype=torch.bool),
                                     PolicyLossSettings(kind="reinforce"))
    assert float(loss.detach()) == pytest.approx(0.5 - 4.0)
    loss.backward()
    assert logprobs.grad.tolist() == [[-1.0, 2.0]]  # no ratio, no clip
    assert float(stats["clipped"]) == 0


def test_the_policy_loss_aggregates_as_the_setting_says():
    old = torch.zeros(2, 6)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :5], mask[1, 0] = True, True
    advantages = torch.where(mask, -2.0, 0.0)
    advantages[1, 0] = -10.0  # per-token losses: five of 2 and one of 10 (verl #593)
    for mode, norm, expected in (("token_mean", None, 10 / 3), ("seq_mean_token_mean", None, 6.0),
                                 ("seq_mean_token_sum_norm", 10, 1.0)):
        numerator, denominator, stats = policy_loss(old.clone(), old, advantages, mask,
                                                    PolicyLossSettings(aggregation=mode, norm=norm))
        assert float(numerator / denominator) == pytest.approx(expected) and float(stats["tokens"]) == 6
