"""Tests for tokenizing, collating and sampling preference pairs (megatron_rm.data.batching/tokenize)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from megatron_rm.data.batching import (
    PairBatch,
    PairSampler,
    TokenizedPair,
    collate,
    eval_micro_batches,
    tokenize_pairs,
)
from megatron_rm.data.preference import PreferencePair
from megatron_rm.data.tokenize import encode, load_tokenizer, pad_id
from megatron_rm.errors import DataError

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "examples" / "demo" / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER_DIR)


# --- tokenize -----------------------------------------------------------------------------------

def test_load_tokenizer_missing_folder(tmp_path):
    missing = tmp_path / "no_tokenizer"
    with pytest.raises(DataError) as info:
        load_tokenizer(missing)
    assert str(missing) in str(info.value)


def test_encode_appends_exactly_one_eos(tokenizer):
    ids = encode(tokenizer, "User: hi\nAssistant:", " hello there")
    plain = tokenizer("User: hi\nAssistant: hello there", add_special_tokens=True)["input_ids"]
    assert plain[-1] != tokenizer.eos_token_id
    assert ids == plain + [tokenizer.eos_token_id]
    assert ids.count(tokenizer.eos_token_id) == 1


def test_encode_does_not_double_eos_already_in_text(tokenizer):
    eos = tokenizer.eos_token
    assert eos == "</s>"
    with_eos = encode(tokenizer, "User: hi\nAssistant:", " hello there" + eos)
    without = encode(tokenizer, "User: hi\nAssistant:", " hello there")
    assert with_eos == without
    assert with_eos[-1] == tokenizer.eos_token_id
    assert with_eos[-2] != tokenizer.eos_token_id


def test_encode_collapses_several_trailing_eos_into_one(tokenizer):
    eos = tokenizer.eos_token
    assert encode(tokenizer, "User: hi\nAssistant:", " x" + eos + eos) == encode(
        tokenizer, "User: hi\nAssistant:", " x")


def test_encode_empty_text_is_just_eos(tokenizer):
    assert encode(tokenizer, "", "") == tokenizer("", add_special_tokens=True)["input_ids"] + [
        tokenizer.eos_token_id]


def test_pad_id_uses_pad_token(tokenizer):
    assert tokenizer.pad_token == "<pad>"
    assert pad_id(tokenizer) == tokenizer.convert_tokens_to_ids("<pad>")


def test_pad_id_falls_back_to_eos():
    stub = SimpleNamespace(pad_token_id=None, eos_token_id=7)
    assert pad_id(stub) == 7


def test_tokenize_pairs_drops_and_counts_long_pairs(tokenizer):
    prompt = "User: Name a fruit.\nAssistant:"

    def length(response):
        return len(tokenizer(prompt + response, add_special_tokens=True)["input_ids"]) + 1

    short, long = " fig", " a very long answer about many different fruits and vegetables"
    assert length(short) < length(long)
    max_length = length(long) - 1
    pairs = [
        PreferencePair(prompt, short, short + "!"),
        PreferencePair(prompt, long, short),   # chosen too long
        PreferencePair(prompt, short, long),   # rejected too long
        PreferencePair(prompt, " plum", " pear"),
    ]
    kept, dropped = tokenize_pairs(pairs, tokenizer, max_length)
    assert dropped == 2
    assert kept == [
        TokenizedPair(tuple(encode(tokenizer, prompt, short)), tuple(encode(tokenizer, prompt, short + "!"))),
        TokenizedPair(tuple(encode(tokenizer, prompt, " plum")), tuple(encode(tokenizer, prompt, " pear"))),
    ]
    assert all(max(len(p.chosen), len(p.rejected)) <= max_length for p in kept)


def test_tokenize_pairs_keeps_pair_exactly_at_max_length(tokenizer):
    pair = PreferencePair("Q:", " yes", " no")
    longest = max(len(encode(tokenizer, pair.prompt, pair.chosen)), len(encode(tokenizer, pair.prompt, pair.rejected)))
    kept, dropped = tokenize_pairs([pair], tokenizer, longest)
    assert (len(kept), dropped) == (1, 0)
    kept, dropped = tokenize_pairs([pair], tokenizer, longest - 1)
    assert (len(kept), dropped) == (0, 1)


# --- collate ------------------------------------------------------------------------------------

PAIRS = [
    TokenizedPair((11, 12, 13), (21, 22)),
    TokenizedPair((31,), (41, 42, 43, 44, 45)),
    TokenizedPair((51, 52), (61, 62, 63)),
]
PAD = 0


def test_collate_puts_chosen_rows_first_then_rejected_in_order():
    batch = collate(PAIRS, PAD)
    m = len(PAIRS)
    assert batch.num_pairs == m
    assert batch.input_ids.shape[0] == 2 * m
    for i, pair in enumerate(PAIRS):
        assert batch.input_ids[i, : len(pair.chosen)].tolist() == list(pair.chosen)
        assert batch.input_ids[m + i, : len(pair.rejected)].tolist() == list(pair.rejected)


def test_collate_right_pads_to_longest_row_without_multiple():
    batch = collate(PAIRS, pad_id=-1, pad_to_multiple_of=1)
    assert batch.input_ids.shape == (6, 5)
    assert batch.input_ids[0].tolist() == [11, 12, 13, -1, -1]
    assert batch.input_ids[1].tolist() == [31, -1, -1, -1, -1]
    assert batch.input_ids[4].tolist() == [41, 42, 43, 44, 45]


@pytest.mark.parametrize("multiple, width", [(1, 5), (4, 8), (5, 5), (8, 8), (16, 16)])
def test_collate_width_rounds_up_to_multiple(multiple, width):
    batch = collate(PAIRS, PAD, pad_to_multiple_of=multiple)
    assert batch.input_ids.shape == (6, width)
    assert batch.attention_mask.shape == (6, width)


def test_collate_attention_mask_marks_real_tokens_and_counts_them():
    batch = collate(PAIRS, PAD, pad_to_multiple_of=8)
    rows = [p.chosen for p in PAIRS] + [p.rejected for p in PAIRS]
    for i, row in enumerate(rows):
        expected = [1] * len(row) + [0] * (8 - len(row))
        assert batch.attention_mask[i].tolist() == expected
        assert batch.input_ids[i, len(row):].eq(PAD).all()
    assert batch.tokens == sum(len(row) for row in rows)
    assert batch.input_ids.dtype == torch.int64
    assert batch.attention_mask.dtype == torch.int64


def test_pair_batch_to_keeps_contents():
    batch = collate(PAIRS, PAD, pad_to_multiple_of=4)
    moved = batch.to("cpu")
    assert isinstance(moved, PairBatch)
    assert torch.equal(moved.input_ids, batch.input_ids)
    assert torch.equal(moved.attention_mask, batch.attention_mask)
    assert moved.num_pairs == batch.num_pairs


def test_collate_of_tokenized_demo_pairs(tokenizer):
    pairs = [PreferencePair("Q: colour?\nA:", " teal", " 7"), PreferencePair("Q: two?\nA:", " 2", " three")]
    kept, _ = tokenize_pairs(pairs, tokenizer, max_length=64)
    batch = collate(kept, pad_id(tokenizer), pad_to_multiple_of=8)
    lengths = batch.attention_mask.sum(dim=1).tolist()
    # the last real token of every row is EOS, where the reward is read
    for i, n in enumerate(lengths):
        assert batch.input_ids[i, n - 1].item() == tokenizer.eos_token_id


# --- PairSampler ------------------------------------------------------------------------------------

def test_sampler_is_deterministic_for_a_seed():
    a, b = PairSampler(100, 16, seed=5), PairSampler(100, 16, seed=5)
    assert [a.global_batch(s) for s in range(12)] == [b.global_batch(s) for s in range(12)]


def test_sampler_differs_for_another_seed():
    a, b = PairSampler(100, 16, seed=5), PairSampler(100, 16, seed=6)
    assert a.global_batch(0) != b.global_batch(0)


def test_neighbouring_seeds_do_not_replay_each_other_an_epoch_later():
    one_epoch = 100 // 10
    later = PairSampler(100, 10, seed=1).global_batch(one_epoch)
    assert later != PairSampler(100, 10, seed=2).global_batch(0)


def test_global_batch_has_right_size_and_no_duplicates():
    sampler = PairSampler(100, 16, seed=0)
    for step in range(20):
        batch = sampler.global_batch(step)
        assert len(batch) == 16
        assert len(set(batch)) == 16
        assert all(0 <= i < 100 for i in batch)


def test_one_epochs_batches_are_disjoint():
    sampler = PairSampler(100, 16, seed=0)
    steps_per_epoch = 100 // 16
    assert sampler.steps_per_epoch == steps_per_epoch
    seen = [i for step in range(steps_per_epoch) for i in sampler.global_batch(step)]
    assert len(seen) == len(set(seen)) == steps_per_epoch * 16


def test_next_epoch_reshuffles():
    sampler = PairSampler(100, 16, seed=0)
    first = [sampler.global_batch(s) for s in range(sampler.steps_per_epoch)]
    second = [sampler.global_batch(s + sampler.steps_per_epoch) for s in range(sampler.steps_per_epoch)]
    assert first != second


@pytest.mark.parametrize("dp, mbs", [(1, 4), (2, 4), (4, 2), (4, 4), (8, 1)])
def test_micro_batches_over_ranks_make_up_the_global_batch(dp, mbs):
    sampler = PairSampler(100, 16, seed=3)
    for step in range(8):
        shares = [sampler.micro_batches(step, dp, rank, mbs) for rank in range(dp)]
        for rank_batches in shares:
            assert rank_batches and all(len(mb) == mbs for mb in rank_batches)
        flat = [i for rank_batches in shares for mb in rank_batches for i in mb]
        assert flat == sampler.global_batch(step)


def test_global_order_is_independent_of_dp():
    sampler = PairSampler(64, 16, seed=9)
    for step in range(6):
        orders = {
            dp: [i for rank in range(dp) for mb in sampler.micro_batches(step, dp, rank, 2) for i in mb]
            for dp in (1, 2, 4)
        }
        assert orders[1] == orders[2] == orders[4]


def test_sampler_with_fewer_pairs_than_global_batch_raises():
    with pytest.raises(DataError) as info:
        PairSampler(10, 16, seed=0)
    assert "10" in str(info.value)
    assert "16" in str(info.value)


def test_sampler_with_exactly_one_batch_of_pairs():
    sampler = PairSampler(16, 16, seed=0)
    assert sorted(sampler.global_batch(0)) == list(range(16))
    assert sorted(sampler.global_batch(1)) == list(range(16))


# --- eval_micro_batches ---------------------------------------------------------------------------

@pytest.mark.parametrize("num_pairs, dp, mbs", [(10, 1, 4), (10, 3, 2), (23, 4, 3), (3, 8, 2), (0, 2, 4), (8, 2, 4)])
def test_eval_micro_batches_cover_every_pair_once(num_pairs, dp, mbs):
    per_rank = [eval_micro_batches(num_pairs, dp, rank, mbs) for rank in range(dp)]
    flat = [i for batches in per_rank for mb in batches for i in mb]
    assert sorted(flat) == list(range(num_pairs))
    for batches in per_rank:
        assert all(1 <= len(mb) <= mbs for mb in batches)
        assert all(len(mb) == mbs for mb in batches[:-1])  # only the last may be short


def test_eval_micro_batches_with_fewer_pairs_than_ranks():
    per_rank = [eval_micro_batches(3, 5, rank, 4) for rank in range(5)]
    assert per_rank[:3] == [[[0]], [[1]], [[2]]]
    assert per_rank[3] == [] and per_rank[4] == []


def test_eval_micro_batches_short_last_micro_batch():
    # rank 1 of 2 takes pairs 1, 3, 5, 7, 9: two full micro-batches of 2 and a single
    assert eval_micro_batches(10, 2, 1, 2) == [[1, 3], [5, 7], [9]]
