"""Outcome and process reward models: per-token losses, PRM step labels, solution scores and step metrics.

An outcome reward model (ORM) learns the solution's outcome at every response
token; a process reward model (PRM) learns each step's correctness at the token
that ends the step. Both are per-token classification over a mask, so the losses
here take (logits, targets, mask) and return (sum, count): the caller divides
once by the count of the whole batch, as with `attribute_mse_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from megatron_rm.objectives import metrics

AGGREGATIONS = ("product", "min", "mean", "last")
"""The ways `aggregate` turns step probabilities into a solution score."""

SOFT_TARGET_TOLERANCE = 1e-4
"""How far a soft class distribution's row may sum from 1 (float32 rows written by data code round)."""


def token_binary_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of binary cross-entropy with logits over positions where `mask` is true, number of such positions).

    The ORM loss (the outcome copied onto every response token) and the 1-logit
    PRM loss (each step's label at its last token). `targets` are floats in
    [0, 1]; soft labels (a step's estimated probability of being correct) are
    used as they are. Any shape, shared by all three.

    Positions outside the mask may hold anything (the prompt's -100, NaN, inf
    logits): both the logit and the target there are replaced before the loss,
    so they reach neither the value nor the gradient. An unmasked target outside
    [0, 1] (a -100 left where the mask says "train") raises ValueError.
    """
    if not (logits.shape == targets.shape == mask.shape):
        raise ValueError(f"logits, targets and mask must share one shape, got "
                         f"{[tuple(t.shape) for t in (logits, targets, mask)]}")
    mask = mask.bool()
    if not bool(((targets >= 0) & (targets <= 1) | ~mask).all()):
        raise ValueError("unmasked targets must lie in [0, 1] (a -100 or NaN target needs its mask false)")
    dtype = torch.promote_types(logits.dtype, targets.dtype)
    logits = torch.where(mask, logits.to(dtype), 0.0)
    targets = torch.where(mask, targets.to(dtype), 0.0)
    per_token = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return torch.where(mask, per_token, 0.0).sum(), mask.sum()


def token_class_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy over positions where `mask` is true, number of such positions).

    The multi-class PRM loss: `logits` are (..., C) (C = 2 for correct / wrong,
    3 for PRM800K's negative / neutral / positive); `mask` is (...). `targets`
    are either integer class indices (...) or float class distributions (..., C)
    whose rows sum to 1, scored as -sum_c p_c * log_softmax(logits)_c, so a soft
    label keeps its spread. As in `token_binary_loss`, masked positions may hold
    anything and affect neither the value nor the gradient; an unmasked index
    outside [0, C) or an unmasked row that is not a distribution raises ValueError.
    `validate=False` skips that check (a host sync), for targets the data already checked.
    """
    if logits.dim() < 1 or logits.shape[:-1] != mask.shape:
        raise ValueError(f"logits must be mask's shape plus a class dimension, got logits "
                         f"{tuple(logits.shape)} and mask {tuple(mask.shape)}")
    num_classes = logits.shape[-1]
    mask = mask.bool()
    if targets.is_floating_point():
        if targets.shape != logits.shape:
            raise ValueError(f"soft targets must have the logits' shape {tuple(logits.shape)}, "
                             f"got {tuple(targets.shape)}")
        is_distribution = (targets >= 0).all(dim=-1) & ((targets.sum(dim=-1) - 1).abs() <= SOFT_TARGET_TOLERANCE)
        if validate and not bool((is_distribution | ~mask).all()):
            raise ValueError("unmasked soft targets must be class distributions: non-negative, summing to 1")
        dtype = torch.promote_types(logits.dtype, targets.dtype)
        flat_targets = torch.where(mask[..., None], targets.to(dtype), 0.0).reshape(-1, num_classes)
    else:
        if targets.shape != mask.shape:
            raise ValueError(f"class indices must have the mask's shape {tuple(mask.shape)}, "
                             f"got {tuple(targets.shape)}")
        if validate and not bool(((targets >= 0) & (targets < num_classes) | ~mask).all()):
            raise ValueError(f"unmasked class indices must lie in [0, {num_classes})")
        dtype = logits.dtype
        flat_targets = torch.where(mask, targets.long(), 0).reshape(-1)
    # F.cross_entropy wants the classes in dimension 1: the positions are flattened into dimension 0.
    flat_logits = torch.where(mask[..., None], logits.to(dtype), 0.0).reshape(-1, num_classes)
    per_token = F.cross_entropy(flat_logits, flat_targets, reduction="none").reshape(mask.shape)
    return torch.where(mask, per_token, 0.0).sum(), mask.sum()


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """The probability of the positive class (a correct step or outcome) from (..., C) class logits:
    the softmax's last column, in float32 or wider. Classes are ordered negative first, so the
    last one is positive for C = 2 (wrong, right) and C = 3 (wrong, neutral, right)."""
    if logits.dim() < 1 or logits.shape[-1] not in (2, 3):
        raise ValueError(f"expected (..., 2) or (..., 3) class logits, got shape {tuple(logits.shape)}")
    return torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)[..., -1]


def aggregate(step_probs: torch.Tensor, how: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Solution scores from per-step probabilities of being correct, over the last dimension.

    `step_probs` is (..., steps), e.g. one solution's (steps,) or a padded
    (batch, steps); `mask` (same shape, None = every step) marks real steps.
    `how`: "product" (the probability that every step is correct, Lightman et
    al. 2023, "Let's Verify Step by Step"), "min" (the weakest step), "mean", or
    "last" (the last real step's probability). Returns shape (...). A solution
    without a real step has no score and raises ValueError.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {list(AGGREGATIONS)}, got {how!r}")
    if mask is None:
        mask = torch.ones_like(step_probs, dtype=torch.bool)
    if mask.shape != step_probs.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and step_probs {tuple(step_probs.shape)} differ")
    mask = mask.bool()
    if step_probs.dim() == 0 or not bool(mask.any(dim=-1).all()):
        raise ValueError("every solution needs at least one step")
    if how == "product":
        return torch.where(mask, step_probs, 1.0).prod(dim=-1)
    if how == "min":
        return torch.where(mask, step_probs, math.inf).amin(dim=-1)
    if how == "mean":
        return torch.where(mask, step_probs, 0.0).sum(dim=-1) / mask.sum(dim=-1)
    positions = torch.arange(step_probs.shape[-1], device=step_probs.device)
    last = torch.where(mask, positions, -1).amax(dim=-1, keepdim=True)
    return step_probs.gather(-1, last).squeeze(-1)


def _binary(values: Sequence[bool | int] | torch.Tensor, name: str) -> torch.Tensor:
    """`values` as a flat bool tensor on the CPU; ValueError unless every value is 0/1 or a bool."""
    values = torch.as_tensor(values).flatten().cpu()
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(f"{name} must be binary (bool or 0/1)")
    return values.bool()


def auroc(scores: Sequence[float] | torch.Tensor, labels: Sequence[bool | int] | torch.Tensor) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative, a tie counting 1/2.

    That is the Mann-Whitney U statistic / (positives * negatives), computed
    with one sort: each positive scores the negatives below it plus half those
    equal to it. NaN when either class is absent (no pair to rank).
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten().cpu()
    labels = _binary(labels, "labels")
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.numel()} scores and {labels.numel()} labels differ in number")
    if bool(scores.isnan().any()):
        raise ValueError("scores must not be NaN")
    positives, negatives = scores[labels], scores[~labels].sort().values
    if positives.numel() == 0 or negatives.numel() == 0:
        return math.nan
    below = torch.searchsorted(negatives, positives, side="left")
    below_or_equal = torch.searchsorted(negatives, positives, side="right")
    wins = float((below + below_or_equal).sum()) / 2
    return wins / (positives.numel() * negatives.numel())


def histogram_auroc(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """`auroc` from per-bin counts of the positives' and negatives' scores (bins in score order):
    scores in one bin count as tied. Counts add up across ranks where scores cannot be gathered
    cheaply. NaN when either class is absent."""
    positives, negatives = positives.double().cpu(), negatives.double().cpu()
    total_positive, total_negative = float(positives.sum()), float(negatives.sum())
    if not total_positive or not total_negative:
        return math.nan
    negatives_below = torch.cumsum(negatives, 0) - negatives
    return float((positives * (negatives_below + negatives / 2)).sum()) / (total_positive * total_negative)


def error_step_f1(
    predicted_correct: Sequence[bool | int] | torch.Tensor, labels_correct: Sequence[bool | int] | torch.Tensor
) -> float:
    """F1 of finding erroneous steps: an erroneous step is the positive class.

    Correct steps dominate PRM data, so F1 on the rare erroneous class says more
    than accuracy. NaN when no step is erroneous in either the predictions or
    the labels (0 / 0).
    """
    predicted_error = ~_binary(predicted_correct, "predicted_correct")
    true_error = ~_binary(labels_correct, "labels_correct")
    if predicted_error.shape != true_error.shape:
        raise ValueError(f"{predicted_error.numel()} predictions and {true_error.numel()} labels differ in number")
    true_positive = int((predicted_error & true_error).sum())
    wrong = int((predicted_error != true_error).sum())  # false positives + false negatives
    if true_positive == 0 and wrong == 0:
        return math.nan
    return 2 * true_positive / (2 * true_positive + wrong)


def first_error_index(step_correct: Sequence[bool | int] | torch.Tensor) -> int:
    """The index of the first step that is not correct, or -1 when every step is correct."""
    wrong = torch.nonzero(~_binary(step_correct, "step_correct")).flatten()
    return int(wrong[0]) if wrong.numel() else -1


def first_error_step_accuracy(
    predicted: Sequence[Sequence[bool | int] | torch.Tensor], labels: Sequence[int]
) -> float:
    """The fraction of solutions whose first predicted error is at the true first error (ProcessBench).

    `predicted[i]` holds solution i's per-step predictions of correctness;
    `labels[i]` is its true first-error index, -1 when every step is correct
    (ProcessBench's label; `first_error_index` gives it from step labels). A
    solution counts as right only when the earliest step predicted wrong is that
    index, or when none is predicted wrong and the solution has no error.
    ProcessBench reports the harmonic mean of this accuracy on the erroneous and
    on the correct solutions; call this on each subset for it.
    """
    if len(predicted) != len(labels):
        raise ValueError(f"{len(predicted)} predicted solutions and {len(labels)} labels differ in number")
    if len(labels) == 0:
        raise ValueError("first_error_step_accuracy needs at least one solution")
    right = 0
    for solution, (steps, label) in enumerate(zip(predicted, labels)):
        num_steps = len(steps)
        if not -1 <= label < num_steps:
            raise ValueError(f"solution {solution}: first-error index {label} is outside [-1, {num_steps})")
        right += int(first_error_index(steps) == label)
    return right / len(labels)


def probability_calibration_sums(
    probs: Sequence[float] | torch.Tensor, labels: Sequence[bool | float] | torch.Tensor, bins: int = 10
) -> torch.Tensor:
    """float64 (3 * bins,) sums in the layout of `metrics.calibration_sums`, for binary probabilities.

    Bin b (of `bins` equal widths over [0, 1], 1.0 in the last) holds [count,
    sum of p, sum of labels]: a step predicted correct with p = 0.8 should be
    correct 80% of the time. A soft label (a probability of being correct) counts
    as that fraction of a correct step. The sums add up across micro-batches and
    ranks, and `metrics.expected_calibration_error` reads them.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    probs = torch.as_tensor(probs, dtype=torch.float64).flatten()
    labels = torch.as_tensor(labels, dtype=torch.float64, device=probs.device).flatten()
    if probs.shape != labels.shape:
        raise ValueError(f"{probs.numel()} probabilities and {labels.numel()} labels differ in number")
    if not bool(((probs >= 0) & (probs <= 1) & (labels >= 0) & (labels <= 1)).all()):
        raise ValueError("probabilities and labels must lie in [0, 1]")
    bin_index = (probs * bins).floor().long().clamp(max=bins - 1)
    per_step = torch.stack([torch.ones_like(probs), probs, labels], dim=1)
    sums = torch.zeros(bins, 3, dtype=torch.float64, device=probs.device)
    return sums.index_add_(0, bin_index, per_step).flatten()


def expected_calibration_error(
    probs: Sequence[float] | torch.Tensor, labels: Sequence[bool | int] | torch.Tensor, bins: int = 10
) -> float:
    """sum_b (n_b / N) * |mean label_b - mean p_b| over equal-width bins of [0, 1]; NaN without data."""
    return metrics.expected_calibration_error(probability_calibration_sums(probs, labels, bins))
