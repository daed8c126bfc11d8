"""Hugging Face `config.json` <-> our ModelConfig, refusing what the model cannot reproduce.

A converted model must compute what `transformers` computes, so every field
that would change the result and that we do not implement stops the import
with the field and its value named, instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from megatron_rm.config import ROPE_SCALING_TYPES, ModelConfig, RopeScalingConfig
from megatron_rm.convert.families import FAMILIES, POLICY, REWARD, Family, Shapes, family
from megatron_rm.errors import CheckpointError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCH_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
HF_HEADS = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}
"""The Hugging Face class of each reward head (`ModelConfig.head`), after the family's stem; both
name their head `score`. A policy is a `*ForCausalLM`."""
TOKEN_LABELS = {2: ("negative", "positive"), 3: ("negative", "neutral", "positive")}
"""A token head's class names by class count: negative first, positive last, the order
`step_rewards.positive_probability` reads."""


def model_config(hf: dict, source: Path, *, num_labels: int, head_bias: bool, head_init_std: float | None,
                 head: str = "sequence", tie_word_embeddings: bool = False) -> tuple[Family, ModelConfig]:
    """Our architecture for the Hugging Face config `hf` (read from `source`); `head`: where a
    reward model is read; `tie_word_embeddings`: a policy whose output layer is its embedding."""
    fam = family(hf.get("model_type"), str(source))

    def refuse(field: str, why: str) -> None:
        raise CheckpointError(f"{source}: {field}={hf.get(field)!r} is not supported: {why}")

    if hf.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "the MLP is SwiGLU (silu)")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field):
            refuse(field, "only Qwen2's q/k/v biases are implemented")
    if hf.get("use_sliding_window"):
        refuse("use_sliding_window", "per-layer sliding windows are not implemented")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        refuse("partial_rotary_factor", "rotary embeddings span the whole head")
    rope_scaling = _rope_scaling(hf.get("rope_scaling"), source)
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    model = ModelConfig(
        tokenizer="tokenizer",
        vocab_size=hf["vocab_size"],
        family=fam.model_type,
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        num_attention_heads=heads,
        num_query_groups=hf.get("num_key_value_heads") or heads,
        kv_channels=head_dim if head_dim and head_dim != hf["hidden_size"] // heads else None,
        ffn_hidden_size=hf["intermediate_size"],
        max_sequence_length=hf["max_position_embeddings"],
        normalization="RMSNorm",
        norm_epsilon=hf.get("rms_norm_eps", 1e-6),
        activation="swiglu",
        position_embedding_type="rope",
        rotary_base=float(hf.get("rope_theta", 10000.0)),
        rope_scaling=rope_scaling,
        sliding_window=hf.get("sliding_window") if fam.model_type == "mistral" else None,
        add_bias_linear=False,
        add_qkv_bias=fam.model_type == "qwen2",
        init_method_std=hf.get("initializer_range", 0.02),
        num_labels=num_labels,
        head=head,
        head_bias=head_bias,
        head_init_std=head_init_std if head_init_std is not None else hf.get("initializer_range", 0.02),
        tie_word_embeddings=tie_word_embeddings,
    )
    return fam, model


def classifier_head(hf: dict) -> str:
    """The reward head of a classifier's config `hf`: token for a `*ForTokenClassification`, else
    sequence (the tensors are alike, only `architectures` tells them apart)."""
    token = any(name.endswith(HF_HEADS["token"]) for name in hf.get("architectures") or ())
    return "token" if token else "sequence"


def config_num_labels(hf: dict) -> int:
    """The label count transformers reads from config.json: `id2label`'s length (`num_labels`
    itself is not saved), else `num_labels`, else its default of 2."""
    return len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels", 2)


def ties_embeddings(hf: dict) -> bool:
    """Whether the causal LM of config `hf` uses its input embedding as its output layer.

    An absent `tie_word_embeddings` means the family's default, as `from_pretrained` reads it.
    """
    if "tie_word_embeddings" in hf:
        return bool(hf["tie_word_embeddings"])
    return bool(transformers.AutoConfig.for_model(hf["model_type"]).tie_word_embeddings)


def _rope_scaling(scaling: dict | None, source: Path) -> RopeScalingConfig | None:
    if not scaling:
        return None
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type == "default":
        return None
    if rope_type not in ROPE_SCALING_TYPES:
        raise CheckpointError(f"{source}: rope_scaling.rope_type={rope_type!r} is not supported "
                              f"(supported: {', '.join(ROPE_SCALING_TYPES)})")
    defaults = RopeScalingConfig()
    return RopeScalingConfig(
        rope_type=rope_type,
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling.get("low_freq_factor", defaults.low_freq_factor)),
        high_freq_factor=float(scaling.get("high_freq_factor", defaults.high_freq_factor)),
        original_max_position_embeddings=int(scaling.get("original_max_position_embeddings",
                                                         defaults.original_max_position_embeddings)),
    )


def hf_config(model: ModelConfig, *, vocab_size: int, dtype: torch.dtype, pad_token_id: int | None,
              bos_token_id: int | None, eos_token_id: int | None,
              reward_normalization: dict | None, model_kind: str = REWARD,
              token_scores: dict | None = None) -> transformers.PretrainedConfig:
    """The Hugging Face config of `model` (any checkpoint we wrote): `*ForSequenceClassification`
    or `*ForTokenClassification` for a reward model (by its head), `*ForCausalLM` for a policy
    (`model_kind`)."""
    fam = FAMILIES.get(model.family)
    problems = [f"model.{name}={getattr(model, name)!r} (export needs {want!r})"
                for name, want in (("normalization", "RMSNorm"), ("activation", "swiglu"),
                                   ("position_embedding_type", "rope"), ("add_bias_linear", False))
                if getattr(model, name) != want]
    if fam is None:
        problems.append(f"model.family={model.family!r} (one of {', '.join(FAMILIES)})")
    elif model.add_qkv_bias != (fam.model_type == "qwen2"):
        problems.append(f"model.add_qkv_bias={model.add_qkv_bias} does not fit model.family="
                        f"{model.family!r} (q/k/v biases are Qwen2's)")
    policy = model_kind == POLICY
    if not policy and model.head == "token" and model.num_labels not in TOKEN_LABELS:
        problems.append(f"model.num_labels={model.num_labels} with model.head='token' (a token classifier "
                        "has 2 or 3 classes)")
    if problems:
        raise CheckpointError("this model has no Hugging Face counterpart:\n  " + "\n  ".join(problems))
    shapes = Shapes.of(model)
    fields = dict(
        architectures=[fam.architecture + ("ForCausalLM" if policy else HF_HEADS[model.head])],
        vocab_size=vocab_size,
        hidden_size=model.hidden_size,
        intermediate_size=model.ffn_hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        num_key_value_heads=shapes.num_query_groups,
        head_dim=shapes.head_dim,
        hidden_act="silu",
        max_position_embeddings=model.max_sequence_length,
        rms_norm_eps=model.norm_epsilon,
        rope_theta=model.rotary_base,
        rope_scaling=_hf_rope_scaling(model.rope_scaling),
        initializer_range=model.init_method_std,
        tie_word_embeddings=policy and model.tie_word_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        torch_dtype=TORCH_DTYPE_NAMES[dtype],
    )
    if not policy:  # a causal LM's config keeps transformers' default label count
        fields["num_labels"] = model.num_labels
    if not policy and model.head == "token":  # named classes instead of LABEL_0, LABEL_1, ...
        fields["id2label"] = dict(enumerate(TOKEN_LABELS[model.num_labels]))
        fields["label2id"] = {name: i for i, name in fields["id2label"].items()}
    if fam.model_type == "mistral":
        fields["sliding_window"] = model.sliding_window
    if fam.model_type == "qwen2":
        fields["use_sliding_window"] = False
    if reward_normalization and not policy:
        fields["reward_normalization"] = reward_normalization
    if token_scores and not policy and model.head == "token":  # how training read the model, for scoring
        fields["token_scores"] = token_scores
    return transformers.AutoConfig.for_model(fam.model_type, **fields)


def _hf_rope_scaling(scaling: RopeScalingConfig | None) -> dict | None:
    if scaling is None:
        return None
    if scaling.rope_type == "linear":
        return {"rope_type": "linear", "factor": scaling.factor}
    return {"rope_type": "llama3", "factor": scaling.factor, "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings}
