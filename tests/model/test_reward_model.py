"""The reward model on one rank: what it allocates, where it reads, padding invariance."""

from __future__ import annotations

import torch

from megatron_rm.config import ParallelConfig, padded_vocab_size
from megatron_rm.data import load_tokenizer
from megatron_rm.data.documents import Batch
from megatron_rm.model import build_reward_model
from megatron_rm.model.inputs import causal_padding_mask, document_ends, position_ids
from megatron_rm.scoring.rewards import document_rewards
from tests.conftest import tiny_model_config


def _model(num_labels=1, head_bias=False):
    cfg = tiny_model_config()
    cfg.num_labels, cfg.head_bias = num_labels, head_bias
    vocab = len(load_tokenizer(cfg.tokenizer))
    torch.manual_seed(0)
    return build_reward_model(cfg, ParallelConfig(), vocab).eval(), cfg, vocab


def _batch(rows: list[list[int]], side: str, pad: int = 0) -> Batch:
    width = max(map(len, rows)) + 3  # extra padding even on the longest row
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    # Scoring reads every row; no comparisons are needed.
    return Batch(ids, mask, torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0))


def test_document_ends_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    rows, cols = document_ends(mask)
    assert rows.tolist() == [0, 1, 2, 3] and cols.tolist() == [2, 4, 4, 0]
    assert position_ids(mask)[1].tolist() == [0, 0, 0, 1, 2]


def test_causal_padding_mask_blocks_future_and_padding():
    mask = causal_padding_mask(torch.tensor([[0, 1, 1]]))[0, 0]
    # A padding query sees only itself, so no softmax row is fully masked.
    expected = torch.tensor([[False, True, True], [True, False, True], [True, False, False]])
    assert torch.equal(mask, expected)


def test_model_has_no_vocab_output_layer(single_rank):
    model, cfg, vocab = _model()
    assert not hasattr(model, "output_layer")
    big = [name for name, p in model.named_parameters() if padded_vocab_size(vocab, cfg) in p.shape]
    assert big == ["embedding.word_embeddings.weight"]
    assert model.reward_head.weight.shape == (1, cfg.hidden_size)
    assert model.reward_head.weight.dtype == torch.float32


def test_padding_never_changes_a_reward(single_rank):
    model, _, _ = _model()
    rows = [[5, 9, 12, 40, 7, 1], [20, 21, 1], [33, 34, 35, 36, 37, 38, 39, 1], [8, 1]]
    alone = torch.cat([document_rewards([model], [_batch([row], "right")], single_rank) for row in rows])
    right = document_rewards([model], [_batch(rows, "right")], single_rank)
    left = document_rewards([model], [_batch(rows, "left")], single_rank)
    torch.testing.assert_close(right, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(left, alone, rtol=1e-5, atol=1e-6)
    # The reward must depend on the real tokens: a changed token changes it.
    changed = document_rewards([model], [_batch([[5, 9, 12, 41, 7, 1]], "right")], single_rank)
    assert not torch.allclose(changed, alone[:1])


def test_multi_attribute_head_with_bias(single_rank):
    model, _, _ = _model(num_labels=3, head_bias=True)
    with torch.no_grad():
        model.reward_head.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    rewards = document_rewards([model], [_batch([[5, 9, 1], [7, 1]], "right")], single_rank)
    assert rewards.shape == (2, 3) and rewards.dtype == torch.float32
    with torch.no_grad():
        model.reward_head.bias.zero_()
    unbiased = document_rewards([model], [_batch([[5, 9, 1], [7, 1]], "right")], single_rank)
    torch.testing.assert_close(rewards - unbiased, torch.tensor([[1.0, -2.0, 0.5]] * 2))
