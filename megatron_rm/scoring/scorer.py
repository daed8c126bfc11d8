"""Rewards for lists of token sequences on a whole TP/PP/DP job, in input order.

`Scorer.score` is collective: every rank of the job calls it with the same sequences.
The sequences are planned into length-grouped micro-batches (`batching.plan`), dealt to the
data-parallel replicas, run forward-only through megatron's pipeline schedule (the forward
training uses), and the rewards come back to every rank in the order given. Where a rank
has no micro-batch its rows are zeros, and one sum over the data-parallel group fills in
every row exactly once: adding zeros changes no bit. `Scorer.token_logits` does the same
for a token head's logits at every token (outcome and process reward models, read by
`token_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_rm import runtime
from megatron_rm.core.micro_batches import BATCHINGS, deal, plan
from megatron_rm.data import document_batch, pad_id
from megatron_rm.data.ending import Ending
from megatron_rm.errors import ConfigError
from megatron_rm.loading.reward import ScoringModel
from megatron_rm.objectives.step_rewards import AGGREGATIONS
from megatron_rm.scoring.inputs import InputEncoder
from megatron_rm.scoring.rewards import document_rewards, token_values
from megatron_rm.scoring.token.scores import TokenReading

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
    aggregation: str | None = None
    """A token head's step (and outcome) aggregation; None: the checkpoint's (see token_scores)."""
    step_separator: str | None = None
    """The text after each step for a token head; None: the checkpoint's, else a newline."""

    def problems(self, model_limit: int, token_head: bool = False) -> list[str]:
        found = []
        if not token_head:
            found += [f"{name}={getattr(self, name)!r} reads a token head (an outcome or process reward model); "
                      "this model has one reward per document" for name in ("aggregation", "step_separator")
                      if getattr(self, name) is not None]
        elif self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            found.append(f"aggregation={self.aggregation!r} must be one of {', '.join(AGGREGATIONS)}")
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
        problems = settings.problems(model.config.max_sequence_length, model.token_head)
        if problems:
            raise ConfigError("invalid scoring settings:\n  " + "\n  ".join(problems))
        self.model, self.settings = model, settings
        self.max_length = settings.max_length or model.config.max_sequence_length
        self.encoder = InputEncoder(model.tokenizer, self.max_length, settings.length_policy,
                                    Ending.of(model.config))
        self._pad_id = pad_id(model.tokenizer)
        self.reading = TokenReading.of(model.token_scores, model.num_labels, settings.aggregation,
                                       settings.step_separator) if model.token_head else None
        """How a token head's logits become rewards; None for a sequence head."""

    @property
    def num_labels(self) -> int:
        return self.model.num_labels

    @property
    def token_head(self) -> bool:
        return self.model.token_head

    def outputs(self, sequences: list[list[int]]):
        """What a job computes per sequence (collective): `score`'s rewards for a sequence
        head, `token_logits` for a token head; indexable in input order either way."""
        return self.token_logits(sequences) if self.token_head else self.score(sequences)

    @torch.no_grad()
    def score(self, sequences: list[list[int]]) -> torch.Tensor:
        """(len(sequences), num_labels) fp32 rewards on the CPU of every rank, in input order.

        Collective: every rank passes the same `sequences` (see `parallel.broadcast_sequences`).
        """
        rewards = torch.zeros(len(sequences), self.num_labels, dtype=torch.float32, device=runtime.device())
        if not sequences:
            return rewards.cpu()
        mine, batches = self._my_batches(sequences)
        if batches:
            local = document_rewards(self.model.chunks, batches, self.model.layout)
            order = torch.tensor([i for batch in mine for i in batch], device=rewards.device)
            rewards[order] = local.to(rewards.device)
        return self._summed(rewards).cpu()

    @torch.no_grad()
    def token_logits(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Per sequence, its (len(ids), num_labels) fp32 head outputs at every token, on the CPU
        of every rank, in input order. Collective, as `score`."""
        lengths = [len(ids) for ids in sequences]
        values = torch.zeros(sum(lengths), self.num_labels, dtype=torch.float32, device=runtime.device())
        if not sequences:
            return []
        mine, batches = self._my_batches(sequences)
        if batches:
            local = token_values(self.model.chunks, batches, self.model.layout)
            starts = torch.tensor(lengths).cumsum(0) - torch.tensor(lengths)
            order = torch.cat([torch.arange(starts[i], starts[i] + lengths[i]) for batch in mine for i in batch])
            values[order.to(values.device)] = local.to(values.device)
        return list(self._summed(values).cpu().split(lengths))

    def _my_batches(self, sequences: list[list[int]]) -> tuple[list[list[int]], list]:
        """This data-parallel rank's micro-batches: their sequence indices, and the batches."""
        layout = self.model.layout
        lengths = [len(ids) for ids in sequences]
        mine = deal(plan(lengths, self.settings.max_tokens, self.settings.batching), lengths, layout.dp)[layout.dp_rank]
        packed = self.settings.batching == "pack"
        return mine, [document_batch([sequences[i] for i in batch], self._pad_id, packed=packed) for batch in mine]

    def _summed(self, values: torch.Tensor) -> torch.Tensor:
        """Every replica's rows (zeros where another one computed them) added up."""
        if self.model.layout.dp > 1:
            dist.all_reduce(values, group=self.model.layout.groups.dp)
        return values

    def normalized(self, rewards: torch.Tensor) -> torch.Tensor | None:
        """Rewards standardised by the model's stored eval-set statistics; None without them."""
        normalization = self.model.normalization
        return None if normalization is None else normalization.apply(rewards)
