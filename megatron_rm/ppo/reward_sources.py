"""A run's reward: reward functions and a reward model (in the job or behind a server), alone or
mixed, one score per response.

- Functions (`reward.functions`) run on each data-parallel replica's first rank over the
  replica's responses, called as TRL calls them (`reward_functions.RewardFunction`); the
  answer, or the error naming the function and row, is shared with the replica's other ranks
  and every rank stops together on an error (`rewards.agree`).
- The reward model's score is `rewards.ModelRewards`' or `rewards.ServerRewards`' (normalised
  when reward.normalize is set).
- `reward.combine=sum` gives the weighted sum of the sources; a source's None (NaN) counts as
  absent, as in TRL's nansum, and a response without any reward stays NaN (no reward: see
  `estimators`). `normalize_then_sum` first standardises each source over the step's
  responses (every data-parallel replica's; population std), so that sources on different
  scales weigh as their weights say.

Each source's mean over the step is logged under `reward_<name>` (the function as named, or
`model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_rm import runtime
from megatron_rm.data import Batch
from megatron_rm.errors import DataError
from megatron_rm.ppo.rewards import agree
from megatron_rm.reward_functions.function import RewardFunction
from megatron_rm.runtime.parallel import Layout
from megatron_rm.runtime.sums import moments

COMBINE_MODES = ("sum", "normalize_then_sum")
MODEL_SOURCE = "model"


@dataclass
class ResponseRows:
    """What the reward functions read of a replica's responses, in one order."""

    prompts: list
    """Each response's prompt as its row gives it: a string, or a list of messages."""
    completions: list
    """Each response's text (a list with one assistant message when the prompt is messages, as TRL)."""
    columns: dict[str, list]
    """Every other field of the prompt rows, one value per response (None where a row lacks it)."""
    locations: list[str]
    """Each response's prompt row, `file:line`."""


def response_rows(rows: Sequence[dict], locations: Sequence[str], texts: Sequence[str]) -> ResponseRows:
    """The functions' view of responses `texts` to prompt rows `rows` (one row per response)."""
    prompts = [row["prompt"] if "prompt" in row else row.get("messages") for row in rows]
    completions = [[{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
                   for prompt, text in zip(prompts, texts)]
    names = dict.fromkeys(name for row in rows for name in row if name != "prompt")
    columns = {name: [row.get(name) for row in rows] for name in names}
    return ResponseRows(prompts, completions, columns, list(locations))


@dataclass
class Rewards:
    """Per micro-batch (rows,) tensors on this rank."""

    combined: list[torch.Tensor]
    """The reward the estimator takes (NaN: none)."""
    raw: list[torch.Tensor]
    """The same mix with the reward model's raw score (before reward.normalize)."""
    sources: dict[str, list[torch.Tensor]]
    """Each source's reward as it enters the mix."""


class RewardSources:
    def __init__(self, model: Callable | None, functions: list[RewardFunction], weights: Sequence[float] | None,
                 combine: str, layout: Layout):
        """`model(batches, texts) -> (raw, normalised)` (`ModelRewards` or a `ReplicasAgree`
        around `ServerRewards`) or None; `weights`: one per function, then the model's."""
        self.model, self.functions, self.combine, self.layout = model, functions, combine, layout
        count = len(functions) + (model is not None)
        self.weights = list(weights) if weights is not None else [1.0] * count
        self.leader = dist.get_process_group_ranks(layout.groups.mp)[0]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.functions] + ([MODEL_SOURCE] if self.model is not None else [])

    def __call__(self, batches: list[Batch], texts: Callable[[], list[list[str]]],
                 rows: Callable[[], ResponseRows]) -> Rewards:
        """The rewards of a replica's micro-batches `batches`: `texts()` gives each micro-batch's
        texts for the reward model, `rows()` the responses in micro-batch order for the functions
        (each called on the replica's first rank only)."""
        sizes = [len(batch.input_ids) for batch in batches]
        sources, raw_sources = [], []
        if self.functions:
            flat = agree(lambda: self._call_functions(rows), (DataError,))
            for values in flat:
                per_batch = list(torch.tensor(values, dtype=torch.float32, device=runtime.device()).split(sizes))
                sources.append(per_batch)
                raw_sources.append(per_batch)
        if self.model is not None:
            raw, normalised = self.model(batches, texts)
            sources.append(normalised)
            raw_sources.append(raw)
        return Rewards(self._mix(sources, sizes), self._mix(raw_sources, sizes), dict(zip(self.names, sources)))

    def _call_functions(self, rows: Callable[[], ResponseRows]) -> list[list[float]]:
        """Each function's rewards (NaN for None), computed on the replica's first rank."""
        answer: list = [None]
        if dist.get_rank() == self.leader:
            try:
                got = rows()
                answer = [("ok", [[math.nan if r is None else r for r in
                                   f(got.prompts, got.completions, got.columns, got.locations)]
                                  for f in self.functions])]
            except DataError as error:
                answer = [("error", str(error))]
        dist.broadcast_object_list(answer, src=self.leader, group=self.layout.groups.mp)
        kind, value = answer[0]
        if kind == "error":
            raise DataError(value)
        return value

    def _mix(self, sources: list[list[torch.Tensor]], sizes: list[int]) -> list[torch.Tensor]:
        if len(sources) == 1 and self.weights[0] == 1.0 and self.combine == "sum":
            return sources[0]  # one source as it is: a reward model's NaN-free score stays bit for bit
        flat = [torch.cat(source).double() for source in sources]
        if self.combine == "normalize_then_sum":
            flat = [self._standardised(values) for values in flat]
        stacked = torch.stack([weight * values for weight, values in zip(self.weights, flat)])
        present = ~torch.isnan(stacked)
        mixed = torch.where(present, stacked, 0.0).sum(0)
        mixed = torch.where(present.any(0), mixed, torch.nan).to(torch.float32)
        return list(mixed.split(sizes))

    def _standardised(self, values: torch.Tensor) -> torch.Tensor:
        """`values` less their mean over the step's responses, over their std (NaN kept)."""
        summed = moments([values[~torch.isnan(values)]], self.layout.groups.dp)
        if not summed.count:
            return values
        std = summed.variance ** 0.5
        return (values - summed.mean) / (std if std > 0 else 1.0)

