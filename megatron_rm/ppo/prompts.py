"""The prompts a PPO run samples from, and which of them each step takes.

Every rank reads and encodes the prompt file itself (prompts are small next to the models), in
the data pipeline's formats and with its prompt rules (`generation.batch_job.prompt_rows`: a
chat template with its generation prompt, the length policy); every invalid row is named or
counted. The sampler reads an endless stream of epochs, each a fresh permutation drawn from
(seed, epoch), at a cursor: step s takes the P prompts from its cursor on, so without dynamic
sampling step s takes positions [s * P, (s + 1) * P). With dynamic sampling a step may read
further (`ppo.sampling`); the cursor is checkpointed, so a resumed run takes the same prompts
as an uninterrupted one at any layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_rm.data.rows import ProblemLog
from megatron_rm.data.sources import iter_raw_rows
from megatron_rm.errors import CheckpointError, DataError
from megatron_rm.generation.prompts import prompt_rows


@dataclass
class PromptSet:
    path: str
    ids: list[list[int]]
    fields: list[dict]
    """Each kept row as read (evaluation samples carry every input field; reward functions read them)."""
    locations: list[str]
    """Each kept row's `file:line`."""
    problems: ProblemLog
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def load_prompts(path: str | Path, tokenizer, *, room: int, prompt_policy: str, on_invalid: str,
                 max_new_tokens: int, max_sequence_length: int, limit: int = 0) -> PromptSet:
    """The valid prompts of `path` (the first `limit` rows when > 0); invalid rows stop the run
    (`on_invalid=error`, naming file, line and field) or are counted and left out (`skip`)."""
    raws = list(iter_raw_rows(path))
    if limit:
        raws = raws[:limit]
    rows = prompt_rows(raws, tokenizer, room, prompt_policy, max_new_tokens, max_sequence_length)
    problems = ProblemLog()
    for row in rows:
        if row.problem is not None:
            problems.add(row.problem)
    if problems.total and on_invalid == "error":
        raise DataError(problems.error_message(path))
    kept = [row for row in rows if row.problem is None]
    if not kept:
        raise DataError(f"{path}: no valid prompt among {len(rows)} row(s)"
                        + (f" ({problems.by_reason()})" if problems.total else ""))
    return PromptSet(str(path), [row.sequences[0] for row in kept], [row.fields for row in kept],
                     [row.location for row in kept], problems, truncated=sum(row.truncated for row in kept))


class PromptSampler:
    """Which prompts a step takes; checkpointed as the number of prompts, the step reached and the
    cursor (the stream positions read)."""

    def __init__(self, num_prompts: int, prompts_per_step: int, seed: int):
        self.num_prompts, self.prompts_per_step, self.seed = num_prompts, prompts_per_step, seed
        self.step = 0
        """Steps done (set by the loop before a save)."""
        self.cursor = 0
        """The stream positions the steps done have read (set by the loop after each step)."""
        self._orders: dict[int, list[int]] = {}

    def prompts(self, step: int) -> list[int]:
        """Indices of the prompts of step `step` (0-based) without dynamic sampling, over all
        data-parallel replicas."""
        return self.at(step * self.prompts_per_step, self.prompts_per_step)

    def at(self, position: int, count: int) -> list[int]:
        """Indices of the `count` prompts from stream position `position` on."""
        return [self._order(p // self.num_prompts)[p % self.num_prompts] for p in range(position, position + count)]

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(self.num_prompts, generator=generator).tolist()}
        return self._orders[epoch]

    def state_dict(self) -> dict:
        return {"step": self.step, "cursor": self.cursor, "num_prompts": self.num_prompts,
                "prompts_per_step": self.prompts_per_step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        saved = {key: state[key] for key in ("num_prompts", "prompts_per_step", "seed")}
        mine = {key: getattr(self, key) for key in saved}
        if saved != mine:
            raise CheckpointError(f"the checkpoint's prompt stream {saved} is not this run's {mine}: resuming needs "
                                  "the same prompts file, train.prompts_per_step and train.seed")
        self.step = state["step"]
        # A checkpoint from before the cursor read P prompts a step.
        self.cursor = state.get("cursor", self.step * self.prompts_per_step)
