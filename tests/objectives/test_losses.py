"""Tests for the preference losses in megatron_rm.objectives.losses, each against a plain float64 reference."""

import math

import pytest
import torch

from megatron_rm.objectives.losses import (
    attribute_mse_loss,
    bradley_terry_loss,
    centering_penalty,
    divergence_token_loss,
    plackett_luce_loss,
)

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


def test_margin_matches_float64_reference_on_random_inputs():
    generator = torch.Generator().manual_seed(2)
    chosen, rejected = (torch.randn(300, generator=generator, dtype=torch.float64) * 3 for _ in range(2))
    margin = torch.rand(300, generator=generator, dtype=torch.float64) * 4
    loss = bradley_terry_loss(chosen, rejected, margin)
    expected = [reference_loss(c - r - m) for c, r, m in zip(chosen.tolist(), rejected.tolist(), margin.tolist())]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0.0)


def test_centering_penalty_matches_reference():
    chosen = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    rejected = torch.tensor([-1.0, -0.5, 2.0, 0.25], dtype=torch.float64)
    expected = [(c + r) ** 2 for c, r in zip(chosen.tolist(), rejected.tolist())]
    assert centering_penalty(chosen, rejected).tolist() == pytest.approx(expected, rel=1e-15)


# --- Plackett-Luce -------------------------------------------------------------------


def reference_plackett_luce(group: list[float]) -> float:
    """sum_{i<K-1} logsumexp(r_i..r_{K-1}) - r_i, one term at a time with the max shifted out."""
    total = 0.0
    for i in range(len(group) - 1):
        tail = group[i:]
        top = max(tail)
        total += top + math.log(sum(math.exp(r - top) for r in tail)) - group[i]
    return total


def _groups(sizes: list[int], seed: int, scale: float = 3.0):
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(sum(sizes), generator=generator, dtype=torch.float64) * scale
    return rewards, torch.tensor(sizes)


def _split(rewards: torch.Tensor, sizes: list[int]) -> list[list[float]]:
    return [chunk.tolist() for chunk in torch.split(rewards, sizes)]


def test_plackett_luce_matches_reference_on_mixed_group_sizes():
    sizes = [3, 2, 5, 2, 5, 3, 2]
    rewards, group_sizes = _groups(sizes, seed=4)
    loss = plackett_luce_loss(rewards, group_sizes)
    expected = [reference_plackett_luce(group) for group in _split(rewards, sizes)]
    assert loss.shape == (len(sizes),)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_plackett_luce_at_two_is_bradley_terry():
    rewards, group_sizes = _groups([2] * 50, seed=5)
    loss = plackett_luce_loss(rewards, group_sizes)
    torch.testing.assert_close(loss, bradley_terry_loss(rewards[0::2], rewards[1::2]), rtol=0.0, atol=1e-12)


def test_plackett_luce_ignores_a_constant_added_to_a_group():
    sizes = [2, 5, 3]
    rewards, group_sizes = _groups(sizes, seed=6)
    shift = torch.repeat_interleave(torch.tensor([7.0, -40.0, 1000.0], dtype=torch.float64), group_sizes)
    torch.testing.assert_close(plackett_luce_loss(rewards + shift, group_sizes),
                               plackett_luce_loss(rewards, group_sizes), rtol=1e-10, atol=1e-10)


def test_plackett_luce_is_stable_for_huge_rewards():
    sizes = [3, 2, 5]
    rewards = torch.tensor([1e4, -1e4, 0.0, -1e4, 1e4, 1e4, 1e4, -1e4, 5e3, -1e4], dtype=torch.float32,
                           requires_grad=True)
    loss = plackett_luce_loss(rewards, torch.tensor(sizes))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(rewards.grad).all()
    expected = [reference_plackett_luce(group) for group in _split(rewards.detach().double(), sizes)]
    torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-3)


def test_plackett_luce_gradient_is_finite_and_exact_with_mixed_sizes():
    rewards, group_sizes = _groups([5, 2, 3, 2], seed=7)
    rewards.requires_grad_(True)
    plackett_luce_loss(rewards, group_sizes).sum().backward()
    assert torch.isfinite(rewards.grad).all()
    # and it is the true derivative (finite differences in float64), padding included in the graph
    assert torch.autograd.gradcheck(lambda r: plackett_luce_loss(r, group_sizes), (rewards.detach().requires_grad_(),))


@pytest.mark.parametrize("sizes", [[3, 1], [2, 2, 2], [], [0, 4]])
def test_plackett_luce_rejects_bad_group_sizes(sizes):
    with pytest.raises(ValueError, match="group_sizes"):
        plackett_luce_loss(torch.zeros(4), torch.tensor(sizes, dtype=torch.long))


# --- divergence (DeepSpeed-Chat) token loss ----------------------------------------------

SEQ = 12
# (shared prefix, chosen length, rejected length): the first differing token is at the prefix.
DIVERGENCE_PAIRS = [(0, 5, 7), (3, 8, 4), (6, 12, 9), (2, 3, 3), (10, 12, 11)]


