"""Tiny random Hugging Face models of every supported family, saved as real folders.

Built from the config classes (no downloads), with the features conversion must
get right: grouped-query attention, an explicit head_dim that differs from
hidden / heads, Llama 3.1 rope scaling, tied embeddings, Qwen2's q/k/v biases,
Mistral's sliding window, and a vocabulary larger than the tokenizer's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers

from tests.conftest import DEMO

TOKENIZER = DEMO / "tokenizer"
COMMON = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
    attn_implementation="eager",
)
CONFIGS = {
    "llama": lambda vocab: transformers.LlamaConfig(
        vocab_size=vocab + 37, head_dim=24, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, **COMMON),
    "mistral": lambda vocab: transformers.MistralConfig(
        vocab_size=vocab + 5, sliding_window=128, rope_theta=1e6, **COMMON),
    "qwen2": lambda vocab: transformers.Qwen2Config(
        vocab_size=vocab, rope_theta=1e6, **COMMON),
}
FAMILIES = tuple(CONFIGS)


def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(TOKENIZER))


def hf_config(family: str, num_labels: int = 1, **overrides):
    tok = tokenizer()
    config = CONFIGS[family](len(tok))
    for name, value in overrides.items():
        setattr(config, name, value)
    config.num_labels = num_labels
    config.pad_token_id, config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    return config


def save_model(family: str, folder: Path, kind: str = "sequence_classification", *, num_labels: int = 1,
               dtype: torch.dtype = torch.float32, seed: int = 0, config: dict | None = None,
               **save_args) -> torch.nn.Module:
    """A random `kind` (sequence_classification, token_classification or causal_lm) model of `family`, saved with the
    demo tokenizer; returns the model (fp32, eval mode). `config`: fields set on the family's
    tiny config (`tie_word_embeddings`, say)."""
    torch.manual_seed(seed)
    cls = {"sequence_classification": transformers.AutoModelForSequenceClassification,
           "token_classification": transformers.AutoModelForTokenClassification,
           "causal_lm": transformers.AutoModelForCausalLM}[kind]
    model = cls.from_config(hf_config(family, num_labels, **(config or {})))
    with torch.no_grad():  # norms start at 1; make them count
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.add_(torch.randn_like(param) * 0.1)
    model.to(dtype).save_pretrained(folder, **save_args)
    tokenizer().save_pretrained(folder)
    return model.float().eval()


def respell_as_4x(folder: Path, out: Path) -> Path:
    """A copy of `folder` (saved by transformers 5) with config.json's RoPE settings in transformers
    4.x's spelling, a top-level `rope_theta` and `rope_scaling` (null when unscaled) and no
    `rope_parameters`: the same weights, as a checkpoint saved by 4.x spells them. Returns `out`."""
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    parameters = config.pop("rope_parameters")
    config["rope_theta"] = parameters.pop("rope_theta")
    config["rope_scaling"] = parameters if parameters.get("rope_type", "default") != "default" else None
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
