"""Model inputs for any documents: padded and packed layouts, the attention-mask numbering, bad inputs."""

import numpy as np
import pytest
import torch

from megatron_rm.data import Batch, document_batch

PAD = 99
# Lists and arrays alike, of several lengths; the longest (5) is not the first.
DOCUMENTS = [[5, 6, 7], np.array([8, 9, 10, 11, 12], dtype=np.uint16), [13], np.array([14, 15], dtype=np.int64)]


def rounded(width, multiple):
    return -(-width // multiple) * multiple


def padded_by_hand(documents, multiple):
    """One row per document, written out token by token."""
    width = rounded(max(len(d) for d in documents), multiple)
    ids, mask = [], []
    for document in documents:
        tokens = [int(t) for t in document]
        ids.append(tokens + [PAD] * (width - len(tokens)))
        mask.append([1] * len(tokens) + [0] * (width - len(tokens)))
    return ids, mask


def packed_by_hand(documents, multiple):
    """One row: the documents back to back, numbered 1, 2, ... in the mask."""
    ids = [int(t) for d in documents for t in d]
    mask = [number for number, d in enumerate(documents, start=1) for _ in d]
    width = rounded(len(ids), multiple)
    return [ids + [PAD] * (width - len(ids))], [mask + [0] * (width - len(mask))]


@pytest.mark.parametrize("multiple", [1, 4, 8])
def test_padded_layout_is_one_right_padded_row_per_document(multiple):
    batch = document_batch(DOCUMENTS, PAD, pad_to_multiple_of=multiple)
    ids, mask = padded_by_hand(DOCUMENTS, multiple)
    assert batch.input_ids.tolist() == ids and batch.attention_mask.tolist() == mask
    assert batch.input_ids.dtype == batch.attention_mask.dtype == torch.int64
    assert batch.document_lengths.tolist() == [3, 5, 1, 2]


@pytest.mark.parametrize("multiple", [1, 4, 8])
def test_packed_layout_is_one_row_numbering_its_documents(multiple):
    batch = document_batch(DOCUMENTS, PAD, packed=True, pad_to_multiple_of=multiple)
    ids, mask = packed_by_hand(DOCUMENTS, multiple)
    assert batch.input_ids.tolist() == ids and batch.attention_mask.tolist() == mask
    assert batch.num_documents == 4 and batch.tokens == 11
    assert batch.document_lengths.tolist() == [3, 5, 1, 2]


def test_random_documents_match_the_hand_built_layouts():
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 50_000, size=rng.integers(1, 40)) for _ in range(25)]
    for packed, by_hand in ((False, padded_by_hand), (True, packed_by_hand)):
        batch = document_batch(documents, PAD, packed=packed, pad_to_multiple_of=16)
        assert (batch.input_ids.tolist(), batch.attention_mask.tolist()) == by_hand(documents, 16)


def test_documents_alone_carry_no_comparisons():
    batch = document_batch([[1, 2], [3]], PAD)
    assert batch.comparisons is None and batch.margins is None and batch.labels is None
    assert batch.group_sizes is None and batch.num_pairs == 0
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.comparisons is None
    assert torch.equal(moved.input_ids, batch.input_ids)


@pytest.mark.parametrize("sequences, words", [
    ([], "list of sequences is empty"),
    ([[1, 2], []], "document 1 is empty"),
    ([[1, 2], np.array([], dtype=np.int64)], "document 1 is empty"),
    ([[[1, 2], [3, 4]]], "document 0: expected a flat sequence"),
    ([5], "document 0: expected a flat sequence"),
])
def test_empty_or_malformed_input_is_refused(sequences, words):
    for packed in (False, True):
        with pytest.raises(ValueError, match=words):
            document_batch(sequences, PAD, packed=packed)


def test_pad_multiple_must_be_positive():
    with pytest.raises(ValueError, match="pad_to_multiple_of=0"):
        document_batch([[1]], PAD, pad_to_multiple_of=0)
