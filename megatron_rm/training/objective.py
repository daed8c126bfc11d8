"""The training objective (`loss.type`) as megatron's loss function, and the metric sums.

`Objective.__call__(batch, output)` is the `loss_func` megatron's schedule calls
on the last pipeline stage: it returns (loss sum, number of loss terms, {"sums":
metric sums}). With `calculate_per_token_loss` megatron divides gradients by the
loss terms of the whole global batch: pairs for the pairwise losses, groups for
Plackett-Luce, labelled values for regression.

The metric sums are one float64 vector (layout below) that adds up across
micro-batches and data-parallel ranks; `summarize` divides once at the end, so
every mean is weighted by its true count, never a mean of per-rank means.
"""

from __future__ import annotations

import torch

from megatron_rm import losses, metrics
from megatron_rm.config import LossConfig
from megatron_rm.errors import DataError
from megatron_rm.model.inputs import document_ends

CALIBRATION_BINS = 10
EXTRA_FIELDS = ("loss_terms", "squared_lengths")
"""Beside metrics.SUM_FIELDS: the loss's own count, and sum over documents of length^2
(attention FLOPs)."""


class Objective:
    def __init__(self, loss: LossConfig, num_labels: int):
        self.type = loss.type
        self.centering_coef = loss.centering_coef
        self.num_labels = num_labels
        self.token_values = loss.type == "divergence"
        """Whether the model returns every token's value instead of each document's reward."""
        self._pair_end = len(metrics.SUM_FIELDS)
        self._extra_end = self._pair_end + len(EXTRA_FIELDS)
        self._calibration_end = self._extra_end + 3 * CALIBRATION_BINS
        self.size = self._calibration_end + 1 + 2 * num_labels

    def __call__(self, batch, output: torch.Tensor):
        if self.token_values:
            rewards = output[document_ends(batch.attention_mask)]
        else:
            rewards = output
        chosen = rewards[batch.comparisons[:, 0], 0]
        rejected = rewards[batch.comparisons[:, 1], 0]
        loss_sum, terms = self._loss(batch, output, rewards, chosen, rejected)
        lengths = batch.document_lengths.double()
        # metrics.pair_sums' own loss field is not used: `loss_terms` counts this loss's terms.
        pair = metrics.pair_sums(chosen, rejected, chosen.new_zeros(0), tokens=batch.tokens,
                                 padded_tokens=batch.padded_tokens)
        sums = torch.cat([
            pair.to(rewards.device),
            torch.stack([terms.double(), (lengths ** 2).sum().to(rewards.device)]),
            metrics.calibration_sums(chosen, rejected, bins=CALIBRATION_BINS).to(rewards.device),
            metrics.reward_moment_sums(rewards).to(rewards.device),
        ])
        sums[metrics.SUM_FIELDS.index("loss")] = loss_sum.detach().double()
        return loss_sum, terms.to(torch.int), {"sums": sums}

    def _loss(self, batch, output, rewards, chosen, rejected) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the loss's terms, number of terms)."""
        pairs = torch.tensor(batch.num_pairs, device=rewards.device)
        if self.type in ("bradley_terry", "margin"):
            margin = batch.margins if self.type == "margin" else None
            per_pair = losses.bradley_terry_loss(chosen, rejected, margin)
            if self.centering_coef:
                per_pair = per_pair + self.centering_coef * losses.centering_penalty(chosen, rejected)
            return per_pair.sum(), pairs
        if self.type == "plackett_luce":
            per_group = losses.plackett_luce_loss(rewards[:, 0], batch.group_sizes.to(rewards.device))
            return per_group.sum(), torch.tensor(len(per_group), device=rewards.device)
        if self.type == "divergence":
            better, worse = batch.comparisons[:, 0], batch.comparisons[:, 1]
            lengths = batch.attention_mask.sum(-1)
            per_pair = losses.divergence_token_loss(
                output[better, :, 0], output[worse, :, 0], batch.input_ids[better], batch.input_ids[worse],
                lengths[better], lengths[worse])
            return per_pair.sum(), pairs
        squared_errors, labelled = losses.attribute_mse_loss(rewards, batch.labels)
        return squared_errors, labelled

    def loss_of(self, sums: torch.Tensor) -> float:
        terms = float(sums[self._pair_end])
        return float(sums[metrics.SUM_FIELDS.index("loss")]) / terms if terms else float("nan")

    def summarize(self, sums: torch.Tensor) -> dict:
        """Means from summed metrics: metrics.summarize's pair metrics, this loss, calibration
        and reward statistics (per label for several labels)."""
        summary = metrics.summarize(sums[: self._pair_end])
        summary["loss"] = self.loss_of(sums)
        summary["squared_lengths"] = float(sums[self._pair_end + 1])
        summary["ece"] = metrics.expected_calibration_error(sums[self._extra_end: self._calibration_end])
        mean, std = metrics.reward_mean_std(sums[self._calibration_end:], self.num_labels)
        if self.num_labels == 1:
            mean, std = mean[0], std[0]
        summary["reward_mean"], summary["reward_std"] = mean, std
        return summary


def check_data_feeds(loss: LossConfig, num_labels: int, store, path) -> None:
    """Refuse a loss the training data cannot feed, naming the key and the file."""
    sizes = store.group_sizes()
    problem = None
    if loss.type == "margin" and not store.has_margins():
        problem = "needs a margin per pair (data.margin_key), and no group has one"
    elif loss.type == "plackett_luce" and sizes.max() <= 2:
        problem = ("ranks K-wise groups, and every group is a pair (where Plackett-Luce is "
                   "Bradley-Terry: use loss.type=bradley_terry)")
    elif loss.type == "regression":
        width = store.label_width()
        if width == 0:
            problem = "needs attribute labels (data.labels_key), and the data has none"
        elif width != num_labels:
            problem = f"the data has {width} attributes per response, model.num_labels={num_labels}"
    if problem:
        raise DataError(f"loss.type={loss.type} {problem}: {path}")
