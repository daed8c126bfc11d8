"""The reward head: a hidden -> num_labels projection split across tensor-parallel ranks."""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import (
    reduce_from_tensor_model_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import (
    ensure_metadata_has_dp_cp_group,
    make_sharded_tensors_for_checkpoint,
)

from megatron_rm import runtime


class RewardHead(MegatronModule):
    """Reads each document's last token and projects it to `num_labels` rewards.

    The weight (num_labels, hidden) is split along the hidden dimension: a TP rank
    holds (num_labels, hidden / tp), dots it with its slice of the hidden state,
    and the partial sums are all-reduced. The projection runs in fp32 whatever the
    model's dtype, since small reward differences decide the loss.
    """

    def __init__(
        self,
        config: TransformerConfig,
        num_labels: int,
        bias: bool,
        init_std: float,
        tp_group: torch.distributed.ProcessGroup,
    ):
        super().__init__(config)
        self.tp_group = tp_group
        tp_size, tp_rank = tp_group.size(), tp_group.rank()
        hidden = config.hidden_size
        # Draw the full weight on the CPU from the shared RNG, then keep this rank's
        # slice: the head is the same at every TP size for the same seed.
        # (On the CPU explicitly, so that a model built under torch.device("meta") for
        # checkpoint conversion still gets its small head.)
        full = torch.empty(num_labels, hidden, dtype=torch.float32, device="cpu")
        torch.nn.init.normal_(full, mean=0.0, std=init_std)
        shard = full.chunk(tp_size, dim=1)[tp_rank].clone()
        device = runtime.device()
        self.weight = torch.nn.Parameter(shard.to(device))
        set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=1, stride=1)
        self.bias = (
            torch.nn.Parameter(torch.zeros(num_labels, dtype=torch.float32, device=device))
            if bias
            else None
        )

    def forward(
        self, hidden_states: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """hidden_states: (seq, batch, hidden), or (seq / tp, batch, hidden) under
        sequence parallelism; rows, cols: (documents,) batch row and position of each
        document's last token. Returns (documents, num_labels) fp32."""
        if self.config.sequence_parallel:
            last_states = self._gather_sequence_parallel_states(hidden_states, rows, cols)
        else:
            last_states = hidden_states[cols, rows]
        return self._project(last_states)

    def token_values(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The head applied at every position: (seq, batch, hidden) -> (seq, batch, num_labels) fp32.
        Not under sequence parallelism (config validation refuses it)."""
        return self._project(hidden_states)

    def _project(self, states: torch.Tensor) -> torch.Tensor:
        local = scatter_to_tensor_model_parallel_region(states, group=self.tp_group)
        partial = local.float() @ self.weight.float().t()
        rewards = reduce_from_tensor_model_parallel_region(partial, group=self.tp_group)
        if self.bias is not None:
            rewards = rewards + self.bias.float()
        return rewards

    def _gather_sequence_parallel_states(self, hidden_states, rows, cols):
        """Fetch the (documents, hidden) last-token states from sequence-split activations.

        Each TP rank holds a contiguous chunk of the sequence; the rank owning a
        document's last token contributes it and the others contribute zeros, so one
        (documents, hidden) all-reduce replaces gathering the whole (seq, batch, hidden)
        tensor. Its backward is the identity: the gradient reaches the owner only.
        """
        chunk = hidden_states.shape[0]
        owned = (cols // chunk == self.tp_group.rank()).unsqueeze(-1)
        local_states = hidden_states[cols % chunk, rows]
        local_states = torch.where(owned, local_states, torch.zeros_like(local_states))
        return reduce_from_tensor_model_parallel_region(local_states, group=self.tp_group)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        return make_sharded_tensors_for_checkpoint(
            self.state_dict(prefix="", keep_vars=True),
            prefix,
            {"weight": 1},
            sharded_offsets,
            tp_group=self.tp_group,
            dp_cp_group=metadata["dp_cp_group"],
        )
