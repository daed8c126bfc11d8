"""Micro-batches for forward-only work (scoring, generation, the judge): documents grouped by
length under a token budget, then dealt to data-parallel ranks.

Every rank computes the same plan from the same lengths, so pipeline stages agree on their
micro-batches without exchanging anything, and data-parallel replicas split the work.
"""

from __future__ import annotations

import heapq

import numpy as np

BATCHINGS = ("bucket", "pack")
MIN_ROW_FILL = 0.75
"""A document joins a bucket only if it fills this much of the bucket's width: with a large
token budget, one bucket would otherwise pad short documents to a long one's width."""


def plan(lengths, max_tokens: int, batching: str = "bucket") -> list[list[int]]:
    """Document indices of each micro-batch, longest documents first.

    `bucket`: one document per row, rows of similar length together; a micro-batch's cost is
    rows x its longest row, padding included, and no row is shorter than MIN_ROW_FILL of the
    longest. `pack`: documents back to back in one row; its cost is the tokens it holds. Either
    way a micro-batch costs at most `max_tokens`, except a single document longer than that,
    which goes alone.
    """
    if batching not in BATCHINGS:
        raise ValueError(f"batching {batching!r} must be one of {', '.join(BATCHINGS)}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    lengths = np.asarray(lengths, dtype=np.int64)
    # Longest first (stable, so equal lengths keep input order): a bucket's first row is its widest.
    order = np.argsort(-lengths, kind="stable")
    batches, current, width, tokens = [], [], 0, 0
    for index in order.tolist():
        length = int(lengths[index])
        if batching == "bucket":
            cost = (len(current) + 1) * max(width, length)
            too_short = length < MIN_ROW_FILL * width
        else:
            cost, too_short = tokens + length, False
        if current and (cost > max_tokens or too_short):
            batches.append(current)
            current, width, tokens = [], 0, 0
        current.append(index)
        width, tokens = max(width, length), tokens + length
    if current:
        batches.append(current)
    return batches


def deal(batches: list[list[int]], lengths, ranks: int) -> list[list[list[int]]]:
    """`batches` split over `ranks` data-parallel replicas, balancing padded tokens: each
    micro-batch, largest first, goes to the least loaded rank (ties: the lowest rank)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    costs = [len(batch) * int(lengths[batch].max()) for batch in batches]
    shares: list[list[list[int]]] = [[] for _ in range(ranks)]
    loads = [(0, rank) for rank in range(ranks)]
    for index in sorted(range(len(batches)), key=lambda i: -costs[i]):
        load, rank = heapq.heappop(loads)
        shares[rank].append(batches[index])
        heapq.heappush(loads, (load + costs[index], rank))
    return shares


def padding_efficiency(batches: list[list[int]], lengths, batching: str = "bucket") -> float:
    """Real tokens / token slots the model processes."""
    lengths = np.asarray(lengths, dtype=np.int64)
    real = sum(int(lengths[batch].sum()) for batch in batches)
    if batching == "pack":
        return 1.0 if real else 0.0
    slots = sum(len(batch) * int(lengths[batch].max()) for batch in batches)
    return real / slots if slots else 0.0
