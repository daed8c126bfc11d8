"""Tests for megatron_rm.objectives.step_rewards (ORM / PRM losses, step labels, aggregation, step metrics),
each against a plain float64 reference."""

import itertools
import math

import pytest
import torch

from megatron_rm.data.steps import labels_from_ratings
from megatron_rm.objectives.step_rewards import (
    aggregate,
    auroc,
    error_step_f1,
    expected_calibration_error,
    first_error_index,
    first_error_step_accuracy,
    histogram_auroc,
    probability_calibration_sums,
    token_binary_loss,
    token_class_loss,
)


def reference_bce(logit: float, target: float) -> float:
    """-(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))), with log sigmoid(x) = -log1p(exp(-x)) kept stable."""
    log_p = -math.log1p(math.exp(-logit)) if logit >= 0 else logit - math.log1p(math.exp(logit))
    log_not_p = -math.log1p(math.exp(logit)) if logit <= 0 else -logit - math.log1p(math.exp(-logit))
    return -(target * log_p + (1 - target) * log_not_p)


def reference_log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_total = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_total for x in row]


def _random(shape, seed, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale, generator


# --- token_binary_loss (ORM, 1-logit PRM) ------------------------------------------------


def test_binary_loss_matches_reference_on_random_soft_targets():
    logits, generator = _random((4, 9), seed=0)
    targets = torch.rand(4, 9, generator=generator, dtype=torch.float64)
    mask = torch.rand(4, 9, generator=generator) < 0.6
    loss_sum, count = token_binary_loss(logits, targets, mask)
    expected = sum(reference_bce(x, t) for x, t, m in zip(logits.flatten().tolist(), targets.flatten().tolist(),
                                                           mask.flatten().tolist()) if m)
    assert loss_sum.item() == pytest.approx(expected, rel=1e-12)
    assert count.item() == int(mask.sum()) > 0


def test_binary_soft_target_is_kept_not_rounded():
    logits = torch.tensor([0.7], dtype=torch.float64)
    mask = torch.tensor([True])
    losses = {t: token_binary_loss(logits, torch.tensor([t], dtype=torch.float64), mask)[0].item()
              for t in (0.0, 0.3, 1.0)}
    assert losses[0.3] == pytest.approx(reference_bce(0.7, 0.3), rel=1e-12)
    assert abs(losses[0.3] - losses[0.0]) > 1e-3 and abs(losses[0.3] - losses[1.0]) > 1e-3


def _orm_batch():
    """Two documents: prompt tokens masked with the seed's -100 target, the outcome copied onto the response."""
    logits, _ = _random((2, 6), seed=1)
    targets = torch.tensor([[-100.0, -100.0, 1.0, 1.0, 1.0, 1.0], [-100.0, -100.0, -100.0, 0.0, 0.0, -100.0]],
                           dtype=torch.float64)
    mask = torch.tensor([[False, False, True, True, True, True], [False, False, False, True, True, False]])
    return logits, targets, mask


def test_binary_masked_positions_cannot_change_loss_or_gradient():
    logits, targets, mask = _orm_batch()
    clean_sum, clean_count = token_binary_loss(logits, targets, mask)
    garbage = logits.clone()
    garbage[~mask] = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30, 5.0], dtype=torch.float64)
    garbage.requires_grad_(True)
    loss_sum, count = token_binary_loss(garbage, targets, mask)
    loss_sum.backward()
    assert loss_sum.item() == clean_sum.item() and count.item() == clean_count.item() == 6
    assert torch.isfinite(garbage.grad).all()
    assert (garbage.grad[~mask] == 0).all() and (garbage.grad[mask] != 0).all()


def test_binary_unmasking_a_prompt_position_changes_the_result():
    logits, targets, mask = _orm_batch()
    masked_sum, masked_count = token_binary_loss(logits, targets, mask)
    leaky_targets, leaky_mask = targets.clone(), mask.clone()
    leaky_targets[0, 1], leaky_mask[0, 1] = 1.0, True  # a prompt token given the outcome
    leaky_sum, leaky_count = token_binary_loss(logits, leaky_targets, leaky_mask)
    assert leaky_count.item() == masked_count.item() + 1
    assert leaky_sum.item() == pytest.approx(masked_sum.item() + reference_bce(logits[0, 1].item(), 1.0), rel=1e-12)


