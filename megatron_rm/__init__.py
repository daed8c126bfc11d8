"""megatron-rm: reward models for RLHF on Megatron-Core."""

import warnings

__version__ = "0.1.0"

# megatron-core announces at import time each optional kernel library (TransformerEngine,
# apex) it falls back from. Both are optional here by design; the run reports the layer
# implementation it actually uses.
warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex).* not installed", category=UserWarning)
# torch 2.13 deprecates APIs that megatron-core 0.16 calls (a collective's name, ShardedTensor in
# checkpoints); the calls work, and only a megatron-core release can act on the notice.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(megatron\.core|torch\.distributed)\.")
