"""The one place models are built from the typed config: training, scoring and checkpoint
conversion all call `build_reward_model` or `build_policy_model`, so a converted checkpoint
is exactly what training saves (same keys, shapes, rope scaling). Both models are built from
one `transformer_config` and layer spec; only their last stage differs."""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_rm import runtime
from megatron_rm.config import ModelConfig, ParallelConfig, padded_vocab_size
from megatron_rm.model.layer_spec import transformer_layer_spec, uses_transformer_engine
from megatron_rm.model.policy import PolicyModel
from megatron_rm.model.reward_model import RewardModel

RECOMPUTE = {
    "none": {},
    # megatron's selective set: attention's core, whose activations grow with seq^2.
    "selective": {"recompute_granularity": "selective"},
    # Keep each layer's input only; rerun the layer in the backward pass.
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}


def transformer_config(model: ModelConfig, parallel: ParallelConfig, precision: str = "fp32",
                       recompute: str = "none") -> TransformerConfig:
    # Fused kernels come with TransformerEngine; without it every op is plain torch.
    fused = uses_transformer_engine(model)
    cuda = runtime.cuda_available()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        ffn_hidden_size=model.ffn_hidden_size,
        normalization=model.normalization,
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=model.activation == "swiglu",
        activation_func=F.silu if model.activation == "swiglu" else F.gelu,
        add_bias_linear=model.add_bias_linear,
        add_qkv_bias=model.add_qkv_bias,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=precision == "bf16",
        # Micro-batches are padded to their own length, so pipeline stages exchange shapes.
        variable_seq_lengths=parallel.pp > 1,
        # The model has no experts; megatron still checks its default MoE dispatcher
        # ("allgather") against variable lengths, so name one that accepts them.
        moe_token_dispatcher_type="alltoall",
        # The loss function returns (sum over pairs, number of pairs): megatron then
        # divides gradients by the pairs of the whole global batch, over all DP ranks.
        calculate_per_token_loss=True,
        # On the CPU, draw full weights and split them: same model at every TP size.
        use_cpu_initialization=not cuda,
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        apply_rope_fusion=fused,
        gradient_accumulation_fusion=fused,
        masked_softmax_fusion=False,
        cuda_graph_scope=[],  # megatron's default "full" is deprecated and warns
        persist_layer_norm=False,
        **RECOMPUTE[recompute],
    )


def build_reward_model(model: ModelConfig, parallel: ParallelConfig, vocab_size: int,
                       precision: str = "fp32", recompute: str = "none", *,
                       meta_dtype: torch.dtype | None = None) -> RewardModel:
    """This rank's pipeline stage of the reward model, on this rank's device. Under bf16 the
    layers hold bf16 weights (the optimizer keeps fp32 masters); the reward head stays fp32.

    `vocab_size` is the tokenizer's (padded here). With `meta_dtype` the model is built on the
    meta device with parameters of that dtype, allocating and initialising nothing: conversion
    takes its checkpoint keys and shapes from it. That build uses megatron's local layer names,
    the names the conversion tables map, and never touches a GPU.
    """
    return _build(RewardModel, model, parallel, vocab_size, precision, recompute, meta_dtype,
                  num_labels=model.num_labels, head_bias=model.head_bias, head_init_std=model.head_init_std)


def build_policy_model(model: ModelConfig, parallel: ParallelConfig, vocab_size: int,
                       precision: str = "fp32", recompute: str = "none", *,
                       meta_dtype: torch.dtype | None = None) -> PolicyModel:
    """This rank's pipeline stage of the policy (a causal LM), built as `build_reward_model`
    builds the reward model: same config, layer spec, precision and meta-device option.
    Its logits cover `model.vocab_size` (else the tokenizer's `vocab_size`) real columns."""
    return _build(PolicyModel, model, parallel, vocab_size, precision, recompute, meta_dtype,
                  vocab_size=model.vocab_size or vocab_size,
                  share_embeddings_and_output_weights=model.tie_word_embeddings)


def _build(cls, model: ModelConfig, parallel: ParallelConfig, tokenizer_size: int, precision: str, recompute: str,
           meta_dtype: torch.dtype | None, **head):
    """`cls(config, spec, padded vocab, max length, stages, positions, **head)`, on the meta
    device with `meta_dtype`, else on this rank's device."""
    if meta_dtype is not None:
        model = dataclasses.replace(model, transformer_impl="local")
    config = transformer_config(model, parallel, precision, recompute)
    if meta_dtype is not None:
        config.params_dtype = meta_dtype
        config.use_cpu_initialization = True
        config.perform_initialization = False
    with torch.device("meta") if meta_dtype is not None else contextlib.nullcontext():
        built = cls(
            config,
            transformer_layer_spec(model),
            padded_vocab_size(tokenizer_size, model),
            model.max_sequence_length,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
            position_embedding_type=model.position_embedding_type,
            rotary_base=model.rotary_base,
            rope_scaling=model.rope_scaling,
            **head,
        )
    return built if meta_dtype is not None else built.to(runtime.device())
