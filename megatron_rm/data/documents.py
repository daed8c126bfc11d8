"""Model inputs for any list of documents (token-id sequences).

Training, scoring and generation feed the model alike: `input_ids` plus an
`attention_mask` that marks padding with 0 and numbers each row's documents
1, 2, ... (see megatron_rm.model.inputs), so attention stays inside a document
and the reward is read at each document's last token. `document_batch` builds
those tensors from plain sequences; training adds the pair/group metadata on
top (megatron_rm.data.batching.collate).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch


@dataclass
class Batch:
    input_ids: torch.Tensor
    """(rows, seq) token ids."""
    attention_mask: torch.Tensor
    """(rows, seq): 0 on padding, k on the tokens of the row's k-th document."""
    comparisons: torch.Tensor | None = None
    """(pairs, 2) document indices (better, worse), documents counted in layout order;
    None for documents that are only scored."""
    margins: torch.Tensor | None = None
    """(pairs,) float32 margin each pair must clear; 0 where the data gives none."""
    labels: torch.Tensor | None = None
    """(documents, num_labels) float32 attribute values, NaN where missing."""
    group_sizes: torch.Tensor | None = None
    """(groups,) documents of each group, in layout order (None: not recorded)."""
    response_mask: torch.Tensor | None = None
    """(rows, seq) bool: True on each document's response tokens (those after its prompt), which
    a next-token loss predicts; None when the prompt lengths are unknown."""
    token_targets: torch.Tensor | None = None
    """(rows, seq) float32 per-token targets of an outcome or process reward model (the
    probability of the positive class, or the class index), laid out like the ids; NaN where
    nothing is learnt (unlabelled tokens, padding)."""

    @property
    def num_pairs(self) -> int:
        return 0 if self.comparisons is None else self.comparisons.shape[0]

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

    def to(self, device) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{name: None if tensor is None else tensor.to(device) for name, tensor in moved.items()})


def document_batch(sequences, pad_id: int, *, packed: bool = False, pad_to_multiple_of: int = 1,
                   prompt_lengths=None, token_targets=None) -> Batch:
    """`sequences` (lists or arrays of token ids) as model inputs, in their order.

    Padded (default): one document per row, right-padded with `pad_id` to the
    longest document rounded up to `pad_to_multiple_of`. Packed: one row holding
    the documents back to back, its width rounded up likewise. The result has no
    comparisons; `collate` adds them for training. With `prompt_lengths` (leading
    prompt tokens of each document) it has a `response_mask`, and with `token_targets` (a float
    per token of each document) `token_targets`, both laid out like the ids.
    """
    documents = [_document(sequence, index) for index, sequence in enumerate(sequences)]
    if not documents:
        raise ValueError("no documents to batch: the list of sequences is empty")
    if pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of} must be >= 1")
    lengths = np.array([len(ids) for ids in documents])
    # Every token's (row, column, document number), then one scatter into each tensor.
    document = np.repeat(np.arange(len(documents)), lengths)
    if packed:
        row, column, number = np.zeros_like(document), np.arange(len(document)), document + 1
        rows, width = 1, len(document)
    else:
        starts = np.cumsum(lengths) - lengths
        row, column, number = document, np.arange(len(document)) - starts[document], np.ones_like(document)
        rows, width = len(documents), int(lengths.max())
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((rows, width), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((rows, width), dtype=torch.int64)
    where = torch.from_numpy(row), torch.from_numpy(column)
    input_ids[where] = torch.from_numpy(np.concatenate(documents))
    attention_mask[where] = torch.from_numpy(number)
    response_mask = None
    if prompt_lengths is not None:
        # A token is the response's when its place in its document is past the prompt.
        place = np.arange(len(document)) - (np.cumsum(lengths) - lengths)[document]
        response_mask = torch.zeros((rows, width), dtype=torch.bool)
        response_mask[where] = torch.from_numpy(place >= np.asarray(prompt_lengths, dtype=np.int64)[document])
    targets = None
    if token_targets is not None:
        targets = torch.full((rows, width), float("nan"), dtype=torch.float32)
        targets[where] = torch.from_numpy(np.concatenate(token_targets).astype(np.float32))
    return Batch(input_ids, attention_mask, response_mask=response_mask, token_targets=targets)


def _document(sequence, index: int) -> np.ndarray:
    ids = np.asarray(sequence, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"document {index}: expected a flat sequence of token ids, got shape {ids.shape}")
    if len(ids) == 0:
        # An empty document has no last token to read a reward at.
        raise ValueError(f"document {index} is empty (no token ids)")
    return ids
