"""A reward model ready to score, at this job's TP/PP layout: from one of our checkpoints
(converted or trained) or straight from a Hugging Face folder, converted in memory
(`loading.models` does both, for policies too; here is what only rewards need)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from megatron_rm.config import REWARD, ModelConfig, ParallelConfig
from megatron_rm.errors import CheckpointError
from megatron_rm.loading.models import PRECISIONS, Found, build_and_load, find
from megatron_rm.runtime.parallel import Layout

__all__ = ["PRECISIONS", "Normalization", "ScoringModel", "load_model", "scoring_model"]


@dataclass
class Normalization:
    """Per-label reward mean and std of an evaluation set, stored with the model."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, stored: dict | None, num_labels: int, where: str) -> Normalization | None:
        if not stored:
            return None
        mean = torch.tensor(stored.get("mean"), dtype=torch.float32).reshape(-1)
        std = torch.tensor(stored.get("std"), dtype=torch.float32).reshape(-1)
        if mean.numel() != num_labels or std.numel() != num_labels:
            raise CheckpointError(f"{where}: reward_normalization holds {mean.numel()} mean(s) and "
                                  f"{std.numel()} std(s) for a model of {num_labels} label(s)")
        # A constant reward on the eval set would divide by zero; OpenRLHF clamps the same way.
        return cls(mean, std.clamp(min=1e-8))

    def apply(self, rewards: torch.Tensor) -> torch.Tensor:
        return (rewards - self.mean) / self.std


@dataclass
class ScoringModel:
    chunks: list[torch.nn.Module]
    """This rank's pipeline stage, in eval mode."""
    config: ModelConfig
    tokenizer: PreTrainedTokenizerBase
    layout: Layout
    normalization: Normalization | None
    name: str
    """What clients call the model (the path it was loaded from)."""
    token_scores: dict | None = None
    """How a token head was trained to be read (`token_scores` of a trained checkpoint's
    metadata: loss, aggregation, step separator and tag); None when not stored."""
    id2label: dict | None = None
    """A Hugging Face classifier's class names (`id2label` of its config.json); None: LABEL_<i>."""

    def label(self, index: int) -> str:
        """The name of class `index`, as transformers names it: `id2label`, else LABEL_<index>."""
        return str((self.id2label or {}).get(str(index), f"LABEL_{index}"))  # JSON keys are strings

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    @property
    def token_head(self) -> bool:
        """Class logits at every token (an outcome or process reward model), not one reward per document."""
        return self.config.head == "token"


def load_model(path: str | Path, parallel_config: ParallelConfig | None = None, *,
               precision: str = "fp32", model_name: str | None = None, seed: int = 0) -> ScoringModel:
    """The model at `path` on this job (process groups are created here when absent).

    `path`: a Hugging Face folder (`*ForSequenceClassification`, `*ForTokenClassification`, or
    `*ForCausalLM` with a new head drawn from `seed`), a checkpoint folder, or a run's `checkpoints/` folder (its newest
    complete checkpoint); a policy checkpoint is refused. `model_name` picks one model of a
    checkpoint that holds several.
    """
    return scoring_model(find(path, REWARD, model_name=model_name, seed=seed), parallel_config, precision, seed)


def scoring_model(found: Found, parallel_config: ParallelConfig | None = None, precision: str = "fp32",
                  seed: int = 0) -> ScoringModel:
    """The reward model `found` (see `loading.models.find`) built and loaded on this job."""
    if found.hf is not None:
        stored_normalization, where = found.hf.reward_normalization(), found.path / "config.json"
        token_scores = found.hf.token_scores()
        id2label = found.hf.hf.get("id2label") if found.hf.has_score else None
    else:
        id2label = None
        stored_normalization, where = found.metadata.get("reward_normalization"), found.directory
        token_scores = found.metadata.get("token_scores")
    model, layout = build_and_load(found, parallel_config or ParallelConfig(), precision, seed)
    return ScoringModel([model], found.config, found.tokenizer, layout,
                        Normalization.of(stored_normalization, found.config.num_labels, str(where)),
                        name=str(found.path), token_scores=token_scores, id2label=id2label)
