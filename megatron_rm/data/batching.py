"""Pair-preserving batches: a pair's chosen and rejected rows share a micro-batch.

A micro-batch of m pairs is 2m rows: the m chosen sequences, then the m rejected
ones in the same order (TRL's layout), right-padded to the micro-batch's own
longest row. Every pair of a global batch lands on exactly one data-parallel rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from megatron_rm.data.preference import PreferencePair
from megatron_rm.data.tokenize import encode
from megatron_rm.errors import DataError


@dataclass(frozen=True)
class TokenizedPair:
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


@dataclass
class PairBatch:
    input_ids: torch.Tensor
    """(2 * num_pairs, seq): chosen rows first, then rejected rows."""
    attention_mask: torch.Tensor
    """(2 * num_pairs, seq): 1 on real tokens, 0 on padding."""
    num_pairs: int

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int(self.attention_mask.sum())

    def to(self, device) -> "PairBatch":
        return PairBatch(self.input_ids.to(device), self.attention_mask.to(device), self.num_pairs)


def tokenize_pairs(
    pairs: list[PreferencePair], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[TokenizedPair], int]:
    """Tokenized pairs, and how many were dropped because a side exceeds `max_length`."""
    kept, dropped = [], 0
    for pair in pairs:
        chosen = encode(tokenizer, pair.prompt, pair.chosen)
        rejected = encode(tokenizer, pair.prompt, pair.rejected)
        if max(len(chosen), len(rejected)) > max_length:
            dropped += 1
        else:
            kept.append(TokenizedPair(tuple(chosen), tuple(rejected)))
    return kept, dropped


def collate(pairs: list[TokenizedPair], pad_id: int, pad_to_multiple_of: int = 1) -> PairBatch:
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    longest = max(len(row) for row in rows)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        attention_mask[i, : len(row)] = 1
    return PairBatch(input_ids, attention_mask, len(pairs))


class PairSampler:
    """Which pairs each step trains on; a function of (seed, step) only.

    Each epoch is a fresh permutation seeded by (seed, epoch), cut into global
    batches; the `num_pairs % global_batch_size` pairs at an epoch's tail wait for
    the next epoch's shuffle. Step k always sees the same pairs, whatever the
    data-parallel size, so a run can resume from its step count alone.
    """

    def __init__(self, num_pairs: int, global_batch_size: int, seed: int):
        if num_pairs < global_batch_size:
            raise DataError(
                f"the training set has {num_pairs} pairs, fewer than "
                f"train.global_batch_size={global_batch_size}"
            )
        self.num_pairs = num_pairs
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.steps_per_epoch = num_pairs // global_batch_size

    def global_batch(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.steps_per_epoch)
        # (seed, epoch) -> an independent stream; `seed + epoch` would make seed s + 1
        # replay seed s one epoch later.
        epoch_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        order = torch.randperm(self.num_pairs, generator=torch.Generator().manual_seed(epoch_seed))
        start = index * self.global_batch_size
        return order[start : start + self.global_batch_size].tolist()

    def micro_batches(self, step: int, dp: int, dp_rank: int, micro_batch_size: int) -> list[list[int]]:
        """This data-parallel rank's contiguous share of the step, cut into micro-batches."""
        batch = self.global_batch(step)
        share = len(batch) // dp
        mine = batch[dp_rank * share : (dp_rank + 1) * share]
        return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def eval_micro_batches(num_pairs: int, dp: int, dp_rank: int, micro_batch_size: int) -> list[list[int]]:
    """Every evaluation pair exactly once: rank r takes pairs r, r + dp, ...; the last
    micro-batch of a rank may be short, and a rank may have none."""
    mine = list(range(dp_rank, num_pairs, dp))
    return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]
