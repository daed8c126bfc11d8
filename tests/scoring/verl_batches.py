"""Batches laid out as verl lays them out, for the verl adapter's tests."""

from __future__ import annotations

import torch
from tensordict import TensorDict


def verl_batch(prompts: list[list[int]], responses: list[list[int]], pad: int, *, prompt_width: int = 32,
               response_width: int = 16) -> TensorDict:
    """Prompts left-padded to `prompt_width`, responses right-padded to `response_width`,
    position ids from the mask (cumsum - 1, clipped at 0)."""
    ids, mask = [], []
    for prompt, response in zip(prompts, responses):
        left, right = prompt_width - len(prompt), response_width - len(response)
        ids.append([pad] * left + prompt + response + [pad] * right)
        mask.append([0] * left + [1] * (len(prompt) + len(response)) + [0] * right)
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    return TensorDict({"prompts": ids[:, :prompt_width], "responses": ids[:, prompt_width:], "input_ids": ids,
                       "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clip(min=0)},
                      batch_size=[len(ids)])
