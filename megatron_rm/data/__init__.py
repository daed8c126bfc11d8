"""Reward-model data: read -> validate -> tokenize -> store -> group-preserving micro-batches,
and model inputs for any documents (`document_batch`)."""

from megatron_rm.data.batching import collate
from megatron_rm.data.documents import Batch, document_batch
from megatron_rm.data.records import Comparison
from megatron_rm.data.store import GroupStore
from megatron_rm.data.tokenize import GroupEncoder, encode, load_tokenizer, pad_id, save_tokenizer

__all__ = ["Batch", "Comparison", "GroupEncoder", "GroupStore", "collate", "document_batch", "encode",
           "load_tokenizer", "pad_id", "save_tokenizer"]
