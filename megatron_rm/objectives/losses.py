"""Preference losses: pure functions on reward tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pair -log sigmoid(r_chosen - r_rejected - margin).

    The margin (Llama 2's preference-strength margin; 0 without one) asks the
    chosen reward to lead by at least that much before the loss fades.

    `logsigmoid` stays finite for any margin: about -margin for a large negative
    margin and exp(-margin) for a large positive one, where log(sigmoid(x))
    would round to log(0) or log(1).
    """
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin
    return -F.logsigmoid(difference)


def centering_penalty(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair (r_chosen + r_rejected)**2.

    Reward centering (Eisenstein et al. 2023, "Helping or Herding"): the
    Bradley-Terry loss only sees reward differences, so the mean reward drifts
    freely; the training loss adds `coef * mean` of this penalty to hold each
    pair's rewards around zero, which makes rewards comparable across prompts.
    """
    return (chosen_rewards + rejected_rewards) ** 2


def plackett_luce_loss(rewards: torch.Tensor, group_sizes: torch.Tensor) -> torch.Tensor:
    """Per-group negative log-likelihood of a ranking under Plackett-Luce.

    `rewards` is 1-D: the documents of each group consecutively, the groups one
    after another, each group ranked best first. `group_sizes` (1-D ints) holds
    each group's K >= 2; groups of different K may be mixed. For a group r_0..r_{K-1}:

        loss = sum_{i=0}^{K-2} [ logsumexp(r_i, ..., r_{K-1}) - r_i ]

    At K = 2 this is bradley_terry_loss(r_0, r_1).
    """
    if rewards.dim() != 1 or group_sizes.dim() != 1:
        raise ValueError(f"rewards and group_sizes must be 1-D, got shapes "
                         f"{tuple(rewards.shape)} and {tuple(group_sizes.shape)}")
    sizes = group_sizes.to(device=rewards.device, dtype=torch.long)
    sizes_on_cpu = sizes.cpu()  # the one host sync: the padded width is a shape
    if len(sizes_on_cpu) == 0 or int(sizes_on_cpu.min()) < 2 or int(sizes_on_cpu.sum()) != len(rewards):
        raise ValueError(f"group_sizes must be >= 2 and sum to the {len(rewards)} rewards, "
                         f"got {sizes_on_cpu.tolist()}")
    num_groups, widest = len(sizes), int(sizes_on_cpu.max())

    group = torch.repeat_interleave(torch.arange(num_groups, device=rewards.device), sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(len(rewards), device=rewards.device) - starts[group]
    # Worst first, so a row's running logsumexp from column 0 is the logsumexp of
    # "this document and every one ranked below it", and the padding (columns >= K)
    # comes after every real column and never enters a real term. So any finite
    # padding will do; 0 rather than -inf keeps inf - inf out of the backward pass.
    column = sizes[group] - 1 - rank
    worst_first = rewards.new_zeros(num_groups, widest).index_put((group, column), rewards)
    tail_logsumexp = torch.logcumsumexp(worst_first, dim=1)
    columns = torch.arange(widest, device=rewards.device)
    # Column 0 (the worst document) contributes logsumexp(r) - r = 0: skip it.
    real_term = (columns >= 1) & (columns < sizes[:, None])
    terms = torch.where(real_term, tail_logsumexp - worst_first, torch.zeros_like(worst_first))
    return terms.sum(dim=1)


def divergence_token_loss(
    chosen_values: torch.Tensor,
    rejected_values: torch.Tensor,
    chosen_ids: torch.Tensor,
    rejected_ids: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
) -> torch.Tensor:
    """Per-pair token-level loss from where the two responses diverge (DeepSpeed-Chat step 2).

    Inputs are (pairs, seq): per-token values and token ids of the chosen and
    the rejected document, both starting at column 0 and right-padded; lengths
    count real tokens. With e = min(len_c, len_r) and d the first position
    t < e where the ids differ:

        loss = mean over d <= t < e of -logsigmoid(v_c[t] - v_r[t])

    DeepSpeed-Chat (`RewardModel.forward`) ends the region at max(len_c, len_r),
    comparing the longer answer's tokens with the shorter one's padding; this
    region never includes padding. Both documents end in their own EOS and
    differ, so d < e; a pair with d == e (one a prefix of the other) raises
    ValueError naming the pair.
    """
    if not (chosen_values.shape == rejected_values.shape == chosen_ids.shape == rejected_ids.shape):
        raise ValueError(f"values and ids must share one (pairs, seq) shape, got "
                         f"{[tuple(t.shape) for t in (chosen_values, rejected_values, chosen_ids, rejected_ids)]}")
    positions = torch.arange(chosen_ids.shape[1], device=chosen_ids.device)
    end = torch.minimum(chosen_lengths, rejected_lengths).to(chosen_ids.device)
    differs = (chosen_ids != rejected_ids) & (positions < end[:, None])
    diverged = differs.any(dim=1)
    if not bool(diverged.all()):
        prefix_pairs = torch.nonzero(~diverged).flatten().tolist()
        raise ValueError(f"pairs {prefix_pairs}: one document is a prefix of the other "
                         f"(no differing token before the shorter one ends)")
    start = differs.int().argmax(dim=1)  # argmax returns the first maximum: the first difference
    region = (positions >= start[:, None]) & (positions < end[:, None])
    # Mask the difference before logsigmoid, so padding values (even inf) get a gradient of exactly 0.
    difference = torch.where(region, chosen_values - rejected_values, torch.zeros_like(chosen_values))
    per_token = torch.where(region, -F.logsigmoid(difference), torch.zeros_like(difference))
    return per_token.sum(dim=1) / region.sum(dim=1)


def attribute_mse_loss(predictions: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of (prediction - target)**2 over labelled entries, number of labelled entries).

    `predictions` and `targets` are (docs, labels); NaN in `targets` marks a
    missing label, which contributes nothing to either value. Returning the sum
    and the count lets the caller divide once by the count of the whole batch.
    """
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ")
    labelled = ~torch.isnan(targets)
    # Zero the error before squaring: squaring NaN and masking after would send NaN gradients back.
    error = torch.where(labelled, predictions - torch.where(labelled, targets, 0.0), 0.0)
    return (error ** 2).sum(), labelled.sum()
