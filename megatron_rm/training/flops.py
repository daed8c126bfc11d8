"""Model FLOPs of training, and the peak they are compared with (MFU).

Per document of n tokens, one forward pass costs

    2 * n * P_dense  +  2 * L * a * d * n * (n + 1)

P_dense is the weights of the L layers' matrix multiplies (q, k, v, output
projection, MLP); the second term is attention's two matmuls (q.k and the
weighted sum of v, 2 FLOPs per multiply-add, a heads of dimension d) over the
n(n+1)/2 causal (query, key) pairs. The embedding is a lookup and the reward
head a dot product per document, so both are left out; a policy's output layer
adds 2 * n * hidden * V (V: its padded vocabulary) per forward pass. Training costs three
forward passes (the backward pass is two). Only real tokens count: padding and
recomputed activations are work the hardware does, not model FLOPs, so MFU
measures both as loss of utilisation.
"""

from __future__ import annotations

import torch

from megatron_rm.config import ModelConfig

# Dense peak FLOP/s of one device, for MFU: (bf16, fp32 via TF32) from NVIDIA's data
# sheets (SXM parts; without sparsity).
PEAKS = {
    "H200": (989.4e12, 494.7e12),
    "H100": (989.4e12, 494.7e12),
    "A100": (312e12, 156e12),
    "L40S": (362.05e12, 183e12),
    "A10": (125e12, 62.5e12),
}


def dense_weights(model: ModelConfig) -> int:
    """Weights in the layers' matrix multiplies (P_dense)."""
    heads, groups = model.num_attention_heads, model.num_query_groups or model.num_attention_heads
    head_dim = model.kv_channels or model.hidden_size // heads
    hidden, ffn = model.hidden_size, model.ffn_hidden_size
    attention = hidden * (heads + 2 * groups) * head_dim + heads * head_dim * hidden
    mlp = hidden * ffn * (2 if model.activation == "swiglu" else 1) + ffn * hidden
    return model.num_layers * (attention + mlp)


def training_flops(model: ModelConfig, tokens: float, squared_lengths: float, output_columns: int = 0) -> float:
    """Model FLOPs of training on documents with `tokens` tokens in all and `squared_lengths`
    = sum of n^2 over them (n(n + 1) = n^2 + n); `output_columns`: a policy's output layer
    width (0 for a reward model)."""
    heads = model.num_attention_heads
    head_dim = model.kv_channels or model.hidden_size // heads
    attention = 2 * model.num_layers * heads * head_dim * (squared_lengths + tokens)
    return 3 * (2 * tokens * (dense_weights(model) + model.hidden_size * output_columns) + attention)


def peak_flops(configured: float | None, precision: str) -> float | None:
    """One device's peak FLOP/s: `configured`, else the table's entry for this GPU, else None."""
    if configured or not torch.cuda.is_available():
        return configured
    name = torch.cuda.get_device_name()
    for key, (bf16, tf32) in PEAKS.items():
        if key in name:
            return bf16 if precision == "bf16" else tf32
    return None
