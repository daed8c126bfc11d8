"""Training objectives (`loss.type`), one class each: the loss, its metric sums, what it needs.

A new objective is a subclass of `Objective` in its own module and one entry in
OBJECTIVES; the training loop only calls the `Objective` interface.
"""

from __future__ import annotations

from megatron_rm.config import DataConfig, LossConfig, ParallelConfig
from megatron_rm.errors import ConfigError
from megatron_rm.objectives.base import Objective
from megatron_rm.objectives.preference import BradleyTerry, Divergence, MarginBradleyTerry, PlackettLuce
from megatron_rm.objectives.regression import AttributeRegression

OBJECTIVES: dict[str, type[Objective]] = {
    "bradley_terry": BradleyTerry,
    "margin": MarginBradleyTerry,
    "plackett_luce": PlackettLuce,
    "divergence": Divergence,
    "regression": AttributeRegression,
}


def objective_problems(loss: LossConfig, num_labels: int, data: DataConfig, parallel: ParallelConfig) -> list[str]:
    """Every reason `loss` cannot train this model on this data and layout."""
    if loss.type not in OBJECTIVES:
        return [f"loss.type={loss.type!r} must be one of {', '.join(OBJECTIVES)}"]
    return OBJECTIVES[loss.type](loss, num_labels).config_problems(data, parallel)


def build_objective(loss: LossConfig, num_labels: int) -> Objective:
    """The objective named by `loss.type`, for a model with `num_labels` reward outputs."""
    if loss.type not in OBJECTIVES:
        raise ConfigError(f"invalid configuration:\n  loss.type={loss.type!r} must be one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[loss.type](loss, num_labels)


__all__ = ["OBJECTIVES", "Objective", "build_objective", "objective_problems"]
