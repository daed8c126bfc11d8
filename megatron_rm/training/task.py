"""What a training run trains: the pieces in which a reward-model run and supervised fine-tuning of
a policy differ. The loop (`training.loop.train`) is the same for both and takes one of these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from megatron_rm.config import POLICY, REWARD


@dataclass(frozen=True)
class Task:
    model_kind: str
    """reward or policy: the model built (`loading.trainable`), which loss types the run accepts,
    and what its checkpoints record (a checkpoint of the other kind is refused on loading)."""
    final_metadata: Callable[[dict | None], dict]
    """What the final checkpoint stores from the final evaluation's summary (None without one)."""
    output_layer: bool
    """Whether the model ends in a vocabulary-wide output layer, whose matmul counts in model FLOPs."""


def reward_statistics(summary: dict | None) -> dict:
    """The final evaluation's reward mean and std, kept with the checkpoint for normalising scores."""
    if not summary or "reward_mean" not in summary:
        return {}
    return {"reward_normalization": {"mean": _as_list(summary["reward_mean"]), "std": _as_list(summary["reward_std"])}}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


REWARD_MODEL = Task(REWARD, reward_statistics, output_layer=False)
"""`tools/train_rm.py`: a reward model on ranked responses."""
SFT = Task(POLICY, lambda summary: {}, output_layer=True)
"""`tools/train_sft.py`: a policy imitating one response per prompt."""
