"""Core attention on torch's scaled_dot_product_attention, for layers without TransformerEngine.

megatron-core's local `DotProductAttention` materialises the (batch, heads, seq, seq)
score matrix and runs an unfused softmax; on a GPU, torch's SDPA dispatches the same
attention to fused flash / memory-efficient / cuDNN kernels. `SDPAttention` is a
drop-in `core_attention` for megatron's `SelfAttention` (same constructor keywords,
same forward contract) computing what `DotProductAttention` computes.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import is_layer_window_attention
from torch.nn.attention import SDPBackend, sdpa_kernel

# SDPA kernels allowed on the CPU (empty: torch's own choice). The CPU flash kernel
# splits keys into blocks by the padded width, so one document's scores round
# differently (a few ulps) with its batch's padding; the math kernel, like megatron's
# local attention, does not, and on the CPU (development and tests) speed matters less.
CPU_KERNELS: tuple[SDPBackend, ...] = (SDPBackend.MATH,)


class SDPAttention(MegatronModule):
    """softmax(q k^T * scale + mask) v per head, through `F.scaled_dot_product_attention`.

    Inputs and output follow megatron's core-attention contract: query (sq, b, np, hn),
    key / value (sk, b, ng, hn) with ng query groups (query head i reads group
    i // (np / ng), megatron's grouping and SDPA's), attention_mask a boolean tensor
    broadcastable to (b, 1, sq, sk) with True = blocked; returns (sq, b, np * hn). Heads
    are counted from the tensors, so the module sees whatever per-partition heads
    tensor parallelism gives it.

    Matches `DotProductAttention` on:
    - scale: `softmax_scale`, else 1/sqrt(hn). `apply_query_key_layer_scaling` divides
      the scores by the layer number and multiplies them back inside an fp32 softmax,
      a net factor of 1. SDPA's fused kernels accumulate the products in fp32 and its
      math kernel scales q and k before multiplying, so the fp16 overflow that option
      guards against does not arise; the scores are the same.
    - masks: a given mask is applied whatever the layer's mask type (as megatron's
      unfused softmax does); without one, a causal layer is causal (sq == sk) and
      any other type attends everywhere. megatron fills blocked scores with -10000 and
      SDPA with -inf: the same probabilities wherever a query may see at least one
      key. A query that may see none gets megatron's mean of all values but zeros from
      SDPA; `inputs.causal_padding_mask` lets every position see itself, so ours never do.
    - dropout: `attention_dropout` (or the config's) while training, drawn under
      megatron's tensor-parallel RNG tracker unless sequence parallel, as megatron does.
      The dropped positions differ from megatron's (another kernel draws them).

    There is no fallback to `DotProductAttention`'s computation: what SDPA cannot do
    here megatron's local attention refuses too. `attention_bias` and `packed_seq_params`
    raise at forward (the local spec's mask type never asks for packed `thd` input; the
    TE spec handles that). Config options this module does not honour raise at
    construction: context parallelism, sliding-window layers, a softmax other than
    vanilla, qk-clip, and a half-precision softmax (`attention_softmax_in_fp32=False`
    with fp16/bf16; SDPA's kernels keep the softmax in fp32).

    On the CPU, SDPA runs its math kernel (see `CPU_KERNELS`); on a GPU, torch picks.
    Grouped-query attention uses SDPA's `enable_gqa` when no mask is given (the
    flash-kernel case, which reads shared key/value heads in place); with a mask, key
    and value are repeated to np heads first, since not every masked kernel takes
    grouped heads and torch would otherwise drop to its unfused math kernel. One query
    position (a decoding step) reads grouped keys in place whatever the mask (`_one_query`).
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ):
        super().__init__(config=config)
        self.layer_number = max(1, layer_number)
        _refuse_unsupported(config, self.layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        head_dim = config.kv_channels
        self.softmax_scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        # attn_mask_type is unused, as in DotProductAttention: the layer's own type decides.
        if packed_seq_params is not None:
            raise ValueError(
                "SDPAttention takes (seq, batch, heads, dim) inputs with a dense mask, not packed "
                f"{packed_seq_params.qkv_format!r} sequences; those need the TransformerEngine spec")
        if attention_bias is not None:
            raise ValueError("SDPAttention takes no attention_bias (megatron's local attention neither)")
        heads, groups = query.shape[2], key.shape[2]
        if heads % groups:
            raise ValueError(f"{heads} query heads cannot share {groups} key/value groups evenly")

        mask, is_causal = self._sdpa_mask(attention_mask, query.shape[0], key.shape[0])
        dropout_p = self.dropout_p if self.training else 0.0
        if query.shape[0] == 1 and dropout_p == 0:
            return self._one_query(query, key, value, mask)
        enable_gqa = heads != groups and mask is None
        if heads != groups and not enable_gqa:
            key = key.repeat_interleave(heads // groups, dim=2)
            value = value.repeat_interleave(heads // groups, dim=2)

        # (s, b, h, d) -> (b, h, s, d), SDPA's layout; the last dim stays contiguous.
        query, key, value = (t.permute(1, 2, 0, 3) for t in (query, key, value))

        rng = (tensor_parallel.get_cuda_rng_tracker().fork()
               if dropout_p > 0 and not self.config.sequence_parallel else contextlib.nullcontext())
        kernels = (sdpa_kernel(list(CPU_KERNELS))
                   if query.device.type == "cpu" and CPU_KERNELS else contextlib.nullcontext())
        with rng, kernels:
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                scale=self.softmax_scale, enable_gqa=enable_gqa)
        # (b, np, sq, hn) -> (sq, b, np * hn)
        return context.permute(2, 0, 1, 3).reshape(context.shape[2], context.shape[0], -1)

    def _one_query(self, query, key, value, mask) -> torch.Tensor:
        """Attention of one query position: a KV-cached decoding step, at every layer and new
        token. The heads sharing a key/value group become that group's query rows,
        (b, ng, np / ng, hn), so the cached keys and values are read in place instead of
        repeated to np heads; the mask (b, 1, 1, sk) broadcasts over groups and rows. torch
        picks the kernel here on the CPU too: `CPU_KERNELS` keeps a scored document's rounding
        free of its batch's padding, and a decoding step's keys are the whole padded cache
        whatever the kernel (its fused kernel is 2-3x the math kernel's speed here, measured
        with `bench/generate_throughput.py`)."""
        batch, heads, dim = query.shape[1:]
        groups = key.shape[2]
        query = query[0].reshape(batch, groups, heads // groups, dim)
        key, value = (t.permute(1, 2, 0, 3) for t in (key, value))
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.softmax_scale)
        return context.reshape(1, batch, heads * dim)

    def _sdpa_mask(
        self, attention_mask: torch.Tensor | None, sq: int, sk: int
    ) -> tuple[torch.Tensor | None, bool]:
        """(SDPA's boolean mask with True = may attend, is_causal) for megatron's mask."""
        if attention_mask is not None:
            if attention_mask.dtype != torch.bool:
                raise ValueError(
                    f"attention_mask must be boolean (True = blocked), got {attention_mask.dtype}")
            return ~attention_mask, False
        if self.attn_mask_type == AttnMaskType.causal and sq > 1:
            # megatron builds a square causal mask here and refuses anything else.
            if sq != sk:
                raise ValueError(f"causal attention without a mask needs sq == sk, got {sq} and {sk}")
            return None, True
        return None, False

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None) -> dict:
        """Nothing to save: the module holds no state (as DotProductAttention with a vanilla softmax)."""
        return {}


def _refuse_unsupported(config: TransformerConfig, layer_number: int) -> None:
    """Raise for every config option SDPAttention would otherwise silently ignore."""
    problems = []
    if config.context_parallel_size != 1:
        problems.append(f"context_parallel_size={config.context_parallel_size} (needs TransformerEngine)")
    if is_layer_window_attention(config.window_size, config.window_attn_skip_freq, layer_number):
        problems.append(f"window_size={config.window_size} (sliding-window attention)")
    if config.softmax_type != "vanilla":
        problems.append(f"softmax_type={config.softmax_type!r} (only 'vanilla')")
    if config.qk_clip:
        problems.append("qk_clip=True (needs the attention logits' running max)")
    if not config.attention_softmax_in_fp32 and (config.fp16 or config.bf16):
        problems.append("attention_softmax_in_fp32=False with fp16/bf16 (SDPA keeps the softmax in fp32)")
    if problems:
        raise ValueError(
            f"SDPAttention (layer {layer_number}) cannot honour: {'; '.join(problems)}. "
            "Use transformer_impl=local or transformer_engine for these.")
