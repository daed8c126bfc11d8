"""Preference data: read -> validate -> tokenize -> store -> pair-preserving micro-batches."""

from megatron_rm.data.batching import Batch, collate
from megatron_rm.data.records import Comparison
from megatron_rm.data.store import GroupStore
from megatron_rm.data.tokenize import GroupEncoder, encode, load_tokenizer, pad_id

__all__ = ["Batch", "Comparison", "GroupEncoder", "GroupStore", "collate", "encode", "load_tokenizer", "pad_id"]
