"""Sampling responses from a policy: megatron's KV cache, our sampler, any TP/PP, CPU or GPU."""
