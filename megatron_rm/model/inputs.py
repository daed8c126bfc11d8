"""Turning a document mask into what the decoder and the reward head need.

Convention at our API: `attention_mask` is (batch, seq) int, 0 on padding and k
on the tokens of the row's k-th document. An ordinary row is 0/1 (one document,
padded on either side, Hugging Face's convention); a packed row holds documents
1, 2, 3, ... back to back, with padding before the first or after the last. A
document is a run of one non-zero value, and everything below keys on runs, so
the attention mask, the positions and the reward read-out always agree on where
documents begin and end.

megatron-core's local attention takes a boolean (batch, 1, seq, seq) mask where
True means "may not attend"; TransformerEngine takes packed rows as one `thd`
sequence cut by cumulative sequence lengths (`packed_seq_params`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams


def _run_starts(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) bool: True where a document or a stretch of padding begins."""
    starts = torch.ones_like(attention_mask, dtype=torch.bool)
    starts[:, 1:] = attention_mask[:, 1:] != attention_mask[:, :-1]
    return starts


def document_ends(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) int64: every document's row and the position of its last token.

    Ordered row-major (row 0's documents in order, then row 1's, ...), the order
    rewards come out in. Ordinary rows give (arange(batch), last real token).
    """
    ends = torch.ones_like(attention_mask, dtype=torch.bool)
    ends[:, :-1] = attention_mask[:, :-1] != attention_mask[:, 1:]
    rows, cols = (ends & (attention_mask != 0)).nonzero(as_tuple=True)
    return rows, cols


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each document's first token (0, 1, 2, ...); 0 on padding."""
    seq_len = attention_mask.shape[-1]
    columns = torch.arange(seq_len, device=attention_mask.device).expand_as(attention_mask)
    run_start = torch.where(_run_starts(attention_mask), columns, 0).cummax(-1).values
    return torch.where(attention_mask != 0, columns - run_start, 0)


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, 1, seq, seq) bool, True = blocked: block-diagonal causal attention.

    A query sees a key only inside its own document and not in the future. Every
    position may see itself, padding included: a fully blocked softmax row is NaN
    in some kernels (torch SDPA), and padding outputs are never read.
    """
    seq_len = attention_mask.shape[-1]
    run = _run_starts(attention_mask).cumsum(-1)
    same_document = (run[:, :, None] == run[:, None, :]) & (attention_mask != 0)[:, None, :]
    device = attention_mask.device
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    itself = torch.eye(seq_len, dtype=torch.bool, device=device)
    return ~((same_document & causal) | itself)[:, None]


def packed_seq_params(attention_mask: torch.Tensor) -> PackedSeqParams:
    """The rows laid end to end as one `thd` sequence cut at every document boundary.

    Each stretch of padding is a segment of its own, so `cu_seqlens` covers every
    token of the (batch * seq) layout (the kernels index tokens through it) and
    padding attends neither to nor from a document. For ordinary rows the
    segments are each row's padding and document.
    """
    starts = _run_starts(attention_mask).flatten().nonzero().flatten()
    total = torch.tensor([attention_mask.numel()], device=starts.device)
    cu_seqlens = torch.cat([starts, total]).to(torch.int32)
    # TE wants the longest segment as a Python int (it sizes kernels with it).
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_kv=cu_seqlens,
        max_seqlen_q=max_seqlen,
        max_seqlen_kv=max_seqlen,
    )


@dataclass(frozen=True)
class DecoderInputs:
    """How a document batch enters a megatron GPT decoder, and where its tokens come out.

    Any GPTModel-based model (the reward model, a policy) holds one, chosen by its layer
    spec: `packs_sequences` for the TransformerEngine spec, whose layers take the batch as
    one `thd` sequence (activations (batch * seq, 1, hidden)), else a dense
    block-diagonal mask and activations (seq, batch, hidden).
    """

    packs_sequences: bool

    def decoder_args(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> dict:
        """Keyword arguments of GPTModel.forward for a (batch, seq) document batch."""
        if self.packs_sequences:
            return {"input_ids": input_ids.reshape(1, -1), "position_ids": position_ids.reshape(1, -1),
                    "attention_mask": None,  # thd attention is cut by cu_seqlens alone
                    "packed_seq_params": packed_seq_params(attention_mask)}
        return {"input_ids": input_ids, "position_ids": position_ids,
                "attention_mask": causal_padding_mask(attention_mask)}

    def document_ends(self, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of each document's last token in the decoder's (seq, batch) output layout."""
        rows, cols = document_ends(attention_mask)
        if self.packs_sequences:
            # Rows were laid end to end: row r's position c is token r * seq + c of one row.
            return torch.zeros_like(rows), rows * attention_mask.shape[-1] + cols
        return rows, cols

    @staticmethod
    def per_token(output: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """A decoder-layout (seq, batch, ...) or (batch * seq, 1, ...) tensor as (batch, seq, ...)."""
        return output.transpose(0, 1).reshape(*attention_mask.shape, *output.shape[2:])
