"""Where a PPO run's rewards come from: a reward model inside the job, or a reward server.

Both give each response's reward for a replica's micro-batches, on every rank of the replica:
- `ModelRewards`: the job's reward model at each document's last token (through megatron's
  forward-only schedule at the job's layout), standardised with the model's stored statistics
  when `reward.normalize` is set;
- `ServerRewards`: the replica's first rank sends the texts (prompt + response, without the
  stop token: the server appends the EOS its model scores at) to `/get_reward`, and passes the
  answer, or the error that ended the retries, to the replica's other ranks, so every rank stops
  together when the server fails.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_rm import runtime
from megatron_rm.data import Batch
from megatron_rm.errors import ConfigError, RewardServerError
from megatron_rm.parallel import Layout
from megatron_rm.ppo.remote_reward import RemoteReward
from megatron_rm.ppo.rollout import model_scores
from megatron_rm.scoring.load import ScoringModel


class ModelRewards:
    def __init__(self, model: ScoringModel, normalize: bool):
        if normalize and model.normalization is None:
            raise ConfigError(f"reward.normalize=true: {model.name} stores no reward statistics (a reward model "
                              "trained by tools/train_rm.py with evaluation data has them)")
        self.model, self.normalize = model, normalize

    def __call__(self, batches: list[Batch], texts) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(raw rewards, rewards as PPO takes them) per micro-batch."""
        raw = model_scores(self.model.chunks, batches, self.model.layout)
        if not self.normalize:
            return raw, raw
        # The first label's statistics: PPO takes a multi-label model's first label.
        mean, std = float(self.model.normalization.mean[0]), float(self.model.normalization.std[0])
        return raw, [(r - mean) / std for r in raw]


class ServerRewards:
    def __init__(self, client: RemoteReward, layout: Layout):
        self.client, self.layout = client, layout
        self.group = layout.groups.mp
        self.leader = dist.get_process_group_ranks(self.group)[0]

    def __call__(self, batches: list[Batch], texts) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`texts()` gives every micro-batch's texts; only the replica's first rank calls it."""
        answer: list = [None]
        if dist.get_rank() == self.leader:
            try:
                per_batch = texts()
                flat = self.client.score([text for batch in per_batch for text in batch])
                sizes = [len(batch) for batch in per_batch]
                answer = [("ok", [flat[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(len(sizes))])]
            except RewardServerError as error:
                answer = [("error", str(error))]
        dist.broadcast_object_list(answer, src=self.leader, group=self.group)
        kind, value = answer[0]
        if kind == "error":
            raise RewardServerError(value)
        rewards = [torch.tensor(values, dtype=torch.float32, device=runtime.device()) for values in value]
        return rewards, rewards
