"""The public math (`megatron_rm.rlhf`) under the names and keywords other implementations are
checked with, against direct formulas."""

from __future__ import annotations

import math

import torch

from megatron_rm.rlhf import AdaptiveKLController, FixedKLController, gae, kl_penalty


def test_kl_penalty_is_elementwise_for_every_estimator():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    d = logprobs - ref
    expected = {"k1": d, "abs": d.abs(), "k2": 0.5 * d ** 2, "k3": torch.exp(-d) + d - 1}
    for estimator, value in expected.items():
        got = kl_penalty(logprobs=logprobs, ref_logprobs=ref, estimator=estimator)
        assert got.shape == logprobs.shape
        torch.testing.assert_close(got, value)


def test_gae_by_keyword_with_response_shaped_tensors():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(token_rewards=rewards, values=values, mask=mask, gamma=0.9, lam=0.8)
    # Row 1's last position is masked: its value 9.0 must not leak in.
    d1 = 0.0 - 0.5
    d0 = 0.5 + 0.9 * 0.5 - 0.4
    torch.testing.assert_close(advantages[1], torch.tensor([d0 + 0.72 * d1, d1, 0.0]))
    torch.testing.assert_close(returns, torch.where(mask.bool(), advantages + values, 0.0))
    a2 = 1.0 - 0.3
    a1 = 0.9 * 0.3 - 0.2 + 0.72 * a2
    a0 = 0.9 * 0.2 - 0.1 + 0.72 * a1
    torch.testing.assert_close(advantages[0], torch.tensor([a0, a1, a2]))


def test_controllers_by_keyword():
    adaptive = AdaptiveKLController(init_kl_coef=0.1, target=0.05, horizon=1000)
    adaptive.update(current_kl=0.1, n_steps=100)  # error clipped to +0.2
    assert math.isclose(adaptive.value, 0.1 * (1 + 0.2 * 100 / 1000))
    fixed = FixedKLController(kl_coef=0.3)
    fixed.update(current_kl=5.0, n_steps=10)
    assert fixed.value == 0.3
    restored = AdaptiveKLController(init_kl_coef=1.0, target=0.05, horizon=1000)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value


def test_group_advantages_and_aggregate_loss_by_keyword():
    from megatron_rm.rlhf import aggregate_loss, group_advantages

    advantages = group_advantages(scores=torch.tensor([1.0, 0.0, 3.0, 3.0]), groups=torch.tensor([0, 0, 1, 1]),
                                  estimator="grpo", scale="none", eps=1e-6)
    assert advantages.tolist() == [0.5, -0.5, 0.0, 0.0]
    numerator, denominator = aggregate_loss(per_token=torch.tensor([[1.0, 3.0], [5.0, 0.0]]),
                                            mask=torch.tensor([[1, 1], [1, 0]]), mode="seq_mean_token_mean", norm=None)
    assert float(numerator / denominator) == (2.0 + 5.0) / 2