def test_binary_loss_refuses_an_unmasked_ignore_target():
    logits, targets, mask = _orm_batch()
    mask[1, 0] = True  # the -100 of a prompt token is now trained on
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        token_binary_loss(logits, targets, mask)
    with pytest.raises(ValueError, match="one shape"):
        token_binary_loss(logits, targets[:, :5], mask)


def test_binary_loss_is_stable_for_extreme_logits():
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4], dtype=torch.float32, requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss_sum, _ = token_binary_loss(logits, targets, torch.ones(4, dtype=torch.bool))
    loss_sum.backward()
    assert loss_sum.item() == pytest.approx(2e4, rel=1e-6)  # two confident right (~0), two wrong (1e4 each)
    assert torch.isfinite(logits.grad).all()


# --- token_class_loss (multi-class PRM) ---------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 3])
def test_class_loss_with_indices_matches_reference(num_classes):
    logits, generator = _random((3, 7, num_classes), seed=2 + num_classes)
    targets = torch.randint(0, num_classes, (3, 7), generator=generator)
    mask = torch.rand(3, 7, generator=generator) < 0.5
    loss_sum, count = token_class_loss(logits, targets, mask)
    expected = 0.0
    for row, target, keep in zip(logits.reshape(-1, num_classes).tolist(), targets.flatten().tolist(),
                                 mask.flatten().tolist()):
        if keep:
            expected -= reference_log_softmax(row)[target]
    assert loss_sum.item() == pytest.approx(expected, rel=1e-12)
    assert count.item() == int(mask.sum()) > 0


@pytest.mark.parametrize("num_classes", [2, 3])
def test_class_loss_with_soft_targets_matches_reference(num_classes):
    logits, generator = _random((5, 4, num_classes), seed=7 + num_classes)
    targets = torch.rand(5, 4, num_classes, generator=generator, dtype=torch.float64)
    targets = targets / targets.sum(dim=-1, keepdim=True)
    mask = torch.rand(5, 4, generator=generator) < 0.5
    loss_sum, _ = token_class_loss(logits, targets, mask)
    expected = 0.0
    for row, target, keep in zip(logits.reshape(-1, num_classes).tolist(),
                                 targets.reshape(-1, num_classes).tolist(), mask.flatten().tolist()):
        if keep:
            expected -= sum(p * lp for p, lp in zip(target, reference_log_softmax(row)))
    assert loss_sum.item() == pytest.approx(expected, rel=1e-12)


def test_class_soft_target_is_kept_and_one_hot_equals_index():
    logits = torch.tensor([[0.4, -1.2, 2.0]], dtype=torch.float64)
    mask = torch.tensor([True])
    one_hot = token_class_loss(logits, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), mask)[0].item()
    index = token_class_loss(logits, torch.tensor([2]), mask)[0].item()
    soft = token_class_loss(logits, torch.tensor([[0.3, 0.0, 0.7]], dtype=torch.float64), mask)[0].item()
    assert one_hot == pytest.approx(index, rel=1e-15)
    log_probs = reference_log_softmax(logits[0].tolist())
    assert soft == pytest.approx(-(0.3 * log_probs[0] + 0.7 * log_probs[2]), rel=1e-12)
    assert abs(soft - index) > 1e-3


def test_two_class_loss_is_binary_loss_of_the_logit_difference():
    logits, generator = _random((6, 5, 2), seed=11)
    targets = torch.randint(0, 2, (6, 5), generator=generator)
    mask = torch.rand(6, 5, generator=generator) < 0.7
    class_sum, class_count = token_class_loss(logits, targets, mask)
    binary_sum, binary_count = token_binary_loss(logits[..., 1] - logits[..., 0], targets.double(), mask)
    assert class_sum.item() == pytest.approx(binary_sum.item(), rel=1e-12)
    assert class_count.item() == binary_count.item()


