"""Turning a padding mask into what the decoder and the reward head need.

Convention at our API: `attention_mask` is (batch, seq), 1 on real tokens and 0
on padding, on either side (Hugging Face's convention). megatron-core's attention
takes a boolean (batch, 1, seq, seq) mask where True means "may not attend".
"""

from __future__ import annotations

import torch


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch,) position of each row's last real token, for left or right padding."""
    seq_len = attention_mask.shape[-1]
    reversed_first = attention_mask.flip(-1).to(torch.int64).argmax(-1)
    return seq_len - 1 - reversed_first


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (0 on left padding)."""
    return (attention_mask.to(torch.int64).cumsum(-1) - 1).clamp(min=0)


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, 1, seq, seq) bool: True where a query may not see a key (future or padding)."""
    seq_len = attention_mask.shape[-1]
    future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=attention_mask.device).triu(1)
    padding_key = ~attention_mask.bool()[:, None, None, :]
    return future[None, None] | padding_key


def check_rows_nonempty(attention_mask: torch.Tensor) -> None:
    """A row with no real token has no reward; refuse it instead of reading padding."""
    empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} of the batch have no real token (attention_mask all 0)")
