"""Scoring micro-batches: every document once, under the token budget, balanced over replicas."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_rm.core.micro_batches import deal, padding_efficiency, plan


def long_tailed(count: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(4.0, 0.9, count), 4, 1024).astype(int).tolist()


@pytest.mark.parametrize("batching", ["bucket", "pack"])
def test_every_document_once_within_the_budget(batching):
    lengths = long_tailed(500) + [3000]  # one longer than the budget goes alone
    batches = plan(lengths, 2048, batching)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        widths = [lengths[i] for i in batch]
        cost = len(batch) * max(widths) if batching == "bucket" else sum(widths)
        assert cost <= 2048 or len(batch) == 1


def test_bucketing_wastes_less_padding_than_input_order():
    lengths = long_tailed(512)
    in_order = [list(range(start, start + 16)) for start in range(0, len(lengths), 16)]
    for budget in (4096, 65536):
        assert padding_efficiency(plan(lengths, budget), lengths) > 0.85 > 0.5 > padding_efficiency(in_order, lengths)
    assert padding_efficiency(plan(lengths, 4096, "pack"), lengths, "pack") == 1.0


def test_replicas_share_the_batches_with_balanced_tokens():
    lengths = long_tailed(400, seed=1)
    batches = plan(lengths, 1024)
    shares = deal(batches, lengths, 3)
    assert sorted(map(tuple, (b for share in shares for b in share))) == sorted(map(tuple, batches))
    loads = [sum(len(b) * max(lengths[i] for i in b) for b in share) for share in shares]
    assert max(loads) - min(loads) <= 1024
    assert deal(batches, lengths, 1) == [sorted(batches, key=lambda b: -len(b) * max(lengths[i] for i in b))]
