"""Weight-name tables, one per Hugging Face family: the single source of truth for conversion.

One table serves both kinds of model we convert: the reward model
(`*ForSequenceClassification` or `*ForTokenClassification`, its `score` head) and the
policy (`*ForCausalLM`, its `lm_head`). Each rule names one parameter of our model (megatron-core's
local-spec names; the checkpoint's sharded keys follow from the model) and the
Hugging Face tensors it is made of, with how they combine:

- copy:      the same tensor under another name;
- qkv:       q, k and v projections interleaved per query group, the layout of
             megatron's fused `linear_qkv` ([q heads of group 0, k0, v0, q heads of group 1, ...]),
             so that a tensor-parallel split along rows keeps whole groups;
- gate_up:   SwiGLU's gate and up projections stacked [gate; up] into `linear_fc1`
             (megatron applies the activation to the first half);
- embedding: a (vocabulary, hidden) matrix, the input embedding or the policy's
             output layer, padded with zero rows to the model's padded size on
             import and cut back to the real vocabulary on export, so padding
             rows never reach a Hugging Face folder.

`{i}` stands for the layer number. The trunk (`model.` in Hugging Face) is common
to both kinds; a rule marked `only` belongs to one kind's head: `score` for a
reward model, `lm_head` for a policy. A policy with tied embeddings
(`tie_word_embeddings`) has no `lm_head` rule: its output layer is the embedding,
both in Hugging Face and in megatron (`share_embeddings_and_output_weights`).
Adding a family is adding a table here and its config translation in `hf_config.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_rm.config import MODEL_KINDS, POLICY, REWARD, ModelConfig
from megatron_rm.errors import CheckpointError

OUTPUT_LAYER = "output_layer.weight"
"""The policy's output layer: a tensor of its own unless the embeddings are tied."""


@dataclass(frozen=True)
class Rule:
    megatron: str
    hf: tuple[str, ...]
    kind: str = "copy"
    only: str | None = None
    """The model kind whose head this rule maps (None: the trunk, common to both)."""

    def for_layer(self, layer: int) -> Rule:
        return Rule(self.megatron.format(i=layer), tuple(n.format(i=layer) for n in self.hf), self.kind,
                    self.only)

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.megatron


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str
    """Class-name stem: `<stem>ForSequenceClassification`, `<stem>ForCausalLM`."""
    rules: tuple[Rule, ...]

    def rules_for(self, num_layers: int, head_bias: bool, model_kind: str = REWARD,
                  tied: bool = False) -> list[Rule]:
        """Every rule of a `model_kind` model with `num_layers` layers, in checkpoint order.

        `head_bias`: the reward head has a bias; `tied`: the policy's output layer is the
        embedding (no output-layer tensor of its own, on either side).
        """
        if model_kind not in MODEL_KINDS:
            raise ValueError(f"model kind {model_kind!r}: expected one of {', '.join(MODEL_KINDS)}")
        expanded = []
        for rule in self.rules:
            if rule.only not in (None, model_kind):
                continue
            if (rule.megatron == "reward_head.bias" and not head_bias) or (rule.megatron == OUTPUT_LAYER and tied):
                continue
            layers = range(num_layers) if rule.per_layer else [None]
            expanded.extend(rule.for_layer(i) if i is not None else rule for i in layers)
        return expanded


_EMBEDDING = Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "embedding")
_LAYER = (
    Rule("decoder.layers.{i}.input_layernorm.weight", ("model.layers.{i}.input_layernorm.weight",)),
    Rule("decoder.layers.{i}.self_attention.linear_qkv.weight",
         ("model.layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.k_proj.weight",
          "model.layers.{i}.self_attn.v_proj.weight"), "qkv"),
    Rule("decoder.layers.{i}.self_attention.linear_proj.weight", ("model.layers.{i}.self_attn.o_proj.weight",)),
    Rule("decoder.layers.{i}.pre_mlp_layernorm.weight", ("model.layers.{i}.post_attention_layernorm.weight",)),
    Rule("decoder.layers.{i}.mlp.linear_fc1.weight",
         ("model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"), "gate_up"),
    Rule("decoder.layers.{i}.mlp.linear_fc2.weight", ("model.layers.{i}.mlp.down_proj.weight",)),
)
_QKV_BIAS = Rule("decoder.layers.{i}.self_attention.linear_qkv.bias",
                 ("model.layers.{i}.self_attn.q_proj.bias", "model.layers.{i}.self_attn.k_proj.bias",
                  "model.layers.{i}.self_attn.v_proj.bias"), "qkv")
