"""Hugging Face <-> megatron-rm checkpoint conversion (Llama, Mistral, Qwen2 and their reward heads)."""

from megatron_rm.convert.hf_to_megatron import import_hf
from megatron_rm.convert.megatron_to_hf import export_hf

__all__ = ["export_hf", "import_hf"]
