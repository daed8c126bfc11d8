"""Token stores and micro-batches: layout, comparisons, margins, labels, single responses, packing,
evaluation shares."""

import numpy as np
import pytest
import torch

from megatron_rm.data.batching import collate, eval_share, pack_groups, split_evenly
from megatron_rm.data.documents import document_batch
from megatron_rm.data.store import GroupStore, StoreWriter
from megatron_rm.errors import DataError

PAD = 0


def make_store(folder, groups, margins=None, labels=None, vocab_size=300):
    writer = StoreWriter(folder, vocab_size)
    for g, documents in enumerate(groups):
        writer.add(documents, None if margins is None else margins[g],
                   None if labels is None else labels[g], prompt_key=g)
    writer.finish({"rows": len(groups)})
    return GroupStore(folder)


GROUPS = [
    [[5, 6, 7, 1], [5, 6, 1]],                 # pair
    [[9, 1], [9, 8, 8, 8, 8, 1]],             # pair, longer rejected
    [[3, 3, 1], [3, 4, 1], [3, 5, 5, 5, 1]],  # K-wise group of 3, best first
]


@pytest.fixture
def store(tmp_path):
    labels = [None, [[0.5, np.nan], [1.0, 2.0]], None]
    return make_store(tmp_path / "store", GROUPS, margins=[1.5, None, None], labels=labels)


def test_store_round_trip(store, tmp_path):
    assert len(store) == 3 and store.meta["documents"] == 7 and store.meta["dtype"] == "uint16"
    for g, documents in enumerate(GROUPS):
        assert [d.tolist() for d in store.documents(g)] == documents
    assert store.margin(0) == 1.5 and store.margin(1) is None
    assert np.isnan(store.group_labels(0)).all()
    np.testing.assert_array_equal(store.group_labels(1), [[0.5, np.nan], [1.0, 2.0]])
    longest, total = store.document_lengths()
    assert longest.tolist() == [4, 6, 5] and total.tolist() == [7, 8, 11]
    view = store.subset(np.array([2, 0]))
    assert [d.tolist() for d in view.documents(0)] == GROUPS[2]
    assert view.document_lengths()[0].tolist() == [5, 4]
    assert not list(tmp_path.glob(".*incomplete"))


def test_large_vocabularies_use_32_bit_ids(tmp_path):
    store = make_store(tmp_path / "big", [[[70000, 1], [70001, 1]]], vocab_size=80000)
    assert store.meta["dtype"] == "uint32" and store.documents(0)[0].tolist() == [70000, 1]


def test_rows_must_agree_on_label_count(tmp_path):
    writer = StoreWriter(tmp_path / "s", 300)
    writer.add([[1], [2]], None, [[1.0], [2.0]], 0)
    with pytest.raises(DataError, match="number of labels"):
        writer.add([[1], [2]], None, [[1.0, 2.0], [2.0, 3.0]], 1)


def test_padded_layout_keeps_groups_whole_in_order(store):
    batch = collate(store, [0, 1, 2], PAD, packed=False, pad_to_multiple_of=8)
    assert batch.input_ids.shape == (7, 8)
    documents = [d for g in GROUPS for d in g]
    for row, ids in enumerate(documents):
        assert batch.input_ids[row, : len(ids)].tolist() == ids
        assert batch.attention_mask[row].tolist() == [1] * len(ids) + [0] * (8 - len(ids))
    # Pairs compare best to worse; the group of three gives all three of its pairs.
    assert batch.comparisons.tolist() == [[0, 1], [2, 3], [4, 5], [4, 6], [5, 6]]
    assert batch.margins.tolist() == [1.5, 0.0, 0.0, 0.0, 0.0]
    assert batch.num_pairs == 5 and batch.num_documents == 7
    assert batch.tokens == 26 and batch.padded_tokens == 56


def test_labels_follow_documents(store):
    batch = collate(store, [1, 0], PAD, packed=False)
    assert batch.labels.shape == (4, 2)
    np.testing.assert_array_equal(batch.labels[:2].numpy(), [[0.5, np.nan], [1.0, 2.0]])
    assert torch.isnan(batch.labels[2:]).all()


