"""A random Llama of a chosen size with the demo tokenizer, saved as a Hugging Face folder: the
model the CPU benchmarks measure (run as `python bench/<name>.py`, so this folder is on the path)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

TOKENIZER = Path(__file__).resolve().parents[1] / "examples" / "demo" / "tokenizer"


def save_llama(folder: Path, hidden: int, layers: int, *, causal_lm: bool, max_positions: int,
               kv_heads: int | None = None) -> transformers.PreTrainedTokenizerBase:
    """A `LlamaForCausalLM` or a one-label `LlamaForSequenceClassification` (fp32, seed 0) of
    `layers` x `hidden` (64-wide heads, `kv_heads` key/value heads, default one per 128 of
    width) and the demo tokenizer in `folder`; returns the tokenizer."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER))
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=kv_heads or max(1, hidden // 128),
        max_position_embeddings=max_positions, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    kind = transformers.AutoModelForCausalLM if causal_lm else transformers.AutoModelForSequenceClassification
    kind.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer
