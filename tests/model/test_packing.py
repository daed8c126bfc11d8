"""Sequence packing: several documents share a row and score exactly as alone.

The mask helpers are checked against plain loops; the model is checked by scoring
the same documents one per row, packed several per row, and all in one row, on the
local spec (dense block-diagonal mask) and on the packed `thd` path the TE spec
takes, with TE's kernel stood in for by a plain-torch reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

import megatron_rm  # noqa: F401  (its warning filters apply before megatron-core's import-time notices)
from megatron_rm.config import ParallelConfig, padded_vocab_size
from megatron_rm.data import load_tokenizer
from megatron_rm.model import RewardModel, build_reward_model, transformer_config
from megatron_rm.model.inputs import (
    causal_padding_mask,
    document_ends,
    packed_seq_params,
    position_ids,
)
from megatron_rm.model.layer_spec import takes_packed_sequences
from tests.conftest import tiny_model_config

MASKS = {
    "packed, trailing padding": [[1, 1, 2, 2, 2, 3, 0, 0]],
    "packed, leading padding": [[0, 0, 1, 2, 2, 3, 3, 3]],
    "one-token documents": [[1, 2, 3, 4, 0], [1, 1, 1, 1, 2]],
    "ordinary rows": [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]],
}
DOCUMENT_LENGTHS = [5, 9, 3, 12, 7, 4, 6]
# Row layouts of the same documents: one per row, 3 + 4 per row, all in one row.
LAYOUTS = {"one per row": [[d] for d in range(7)], "two rows": [[0, 1, 2], [3, 4, 5, 6]],
           "one row": [list(range(7))]}


def _runs(row: list[int]) -> list[tuple[int, int, int]]:
    """(start, end exclusive, value) of every maximal run of one value."""
    runs, start = [], 0
    for i in range(1, len(row) + 1):
        if i == len(row) or row[i] != row[start]:
            runs.append((start, i, row[start]))
            start = i
    return runs


def _document_of(row: list[int]) -> list[int | None]:
    """Each position's document (its run's start), None on padding."""
    document = [None] * len(row)
    for start, end, value in _runs(row):
        for i in range(start, end):
            document[i] = start if value else None
    return document


@pytest.mark.parametrize("name", list(MASKS))
def test_mask_positions_and_ends_match_a_loop(name):
    mask = torch.tensor(MASKS[name])
    blocked, positions = causal_padding_mask(mask), position_ids(mask)
    expected_ends = []
    for r, row in enumerate(MASKS[name]):
        document = _document_of(row)
        for q in range(len(row)):
            for k in range(len(row)):
                same_document = document[k] is not None and document[k] == document[q]
                allowed = q == k or (same_document and k <= q)
                assert blocked[r, 0, q, k].item() == (not allowed), (name, r, q, k)
            assert positions[r, q].item() == (q - document[q] if document[q] is not None else 0)
        expected_ends += [(r, end - 1) for _, end, value in _runs(row) if value]
    rows, cols = document_ends(mask)
    assert list(zip(rows.tolist(), cols.tolist())) == expected_ends
    assert rows.dtype == cols.dtype == torch.int64


def test_positions_of_real_tokens_are_unchanged_on_ordinary_rows():
    mask = torch.tensor(MASKS["ordinary rows"])
    before = (mask.cumsum(-1) - 1).clamp(min=0)  # the formula for 0/1 rows before packing
    assert torch.equal(position_ids(mask)[mask == 1], before[mask == 1])


@pytest.mark.parametrize("mask, cu_seqlens, max_seqlen", [
    ([[1, 1, 2, 2, 2, 3, 0, 0]], [0, 2, 5, 6, 8], 3),
    ([[0, 0, 1, 2, 2, 2, 2, 0]], [0, 2, 3, 7, 8], 4),
    ([[1, 1, 1, 1]], [0, 4], 4),
    ([[1, 1, 0], [0, 1, 1]], [0, 2, 3, 4, 6], 2),  # rows end to end; each row starts a segment
])
def test_packed_seq_params_cut_at_every_document_and_padding_run(mask, cu_seqlens, max_seqlen):
    params = packed_seq_params(torch.tensor(mask))
    assert params.qkv_format == "thd"
    for cu in (params.cu_seqlens_q, params.cu_seqlens_kv):
        assert cu.dtype == torch.int32 and cu.tolist() == cu_seqlens
    assert params.max_seqlen_q == params.max_seqlen_kv == max_seqlen
    assert isinstance(params.max_seqlen_q, int)


class _ThdReferenceAttention(MegatronModule):
    """TE's `thd` contract in plain torch: causal attention inside each cu_seqlens segment."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, **_):
        super().__init__(config)
        assert attn_mask_type == AttnMaskType.padding_causal  # what TE requires for thd

    def forward(self, query, key, value, attention_mask, attn_mask_type, attention_bias=None,
                packed_seq_params=None):
        assert attention_mask is None and packed_seq_params.qkv_format == "thd"
        cu_seqlens = packed_seq_params.cu_seqlens_q
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        assert cu_seqlens[-1] == query.shape[0] and max(lengths) == packed_seq_params.max_seqlen_q
        groups = query.shape[1] // key.shape[1]  # (tokens, heads, head_dim); grouped-query KV
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        segments = [
            F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                           is_causal=True).transpose(0, 1)
            for q, k, v in zip(query.split(lengths), key.split(lengths), value.split(lengths))
        ]
        return torch.cat(segments).flatten(1)


def _config(position_embedding_type):
    cfg = tiny_model_config()
    cfg.position_embedding_type = position_embedding_type
    return cfg, len(load_tokenizer(cfg.tokenizer))


def _dense_model(position_embedding_type):
    cfg, vocab = _config(position_embedding_type)
    torch.manual_seed(0)
    return build_reward_model(cfg, ParallelConfig(), vocab).eval()


def _thd_model(position_embedding_type, weights_from):
    """The reward model on the TE spec's packed path, with the reference kernel above."""
    cfg, vocab = _config(position_embedding_type)
    spec = get_gpt_layer_local_spec(normalization=cfg.normalization)
    spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.padding_causal
    spec.submodules.self_attention.submodules.core_attention = _ThdReferenceAttention
    assert takes_packed_sequences(spec)
    model = RewardModel(
        transformer_config(cfg, ParallelConfig()), spec, padded_vocab_size(vocab, cfg),
        cfg.max_sequence_length, position_embedding_type=position_embedding_type,
    )
    model.load_state_dict(weights_from.state_dict())
    return model.eval()


def _documents(vocab: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(0, vocab, (n,), generator=generator) for n in DOCUMENT_LENGTHS]


def _layout(documents, rows: list[list[int]], leading_padding=0, trailing_padding=3):
    """(input_ids, attention_mask) with the given documents back to back in each row."""
    longest = max(sum(len(documents[d]) for d in row) for row in rows)
    width = leading_padding + longest + trailing_padding
    ids = torch.zeros(len(rows), width, dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for r, row in enumerate(rows):
        at = leading_padding
        for number, d in enumerate(row, start=1):
            ids[r, at : at + len(documents[d])] = documents[d]
            mask[r, at : at + len(documents[d])] = number
            at += len(documents[d])
    return ids, mask


def _rewards(model, ids, mask):
    return model(ids, position_ids(mask), mask)


def _max_relative_difference(a, b):
    return ((a - b).abs() / b.abs()).max().item()


@pytest.fixture(scope="module", params=["rope", "learned_absolute"])
def models(request, single_rank):
    dense = _dense_model(request.param)
    _, vocab = _config(request.param)
    return {"dense": dense, "thd": _thd_model(request.param, dense), "documents": _documents(vocab)}


@pytest.mark.parametrize("path", ["dense", "thd"])
def test_packed_rows_score_each_document_as_alone(models, path):
    model = models[path]
    documents = models["documents"]
    with torch.no_grad():
        alone = _rewards(models["dense"], *_layout(documents, LAYOUTS["one per row"]))
        assert alone.shape == (len(documents), 1) and alone.std() > 0
        layouts = [_layout(documents, rows) for rows in LAYOUTS.values()]
        layouts.append(
            _layout(documents, LAYOUTS["one row"], leading_padding=4, trailing_padding=0))
        for ids, mask in layouts:
            rewards = _rewards(model, ids, mask)
            assert _max_relative_difference(rewards, alone) < 1e-5, (path, mask.shape)


@pytest.mark.parametrize("path", ["dense", "thd"])
def test_packed_and_unpacked_give_the_same_head_gradient(models, path):
    model = models[path]
    documents = models["documents"]
    gradients = {}
    for name in ("one per row", "two rows"):
        model.zero_grad()
        _rewards(model, *_layout(documents, LAYOUTS[name])).sum().backward()
        gradients[name] = model.reward_head.weight.grad.clone()
    # Relative to the gradient's scale: an entry that sums to nearly 0 has no meaningful relative error.
    difference = (gradients["two rows"] - gradients["one per row"]).abs().max()
    assert difference / gradients["one per row"].abs().max() < 1e-5
    model.zero_grad()


@pytest.mark.parametrize("path", ["dense", "thd"])
def test_documents_never_see_each_other(models, path):
    model = models[path]
    documents = models["documents"]
    changed = list(documents)
    changed[0] = documents[0].flip(0)
    with torch.no_grad():
        before = _rewards(model, *_layout(documents, LAYOUTS["one row"]))
        after = _rewards(model, *_layout(changed, LAYOUTS["one row"]))
    assert before[0] != after[0]  # the changed document itself does move
    assert torch.equal(before[1:], after[1:])
