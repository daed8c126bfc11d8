"""Regression on attribute labels: model.num_labels rewards per document, each fit to its label."""

from __future__ import annotations

from megatron_rm.objectives import losses
from megatron_rm.objectives.base import RewardObjective, no_terms


class AttributeRegression(RewardObjective):
    """Squared error of each labelled attribute: one term per label present (NaN marks a missing one)."""

    trains_attributes = True

    def loss(self, batch, output, rewards):
        if batch.labels is None:
            return no_terms(rewards)
        return losses.attribute_mse_loss(rewards, batch.labels)

    def data_problem(self, store) -> str | None:
        width = store.label_width()
        if width == 0:
            return "needs attribute labels (data.labels_key), and the data has none"
        if width != self.num_labels:
            return f"the data has {width} attributes per response, model.num_labels={self.num_labels}"
        return None