def test_packed_layout_numbers_documents_in_one_row(store):
    batch = collate(store, [0, 2], PAD, packed=True, pad_to_multiple_of=8)
    assert batch.input_ids.shape == (1, 24)
    documents = GROUPS[0] + GROUPS[2]
    expected_ids = [t for d in documents for t in d]
    expected_mask = [n for n, d in enumerate(documents, start=1) for _ in d]
    assert batch.input_ids[0, :18].tolist() == expected_ids
    assert batch.attention_mask[0].tolist() == expected_mask + [0] * 6
    assert batch.comparisons.tolist() == [[0, 1], [2, 3], [2, 4], [3, 4]]
    assert batch.num_documents == 5 and batch.tokens == 18


def test_pack_groups_first_fit_decreasing():
    groups = np.arange(10, 20)
    sizes = np.array([50, 10, 40, 30, 30, 20, 60, 5, 120, 25])
    bins = pack_groups(groups, sizes, capacity=100)
    assert sorted(g for b in bins for g in b) == groups.tolist()
    size_of = dict(zip(groups.tolist(), sizes.tolist()))
    loads = [sum(size_of[g] for g in b) for b in bins]
    assert bins[0] == [18]  # larger than a bin: alone, never split
    assert all(load <= 100 for load in loads[1:])
    assert len(bins) == 1 + int(np.ceil((sizes.sum() - 120) / 100))


def test_split_evenly_and_eval_shares():
    assert split_evenly(np.arange(7), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    longest = np.array([5, 9, 1, 7, 3, 8, 2])
    shares = [eval_share(longest, 3, r) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(7))
    assert longest[shares[0]].tolist() == [9, 5, 1]  # sorted by length, dealt round-robin


@pytest.mark.parametrize("packed", [False, True])
def test_document_lengths_follow_the_layout(store, packed):
    batch = collate(store, [2, 0, 1], PAD, packed=packed, pad_to_multiple_of=8)
    expected = [len(d) for g in (2, 0, 1) for d in GROUPS[g]]
    assert batch.document_lengths.tolist() == expected


@pytest.mark.parametrize("packed", [False, True])
def test_collate_lays_out_documents_as_document_batch_does(store, packed):
    groups = [2, 0, 1]
    batch = collate(store, groups, PAD, packed=packed, pad_to_multiple_of=8)
    plain = document_batch([d for g in groups for d in GROUPS[g]], PAD, packed=packed, pad_to_multiple_of=8)
    assert torch.equal(batch.input_ids, plain.input_ids) and torch.equal(batch.attention_mask, plain.attention_mask)
    assert batch.comparisons.tolist() == [[0, 1], [0, 2], [1, 2], [3, 4], [5, 6]]
    assert batch.margins.tolist() == [0.0, 0.0, 0.0, 1.5, 0.0]
    assert batch.group_sizes.tolist() == [3, 2, 2]
    assert batch.labels.shape == (7, 2)
    np.testing.assert_array_equal(batch.labels[5:].numpy(), [[0.5, np.nan], [1.0, 2.0]])


def test_empty_micro_batch_is_refused(store):
    with pytest.raises(ValueError, match="empty"):
        collate(store, [], PAD, packed=False)


SINGLES = [[[4, 5, 1]], [[6, 1]], [[7, 7, 7, 1]]]


@pytest.mark.parametrize("packed", [False, True])
def test_single_response_groups_give_no_comparisons_but_keep_their_labels(tmp_path, packed):
    store = make_store(tmp_path / "singles", SINGLES, labels=[[[0.5]], [[np.nan]], [[-1.0]]])
    assert store.group_sizes().tolist() == [1, 1, 1]
    batch = collate(store, [2, 0], PAD, packed=packed)
    assert batch.comparisons.shape == (0, 2) and batch.comparisons.dtype == torch.int64
    assert batch.margins.shape == (0,) and batch.num_pairs == 0
    assert batch.group_sizes.tolist() == [1, 1] and batch.num_documents == 2
    assert batch.labels.tolist() == [[-1.0], [0.5]]
    assert batch.document_lengths.tolist() == [4, 3]


def test_single_responses_beside_pairs_shift_the_pair_indices(tmp_path):
    store = make_store(tmp_path / "mixed", [SINGLES[0], GROUPS[0], SINGLES[1]])
    batch = collate(store, [0, 1, 2], PAD, packed=False)
    assert batch.comparisons.tolist() == [[1, 2]]
    assert batch.group_sizes.tolist() == [1, 2, 1] and batch.labels is None