@pytest.mark.parametrize("soft", [False, True])
def test_class_masked_positions_cannot_change_loss_or_gradient(soft):
    logits, generator = _random((2, 5, 3), seed=12)
    mask = torch.tensor([[False, True, True, False, True], [False, False, True, True, False]])
    if soft:
        targets = torch.softmax(torch.randn(2, 5, 3, generator=generator, dtype=torch.float64), dim=-1)
    else:
        targets = torch.randint(0, 3, (2, 5), generator=generator)
    clean_sum, _ = token_class_loss(logits, targets, mask)
    garbage_logits, garbage_targets = logits.clone(), targets.clone()
    garbage_logits[~mask] = torch.tensor([math.nan, math.inf, -1e30], dtype=torch.float64)
    garbage_targets[~mask] = -100
    garbage_logits.requires_grad_(True)
    loss_sum, count = token_class_loss(garbage_logits, garbage_targets, mask)
    loss_sum.backward()
    assert loss_sum.item() == clean_sum.item() and count.item() == 5
    assert torch.isfinite(garbage_logits.grad).all()
    assert (garbage_logits.grad[~mask] == 0).all() and (garbage_logits.grad[mask] != 0).any(dim=-1).all()


def test_class_loss_unmasked_prompt_position_changes_the_result():
    logits, _ = _random((1, 4, 3), seed=13)
    targets = torch.tensor([[-100, -100, 2, 0]])
    mask = torch.tensor([[False, False, True, True]])
    masked_sum, _ = token_class_loss(logits, targets, mask)
    targets[0, 1], mask[0, 1] = 1, True
    leaky_sum, leaky_count = token_class_loss(logits, targets, mask)
    assert leaky_count.item() == 3
    assert leaky_sum.item() == pytest.approx(masked_sum.item() - reference_log_softmax(logits[0, 1].tolist())[1])


def test_class_loss_refuses_bad_targets():
    logits = torch.zeros(1, 3, 3)
    mask = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        token_class_loss(logits, torch.tensor([[0, 3, 0]]), mask)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        token_class_loss(logits, torch.tensor([[-100, 1, 0]]), mask)
    not_summing = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.4, 0.0], [1.0, 0.0, 0.0]]])
    with pytest.raises(ValueError, match="distributions"):
        token_class_loss(logits, not_summing, mask)
    negative = torch.tensor([[[0.5, 0.5, 0.0], [1.5, -0.5, 0.0], [1.0, 0.0, 0.0]]])
    with pytest.raises(ValueError, match="distributions"):
        token_class_loss(logits, negative, mask)
    with pytest.raises(ValueError, match="class dimension"):
        token_class_loss(torch.zeros(1, 3), torch.tensor([[0, 1, 0]]), mask)
    with pytest.raises(ValueError, match="mask's shape"):
        token_class_loss(logits, torch.tensor([[0, 1]]), mask)


# --- labels_from_ratings ------------------------------------------------------------------


