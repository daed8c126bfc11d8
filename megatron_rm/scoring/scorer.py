"""Rewards for lists of token sequences on a whole TP/PP/DP job, in input order.

`Scorer.score` is collective: every rank of the job calls it with the same sequences.
The sequences are planned into length-grouped micro-batches (`batching.plan`), dealt to the
data-parallel replicas, run forward-only through megatron's pipeline schedule (the forward
training uses), and the rewards come back to every rank in the order given. Where a rank
has no micro-batch its rows are zeros, and one sum over the data-parallel group fills in
every row exactly once: adding zeros changes no bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_rm import runtime
from megatron_rm.data import document_batch, pad_id
from megatron_rm.errors import ConfigError
from megatron_rm.scoring.batching import BATCHINGS, deal, plan
from megatron_rm.scoring.inputs import InputEncoder
from megatron_rm.scoring.load import ScoringModel
from megatron_rm.scoring.rewards import score as score_batches

DEFAULT_MAX_TOKENS = 8192


@dataclass(frozen=True)
class ScoreSettings:
    max_tokens: int = DEFAULT_MAX_TOKENS
    """Token slots per micro-batch, padding included (a longer single input goes alone)."""
    batching: str = "bucket"
    """bucket (rows of similar length, padded) or pack (documents back to back in one row)."""
    max_length: int | None = None
    """Longest input in tokens; default the model's max_sequence_length."""
    length_policy: str = "error"
    """error or truncate_prompt (see scoring.inputs)."""

    def problems(self, model_limit: int) -> list[str]:
        found = []
        if self.max_tokens < 1:
            found.append(f"max_tokens={self.max_tokens} must be >= 1")
        if self.batching not in BATCHINGS:
            found.append(f"batching={self.batching!r} must be one of {', '.join(BATCHINGS)}")
        if self.max_length is not None and not 2 <= self.max_length <= model_limit:
            found.append(f"max_length={self.max_length} must be in [2, {model_limit}] "
                         "(the model's max_sequence_length)")
        return found


class Scorer:
    def __init__(self, model: ScoringModel, settings: ScoreSettings = ScoreSettings()):
        problems = settings.problems(model.config.max_sequence_length)
        if problems:
            raise ConfigError("invalid scoring settings:\n  " + "\n  ".join(problems))
        self.model, self.settings = model, settings
        self.max_length = settings.max_length or model.config.max_sequence_length
        self.encoder = InputEncoder(model.tokenizer, self.max_length, settings.length_policy)
        self._pad_id = pad_id(model.tokenizer)

    @property
    def num_labels(self) -> int:
        return self.model.num_labels

    @torch.no_grad()
    def score(self, sequences: list[list[int]]) -> torch.Tensor:
        """(len(sequences), num_labels) fp32 rewards on the CPU of every rank, in input order.

        Collective: every rank passes the same `sequences` (see `parallel.broadcast_sequences`).
        """
        layout = self.model.layout
        rewards = torch.zeros(len(sequences), self.num_labels, dtype=torch.float32, device=runtime.device())
        if not sequences:
            return rewards.cpu()
        lengths = [len(ids) for ids in sequences]
        mine = deal(plan(lengths, self.settings.max_tokens, self.settings.batching), lengths, layout.dp)[layout.dp_rank]
        packed = self.settings.batching == "pack"
        batches = [document_batch([sequences[i] for i in batch], self._pad_id, packed=packed) for batch in mine]
        if batches:
            local = score_batches(self.model.chunks, batches, layout)
            order = torch.tensor([i for batch in mine for i in batch], device=rewards.device)
            rewards[order] = local.to(rewards.device)
        if layout.dp > 1:
            dist.all_reduce(rewards, group=layout.groups.dp)
        return rewards.cpu()

    def normalized(self, rewards: torch.Tensor) -> torch.Tensor | None:
        """Rewards standardised by the model's stored eval-set statistics; None without them."""
        normalization = self.model.normalization
        return None if normalization is None else normalization.apply(rewards)
