from megatron_rm.data.batching import (
    PairBatch,
    PairSampler,
    TokenizedPair,
    collate,
    eval_micro_batches,
    tokenize_pairs,
)
from megatron_rm.data.preference import PreferencePair, read_pairs
from megatron_rm.data.tokenize import encode, load_tokenizer, pad_id

__all__ = [
    "PairBatch", "PairSampler", "PreferencePair", "TokenizedPair", "collate", "encode",
    "eval_micro_batches", "load_tokenizer", "pad_id", "read_pairs", "tokenize_pairs",
]
