"""Tests for the Bradley-Terry pairwise loss in megatron_rm.losses."""

import math

import pytest
import torch

from megatron_rm.losses import bradley_terry_loss

LOG2 = math.log(2.0)


def reference_loss(margin: float) -> float:
    """-log sigmoid(margin) = log(1 + exp(-margin)), in float64 (python floats)."""
    return math.log1p(math.exp(-margin))


@pytest.mark.parametrize(
    "chosen, rejected, expected",
    [
        (0.0, 0.0, math.log(2.0)),
        (1.0, 0.0, math.log(1.0 + math.exp(-1.0))),
        (0.0, 2.0, math.log(1.0 + math.exp(2.0))),
        (3.5, 1.5, math.log(1.0 + math.exp(-2.0))),
        (-1.0, 0.5, math.log(1.0 + math.exp(1.5))),
    ],
)
def test_hand_computed_values(chosen, rejected, expected):
    loss = bradley_terry_loss(torch.tensor([chosen], dtype=torch.float64),
                              torch.tensor([rejected], dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_loss_is_per_pair_with_input_shape():
    chosen = torch.tensor([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]])
    rejected = torch.zeros(2, 3)
    loss = bradley_terry_loss(chosen, rejected)
    assert loss.shape == chosen.shape
    for value, margin in zip(loss.flatten().tolist(), chosen.flatten().tolist()):
        assert value == pytest.approx(reference_loss(margin), rel=1e-6)


def test_float32_matches_float64_reference_on_random_inputs():
    generator = torch.Generator().manual_seed(0)
    # Multiples of 2**-10 in [-16, 16): exact in float32, and so is their difference,
    # so the only float32 error left is the loss itself.
    chosen = torch.randint(-16 * 1024, 16 * 1024, (2000,), generator=generator).float() / 1024
    rejected = torch.randint(-16 * 1024, 16 * 1024, (2000,), generator=generator).float() / 1024
    loss = bradley_terry_loss(chosen, rejected)
    assert loss.dtype == torch.float32
    margins = (chosen.double() - rejected.double()).tolist()
    expected = torch.tensor([reference_loss(m) for m in margins], dtype=torch.float64)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0.0)


def test_float64_matches_reference_on_random_normal_inputs():
    generator = torch.Generator().manual_seed(1)
    chosen = torch.randn(500, generator=generator, dtype=torch.float64) * 4
    rejected = torch.randn(500, generator=generator, dtype=torch.float64) * 4
    loss = bradley_terry_loss(chosen, rejected)
    expected = torch.tensor([reference_loss(c - r) for c, r in zip(chosen.tolist(), rejected.tolist())],
                            dtype=torch.float64)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("magnitude", [1e4, 1e30])
def test_extreme_margins_give_finite_loss(magnitude):
    chosen = torch.tensor([magnitude, -magnitude], dtype=torch.float32)
    rejected = torch.zeros(2, dtype=torch.float32)
    loss = bradley_terry_loss(chosen, rejected)
    assert torch.isfinite(loss).all()
    # A huge positive margin costs (almost) nothing; a huge negative one costs |margin|.
    assert 0.0 <= loss[0].item() <= 1e-30
    assert loss[1].item() == pytest.approx(magnitude, rel=1e-6)


def test_extreme_margin_from_both_sides_is_finite():
    chosen = torch.tensor([1e30, -1e30], dtype=torch.float32)
    rejected = torch.tensor([-1e30, 1e30], dtype=torch.float32)
    loss = bradley_terry_loss(chosen, rejected)
    assert torch.isfinite(loss).all()
    assert loss[0].item() <= 1e-30
    assert loss[1].item() == pytest.approx(2e30, rel=1e-6)


@pytest.mark.parametrize("magnitude", [1e4, 1e30])
def test_extreme_margins_give_finite_gradients(magnitude):
    chosen = torch.tensor([magnitude, -magnitude, 0.0], dtype=torch.float32, requires_grad=True)
    rejected = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    assert torch.isfinite(chosen.grad).all()
    assert torch.isfinite(rejected.grad).all()
    # d/d(chosen) of log(1 + exp(-m)) is -sigmoid(-m): ~0 when right, ~-1 when badly wrong,
    # -1/2 at a tie; the rejected side gets the opposite.
    expected_chosen = torch.tensor([0.0, -1.0, -0.5])
    torch.testing.assert_close(chosen.grad, expected_chosen, rtol=0.0, atol=1e-6)
    torch.testing.assert_close(rejected.grad, -expected_chosen, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_give_log_two(dtype):
    rewards = torch.tensor([0.0, 1.0, -3.5, 1e6, -1e20], dtype=dtype)
    loss = bradley_terry_loss(rewards, rewards.clone())
    expected = torch.full_like(loss, LOG2)
    torch.testing.assert_close(loss, expected, rtol=1e-7 if dtype == torch.float32 else 1e-15, atol=0.0)


def test_margin_asks_the_chosen_reward_to_lead_by_that_much():
    chosen, rejected = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0, 0.5, 3.0])
    margin = torch.tensor([1.0, 0.0, 2.5])
    with_margin = bradley_terry_loss(chosen, rejected, margin)
    torch.testing.assert_close(with_margin, bradley_terry_loss(chosen - margin, rejected))
    # Leading by exactly the margin costs what a tie costs without one.
    assert with_margin[0].item() == pytest.approx(math.log(2))
    assert (with_margin > bradley_terry_loss(chosen, rejected))[[0, 2]].all()
