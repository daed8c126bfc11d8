"""Hugging Face <-> megatron-rm checkpoint conversion (Llama, Mistral, Qwen2), as reward models
(`score` heads) or policies (causal LMs), and NeMo-Aligner `.nemo` import.

`import_hf`, `export_hf` and `import_nemo` load on first use: `megatron_rm.config` reads the family
tables (`convert.families`) for the names `model.family` accepts, and the converters
import the config, so importing them here eagerly would be circular.
"""

import importlib

_ENTRY_POINTS = {"import_hf": "megatron_rm.convert.hf_to_megatron", "export_hf": "megatron_rm.convert.megatron_to_hf",
                 "import_nemo": "megatron_rm.convert.nemo"}

__all__ = list(_ENTRY_POINTS)


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