def _same(labels: torch.Tensor, expected: list[float]) -> bool:
    """Equal element by element, NaN equal to NaN."""
    return len(labels) == len(expected) and all(
        (math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(labels.tolist(), expected))


def test_bool_ratings():
    two = labels_from_ratings([True, False, True], num_classes=2)
    three = labels_from_ratings([True, False, True], num_classes=3)
    assert two.dtype == torch.float64 and two.tolist() == [1.0, 0.0, 1.0]
    assert three.dtype == torch.int64 and three.tolist() == [2, 0, 2]


@pytest.mark.parametrize("neutral, neutral_label", [("positive", 1.0), ("negative", 0.0), ("ignore", math.nan)])
def test_integer_ratings_two_classes_each_neutral_policy(neutral, neutral_label):
    labels = labels_from_ratings([1, 0, -1, 1, 0], num_classes=2, neutral=neutral)
    assert _same(labels, [1.0, neutral_label, 0.0, 1.0, neutral_label])


def test_integer_ratings_three_classes():
    assert labels_from_ratings([1, 0, -1, -1, 0], num_classes=3).tolist() == [2, 1, 0, 0, 1]


def test_float_ratings_are_kept_and_a_float_zero_is_not_neutral():
    labels = labels_from_ratings([0.3, 1.0, 0.0, 0.875], num_classes=2, neutral="positive")
    assert labels.tolist() == [0.3, 1.0, 0.0, 0.875]


def test_tensor_ratings_are_read_by_dtype():
    assert labels_from_ratings(torch.tensor([1, 0, -1]), 2, neutral="negative").tolist() == [1.0, 0.0, 0.0]
    assert labels_from_ratings(torch.tensor([True, False]), 3).tolist() == [2, 0]
    assert labels_from_ratings(torch.tensor([0.25, 0.0], dtype=torch.float64), 2).tolist() == [0.25, 0.0]


def test_ignored_neutral_steps_are_masked_in_the_loss():
    labels = labels_from_ratings([1, 0, -1, 0, 1], num_classes=2, neutral="ignore")
    logits, _ = _random((5,), seed=14)
    loss_sum, count = token_binary_loss(logits, labels, ~labels.isnan())
    expected = sum(reference_bce(logits[i].item(), t) for i, t in [(0, 1.0), (2, 0.0), (4, 1.0)])
    assert count.item() == 3 and loss_sum.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("ratings, num_classes, match", [
    ([1, 2], 2, "step 1: an integer rating must be -1, 0 or \\+1, got 2"),
    ([-2], 3, "step 0: an integer rating must be -1, 0 or \\+1, got -2"),
    ([0.5, 1.5], 2, "step 1: a float rating is a probability in \\[0, 1\\], got 1.5"),
    ([-0.1], 2, "probability in \\[0, 1\\]"),
    ([math.nan], 2, "got nan"),
    ([1, 0.5], 3, "step 1: a float rating 0.5 has no class"),
    (["good"], 2, "got str"),
    ([1, 0], 2, "step 1: rating 0 \\(neutral\\) needs neutral="),
    ([1], 4, "num_classes must be 2 or 3"),
])
def test_bad_ratings_are_refused(ratings, num_classes, match):
    with pytest.raises(ValueError, match=match):
        labels_from_ratings(ratings, num_classes)


def test_bad_neutral_policies_are_refused():
    with pytest.raises(ValueError, match="neutral must be one of"):
        labels_from_ratings([1], 2, neutral="half")
    with pytest.raises(ValueError, match="neutral must be None"):
        labels_from_ratings([1], 3, neutral="positive")


# --- aggregate ----------------------------------------------------------------------------


def _padded_probs(seed: int, batch: int = 50, steps: int = 8):
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(batch, steps, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    mask = torch.arange(steps) < lengths[:, None]
    return probs, mask


def reference_aggregate(steps: list[float], how: str) -> float:
    if how == "product":
        return math.prod(steps)
    if how == "min":
        return min(steps)
    if how == "mean":
        return sum(steps) / len(steps)
    return steps[-1]


@pytest.mark.parametrize("how", ["product", "min", "mean", "last"])
def test_aggregate_matches_reference_under_a_mask(how):
    probs, mask = _padded_probs(seed=15)
    scores = aggregate(probs, how, mask)
    expected = [reference_aggregate([p for p, m in zip(row, keep) if m], how)
                for row, keep in zip(probs.tolist(), mask.tolist())]
    assert scores.shape == (50,)
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("how", ["product", "min", "mean", "last"])
def test_aggregate_of_one_solution_without_a_mask(how):
    steps = [0.9, 0.4, 0.75, 0.6]
    score = aggregate(torch.tensor(steps, dtype=torch.float64), how)
    assert score.dim() == 0 and score.item() == pytest.approx(reference_aggregate(steps, how), rel=1e-15)


def test_aggregation_order_product_min_mean_max():
    probs, mask = _padded_probs(seed=16, batch=500)
    product, low, mean = (aggregate(probs, how, mask) for how in ("product", "min", "mean"))
    high = torch.where(mask, probs, -math.inf).amax(dim=-1)
    assert (product <= low).all() and (low <= mean + 1e-15).all() and (mean <= high + 1e-15).all()
    several = mask.sum(dim=-1) > 1  # with more than one step, random probabilities keep the order strict
    assert (product[several] < low[several]).all() and (low[several] < mean[several]).all()


@pytest.mark.parametrize("how", ["product", "min", "mean", "last"])
def test_aggregate_ignores_padded_steps(how):
    probs, mask = _padded_probs(seed=17)
    garbage = probs.clone()
    garbage[~mask] = -7.0  # not a probability: it would win min and move every other aggregation
    assert torch.equal(aggregate(garbage, how, mask), aggregate(probs, how, mask))


def test_last_picks_the_last_valid_step_of_any_mask():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 0.15, 0.25, 0.35]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [True, False, True, False], [True, False, False, False]])
    assert aggregate(probs, "last", mask).tolist() == [0.2, 0.7, 0.9]
    assert aggregate(probs, "last").tolist() == [0.4, 0.8, 0.35]


def test_aggregate_refuses_unknown_methods_and_solutions_without_steps():
    probs = torch.rand(2, 3)
    with pytest.raises(ValueError, match=r"\['product', 'min', 'mean', 'last'\], got 'max'"):
        aggregate(probs, "max")
    with pytest.raises(ValueError, match="at least one step"):
        aggregate(probs, "mean", torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="at least one step"):
        aggregate(torch.zeros(0), "product")
    with pytest.raises(ValueError, match="differ"):
        aggregate(probs, "min", torch.ones(2, 2, dtype=torch.bool))


