"""Training objectives (`loss.type`), one class each: the loss, its metric sums, what it needs.

A new objective is a subclass of `Objective` in its own module and one entry in
OBJECTIVES; the training loop only calls the `Objective` interface. Each objective
trains one kind of model (`Objective.model_kind`): the reward losses a reward model
(`tools/train_rm.py`), `sft` a policy (`tools/train_sft.py`).
"""

from __future__ import annotations

from dataclasses import replace

from megatron_rm.config import DataConfig, LossConfig, ModelConfig, ParallelConfig
from megatron_rm.errors import ConfigError
from megatron_rm.objectives.base import Objective
from megatron_rm.objectives.preference import BradleyTerry, Divergence, MarginBradleyTerry, PlackettLuce
from megatron_rm.objectives.regression import AttributeRegression
from megatron_rm.objectives.sft import NextTokenSFT
from megatron_rm.objectives.token_classification import OutcomeRM, ProcessRM

OBJECTIVES: dict[str, type[Objective]] = {
    "bradley_terry": BradleyTerry,
    "margin": MarginBradleyTerry,
    "plackett_luce": PlackettLuce,
    "divergence": Divergence,
    "regression": AttributeRegression,
    "orm": OutcomeRM,
    "prm": ProcessRM,
    "sft": NextTokenSFT,
}
TOOLS = {"reward": "tools/train_rm.py", "policy": "tools/train_sft.py"}
"""The tool that trains each model kind, for messages."""


def _type_problem(loss: LossConfig, model_kind: str) -> str | None:
    mine = [name for name, cls in OBJECTIVES.items() if cls.model_kind == model_kind]
    if loss.type not in OBJECTIVES:
        return f"loss.type={loss.type!r} must be one of {', '.join(mine)}"
    other = OBJECTIVES[loss.type].model_kind
    if other != model_kind:
        return (f"loss.type={loss.type} trains a {other} model ({TOOLS[other]}); this run trains a "
                f"{model_kind} model: loss.type must be one of {', '.join(mine)}")
    return None


def objective_problems(loss: LossConfig, num_labels: int, data: DataConfig, parallel: ParallelConfig, *,
                       model_kind: str = "reward") -> list[str]:
    """Every reason `loss` cannot train this `model_kind` model on this data and layout."""
    problem = _type_problem(loss, model_kind)
    if problem:
        return [problem]
    return OBJECTIVES[loss.type](loss, num_labels).config_problems(data, parallel)


def model_for_loss(loss: LossConfig, model: ModelConfig) -> ModelConfig:
    """The model `loss` trains: loss.type=orm|prm needs a token head with loss.num_classes outputs
    (a scalar head's default model.num_labels=1 becomes the classes; another count is left for
    `objective_problems` to refuse)."""
    if not getattr(OBJECTIVES.get(loss.type), "token_head", False):
        return model
    return replace(model, head="token", num_labels=loss.num_classes if model.num_labels == 1 else model.num_labels)


def build_objective(loss: LossConfig, num_labels: int, *, vocab_size: int | None = None) -> Objective:
    """The objective named by `loss.type`, for a reward model with `num_labels` outputs or a policy
    whose real vocabulary is `vocab_size` (`objective_problems` checks that it suits the run)."""
    if loss.type not in OBJECTIVES:
        raise ConfigError(f"invalid configuration:\n  loss.type={loss.type!r} must be one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[loss.type](loss, num_labels, vocab_size)


__all__ = ["OBJECTIVES", "Objective", "build_objective", "model_for_loss", "objective_problems"]
