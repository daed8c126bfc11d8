"""Outcome and process reward models (`loss.type=orm`, `loss.type=prm`): class logits at every token,
cross-entropy at the labelled ones.

The data places the targets (`megatron_rm.data.step_tokens`): an outcome on every
response token, a step's label on the step's last token, NaN elsewhere. The loss is
one term per labelled token, so megatron's per-token normalisation makes it the mean
over the global batch's labelled tokens however they are split.

The metrics are sums that add up over micro-batches and data-parallel ranks:
labelled-token accuracy and calibration, and per solution (document) its score,
the aggregate of its positive-class probabilities (`loss.aggregation`), counted into
a histogram for the AUROC against its label (right outcome / no wrong step). A
process reward model adds the error-step counts (F1 of finding wrong steps) and
first-error-step accuracy (ProcessBench).
"""

from __future__ import annotations

import math

import torch

from megatron_rm.config import DataConfig, LossConfig, ParallelConfig
from megatron_rm.data.steps import NEUTRAL_POLICIES
from megatron_rm.model.reward_model import forward_documents
from megatron_rm.objectives import metrics, step_rewards
from megatron_rm.objectives.base import CALIBRATION_BINS, Objective

SCORE_BINS = 2000
"""Histogram bins of solution scores for the AUROC; scores in one bin (0.05 apart in log-odds) count
as tied."""
SCORE_LOGIT_RANGE = 50.0


