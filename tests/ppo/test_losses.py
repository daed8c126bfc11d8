"""The clipped surrogate and the clipped value loss against plain per-token references."""

from __future__ import annotations

import pytest
import torch

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
            assert float(loss) == pytest.approx(-advantage * bound, rel=1e-6), (ratio, settings)


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