def _divergence_batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    pairs = len(DIVERGENCE_PAIRS)
    chosen_ids, rejected_ids = torch.zeros(pairs, SEQ, dtype=torch.long), torch.zeros(pairs, SEQ, dtype=torch.long)
    for pair, (prefix, chosen_length, rejected_length) in enumerate(DIVERGENCE_PAIRS):
        shared = torch.randint(10, 100, (prefix,), generator=generator)
        chosen_ids[pair, :prefix] = rejected_ids[pair, :prefix] = shared
        chosen_ids[pair, prefix:chosen_length] = torch.randint(100, 200, (chosen_length - prefix,), generator=generator)
        rejected_ids[pair, prefix:rejected_length] = torch.randint(200, 300, (rejected_length - prefix,),
                                                                   generator=generator)
    chosen_values = torch.randn(pairs, SEQ, generator=generator, dtype=torch.float64)
    rejected_values = torch.randn(pairs, SEQ, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([[c, r] for _, c, r in DIVERGENCE_PAIRS])
    return chosen_values, rejected_values, chosen_ids, rejected_ids, lengths[:, 0], lengths[:, 1]


def reference_divergence(chosen_values, rejected_values, chosen_ids, rejected_ids, chosen_length, rejected_length):
    end = min(chosen_length, rejected_length)
    start = next(t for t in range(end) if chosen_ids[t] != rejected_ids[t])
    terms = [reference_loss(chosen_values[t] - rejected_values[t]) for t in range(start, end)]
    return sum(terms) / len(terms)


def test_divergence_loss_matches_reference():
    batch = _divergence_batch(seed=8)
    loss = divergence_token_loss(*batch)
    rows = [[column[pair].tolist() for column in batch] for pair in range(len(DIVERGENCE_PAIRS))]
    expected = [reference_divergence(*row) for row in rows]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0.0)


def test_divergence_loss_ignores_padding_and_the_longer_documents_tail():
    chosen_values, rejected_values, chosen_ids, rejected_ids, chosen_lengths, rejected_lengths = _divergence_batch(9)
    loss = divergence_token_loss(chosen_values, rejected_values, chosen_ids, rejected_ids,
                                 chosen_lengths, rejected_lengths)
    # Huge values from min(len_c, len_r) on: the shorter document's padding against the
    # longer one's tail (where DeepSpeed-Chat's region would run on), and both paddings.
    beyond = torch.arange(SEQ) >= torch.minimum(chosen_lengths, rejected_lengths)[:, None]
    chosen_values = torch.where(beyond, 1e30, chosen_values).requires_grad_(True)
    rejected_values = torch.where(beyond, -1e30, rejected_values).requires_grad_(True)
    huge = divergence_token_loss(chosen_values, rejected_values, chosen_ids, rejected_ids,
                                 chosen_lengths, rejected_lengths)
    torch.testing.assert_close(huge, loss, rtol=0.0, atol=0.0)
    huge.sum().backward()
    assert torch.isfinite(chosen_values.grad).all() and torch.isfinite(rejected_values.grad).all()
    assert (chosen_values.grad[beyond] == 0).all() and (rejected_values.grad[beyond] == 0).all()
    assert (chosen_values.grad[~beyond] != 0).any()


def test_divergence_loss_rejects_a_prefix_pair():
    chosen_values, rejected_values, chosen_ids, rejected_ids, chosen_lengths, rejected_lengths = _divergence_batch(10)
    # pair 3 becomes a prefix: the rejected document is the chosen one's first 2 tokens
    rejected_ids[3] = chosen_ids[3]
    rejected_lengths = rejected_lengths.clone()
    rejected_lengths[3] = 2
    with pytest.raises(ValueError, match=r"pairs \[3\]"):
        divergence_token_loss(chosen_values, rejected_values, chosen_ids, rejected_ids,
                              chosen_lengths, rejected_lengths)


# --- attribute regression --------------------------------------------------------------


def _attribute_batch():
    generator = torch.Generator().manual_seed(11)
    predictions = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    missing = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 0, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    return predictions, torch.where(missing, float("nan"), targets), missing


def test_attribute_mse_matches_reference():
    predictions, targets, _ = _attribute_batch()
    squared_errors, labelled = attribute_mse_loss(predictions, targets)
    pairs = [(p, t) for p, t in zip(predictions.flatten().tolist(), targets.flatten().tolist()) if not math.isnan(t)]
    assert labelled.item() == len(pairs) == 9
    assert squared_errors.item() == pytest.approx(sum((p - t) ** 2 for p, t in pairs), rel=1e-14)


def test_attribute_mse_ignores_missing_labels():
    predictions, targets, missing = _attribute_batch()
    moved = predictions.clone()
    moved[missing] = 1e6
    predictions.requires_grad_(True)
    squared_errors, _ = attribute_mse_loss(predictions, targets)
    assert attribute_mse_loss(moved, targets)[0].item() == squared_errors.item()
    squared_errors.backward()
    assert torch.isfinite(predictions.grad).all()
    assert (predictions.grad[missing] == 0).all()
    expected = 2 * (predictions.detach() - targets)[~missing]
    torch.testing.assert_close(predictions.grad[~missing], expected, rtol=1e-14, atol=0.0)