class TokenClassification(Objective):
    """Cross-entropy of a token head's class logits at every labelled token (NaN target: none)."""

    token_head = True
    """The model's head gives class logits at every token (model.head=token)."""
    default_aggregation = "mean"

    def __init__(self, loss: LossConfig, num_labels: int = 2, vocab_size: int | None = None):
        self.num_classes = loss.num_classes
        self.aggregation = loss.aggregation or self.default_aggregation
        self.neutral = loss.neutral
        super().__init__(loss, num_labels, vocab_size)

    def forward(self, model, batch) -> torch.Tensor:
        return forward_documents(model, batch, token_values=True)

    def __call__(self, batch, logits: torch.Tensor):
        targets = batch.token_targets
        mask = ~torch.isnan(targets)
        if self.num_classes == 2:
            # Soft targets: the distribution (1 - p, p) keeps a probability label's spread.
            positive = torch.where(mask, targets, 0.0)
            class_targets = torch.stack([1 - positive, positive], dim=-1)
        else:
            class_targets = torch.where(mask, targets, 0.0).long()
        # The data checked every target's range; checking here would sync the host each micro-batch.
        loss_sum, terms = step_rewards.token_class_loss(logits, class_targets, mask, validate=False)
        with torch.no_grad():
            sums = self.layout.pack({**self.batch_sums(batch, loss_sum.detach(), terms),
                                     **self.label_sums(batch, logits.detach(), targets, mask)})
        return loss_sum, terms.to(torch.int), {"sums": sums}

    # --- metric sums ------------------------------------------------------------------------

    def metric_fields(self) -> dict[str, int]:
        return {**super().metric_fields(), "labelled": 1, "labelled_correct": 1,
                "calibration": 3 * CALIBRATION_BINS, "solutions": 1, "solutions_correct": 1,
                "score_histogram": 2 * SCORE_BINS, "error_counts": 3, "first_error_correct": 1}

    def label_sums(self, batch, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> dict:
        """The metric sums of one micro-batch's labelled tokens and solutions."""
        probs = step_rewards.positive_probability(logits[mask]).double()
        values = targets[mask].double()
        if self.num_classes == 2:
            # A probability of exactly 0.5 predicts no class: a tie is not a right answer.
            predicted, actual = (probs > 0.5).long(), (values >= 0.5).long()
            outcome = values  # soft labels calibrate as the frequencies they are
        else:
            predicted, actual = logits[mask].argmax(dim=-1), values.long()
            outcome = (actual == 2).double()
        rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
        solutions = _Solutions(rows, batch.attention_mask[mask])
        true_error, predicted_error = actual == 0, predicted == 0
        scores = step_rewards.aggregate(solutions.pad(probs, 1.0), self.aggregation, solutions.real)
        # A solution is right when its outcome is, or (process) when none of its steps is wrong.
        right = solutions.pad(actual, 0)[:, 0] > 0 if self.outcome else ~solutions.any(true_error)
        histogram = torch.zeros(2, SCORE_BINS, dtype=torch.float64, device=probs.device)
        histogram.index_put_((right.long(), _score_bin(scores)), torch.ones_like(scores), accumulate=True)
        return {
            "labelled": mask.sum(), "labelled_correct": (predicted == actual).sum(),
            "calibration": step_rewards.probability_calibration_sums(probs, outcome, bins=CALIBRATION_BINS),
            "solutions": solutions.count, "solutions_correct": ((scores > 0.5) == right).sum(),
            "score_histogram": histogram.flatten(),
            "error_counts": torch.stack([(true_error & predicted_error).sum(), (~true_error & predicted_error).sum(),
                                         (true_error & ~predicted_error).sum()]),
            "first_error_correct": (solutions.first(true_error) == solutions.first(predicted_error)).sum(),
        }

    outcome = False
    """Whether a solution's label is its outcome (on every token) rather than its steps'."""
    accuracy_name = "accuracy"

    def summarize(self, sums: torch.Tensor) -> dict:
        summary = super().summarize(sums)
        fields = self.layout.unpack(sums)
        labelled, solutions = float(fields["labelled"]), float(fields["solutions"])
        if labelled:
            summary[self.accuracy_name] = float(fields["labelled_correct"]) / labelled
            summary["ece"] = metrics.expected_calibration_error(fields["calibration"])
        if solutions:
            summary["solutions"] = int(solutions)
            summary["solution_accuracy"] = float(fields["solutions_correct"]) / solutions
            negatives, positives = fields["score_histogram"].reshape(2, SCORE_BINS)
            summary["auroc"] = step_rewards.histogram_auroc(positives, negatives)
        return summary

    def checkpoint_metadata(self, data: DataConfig) -> dict:
        """`token_scores`: how scoring reads this model as it was trained: the loss, classes, neutral
        mapping, aggregation, and the step separator and tag the steps were written with."""
        return {"token_scores": {"loss": self.type, "num_classes": self.num_classes, "neutral": self.neutral,
                                 "aggregation": self.aggregation, "step_separator": data.step_separator,
                                 "step_tag": data.step_tag}}

    # --- what the loss needs ----------------------------------------------------------------

    def data_problem(self, store) -> str | None:
        if not store.has_token_targets():
            return (f"needs per-token targets, and this token store has none (made for another loss): "
                    f"rebuild it from the data files for loss.type={self.type}")
        return None

    def config_problems(self, data: DataConfig, parallel: ParallelConfig) -> list[str]:
        problems = super().config_problems(data, parallel)
        if self.num_classes not in (2, 3):
            problems.append(f"loss.num_classes={self.num_classes} must be 2 or 3")
        elif self.num_labels != self.num_classes:
            problems.append(f"model.num_labels={self.num_labels} must equal loss.num_classes={self.num_classes} "
                            f"(the token head has one output per class)")
        if self.neutral not in NEUTRAL_POLICIES:
            problems.append(f"loss.neutral={self.neutral!r} must be one of {', '.join(NEUTRAL_POLICIES)}")
        if self.aggregation not in step_rewards.AGGREGATIONS:
            problems.append(f"loss.aggregation={self.aggregation!r} must be one of "
                            f"{', '.join(step_rewards.AGGREGATIONS)} or null")
        return problems


class OutcomeRM(TokenClassification):
    """The solution's outcome learnt at every response token (the seed's ORM: the prompt is masked)."""

    grouping = "outcomes"
    outcome = True
    accuracy_name = "token_accuracy"

    def config_problems(self, data, parallel):
        problems = super().config_problems(data, parallel)
        if self.num_classes != 2:
            problems.append(f"loss.num_classes={self.num_classes}: an outcome is right or wrong, loss.type=orm "
                            "has 2 classes")
        return problems


class ProcessRM(TokenClassification):
    """Each step's label learnt at the step's last token (TRL's PRM layout)."""

    grouping = "steps"
    accuracy_name = "step_accuracy"
    default_aggregation = "product"

    def summarize(self, sums: torch.Tensor) -> dict:
        """Adds error_step_f1 (finding wrong steps) and first_error_accuracy (ProcessBench)."""
        summary = super().summarize(sums)
        fields = self.layout.unpack(sums)
        found, false_alarms, missed = (float(v) for v in fields["error_counts"])
        denominator = 2 * found + false_alarms + missed
        summary["error_step_f1"] = 2 * found / denominator if denominator else math.nan
        if float(fields["solutions"]):
            summary["first_error_accuracy"] = float(fields["first_error_correct"]) / float(fields["solutions"])
        return summary


class _Solutions:
    """The labelled tokens of a micro-batch grouped by solution: labelled tokens come in layout
    order, and a document's tokens are consecutive in it."""

    def __init__(self, rows: torch.Tensor, document_numbers: torch.Tensor):
        # One key per (row, document); it grows along the layout, so equal keys are consecutive.
        keys = rows * (int(document_numbers.max()) + 1 if document_numbers.numel() else 1) + document_numbers
        _, self.index, counts = torch.unique_consecutive(keys, return_inverse=True, return_counts=True)
        self.count = counts.numel()
        starts = torch.cumsum(counts, 0) - counts
        self.place = torch.arange(keys.numel(), device=keys.device) - starts[self.index]
        self.width = int(counts.max()) if self.count else 0
        self.real = self.pad(torch.ones_like(keys, dtype=torch.bool), False)

    def pad(self, values: torch.Tensor, fill) -> torch.Tensor:
        """(solutions, most labels) of per-labelled-token `values`, `fill` past each solution's end."""
        out = torch.full((self.count, self.width), fill, dtype=values.dtype, device=values.device)
        out[self.index, self.place] = values
        return out

    def any(self, flags: torch.Tensor) -> torch.Tensor:
        return self.pad(flags, False).any(dim=1)

    def first(self, flags: torch.Tensor) -> torch.Tensor:
        """Each solution's first flagged label (0-based), -1 when none is."""
        padded = self.pad(flags, False)
        return torch.where(padded.any(dim=1), padded.int().argmax(dim=1), -1)


def _score_bin(scores: torch.Tensor) -> torch.Tensor:
    """Equal bins of the log-odds over [-SCORE_LOGIT_RANGE, SCORE_LOGIT_RANGE]: a product of many
    probabilities is far below 0.01, where equal bins of [0, 1] would tie every solution."""
    log_odds = torch.log(scores) - torch.log1p(-scores)
    position = (log_odds + SCORE_LOGIT_RANGE) / (2 * SCORE_LOGIT_RANGE) * SCORE_BINS
    return position.nan_to_num(0.0).clamp(0, SCORE_BINS - 1).floor().long()
