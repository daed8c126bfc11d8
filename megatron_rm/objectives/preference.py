"""Preference objectives: a scalar reward trained on which response is better.

Bradley-Terry (optionally with each pair's data margin, and with reward
centering) and DeepSpeed-Chat's token-level divergence loss compare
(better, worse) pairs; Plackett-Luce scores each group's whole ranking.
"""

from __future__ import annotations

import torch

from megatron_rm.model.inputs import document_ends
from megatron_rm.objectives import losses
from megatron_rm.objectives.base import RewardObjective, chosen_and_rejected, comparisons, no_terms


class Pairwise(RewardObjective):
    """A loss over the batch's (better, worse) pairs: one term per pair."""

    def data_problem(self, store) -> str | None:
        if not (store.group_sizes() >= 2).any():
            return "compares responses to one prompt, and every group holds a single response"
        return None


class BradleyTerry(Pairwise):
    """-log sigmoid(r_better - r_worse) per pair, plus centering_coef * (r_better + r_worse)^2."""

    centers_rewards = True
    subtracts_margins = False
    """Whether each pair's data margin is subtracted from the reward difference."""

    def loss(self, batch, output, rewards):
        chosen, rejected = chosen_and_rejected(batch, rewards)
        per_pair = losses.bradley_terry_loss(chosen, rejected, batch.margins if self.subtracts_margins else None)
        if self.centering_coef:
            per_pair = per_pair + self.centering_coef * losses.centering_penalty(chosen, rejected)
        return per_pair.sum(), torch.tensor(len(per_pair), device=rewards.device)


class MarginBradleyTerry(BradleyTerry):
    """Bradley-Terry where the better reward must lead by the pair's margin from the data."""

    subtracts_margins = True

    def data_problem(self, store) -> str | None:
        if not store.has_margins():
            return "needs a margin per pair (data.margin_key), and no group has one"
        return super().data_problem(store)


class Divergence(Pairwise):
    """DeepSpeed-Chat's loss over the tokens where each pair's two documents differ.

    The model returns every token's value; a document's reward is the value at its last token.
    """

    token_values = True

    def rewards(self, batch, output):
        return output[document_ends(batch.attention_mask)]

    def loss(self, batch, output, rewards):
        pairs = comparisons(batch)
        better, worse = pairs[:, 0], pairs[:, 1]
        lengths = batch.attention_mask.sum(-1)
        per_pair = losses.divergence_token_loss(
            output[better, :, 0], output[worse, :, 0], batch.input_ids[better], batch.input_ids[worse],
            lengths[better], lengths[worse])
        return per_pair.sum(), torch.tensor(len(per_pair), device=rewards.device)

    def config_problems(self, data, parallel) -> list[str]:
        problems = super().config_problems(data, parallel)
        if data.batching != "bucket":
            problems.append("loss.type=divergence compares chosen and rejected token by token, one "
                            f"document per row: it needs data.batching=bucket (got {data.batching})")
        if parallel.sequence_parallel:
            problems.append("loss.type=divergence reads every token's value: not with "
                            "parallel.sequence_parallel=true")
        return problems


class PlackettLuce(RewardObjective):
    """The likelihood of each group's whole ranking: one term per group of 2 or more documents
    (single responses rank nothing)."""

    def loss(self, batch, output, rewards):
        sizes = batch.group_sizes
        if sizes is None:
            return no_terms(rewards)
        sizes = sizes.to(rewards.device)
        ranked = sizes >= 2
        if not bool(ranked.any()):
            return no_terms(rewards)
        in_ranking = torch.repeat_interleave(ranked, sizes)
        per_group = losses.plackett_luce_loss(rewards[in_ranking, 0], sizes[ranked])
        return per_group.sum(), torch.tensor(len(per_group), device=rewards.device)

    def data_problem(self, store) -> str | None:
        if not (store.group_sizes() > 2).any():
            return ("ranks K-wise groups, and every group is a pair or a single response (on a pair "
                    "Plackett-Luce is Bradley-Terry: use loss.type=bradley_terry)")
        return None
