"""Training micro-batches that keep every group whole and waste little on padding.

A group (a pair, a K-wise ranking, or a single response) is the unit of
sampling: all its documents go into one micro-batch on one data-parallel rank.
Documents are laid out group after group, best first, and the model returns one
reward per document in that order; `comparisons` says which rewards to compare.

Two layouts:
- padded (`data.batching=bucket`): one document per row, right-padded to the
  micro-batch's own longest row rounded up to `pad_to_multiple_of`. The sampler
  puts groups of similar length together, so little is padding.
- packed (`data.batching=pack`): a micro-batch is one row holding its groups'
  documents back to back; `attention_mask` numbers them 1, 2, ... so attention
  stays inside each document (see megatron_rm.model.inputs).

The tensors themselves come from `megatron_rm.data.documents`, which lays out
any documents alike; this module decides which groups share a micro-batch and
what to compare.
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from itertools import combinations

import numpy as np
import torch

from megatron_rm.data.documents import Batch, document_batch
from megatron_rm.data.store import GroupStore


def collate(store: GroupStore, groups, pad_id: int, *, packed: bool, pad_to_multiple_of: int = 1) -> Batch:
    """One micro-batch of `groups` (positions in `store`): their documents laid out
    by `document_batch`, with the pairs to compare, margins, labels, group sizes and
    (when the store records them) each document's response tokens and per-token targets.
    A group of one document (a single-response row) adds no comparison."""
    documents, comparisons, margins, labels, group_sizes = [], [], [], [], []
    prompt_lengths = [] if store.has_prompt_lengths() else None
    targets = [] if store.has_token_targets() else None
    for group in groups:
        docs = store.documents(group)
        if prompt_lengths is not None:
            prompt_lengths.extend(store.prompt_lengths(group))
        if targets is not None:
            targets.extend(store.token_targets(group))
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
    batch = document_batch(documents, pad_id, packed=packed, pad_to_multiple_of=pad_to_multiple_of,
                           prompt_lengths=prompt_lengths, token_targets=targets)
    return replace(
        batch,
        comparisons=torch.tensor(comparisons, dtype=torch.int64).reshape(-1, 2),
        margins=torch.tensor(margins, dtype=torch.float32),
        labels=torch.from_numpy(np.concatenate(labels)) if labels else None,
        group_sizes=torch.tensor(group_sizes, dtype=torch.int64),
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
