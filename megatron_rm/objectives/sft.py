"""Supervised fine-tuning: a policy's next-token loss on the response tokens of each example."""

from __future__ import annotations

import math

import torch

from megatron_rm.model.policy import forward_logits
from megatron_rm.model.vocab_parallel import token_logprobs
from megatron_rm.objectives.base import Objective


def next_token_targets(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask), both (rows, seq): position t predicts the token at t + 1, and is a loss
    term when that token is a response token of the same document.

    So the prompt's last token predicts the response's first, the response's last token
    predicts the EOS that ends it, and no position predicts across a packed document's end,
    into padding, or a prompt token. The last column has nothing after it (its target is a
    placeholder, masked).
    """
    if batch.response_mask is None:
        raise ValueError("the batch has no response mask: its store records no prompt lengths")
    mask = batch.attention_mask
    following = torch.zeros_like(mask, dtype=torch.bool)
    following[:, :-1] = batch.response_mask[:, 1:] & (mask[:, 1:] == mask[:, :-1]) & (mask[:, :-1] > 0)
    targets = torch.zeros_like(batch.input_ids)
    targets[:, :-1] = batch.input_ids[:, 1:]
    return targets, following


class NextTokenSFT(Objective):
    """The summed negative log-likelihood of every response token given everything before it; one
    loss term per target token, so megatron's per-token normalisation makes the loss the mean
    NLL per response token of the global batch, however it is split."""

    model_kind = "policy"
    grouping = "demonstrations"

    def forward(self, model, batch) -> torch.Tensor:
        return forward_logits(model, batch)

    def __call__(self, batch, logits: torch.Tensor):
        if self.vocab_size is None:
            raise ValueError("loss.type=sft needs the policy's vocabulary size")
        targets, mask = next_token_targets(batch)
        logprobs = token_logprobs(logits, targets, self.vocab_size)
        # torch.where, not a product: a masked position's value never reaches the sum or its gradient.
        loss_sum = torch.where(mask, -logprobs, 0.0).sum()
        terms = mask.sum()
        sums = self.layout.pack(self.batch_sums(batch, loss_sum, terms))
        return loss_sum, terms.to(torch.int), {"sums": sums}

    def summarize(self, sums: torch.Tensor) -> dict:
        """The common means, with `loss` the mean NLL per target token, its `perplexity`, and
        `target_tokens` (the loss's terms)."""
        summary = super().summarize(sums)
        summary["target_tokens"] = int(self.layout.unpack(sums)["loss_terms"])
        if "loss" in summary:
            summary["perplexity"] = math.exp(min(summary["loss"], 700.0))
        return summary

    def data_problem(self, store) -> str | None:
        if not store.has_prompt_lengths():
            return ("needs each document's prompt length, and this token store records none (made by an "
                    "older version): rebuild it from the data files")
        if (store.group_sizes() != 1).any():
            return ("trains on one response per example, and this token store holds compared responses "
                    "(made for reward training): rebuild it from the data files for tools/train_sft.py")
        return None
