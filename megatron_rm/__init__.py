"""megatron-rm: reward models for RLHF on Megatron-Core."""

import warnings

__version__ = "0.1.0"

# megatron-core announces at import time each optional kernel library (TransformerEngine,
# apex) it falls back from. Both are optional here by design; the run reports the layer
# implementation it actually uses.
warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex).* not installed", category=UserWarning)
# torch 2.13 deprecates the collective name megatron-core 0.16 calls; the call itself is fine.
warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor. is deprecated", category=FutureWarning)
