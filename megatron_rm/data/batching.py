"""Micro-batches that keep every group whole and waste little on padding.

A group (a pair, or a K-wise ranking) is the unit of sampling: all its
documents go into one micro-batch on one data-parallel rank. Documents are laid
out group after group, best first, and the model returns one reward per
document in that order; `comparisons` says which rewards to compare.

Two layouts:
- padded (`data.batching=bucket`): one document per row, right-padded to the
  micro-batch's own longest row rounded up to `pad_to_multiple_of`. The sampler
  puts groups of similar length together, so little is padding.
- packed (`data.batching=pack`): a micro-batch is one row holding its groups'
  documents back to back; `attention_mask` numbers them 1, 2, ... so attention
  stays inside each document (see megatron_rm.model.inputs).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from megatron_rm.data.store import GroupStore


@dataclass
class Batch:
    input_ids: torch.Tensor
    """(rows, seq) token ids."""
    attention_mask: torch.Tensor
    """(rows, seq): 0 on padding, k on the tokens of the row's k-th document."""
    comparisons: torch.Tensor
    """(pairs, 2) document indices (better, worse), documents counted in layout order."""
    margins: torch.Tensor
    """(pairs,) float32 margin each pair must clear; 0 where the data gives none."""
    labels: torch.Tensor | None = None
    """(documents, num_labels) float32 attribute values, NaN where missing."""
    group_sizes: torch.Tensor | None = None
    """(groups,) documents of each group, in layout order (None: not recorded)."""

    @property
    def num_pairs(self) -> int:
        return self.comparisons.shape[0]

    @property
    def num_documents(self) -> int:
        """Documents are numbered 1..n within each row, so a row's largest number is its count."""
        return int(self.attention_mask.max(dim=1).values.sum())

    @property
    def document_lengths(self) -> torch.Tensor:
        """(documents,) tokens of each document, in layout order."""
        rows, numbers = self.attention_mask.shape[0], int(self.attention_mask.max()) + 1
        # One bincount over (row, document number) keys; number 0 is padding.
        row_keys = torch.arange(rows, device=self.attention_mask.device)[:, None] * numbers
        counts = torch.bincount((row_keys + self.attention_mask).flatten(), minlength=rows * numbers)
        counts = counts.reshape(rows, numbers)[:, 1:]
        return counts[counts > 0]

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int((self.attention_mask > 0).sum())

    @property
    def padded_tokens(self) -> int:
        """Token slots the model processes, padding included."""
        return self.attention_mask.numel()

    def to(self, device) -> "Batch":
        def move(tensor):
            return None if tensor is None else tensor.to(device)

        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.comparisons.to(device),
                     self.margins.to(device), move(self.labels), move(self.group_sizes))


def collate(store: GroupStore, groups, pad_id: int, *, packed: bool, pad_to_multiple_of: int = 1) -> Batch:
    """One micro-batch of `groups` (positions in `store`)."""
    documents, comparisons, margins, labels, group_sizes = [], [], [], [], []
    for group in groups:
        docs = store.documents(group)
        first = len(documents)
        group_sizes.append(len(docs))
        documents.extend(docs)
        margin = store.margin(group)
        # Every better/worse pair of a ranking is a comparison (InstructGPT's K-choose-2).
        for better, worse in combinations(range(len(docs)), 2):
            comparisons.append((first + better, first + worse))
            margins.append(0.0 if margin is None else margin)
        group_labels = store.group_labels(group)
        if group_labels is not None:
            labels.append(group_labels)
    lengths = [len(d) for d in documents]
    if packed:
        rows, width = [documents], sum(lengths)
    else:
        rows, width = [[d] for d in documents], max(lengths)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for r, row in enumerate(rows):
        start = 0
        for number, ids in enumerate(row, start=1):
            input_ids[r, start: start + len(ids)] = torch.from_numpy(ids)
            attention_mask[r, start: start + len(ids)] = number
            start += len(ids)
    return Batch(
        input_ids,
        attention_mask,
        torch.tensor(comparisons, dtype=torch.int64).reshape(-1, 2),
        torch.tensor(margins, dtype=torch.float32),
        torch.from_numpy(np.concatenate(labels)) if labels else None,
        torch.tensor(group_sizes, dtype=torch.int64),
    )


def pack_groups(groups: np.ndarray, group_tokens: np.ndarray, capacity: int) -> list[list[int]]:
    """Best-fit decreasing: `groups` into bins of at most `capacity` tokens.

    Each bin becomes one packed micro-batch. Largest groups first, each into the
    fullest bin it still fits (found by bisection, so a whole evaluation set packs
    in n log n). A group larger than `capacity` gets a bin of its own rather than
    being split.
    """
    order = sorted(range(len(groups)), key=lambda i: (-int(group_tokens[i]), i))
    bins: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (free tokens, bin), ascending
    for i in order:
        size = int(group_tokens[i])
        fit = bisect.bisect_left(rooms, (size, -1))
        if fit < len(rooms):
            free, b = rooms.pop(fit)
        else:
            free, b = capacity, len(bins)
            bins.append([])
        bins[b].append(int(groups[i]))
        bisect.insort(rooms, (free - size, b))
    return bins


def split_evenly(groups, size: int) -> list[list[int]]:
    """Consecutive micro-batches of `size` groups (the last may be short)."""
    groups = [int(g) for g in groups]
    return [groups[i: i + size] for i in range(0, len(groups), size)]


def eval_share(longest: np.ndarray, dp: int, dp_rank: int) -> np.ndarray:
    """This rank's evaluation groups: every group exactly once over all ranks.

    Groups are sorted by length before being dealt round-robin, so each rank's
    consecutive groups are of similar length (little padding) and ranks get
    near-equal work.
    """
    by_length = np.argsort(-longest, kind="stable")
    return by_length[dp_rank::dp]