_FINAL = (
    Rule("decoder.final_layernorm.weight", ("model.norm.weight",)),
    # The policy's vocabulary-parallel output layer: padded like the embedding, since
    # megatron gives it the same padded vocabulary (its extra columns' logits are masked).
    Rule(OUTPUT_LAYER, ("lm_head.weight",), "embedding", only=POLICY),
    Rule("reward_head.weight", ("score.weight",), only=REWARD),
    Rule("reward_head.bias", ("score.bias",), only=REWARD),
)

LLAMA = Family("llama", "Llama", (_EMBEDDING, *_LAYER, *_FINAL))
MISTRAL = Family("mistral", "Mistral", (_EMBEDDING, *_LAYER, *_FINAL))
QWEN2 = Family("qwen2", "Qwen2", (_EMBEDDING, *_LAYER, _QKV_BIAS, *_FINAL))

FAMILIES = {family.model_type: family for family in (LLAMA, MISTRAL, QWEN2)}
HEAD_RULES = ("reward_head.weight", "reward_head.bias")
"""Rules whose Hugging Face tensors exist only in a classifier's checkpoint: `score` is the head of
both *ForSequenceClassification and *ForTokenClassification."""


@dataclass(frozen=True)
class Shapes:
    """What the layout transforms need to know about the attention heads."""

    num_query_groups: int
    heads_per_group: int
    head_dim: int

    @classmethod
    def of(cls, model: ModelConfig) -> Shapes:
        heads = model.num_attention_heads
        groups = model.num_query_groups or heads
        return cls(groups, heads // groups, model.kv_channels or model.hidden_size // heads)


def zero_padded(embedding: torch.Tensor, rows: int) -> torch.Tensor:
    """A vocabulary's rows followed by zero rows up to `rows` (our padded vocabulary)."""
    padding = embedding.new_zeros(rows - embedding.shape[0], *embedding.shape[1:])
    return torch.cat([embedding, padding]) if padding.numel() else embedding


def to_megatron(kind: str, tensors: list[torch.Tensor], shapes: Shapes, rows: int | None = None) -> torch.Tensor:
    """Combine the Hugging Face `tensors` of one rule into our parameter (`rows`: padded vocab)."""
    if kind == "copy":
        return tensors[0]
    if kind == "embedding":
        return zero_padded(tensors[0], rows)
    if kind == "gate_up":
        return torch.cat(tensors)
    if kind == "qkv":
        q, k, v = (t.reshape(shapes.num_query_groups, -1, *t.shape[1:]) for t in tensors)
        return torch.cat([q, k, v], dim=1).reshape(-1, *tensors[0].shape[1:])
    raise ValueError(f"unknown rule kind {kind!r}")


def to_hf(kind: str, tensor: torch.Tensor, shapes: Shapes, rows: int | None = None) -> list[torch.Tensor]:
    """Split our parameter back into its rule's Hugging Face tensors (`rows`: real vocab)."""
    if kind == "copy":
        return [tensor]
    if kind == "embedding":
        return [tensor[:rows]]
    if kind == "gate_up":
        return list(tensor.chunk(2))
    if kind == "qkv":
        q_rows = shapes.heads_per_group * shapes.head_dim
        grouped = tensor.reshape(shapes.num_query_groups, q_rows + 2 * shapes.head_dim, *tensor.shape[1:])
        q, k, v = grouped.split([q_rows, shapes.head_dim, shapes.head_dim], dim=1)
        return [t.reshape(-1, *tensor.shape[1:]) for t in (q, k, v)]
    raise ValueError(f"unknown rule kind {kind!r}")


def family_problems(model: ModelConfig, prefix: str = "model") -> list[str]:
    """`model.family` must name a table here: it decides the names the model converts under."""
    if model.family in FAMILIES:
        return []
    return [f"{prefix}.family={model.family!r} must be one of {', '.join(FAMILIES)}"]


def family(model_type: str, source: str) -> Family:
    if model_type not in FAMILIES:
        raise CheckpointError(f"{source}: model_type={model_type!r} is not supported "
                              f"(supported: {', '.join(FAMILIES)})")
    return FAMILIES[model_type]
