"""KL estimators against exact KL of categorical distributions, and the controllers against
their formulas, including the adaptive coefficient's state across a save and restore."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_rm.ppo.kl import AdaptiveKLController, FixedKLController, kl_controller, kl_penalty, mean_per_token


def test_k1_and_k3_are_unbiased_and_k3_never_negative():
    generator = torch.Generator().manual_seed(0)
    policy = torch.randn(12, generator=generator).log_softmax(-1)
    reference = (torch.randn(12, generator=generator) * 0.7).log_softmax(-1)
    exact = float((policy.exp() * (policy - reference)).sum())
    samples = torch.multinomial(policy.exp(), 200_000, replacement=True, generator=generator)
    for estimator in ("k1", "k3"):
        estimates = kl_penalty(policy[samples], reference[samples], estimator)
        assert float(estimates.mean()) == pytest.approx(exact, rel=0.02), estimator
    assert float(kl_penalty(policy[samples], reference[samples], "k3").min()) >= 0


def test_estimators_follow_their_formulas():
    d = torch.tensor([-2.0, -0.5, 0.0, 0.3, 4.0])
    zeros = torch.zeros_like(d)
    torch.testing.assert_close(kl_penalty(d, zeros, "k1"), d)
    torch.testing.assert_close(kl_penalty(d, zeros, "abs"), d.abs())
    torch.testing.assert_close(kl_penalty(d, zeros, "k2"), d * d / 2)
    torch.testing.assert_close(kl_penalty(d, zeros, "k3"), torch.exp(-d) + d - 1)
    with pytest.raises(ValueError, match="k1, abs, k2, k3"):
        kl_penalty(d, zeros, "full")


def test_mean_per_token_counts_action_tokens_only():
    per_token = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert mean_per_token(per_token, mask).tolist() == [1.5, 4.0, 0.0]


def test_adaptive_controller_follows_ziegler_and_clips_the_error():
    controller = AdaptiveKLController(0.1, target=0.05, horizon=1000)
    expected = 0.1
    for kl in (0.05, 0.06, 0.5, 0.0, 0.04):
        controller.update(kl, n_steps=64)
        expected *= 1 + min(max(kl / 0.05 - 1, -0.2), 0.2) * 64 / 1000
        assert controller.value == pytest.approx(expected, rel=1e-12)
    assert controller.value != 0.1


def test_the_adaptive_value_survives_a_restore():
    controller = AdaptiveKLController(0.2, target=0.1, horizon=100)
    for kl in (0.3, 0.2, 0.25):
        controller.update(kl, n_steps=8)
    restored = AdaptiveKLController(0.2, target=0.1, horizon=100)
    restored.load_state_dict(controller.state_dict())
    for kl in (0.01, 0.4):
        controller.update(kl, n_steps=8)
        restored.update(kl, n_steps=8)
    assert restored.value == controller.value and math.isfinite(controller.value)


def test_fixed_controller_ignores_the_kl_and_bad_settings_are_refused():
    fixed = kl_controller("fixed", 0.05)
    fixed.update(10.0, n_steps=100)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.05
    for target, horizon in ((0.0, 100), (0.1, 0), (-1.0, 10), (None, 10)):
        with pytest.raises(ValueError, match="target > 0 and horizon > 0"):
            kl_controller("adaptive", 0.1, target, horizon)
    with pytest.raises(ValueError, match="adaptive, fixed"):
        kl_controller("pid", 0.1)
