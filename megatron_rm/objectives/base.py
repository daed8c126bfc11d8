"""What every training objective shares: the forward call, megatron's loss function, the metric sums;
and what every reward objective shares on top (`RewardObjective`).

`Objective.__call__(batch, output)` is the `loss_func` megatron's schedule calls
on the last pipeline stage: it returns (loss sum, number of loss terms, {"sums":
metric sums}). With `calculate_per_token_loss` megatron divides gradients by the
loss terms of the whole global batch (pairs, groups, labelled values, target
tokens: each objective counts its own), so the loss is a true mean however the terms are
split into micro-batches and ranks.

The metric sums are one float64 vector laid out by named fields
(`runtime.sums.SumLayout`); it adds up across micro-batches and data-parallel ranks,
and `summarize` divides once at the end, so every mean is weighted by its true
count. An objective that records more than the common fields extends
`metric_fields`, `metric_sums` and `summarize`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from megatron_rm.config import DataConfig, LossConfig, ParallelConfig
from megatron_rm.errors import DataError
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.objectives import metrics
from megatron_rm.runtime.sums import SumLayout

CALIBRATION_BINS = 10


class Objective(ABC):
    """One `loss.type`: its forward call, megatron's loss function, metric sums, and what data and
    settings it needs. The common metric fields count documents and tokens and sum the loss;
    each kind of objective adds its own."""

    model_kind = "reward"
    """The model the loss trains: reward (`tools/train_rm.py`) or policy (`tools/train_sft.py`)."""
    centers_rewards = False
    """Whether the loss takes loss.centering_coef."""
    grouping = "comparisons"
    """How data rows become groups for this loss (`data.prepare.GROUPINGS`)."""

    def __init__(self, loss: LossConfig, num_labels: int = 1, vocab_size: int | None = None):
        self.type = loss.type
        self.centering_coef = loss.centering_coef
        self.num_labels = num_labels
        self.vocab_size = vocab_size
        """A policy's real vocabulary (its logits' later columns are padding); None for a reward model."""
        self.layout = SumLayout(self.metric_fields())
        self.size = self.layout.size
        """Length of the metric sums vector."""

    @abstractmethod
    def forward(self, model, batch) -> torch.Tensor:
        """The model's output for `batch`, which `__call__` turns into the loss."""

    @abstractmethod
    def __call__(self, batch, output: torch.Tensor):
        """megatron's loss function: (loss sum, number of terms as an int tensor, {"sums": metric sums})."""

    def metric_fields(self) -> dict[str, int]:
        """Name and width of every field of the metric sums."""
        return {"tokens": 1, "padded_tokens": 1, "squared_lengths": 1, "documents": 1, "loss": 1, "loss_terms": 1}

    def batch_sums(self, batch, loss_sum: torch.Tensor, terms: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """The common fields' sums for one micro-batch."""
        return {
            "tokens": batch.tokens,
            "padded_tokens": batch.padded_tokens,
            # Attention FLOPs grow with each document's length squared.
            "squared_lengths": (batch.document_lengths.double() ** 2).sum(),
            "documents": batch.num_documents,
            "loss": loss_sum,
            "loss_terms": terms,
        }

    def loss_of(self, sums: torch.Tensor) -> float:
        """Mean loss per term from summed metric sums; NaN without loss terms."""
        fields = self.layout.unpack(sums)
        terms = float(fields["loss_terms"])
        return float(fields["loss"]) / terms if terms else float("nan")

    def loss_is_finite(self, sums: torch.Tensor) -> bool:
        """False when the summed loss is inf or NaN; a step without loss terms (single responses
        under a pairwise loss) has nothing to be non-finite."""
        return not float(self.layout.unpack(sums)["loss_terms"]) or math.isfinite(self.loss_of(sums))

    def summarize(self, sums: torch.Tensor) -> dict:
        """Means from summed metric sums: documents, tokens, padding efficiency, and `loss` (absent
        without loss terms)."""
        fields = self.layout.unpack(sums)
        tokens, padded = float(fields["tokens"]), float(fields["padded_tokens"])
        summary = {
            "documents": int(fields["documents"]),
            "tokens": int(tokens),
            # Real tokens over the token slots the model processed: what batching wasted on padding.
            "padding_efficiency": tokens / padded if padded else 1.0,
            "squared_lengths": float(fields["squared_lengths"]),
        }
        if float(fields["loss_terms"]):
            summary["loss"] = self.loss_of(sums)
        return summary

    def check_data(self, store, path) -> None:
        """Refuse training data (a GroupStore read from `path`) that cannot feed this loss."""
        problem = self.data_problem(store)
        if problem:
            raise DataError(f"loss.type={self.type} {problem}: {path}")

    @abstractmethod
    def data_problem(self, store) -> str | None:
        """What `store` lacks for this loss, naming the data key; None when it can feed it."""

    def checkpoint_metadata(self, data: DataConfig) -> dict:
        """What checkpoints record of this loss and its `data` settings for the tools that use the
        model (scoring)."""
        return {}

    def config_problems(self, data: DataConfig, parallel: ParallelConfig) -> list[str]:
        """Settings this loss cannot run with, each naming its keys and values."""
        problems = []
        if not self.centering_coef >= 0:
            problems.append(f"loss.centering_coef={self.centering_coef} must be >= 0")
        elif self.centering_coef > 0 and not self.centers_rewards:
            problems.append(f"loss.centering_coef={self.centering_coef} applies to loss.type=bradley_terry "
                            f"or margin, not {self.type}")
        return problems


class RewardObjective(Objective):
    """A loss on a reward model's outputs, with the reward metrics: pairs, accuracy, calibration,
    reward moments."""

    token_values = False
    """Whether the model returns every token's value instead of each document's reward."""
    trains_attributes = False
    """Whether the loss trains model.num_labels attributes; otherwise one scalar reward."""

    # --- the loss ---------------------------------------------------------------------------

    def forward(self, model, batch) -> torch.Tensor:
        """The model's output for `batch`: each document's reward, or every token's value."""
        return forward_documents(model, batch, token_values=self.token_values)

    def rewards(self, batch, output: torch.Tensor) -> torch.Tensor:
        """(documents, num_labels) rewards from the model's `output`, in layout order."""
        return output

    @abstractmethod
    def loss(self, batch, output: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the loss's terms, number of terms as a tensor).

        A batch without terms gives a zero sum that is still part of the graph
        (`no_terms`), so megatron's backward pass runs the same on every rank.
        """

    def __call__(self, batch, output: torch.Tensor):
        rewards = self.rewards(batch, output)
        loss_sum, terms = self.loss(batch, output, rewards)
        sums = self.layout.pack(self.metric_sums(batch, rewards, loss_sum, terms))
        return loss_sum, terms.to(torch.int), {"sums": sums}

    # --- metric sums ------------------------------------------------------------------------

    def metric_fields(self) -> dict[str, int]:
        return {
            **super().metric_fields(),
            **metrics.PAIR_FIELDS,
            "calibration": 3 * CALIBRATION_BINS,  # count, confidence, correct per bin
            **metrics.reward_moment_fields(self.num_labels),
        }

    def metric_sums(self, batch, rewards: torch.Tensor, loss_sum: torch.Tensor,
                    terms: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """This micro-batch's sums by field name. Pair fields come from the batch's
        comparisons whatever the loss; a batch without comparisons adds 0 pairs."""
        chosen, rejected = chosen_and_rejected(batch, rewards)
        return {
            **self.batch_sums(batch, loss_sum, terms),
            **metrics.pair_sums(chosen, rejected),
            "calibration": metrics.calibration_sums(chosen, rejected, bins=CALIBRATION_BINS),
            **metrics.reward_moment_sums(rewards),
        }

    def summarize(self, sums: torch.Tensor) -> dict:
        """The common means, plus the pair metrics (pairs, accuracy, margin, chosen/rejected
        reward, ece; absent without pairs) and the reward mean and std (per label for several
        labels, a float for one)."""
        summary = super().summarize(sums)
        fields = self.layout.unpack(sums)
        pair_means = metrics.summarize(fields)
        if pair_means:
            summary.update(pair_means, ece=metrics.expected_calibration_error(fields["calibration"]))
        mean, std = metrics.reward_mean_std(fields)
        if self.num_labels == 1:
            mean, std = mean[0], std[0]
        summary["reward_mean"], summary["reward_std"] = mean, std
        return summary

    # --- what the loss needs ----------------------------------------------------------------

    def config_problems(self, data: DataConfig, parallel: ParallelConfig) -> list[str]:
        problems = super().config_problems(data, parallel)
        if self.num_labels != 1 and not self.trains_attributes:
            problems.insert(0, f"model.num_labels={self.num_labels}: loss.type={self.type} trains a scalar "
                               "reward (model.num_labels=1; loss.type=regression trains several attributes)")
        return problems


def comparisons(batch) -> torch.Tensor:
    """(pairs, 2) document indices (better, worse); (0, 2) for documents compared with nothing."""
    if batch.comparisons is None:
        return torch.zeros((0, 2), dtype=torch.long, device=batch.input_ids.device)
    return batch.comparisons


def chosen_and_rejected(batch, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pairs,) first-label rewards of each pair's better and worse document."""
    pairs = comparisons(batch)
    return rewards[pairs[:, 0], 0], rewards[pairs[:, 1], 0]


def no_terms(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A loss of no terms: 0, still depending on the model's output, so backward runs and
    every parameter gets a zero gradient."""
    return rewards[:0].sum(), torch.tensor(0, device=rewards.device)