# --- auroc --------------------------------------------------------------------------------


def brute_force_auroc(scores: list[float], labels: list[bool]) -> float:
    wins, pairs = 0.0, 0
    for (s_pos, y_pos), (s_neg, y_neg) in itertools.product(zip(scores, labels), repeat=2):
        if y_pos and not y_neg:
            pairs += 1
            wins += 1.0 if s_pos > s_neg else 0.5 if s_pos == s_neg else 0.0
    return wins / pairs


def test_auroc_with_ties_equals_brute_force_pairs():
    generator = torch.Generator().manual_seed(18)
    scores = torch.randint(0, 6, (300,), generator=generator).double() / 5  # only six values: many ties
    labels = torch.rand(300, generator=generator) < scores * 0.6 + 0.2
    value = auroc(scores, labels)
    assert value == pytest.approx(brute_force_auroc(scores.tolist(), labels.tolist()), rel=1e-12)
    assert 0.5 < value < 1.0


def test_auroc_hand_cases():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert auroc([0.1, 0.8, 0.9], [True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5


def test_auroc_is_nan_without_both_classes_and_refuses_bad_input():
    assert math.isnan(auroc([0.2, 0.9], [1, 1])) and math.isnan(auroc([0.2, 0.9], [False, False]))
    with pytest.raises(ValueError, match="binary"):
        auroc([0.2, 0.9], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        auroc([math.nan, 0.9], [1, 0])
    with pytest.raises(ValueError, match="differ in number"):
        auroc([0.2, 0.9, 0.3], [1, 0])


# --- error_step_f1 ------------------------------------------------------------------------


def test_error_step_f1_matches_counting_reference():
    generator = torch.Generator().manual_seed(19)
    predicted = torch.rand(200, generator=generator) < 0.7
    labels = torch.rand(200, generator=generator) < 0.7
    tp = sum((not p) and (not t) for p, t in zip(predicted.tolist(), labels.tolist()))
    fp = sum((not p) and t for p, t in zip(predicted.tolist(), labels.tolist()))
    fn = sum(p and (not t) for p, t in zip(predicted.tolist(), labels.tolist()))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert error_step_f1(predicted, labels) == pytest.approx(2 * precision * recall / (precision + recall), rel=1e-12)


def test_error_step_f1_hand_cases():
    # Errors at steps 1, 3; predicted errors at 1, 2: tp 1, fp 1, fn 1 -> F1 1/2.
    assert error_step_f1([True, False, False, True], [True, False, True, False]) == pytest.approx(0.5)
    assert error_step_f1([1, 0, 1], [1, 0, 1]) == 1.0
    assert error_step_f1([True, True], [True, False]) == 0.0  # a missed error
    assert math.isnan(error_step_f1([True, True], [True, True]))  # no error anywhere
    with pytest.raises(ValueError, match="differ in number"):
        error_step_f1([True], [True, False])


# --- first-error step accuracy ------------------------------------------------------------


def test_first_error_index():
    assert first_error_index([True, True, False, True, False]) == 2
    assert first_error_index([False]) == 0
    assert first_error_index([True, True]) == -1
    assert first_error_index(torch.tensor([1, 1, 1, 0])) == 3


def test_first_error_step_accuracy_hand_cases():
    predicted = [
        [True, True, False, True],  # first predicted error 2, true 2: right
        [True, True, True],  # all correct, and so it is: right
        [True, False, False],  # predicted 1, true 2: too early
        [True, True, True],  # missed the error at 1
        [False],  # a false alarm on a correct solution
        [True, True, False],  # a false alarm on a correct solution
        [False, True],  # predicted 0, true 0: right
    ]
    labels = [2, -1, 2, 1, -1, -1, 0]
    assert first_error_step_accuracy(predicted, labels) == pytest.approx(3 / 7)
    assert first_error_step_accuracy(predicted[:2], labels[:2]) == 1.0
    assert first_error_step_accuracy(predicted[2:6], labels[2:6]) == 0.0


def test_first_error_step_accuracy_matches_reference_on_random_solutions():
    generator = torch.Generator().manual_seed(20)
    predicted, labels, right = [], [], 0
    for _ in range(300):
        steps = int(torch.randint(1, 6, (1,), generator=generator))
        guess = (torch.rand(steps, generator=generator) < 0.8).tolist()
        truth = (torch.rand(steps, generator=generator) < 0.8).tolist()
        label = next((i for i, ok in enumerate(truth) if not ok), -1)
        predicted.append(guess)
        labels.append(label)
        right += next((i for i, ok in enumerate(guess) if not ok), -1) == label
    assert first_error_step_accuracy(predicted, labels) == pytest.approx(right / 300, rel=1e-15)


def test_first_error_step_accuracy_refuses_bad_labels():
    with pytest.raises(ValueError, match=r"solution 1: first-error index 3 is outside \[-1, 3\)"):
        first_error_step_accuracy([[True], [True, True, True]], [-1, 3])
    with pytest.raises(ValueError, match="outside"):
        first_error_step_accuracy([[True]], [-2])
    with pytest.raises(ValueError, match="differ in number"):
        first_error_step_accuracy([[True]], [-1, 0])
    with pytest.raises(ValueError, match="at least one solution"):
        first_error_step_accuracy([], [])


# --- calibration --------------------------------------------------------------------------


def reference_ece(probs: list[float], labels: list[bool], bins: int) -> float:
    grouped: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for p, y in zip(probs, labels):
        grouped[min(int(p * bins), bins - 1)].append((p, y))
    return sum(len(group) / len(probs) * abs(sum(y for _, y in group) / len(group) - sum(p for p, _ in group)
                                             / len(group)) for group in grouped if group)


@pytest.mark.parametrize("bins", [1, 5, 10])
def test_ece_matches_reference(bins):
    generator = torch.Generator().manual_seed(21)
    probs = torch.rand(400, generator=generator, dtype=torch.float64)
    probs[:3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)  # the edges: first bin, last bin
    labels = torch.rand(400, generator=generator, dtype=torch.float64) < probs ** 2  # overconfident
    value = expected_calibration_error(probs, labels, bins)
    assert value == pytest.approx(reference_ece(probs.tolist(), labels.tolist(), bins), rel=1e-12)
    assert value > 0.05


def test_ece_hand_cases_and_summed_chunks():
    # p = 0.25 with one of four correct and p = 0.9 with both correct: |0.25 - 0.25| * 4/6 + |1 - 0.9| * 2/6.
    probs, labels = [0.25, 0.25, 0.25, 0.25, 0.9, 0.9], [1, 0, 0, 0, 1, 1]
    assert expected_calibration_error(probs, labels) == pytest.approx(0.1 * 2 / 6, rel=1e-12)
    halves = probability_calibration_sums(probs[:3], labels[:3]) + probability_calibration_sums(probs[3:], labels[3:])
    assert torch.equal(halves, probability_calibration_sums(probs, labels))
    assert math.isnan(expected_calibration_error([], []))


def test_ece_refuses_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0.5, 1.2], [1, 0])
    with pytest.raises(ValueError, match="at least 1"):
        expected_calibration_error([0.5], [1], bins=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0.5], [1.5])


def test_ece_counts_a_soft_label_as_that_fraction_of_a_right_step():
    # One bin holding p = 0.7 twice, labelled 0.7 and 1.0: mean label 0.85, mean p 0.7.
    assert expected_calibration_error([0.7, 0.7], [0.7, 1.0]) == pytest.approx(0.15, rel=1e-12)


def test_histogram_auroc_equals_auroc_without_ties_within_bins_and_halves_ties():
    generator = torch.Generator().manual_seed(0)
    bins = 1000
    scores = (torch.randperm(bins, generator=generator)[:300].double() + 0.5) / bins  # one score per bin
    labels = torch.rand(300, generator=generator) < 0.4
    counts = torch.zeros(2, bins, dtype=torch.float64)
    counts.index_put_((labels.long(), (scores * bins).long()), torch.ones(300, dtype=torch.float64), accumulate=True)
    assert histogram_auroc(counts[1], counts[0]) == pytest.approx(auroc(scores, labels), abs=1e-12)
    # Everything in one bin is one big tie.
    assert histogram_auroc(torch.tensor([3.0, 0.0]), torch.tensor([5.0, 0.0])) == 0.5
    assert math.isnan(histogram_auroc(torch.tensor([3.0]), torch.tensor([0.0])))
