"""Hugging Face `config.json` <-> our ModelConfig, refusing what the model cannot reproduce.

A converted model must compute what `transformers` computes, so every field
that would change the result and that we do not implement stops the import
with the field and its value named, instead of being silently ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from megatron_rm.config import POLICY, REWARD, ModelConfig
from megatron_rm.convert.families import FAMILIES, Family, Shapes, family
from megatron_rm.convert.hf_rope import legacy_rope_keys, rope_settings
from megatron_rm.errors import CheckpointError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TORCH_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
HF_HEADS = {"sequence": "ForSequenceClassification", "token": "ForTokenClassification"}
"""The Hugging Face class of each reward head (`ModelConfig.head`), after the family's stem; both
name their head `score`. A policy is a `*ForCausalLM`."""
SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
"""Fields a config must state: any other absent field takes transformers' default, as loading does."""
TOKEN_LABELS = {2: ("negative", "positive"), 3: ("negative", "neutral", "positive")}
"""A token head's class names by class count: negative first, positive last, the order
`step_rewards.positive_probability` reads."""


def model_config(hf: dict, source: Path, *, num_labels: int, head_bias: bool, head_init_std: float | None,
                 head: str = "sequence", tie_word_embeddings: bool = False) -> tuple[Family, ModelConfig]:
    """Our architecture for the Hugging Face config `hf` (read from `source`); `head`: where a
    reward model is read; `tie_word_embeddings`: a policy whose output layer is its embedding.

    Fields are read through the family's own transformers config class, so a key the file leaves
    out takes the default transformers gives it (Mistral's 4096-token sliding window, say), and the
    RoPE settings through `rope_settings`, which reads both generations' spellings.
    """
    fam = family(hf.get("model_type"), str(source))
    absent = [key for key in SHAPE_KEYS if key not in hf]
    if absent:
        raise CheckpointError(f"{source}: {', '.join(absent)} missing: the model's shape is not in the file "
                              f"(transformers would take the defaults of its {fam.architecture} config class)")
    rotary_base, rope_scaling = rope_settings(hf, source)
    read = _transformers_config(fam, hf, source)

    def refuse(field: str, why: str) -> None:
        raise CheckpointError(f"{source}: {field}={getattr(read, field, hf.get(field))!r} is not supported: {why}")

    if read.hidden_act != "silu":
        refuse("hidden_act", "the MLP is SwiGLU (silu)")
    for field in ("attention_bias", "mlp_bias"):
        if getattr(read, field, False):
            refuse(field, "only Qwen2's q/k/v biases are implemented")
    if getattr(read, "use_sliding_window", False):
        refuse("use_sliding_window", "per-layer sliding windows are not implemented")
    if any(kind != "full_attention" for kind in getattr(read, "layer_types", None) or ()):
        refuse("layer_types", "every layer attends in full (Mistral's one window for all layers aside)")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        refuse("partial_rotary_factor", "rotary embeddings span the whole head")
    heads = read.num_attention_heads
    head_dim = getattr(read, "head_dim", None)
    model = ModelConfig(
        tokenizer="tokenizer",
        vocab_size=read.vocab_size,
        family=fam.model_type,
        num_layers=read.num_hidden_layers,
        hidden_size=read.hidden_size,
        num_attention_heads=heads,
        num_query_groups=read.num_key_value_heads or heads,
        kv_channels=head_dim if head_dim and head_dim != read.hidden_size // heads else None,
        ffn_hidden_size=read.intermediate_size,
        max_sequence_length=read.max_position_embeddings,
        normalization="RMSNorm",
        norm_epsilon=read.rms_norm_eps,
        activation="swiglu",
        position_embedding_type="rope",
        rotary_base=rotary_base,
        rope_scaling=rope_scaling,
        sliding_window=read.sliding_window if fam.model_type == "mistral" else None,
        add_bias_linear=False,
        add_qkv_bias=fam.model_type == "qwen2",
        init_method_std=read.initializer_range,
        num_labels=num_labels,
        head=head,
        head_bias=head_bias,
        head_init_std=head_init_std if head_init_std is not None else read.initializer_range,
        tie_word_embeddings=tie_word_embeddings,
    )
    return fam, model


def _transformers_config(fam: Family, hf: dict, source: Path) -> transformers.PretrainedConfig:
    """`hf` as the family's transformers config class reads it: defaults for absent keys, derived
    fields (`head_dim`, `num_key_value_heads`, Qwen2's `layer_types`) filled in as loading would."""
    try:
        return transformers.AutoConfig.for_model(fam.model_type).__class__.from_dict(hf)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{source}: transformers cannot read it as a {fam.architecture} config: "
                              f"{error}") from None


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
        **legacy_rope_keys(model.rope_scaling, model.rotary_base),  # transformers 5 makes rope_parameters of them
        initializer_range=model.init_method_std,
        tie_word_embeddings=policy and model.tie_word_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        dtype=TORCH_DTYPE_NAMES[dtype],
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


def save_config(config: transformers.PretrainedConfig, model: ModelConfig, folder: Path) -> None:
    """Write `config` as `folder/config.json`, read alike by transformers 5 and 4.x.

    transformers 5 writes RoPE only as `rope_parameters`, which 4.x does not read: it would
    build the model with theta 10000 and no scaling. The older top-level keys go beside it, as
    `rope_settings` accepts (both spellings, agreeing) and transformers 5 reads too.
    """
    config.save_pretrained(folder)
    path = Path(folder) / "config.json"
    fields = json.loads(path.read_text())
    fields.update(legacy_rope_keys(model.rope_scaling, model.rotary_base))
    path.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
