"""Token rewards, GAE and whitening against plain references on each response's action tokens."""

from __future__ import annotations

import torch

from megatron_rm.ppo.advantages import gae, token_rewards, whiten

MASK = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0],   # prompt of 2, 4 actions, padding
                     [0, 1, 1, 1, 1, 1, 1, 1],   # every position after the first is an action
                     [0, 0, 0, 1, 0, 0, 0, 0],   # one action
                     [0, 0, 0, 0, 0, 0, 0, 0]])  # none


def reference_gae(rewards, values, mask, gamma, lam):
    """Per row, on the action tokens alone (float64), the textbook backward recursion."""
    advantages = torch.zeros_like(rewards, dtype=torch.float64)
    for row in range(rewards.shape[0]):
        positions = mask[row].nonzero().flatten().tolist()
        running, next_value = 0.0, 0.0
        for t in reversed(positions):
            delta = float(rewards[row, t]) + gamma * next_value - float(values[row, t])
            running = delta + gamma * lam * running
            next_value = float(values[row, t])
            advantages[row, t] = running
    return advantages


def test_gae_equals_the_reference_and_ignores_masked_positions():
    generator = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    for gamma, lam in ((1.0, 1.0), (1.0, 0.95), (0.9, 0.8)):
        advantages, returns = gae(rewards, values, MASK, gamma, lam)
        expected = reference_gae(rewards, values, MASK, gamma, lam)
        torch.testing.assert_close(advantages.double(), expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(returns, torch.where(MASK.bool(), advantages + values, 0.0))
        noise = torch.randn(4, 8, generator=generator) * 100 * (1 - MASK)  # only where nothing is an action
        again = gae(rewards + noise, values - noise, MASK, gamma, lam)
        torch.testing.assert_close(again[0], advantages, rtol=0, atol=0)
        torch.testing.assert_close(again[1], returns, rtol=0, atol=0)


def test_undiscounted_returns_are_the_rewards_to_go():
    rewards = torch.tensor([[0.0, 0.0, -0.1, -0.1, -0.1, 2.0, 0.0, 0.0]])
    values = torch.tensor([[5.0, 5.0, 0.3, -0.2, 0.7, 1.1, 9.0, 9.0]])
    _, returns = gae(rewards, values, MASK[:1], gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns[0], torch.tensor([0.0, 0.0, 1.7, 1.8, 1.9, 2.0, 0.0, 0.0]))


def test_the_score_lands_on_the_last_action_and_the_penalty_on_every_action():
    kl = torch.full((4, 8), 0.5)
    rewards = token_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), kl, kl_coef=0.1, mask=MASK)
    expected = torch.where(MASK.bool(), -0.05, 0.0)
    expected[0, 5] += 1.0
    expected[1, 7] += 2.0
    expected[2, 3] += 3.0  # row 3 has no action: its score goes nowhere
    torch.testing.assert_close(rewards, expected)


def test_whitening_uses_masked_entries_only():
    x = torch.tensor([[100.0, 1.0, 2.0, 3.0], [-50.0, 4.0, 5.0, 6.0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]])
    kept = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    expected = (kept - kept.mean()) / kept.var(unbiased=False).add(1e-8).sqrt()
    whitened = whiten(x, mask)
    torch.testing.assert_close(whitened[mask.bool()], expected)
    assert whitened[~mask.bool()].tolist() == [0.0, 0.0]
    torch.testing.assert_close(whiten(x, mask, shift_mean=False)[mask.bool()], expected + kept.mean())
