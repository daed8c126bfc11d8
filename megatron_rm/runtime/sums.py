"""Sums that add up exactly across micro-batches and data-parallel ranks.

A rank reports float64 sums (counts, sums of values, sums of squares), never means: they add
up element-wise across micro-batches and ranks in one all-reduce of one vector, and means and
variances are divided out of the totals once at the end. Averaging per-rank means instead
would weight a rank with few values like one with many.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist


class SumLayout:
    """Named fields of one float64 vector of sums, in the order given.

    Each field's offset follows from the widths of the fields before it, so code
    reads and writes the vector by name only.
    """

    def __init__(self, widths: Mapping[str, int]):
        self.fields: dict[str, slice] = {}
        start = 0
        for name, width in widths.items():
            if not isinstance(width, int) or width < 1:
                raise ValueError(f"field {name!r} must be at least 1 value wide, got {width!r}")
            self.fields[name] = slice(start, start + width)
            start += width
        self.size = start

    def pack(self, values: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
        """The float64 vector holding `values` by name (detached); fields not given are 0.

        The vector lives on the device of the first tensor among `values` (CPU without one).
        """
        unknown = sorted(set(values) - set(self.fields))
        if unknown:
            raise ValueError(f"fields {unknown} are not in the layout {list(self.fields)}")
        device = next((v.device for v in values.values() if isinstance(v, torch.Tensor)), None)
        sums = torch.zeros(self.size, dtype=torch.float64, device=device)
        for name, value in values.items():
            field = sums[self.fields[name]]
            value = torch.as_tensor(value).detach()
            if value.numel() != field.numel():
                raise ValueError(f"field {name!r} holds {field.numel()} values, got {value.numel()}")
            field.copy_(value.reshape(-1))
        return sums

    def unpack(self, sums: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each field of `sums` by name (views, 1-D)."""
        if tuple(sums.shape) != (self.size,):
            raise ValueError(f"the layout holds {self.size} values, got shape {tuple(sums.shape)}")
        return {name: sums[where] for name, where in self.fields.items()}


def all_reduce_sums(sums: torch.Tensor, group=None) -> torch.Tensor:
    """`sums` added up element-wise over every rank of `group`, in place; unchanged without a
    group or in a group of one rank."""
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(sums, group=group)
    return sums


def moment_sums(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (count, sum, sum of squares) of `values` along its first dimension (detached):
    scalars for a 1-D tensor, one per column for a (rows, columns) one."""
    values = values.detach().double()
    count = torch.tensor(float(values.shape[0]), dtype=torch.float64, device=values.device)
    return count, values.sum(dim=0), values.square().sum(dim=0)


def mean_variance(count: torch.Tensor | float, total: torch.Tensor,
                  squares: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance (divided by the count) from summed `moment_sums`, element-wise;
    NaN for both when the count is 0."""
    mean = total / count
    # E[x^2] - E[x]^2 can round a tiny bit below zero when every value is (nearly) equal.
    return mean, (squares / count - mean * mean).clamp(min=0.0)


@dataclass(frozen=True)
class Moments:
    """Count, mean and population variance of values over every rank of a group (`moments`)."""

    count: float
    mean: float
    """NaN without values."""
    variance: float
    """NaN without values."""


def moments(parts: list[torch.Tensor], group=None) -> Moments:
    """`Moments` of every value in `parts` (tensors of any shape, on one device) over every rank of
    `group`: each part's `moment_sums` are added up in float64, then all-reduced once."""
    sums = torch.zeros(3, dtype=torch.float64, device=parts[0].device)
    for part in parts:
        sums += torch.stack(moment_sums(part.reshape(-1)))
    count, total, squares = all_reduce_sums(sums, group).cpu()
    mean, variance = mean_variance(count, total, squares)
    return Moments(float(count), float(mean), float(variance))
