"""verl's reward-model contract, in process: `VerlRewardModel.compute_reward(data)` gives
`rm_scores` as verl's RewardModelWorkers (FSDP and Megatron `compute_reward`) and its reward
loop (`assemble_rm_scores`) do, with the rewards of our `Scorer`.

Input: verl's batch layout. `input_ids` and `attention_mask` (bs, seq) hold a left-padded
prompt then a right-padded response; `responses` (bs, response_length) is the response part.
`position_ids` is accepted but not read: the scorer rebuilds the rows and their positions.
Output: float32 `rm_scores` (bs, response_length) on the CPU, zero except at each response's
last valid token (`valid_response_length - 1`), where verl's reward managers read it.

Which tokens are scored:
- same tokenizer (no policy tokenizer, or one with the reward model's fingerprint): the row's
  valid ids as they are, ending in exactly one EOS as training ends documents, so the reward
  is the one score_rm gives for the same text;
- different tokenizers (verl's FSDP `_switch_chat_template`): the valid response ids are
  decoded by the policy tokenizer with special tokens kept, and trailing copies of its EOS
  text are stripped. With `raw_prompt` messages, (messages, assistant response) is rendered
  by the reward model's chat template. Without them, the prompt is decoded with its special
  tokens skipped (the policy's BOS and chat markers mean nothing to another vocabulary) and
  (prompt, response) is scored as a plain row, which gets the reward model's own special tokens.

A row that cannot be scored (an empty response, too long under the length policy) is never
dropped or given a made-up reward: a ValueError names every such row and why. With a
multi-label model the reward is the label chosen at construction (default the first).

Collective: under TP/PP/DP every rank of the job calls `compute_reward` with the same data,
as verl's Megatron worker does within a model-parallel group; `Scorer.score` deals the rows
to the data-parallel replicas. Errors are found before any collective, alike on every rank.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import PreTrainedTokenizerBase

from megatron_rm.data.tokenize import fingerprint
from megatron_rm.scoring.scorer import Scorer


class VerlRewardModel:
    """A reward model with verl's `compute_reward(data)` interface."""

    def __init__(self, scorer: Scorer, policy_tokenizer: PreTrainedTokenizerBase | None = None, label: int = 0):
        if scorer.token_head:  # its reward is an aggregate over steps or tokens, not one value at the EOS
            raise ValueError(f"{scorer.model.name} is a token-head model (outcome or process rewards); the verl "
                             "adapter reads sequence rewards: serve it with tools/serve_rm.py instead")
        if not 0 <= label < scorer.num_labels:
            raise ValueError(f"label={label} is not one of the model's {scorer.num_labels} label(s)")
        reward_tokenizer = scorer.model.tokenizer
        same = policy_tokenizer is None or fingerprint(policy_tokenizer) == fingerprint(reward_tokenizer)
        self.scorer, self.label = scorer, label
        self.policy_tokenizer = None if same else policy_tokenizer
        """None when the policy's ids can be scored as they are."""

    def compute_reward(self, data, raw_prompts=None):
        """`rm_scores` for a verl `DataProto`, a `TensorDict` or a mapping of tensors.

        `raw_prompts` (one message list per row) defaults to the DataProto's
        `non_tensor_batch["raw_prompt"]`; it is used only when the tokenizers differ.
        Returns a verl `DataProto` when verl is importable, else a `tensordict.TensorDict`.
        """
        batch = data.batch if hasattr(data, "non_tensor_batch") else data
        if raw_prompts is None:
            raw_prompts = getattr(data, "non_tensor_batch", {}).get("raw_prompt")
        input_ids, mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
        response_length = batch["responses"].shape[-1]
        valid = mask[:, -response_length:].sum(-1)
        problems = {row: problem for row in range(len(input_ids))
                    if (problem := self._problem(input_ids[row, -response_length:], mask[row, -response_length:]))}
        rows = [row for row in range(len(input_ids)) if row not in problems]
        if self.policy_tokenizer is None:
            encoded = self.scorer.encoder.token_ids([input_ids[row][mask[row]].tolist() for row in rows])
        else:
            encoded = self.scorer.encoder.texts([self._texts(input_ids[row], mask[row], response_length,
                                                             None if raw_prompts is None else raw_prompts[row])
                                                 for row in rows])
        problems.update({row: item.error for row, item in zip(rows, encoded) if item.ids is None})
        if problems:
            raise ValueError("rows that cannot be scored:\n  " +
                             "\n  ".join(f"row {row}: {problems[row]}" for row in sorted(problems)))
        rewards = self.scorer.score([item.ids for item in encoded])[:, self.label]
        rm_scores = torch.zeros(len(input_ids), response_length, dtype=torch.float32)
        rm_scores[torch.arange(len(input_ids)), valid - 1] = rewards
        return _verl_output(rm_scores)

    def _problem(self, response: torch.Tensor, response_mask: torch.Tensor) -> str | None:
        """Why a row's response cannot be scored, judged on the policy's ids; None when it can."""
        valid = int(response_mask.sum())
        if not response_mask[:valid].all():
            return "the response's attention mask is not right-padded (ones, then zeros)"
        eos = (self.policy_tokenizer or self.scorer.model.tokenizer).eos_token_id
        if all(token == eos for token in response[:valid].tolist()):
            return "empty response: nothing to score"
        return None

    def _texts(self, ids: torch.Tensor, mask: torch.Tensor, response_length: int, raw_prompt) -> tuple:
        """(prompt, response) for the reward model's tokenizer, from the policy's ids."""
        tokenizer = self.policy_tokenizer
        response = ids[-response_length:][mask[-response_length:]].tolist()
        text = _strip_suffix(tokenizer.decode(response, skip_special_tokens=False), tokenizer.eos_token)
        if raw_prompt is not None:
            return tuple(raw_prompt), ({"role": "assistant", "content": text},)
        prompt = ids[:-response_length][mask[:-response_length]].tolist()
        return tokenizer.decode(prompt, skip_special_tokens=True), text


def _strip_suffix(text: str, suffix: str) -> str:
    """`text` without trailing copies of `suffix` (a generation may end in more than one EOS)."""
    while suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    return text


def _verl_output(rm_scores: torch.Tensor):
    """verl's own `DataProto` when verl is installed (a broken install fails loudly here),
    else the `TensorDict` a DataProto's `.batch` would hold."""
    if importlib.util.find_spec("verl") is not None:
        from verl import DataProto

        return DataProto.from_dict(tensors={"rm_scores": rm_scores})
    from tensordict import TensorDict

    return TensorDict({"rm_scores": rm_scores}, batch_size=[len(rm_scores)])
