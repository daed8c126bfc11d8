"""A NeMo `model_config.yaml` (a NeMo-1 `MegatronGPTModel`, as NeMo-Aligner trains reward models,
critics and SFT policies on it) read as our ModelConfig, refusing what the model cannot reproduce.

Every key falls in one of three sets: keys translated (the architecture, the reward head's
settings), keys whose one value we reproduce (`rotary_percentage: 1.0`, `use_avg_pool: false`,
...: any other value is refused, naming the key), and keys that do not change what the model
computes (parallel layout, precision, fusions, optimizer, data, ...). A key in none of them is
refused too, since this importer cannot know what it does; `ignored_keys` lets a user who knows
it changes nothing go on. Keys follow NeMo's `megatron_gpt_config.yaml` and NeMo-Aligner's
`examples/nlp/gpt/conf/training_rm.yaml`; the reward head's are read as NeMo-Aligner's
`MegatronGPTRewardModel.model_provider_func` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from megatron_rm.config import POLICY, REWARD, ModelConfig, RopeScalingConfig
from megatron_rm.errors import CheckpointError

NORMALIZATIONS = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}
ACTIVATIONS = {"swiglu": "swiglu", "fast-swiglu": "swiglu", "gelu": "gelu"}
POSITIONS = ("rope", "learned_absolute")

FIXED = {
    # key: (the values we reproduce, why)
    "mcore_gpt": ((True,), "weights in megatron-core's names (a legacy NeMo-1 model is converted to mcore by "
                           "NeMo's scripts/checkpoint_converters/convert_gpt_nemo_to_mcore.py)"),
    "megatron_legacy": ((False, None), "the legacy (pre-mcore) layer layout"),
    "rotary_percentage": ((1.0, 1), "rotary embeddings span the whole head"),
    "seq_len_interpolation_factor": ((None,), "linear RoPE interpolation is not implemented"),
    "use_avg_pool": ((False, None), "the reward is read at the last token, not averaged over the sequence"),
    "transformer_block_type": (("pre_ln",), "layers normalise their inputs (pre-LN)"),
    "normalize_attention_scores": ((True, None), "attention scores are scaled by 1/sqrt(head size)"),
    "headscale": ((False, None), "no per-head output scaling"),
    "openai_gelu": ((False, None), "GELU is torch's exact GELU"),
    "apply_residual_connection_post_layernorm": ((False, None), "residuals add the layer's input"),
    "layernorm_zero_centered_gamma": ((False, None), "norm weights are used as stored"),
    "attention_type": (("multihead", None), "self-attention only"),
    "num_moe_experts": ((None, 0, 1), "dense MLPs only"),
    "window_size": ((None,), "attention spans the whole document"),
    "qk_layernorm": ((False, None), "no query/key norms"),
    "rotary_interleaved": ((False, None), "rotary halves, not interleaved pairs"),
    "multi_query_attention": ((False, None), "set num_query_groups instead"),
}

IGNORED = frozenset({
    # layout and scheduling
    "micro_batch_size", "global_batch_size", "rampup_batch_size", "forward_mbs", "tensor_model_parallel_size",
    "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size", "context_parallel_size",
    "expert_model_parallel_size", "expert_tensor_parallel_size", "sequence_parallel", "pre_process",
    "post_process", "num_layers_in_first_pipeline_stage", "num_layers_in_last_pipeline_stage",
    "account_for_embedding_in_pipeline_split", "account_for_loss_in_pipeline_split", "sync_batch_comm",
    "overlap_p2p_comm", "batch_p2p_comm", "pipeline_model_parallel_split_rank",
    # precision and memory (the weights' dtype is read from the weights)
    "precision", "megatron_amp_O2", "native_amp_init_scale", "native_amp_growth_interval", "hysteresis",
    "fp32_residual_connection", "fp16_lm_cross_entropy", "force_head_dtype", "use_cpu_initialization",
    "cpu_offloading", "cpu_offloading_num_layers", "cpu_offloading_activations", "cpu_offloading_weights",
    "activations_checkpoint_granularity", "activations_checkpoint_method", "activations_checkpoint_num_layers",
    "num_micro_batches_with_partial_activation_checkpoints", "activations_checkpoint_layers_per_pipeline",
    "fp8", "fp8_e4m3", "fp8_hybrid", "fp8_margin", "fp8_interval", "fp8_amax_history_len",
    "fp8_amax_compute_algo", "reduce_amax", "fp8_wgrad", "fp8_params",
    # kernels and fusions (the same computation)
    "transformer_engine", "persist_layer_norm", "bias_activation_fusion", "bias_dropout_add_fusion",
    "masked_softmax_fusion", "get_attention_mask_from_fusion", "apply_rope_fusion", "cross_entropy_loss_fusion",
    "gradient_accumulation_fusion", "use_flash_attention", "use_emha", "apply_query_key_layer_scaling",
    "ub_tp_comm_overlap", "ub_tp_comm_overlap_cfg", "tp_comm_overlap_ag", "tp_comm_overlap_rs",
    "use_te_rng_tracker", "enable_cuda_graph", "external_cuda_graph", "deterministic_mode",
    "defer_embedding_wgrad_compute", "wgrad_deferral_limit", "onnx_safe", "gradient_as_bucket_view",
    "grad_allreduce_chunk_size_mb", "grad_div_ar_fusion", "use_scaled_init_method",
    # training, data, logging and saving
    "seed", "optim", "nsys_profile", "memory_profile", "apex_transformer_log_level", "resume_from_checkpoint",
    "restore_from_path", "target", "nemo_version", "name", "precision_plugin", "dist_ckpt_format",
    "dist_ckpt_load_on_device", "dist_ckpt_parallel_save", "dist_ckpt_parallel_save_within_dp",
    "dist_ckpt_parallel_load", "dist_ckpt_torch_dist_multiproc", "dist_ckpt_assume_constant_structure",
    "dist_ckpt_load_strictness", "overwrite_base_config", "answer_only_loss", "peft", "inference",
    "ffn_dropout", "reward_model_type", "ppo", "dpo", "rs", "spin", "kto", "knowledge_distillation", "steerlm2",
    "critic",
})
"""Keys that change nothing the model computes from its weights (their effect is training's)."""

TRANSLATED = frozenset({
    "tokenizer", "make_vocab_size_divisible_by", "encoder_seq_length", "hidden_dropout", "attention_dropout",
    "init_method_std", "data", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
    "num_query_groups", "kv_channels",
    "max_position_embeddings", "normalization", "layernorm_epsilon", "activation", "bias", "position_embedding_type",
    "rotary_base", "scale_positional_embedding", "share_embeddings_and_output_weights", "regression",
    "output_sequence", "reward_standardization",
})

LLAMA31_ROPE = RopeScalingConfig("llama3", 8.0, 1.0, 4.0, 8192)
"""megatron-core's `RotaryEmbedding(rope_scaling=True)` constants, what NeMo's
`scale_positional_embedding` turns on (Llama 3.1): factor 8, low and high frequency factors 1
and 4, an original context of 8192."""


@dataclass
class RewardSettings:
    """What NeMo-Aligner's reward model (or critic) does after its head."""

    num_attributes: int = 1
    merge: bool = False
    """The attributes are combined into one reward, `attributes @ weights` (a critic always does)."""
    weights: list[float] = field(default_factory=list)
    """The attribute weights (1/n each unless the config gives them)."""
    standardization: tuple[float, float] | None = None
    """(mean, std) subtracted from and dividing the (merged) reward."""
    critic: bool = False
    """`output_sequence`: a value at every token (a PPO critic), not one reward per text."""


def read_config(cfg: dict, source: Path, *, kind: str,
                ignored_keys: tuple[str, ...] = ()) -> tuple[ModelConfig, RewardSettings]:
    """Our architecture, and the reward head's settings, for the NeMo config `cfg` read from `source`."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: not a mapping of configuration keys")
    _refuse_what_cannot_be_reproduced(cfg, source, ignored_keys)
    missing = [key for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads") if key not in cfg]
    if missing:
        raise CheckpointError(f"{source}: {', '.join(missing)} missing: the model's shape is not in the file")

    def choice(key: str, table, default):
        value = cfg.get(key, default)
        if value not in table:
            raise CheckpointError(f"{source}: {key}={value!r} is not supported (expected one of "
                                  f"{', '.join(map(str, table))})")
        return table[value] if isinstance(table, dict) else value

    heads = int(cfg["num_attention_heads"])
    settings = _reward_settings(cfg, source) if kind == REWARD else RewardSettings()
    max_positions = cfg.get("max_position_embeddings") or cfg.get("encoder_seq_length") or 512
    model = ModelConfig(
        tokenizer="tokenizer",
        num_layers=int(cfg["num_layers"]),
        hidden_size=int(cfg["hidden_size"]),
        num_attention_heads=heads,
        num_query_groups=int(cfg.get("num_query_groups") or heads),
        kv_channels=cfg.get("kv_channels"),
        ffn_hidden_size=int(cfg["ffn_hidden_size"]),
        max_sequence_length=int(max_positions),
        normalization=choice("normalization", NORMALIZATIONS, "layernorm"),
        norm_epsilon=float(cfg.get("layernorm_epsilon", 1e-5)),
        activation=choice("activation", ACTIVATIONS, "gelu"),
        position_embedding_type=choice("position_embedding_type", POSITIONS, "learned_absolute"),
        rotary_base=float(cfg.get("rotary_base", 10000)),
        rope_scaling=LLAMA31_ROPE if cfg.get("scale_positional_embedding") else None,
        add_bias_linear=bool(cfg.get("bias", True)),
        hidden_dropout=float(cfg.get("hidden_dropout", 0.0)),
        attention_dropout=float(cfg.get("attention_dropout", 0.0)),
        init_method_std=float(cfg.get("init_method_std", 0.02)),
        # NeMo-Aligner reads the reward at the text's last token; its data appends the EOS first
        # only with data.append_eod (RewardModelDataset.encode).
        append_eos=bool((cfg.get("data") or {}).get("append_eod", False)) if kind == REWARD else True,
        num_labels=1 if settings.merge else settings.num_attributes,
        head_bias=kind == REWARD,  # RewardModelHead is a RowParallelLinear with bias=True
        tie_word_embeddings=kind == POLICY and bool(cfg.get("share_embeddings_and_output_weights", False)),
    )
    return model, settings


def _refuse_what_cannot_be_reproduced(cfg: dict, source: Path, ignored_keys: tuple[str, ...]) -> None:
    for key, (values, why) in FIXED.items():
        if key in cfg and cfg[key] not in values:
            raise CheckpointError(f"{source}: {key}={cfg[key]!r} is not supported: {why}")
    unknown = sorted(set(cfg) - set(FIXED) - IGNORED - TRANSLATED - set(ignored_keys))
    if unknown:
        raise CheckpointError(
            f"{source}: {', '.join(unknown)}: not keys this importer knows, so it cannot tell whether they change "
            "what the model computes; when they do not (a training or infrastructure setting), name each with "
            "--ignore-key")


def _reward_settings(cfg: dict, source: Path) -> RewardSettings:
    regression = cfg.get("regression") or {}
    count = int(regression.get("num_attributes", 1))
    weights = regression.get("attribute_weights")
    if weights is None:
        weights = [1.0 / count] * count
    if len(weights) != count:
        raise CheckpointError(f"{source}: regression.attribute_weights has {len(weights)} weights for "
                              f"regression.num_attributes={count}")
    critic = bool(cfg.get("output_sequence", False))
    standardization = cfg.get("reward_standardization") or {}
    stats = None
    if standardization.get("enable", False):
        mean, std = standardization.get("mean"), standardization.get("std")
        if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)) or not std > 0:
            raise CheckpointError(f"{source}: reward_standardization.mean={mean!r}, std={std!r}: a number and a "
                                  "positive number are needed")
        stats = (float(mean), float(std))
    return RewardSettings(count, critic or bool(regression.get("merge_attributes", False)), [float(w) for w in weights],
                          stats, critic)
