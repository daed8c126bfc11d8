"""Evaluation micro-batches come in chunks: the same number on every rank, every group once."""

from types import SimpleNamespace

import numpy as np
import pytest

from megatron_rm.config import RMConfig
from megatron_rm.data.store import GroupStore, StoreWriter
from megatron_rm.training import data_setup
from megatron_rm.training.data_setup import MicroBatching, Split, eval_micro_batches


@pytest.mark.parametrize("batching", ["bucket", "pack"])
def test_eval_chunks_cover_every_group_once_in_equal_numbers(tmp_path, monkeypatch, batching):
    monkeypatch.setattr(data_setup, "EVAL_CHUNK_GROUPS", 3)
    writer = StoreWriter(tmp_path / "store", 300)
    lengths = np.random.default_rng(0).integers(2, 20, size=(23, 2))
    for g, (a, b) in enumerate(lengths):
        # The first token names the group, so every document is traceable.
        writer.add([[g, *[7] * a], [g, *[8] * b]], None, None, prompt_key=g)
    writer.finish({})
    split = Split.of(GroupStore(tmp_path / "store"))
    cfg = RMConfig()
    cfg.data.batching, cfg.train.micro_batch_size = batching, 2
    dp = 3
    seen, chunk_counts = [], []
    for rank in range(dp):
        batching = MicroBatching.of(cfg.data, cfg.train.micro_batch_size, pad_id=0)
        chunks = list(eval_micro_batches(split, SimpleNamespace(dp=dp, dp_rank=rank), batching))
        chunk_counts.append(len(chunks))
        for batch in (b for chunk in chunks for b in chunk):
            assert batch.num_pairs == batch.num_documents // 2
            starts = batch.attention_mask != 0
            starts[:, 1:] &= batch.attention_mask[:, 1:] != batch.attention_mask[:, :-1]
            seen += batch.input_ids[starts].tolist()[::2]  # each group's first (chosen) document
    assert chunk_counts == [3, 3, 3]  # ceil(23 / (3 ranks x 3 groups)) on every rank
    assert sorted(seen) == list(range(23))
