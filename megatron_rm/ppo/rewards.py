"""A reward model's scores for a run: a reward model inside the job, or a reward server
(`reward_sources` adds reward functions and mixes them).

Either way a response's reward is the reward model's reading of its text, prompt + response
without the stop token, tokenized and ended as the model reads any text (`data.ending`): the job
and a server give the same number for the same rollout, a response cut at max_new_tokens
included (it is read as the text it is; `rollout.no_eos` decides what PPO makes of it). Both give
each response's reward for a replica's micro-batches, on every rank of the replica:
- `ModelRewards`: the job's reward model (through megatron's forward-only schedule at the job's
  layout), standardised with the model's stored statistics when `reward.normalize` is set;
- `ServerRewards`: the replica's first rank sends the texts to `/get_reward`, and passes the
  answer, or the error that ended the retries, to the replica's other ranks; `ReplicasAgree`
  makes every replica stop together when one of them gets the error.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_rm import runtime
from megatron_rm.data import Batch, document_batch, pad_id
from megatron_rm.data.ending import Ending
from megatron_rm.errors import ConfigError, DataError, RewardServerError
from megatron_rm.loading.reward import ScoringModel
from megatron_rm.ppo.forwards import model_scores
from megatron_rm.ppo.remote_reward import RemoteReward
from megatron_rm.runtime.parallel import Layout
from megatron_rm.scoring.inputs import InputEncoder


class ModelRewards:
    def __init__(self, model: ScoringModel, normalize: bool):
        if normalize and model.normalization is None:
            raise ConfigError(f"reward.normalize=true: {model.name} stores no reward statistics (a reward model "
                              "trained by tools/train_rm.py with evaluation data has them)")
        self.model, self.normalize = model, normalize
        # What a reward server loading this model does with a text (`scoring.Scorer`).
        self.encoder = InputEncoder(model.tokenizer, model.config.max_sequence_length, "error",
                                    Ending.of(model.config))

    def __call__(self, batches: list[Batch], texts) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(raw rewards, rewards as PPO takes them) per micro-batch; `texts()` gives every
        micro-batch's texts."""
        pad = pad_id(self.model.tokenizer)
        documents = [document_batch(self._ids(batch), pad) for batch in texts()]
        raw = model_scores(self.model.chunks, documents, self.model.layout)
        if not self.normalize:
            return raw, raw
        # The first label's statistics: PPO takes a multi-label model's first label.
        mean, std = float(self.model.normalization.mean[0]), float(self.model.normalization.std[0])
        return raw, [(r - mean) / std for r in raw]

    def _ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self.encoder.whole_texts(texts)
        for text, one in zip(texts, encoded):
            if one.ids is None:
                raise ConfigError(f"the reward model {self.model.name} cannot read a rollout: {one.error} "
                                  f"(text: {text[:200]!r})")
        return [one.ids for one in encoded]


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


def agree(call, errors: tuple[type[Exception], ...] = (RewardServerError, DataError)):
    """`call()`'s answer on every rank, or its error (one of `errors`) raised on every rank. Each
    data-parallel replica computes its own rewards, so one replica's can fail while another's
    succeed; the ranks agree first (one all-reduce), so no rank goes on into the step's
    collectives while another stops. The error is the first failing rank's, of the same type."""
    answer, failure = None, None
    try:
        answer = call()
    except errors as error:
        failure = error
    world = dist.get_world_size()
    first = torch.tensor([world if failure is None else dist.get_rank()], device=runtime.device())
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    if int(first.item()) == world:
        return answer
    message = [None if failure is None else
               (next(i for i, kind in enumerate(errors) if isinstance(failure, kind)), str(failure))]
    dist.broadcast_object_list(message, src=int(first.item()))
    kind, text = message[0]
    raise errors[kind](text)


class ReplicasAgree:
    """A reward server's answer on every rank, or its error on every rank (`agree`)."""

    def __init__(self, rewards: ServerRewards):
        self.rewards = rewards

    def __call__(self, batches: list[Batch], texts) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return agree(lambda: self.rewards(batches, texts))
