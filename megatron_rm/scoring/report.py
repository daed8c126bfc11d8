"""The evaluation report of a reward model on a preference set, from rewards already computed.

Every ordered pair (i < j) of a group's responses, best first, is one pair: accuracy
(a tie is wrong), margin, mean rewards and calibration come from `megatron_rm.objectives.metrics`,
so they are exactly the numbers training logs for the same pairs. Groups of more than two
responses also get RewardBench-2's best-of-K accuracy, and data whose subsets are
RewardBench's gets its section scores and leaderboard average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations

import torch

from megatron_rm.objectives.metrics import calibration_sums, expected_calibration_error, pair_sums, summarize
from megatron_rm.scoring.rewardbench import is_rewardbench, leaderboard_average, section_scores

OVERALL = "overall"


@dataclass(frozen=True)
class EvaluatedGroup:
    """One row of a preference set: its subset (None: no subset) and its responses' rewards, best first.

    A pair is [chosen, rejected]; a ranking of K responses has K entries.
    """

    subset: str | None
    rewards: list[float]


@dataclass(frozen=True)
class ReliabilityBin:
    """Pairs whose confidence max(p, 1 - p), p = sigmoid(r_i - r_j), falls in [lower, upper)."""

    lower: float
    upper: float
    count: int
    confidence: float
    """Mean confidence; NaN when the bin is empty."""
    accuracy: float
    """Fraction of the bin's pairs ordered right; NaN when the bin is empty."""


@dataclass
class Report:
    """Metrics per subset (first-seen order) and overall; each holds groups, pairs, accuracy, margin,
    chosen_reward, rejected_reward, ece, best_of_k when it has groups of more than two responses,
    and ties (pairs with equal rewards, counted wrong in accuracy) when asked for."""

    subsets: dict[str, dict[str, float]]
    overall: dict[str, float]
    reliability: list[ReliabilityBin]
    """Overall calibration bins, for the reliability diagram."""
    chosen_rewards: list[float] = field(repr=False)
    """The better member's reward of every pair (for the histograms)."""
    rejected_rewards: list[float] = field(repr=False)
    """The worse member's reward of every pair."""
    rewardbench: dict[str, float] | None = None
    """RewardBench section scores and "average"; None unless the subsets are RewardBench's."""

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None. The per-pair rewards stay out (they are as long as the data)."""
        found = {"overall": self.overall, "subsets": self.subsets,
                 "reliability": [asdict(one) for one in self.reliability]}
        if self.rewardbench is not None:
            found["rewardbench"] = self.rewardbench
        return _without_nan(found)


def best_of_k_accuracy(rewards: Sequence[float]) -> float:
    """RewardBench-2's score of one group: 1 / (how many responses share the top reward) when the
    best response has the top reward, else 0. Ties share the credit instead of all winning."""
    top = max(rewards)
    if rewards[0] != top:
        return 0.0
    return 1.0 / sum(reward == top for reward in rewards)


def evaluate(groups: Sequence[EvaluatedGroup], bins: int = 10, ties: bool = False) -> Report:
    """The report of `groups`. Groups without a subset count only in "overall". `ties`: each
    row also counts its tied pairs (a judge's preference of exactly 0.5)."""
    if not groups:
        raise ValueError("no group to evaluate")
    short = next((group for group in groups if len(group.rewards) < 2), None)
    if short is not None:
        raise ValueError(f"a group needs at least 2 responses to compare, got {short}")
    by_subset: dict[str, list[EvaluatedGroup]] = {}
    for group in groups:
        if group.subset is not None:
            by_subset.setdefault(group.subset, []).append(group)
    subsets = {name: _metrics(members, bins, ties)[0] for name, members in by_subset.items()}
    overall, calibration, (chosen, rejected) = _metrics(groups, bins, ties)
    report = Report(subsets, overall, _reliability(calibration), chosen.tolist(), rejected.tolist())
    if is_rewardbench(group.subset for group in groups):
        sections = section_scores({name: row["accuracy"] for name, row in subsets.items()})
        report.rewardbench = {**sections, "average": leaderboard_average(sections)}
    return report


def _pairs(groups: Sequence[EvaluatedGroup]) -> tuple[torch.Tensor, torch.Tensor]:
    better, worse = zip(*(pair for group in groups for pair in combinations(group.rewards, 2)))
    return torch.tensor(better, dtype=torch.float64), torch.tensor(worse, dtype=torch.float64)


def _metrics(groups: Sequence[EvaluatedGroup], bins: int, ties: bool = False):
    chosen, rejected = _pairs(groups)
    calibration = calibration_sums(chosen, rejected, bins)
    row = {"groups": len(groups), **summarize(pair_sums(chosen, rejected)),
           "ece": expected_calibration_error(calibration)}
    if ties:
        row["ties"] = int((chosen == rejected).sum())
    ranked = [group.rewards for group in groups if len(group.rewards) > 2]
    if ranked:
        row["best_of_k"] = sum(map(best_of_k_accuracy, ranked)) / len(ranked)
    return row, calibration, (chosen, rejected)


def _reliability(calibration: torch.Tensor) -> list[ReliabilityBin]:
    per_bin = calibration.view(-1, 3).tolist()
    width = 0.5 / len(per_bin)
    return [ReliabilityBin(lower=round(0.5 + b * width, 12), upper=round(0.5 + (b + 1) * width, 12), count=int(count),
                           confidence=confidence / count if count else math.nan,
                           accuracy=correct / count if count else math.nan)
            for b, (count, confidence, correct) in enumerate(per_bin)]


def _without_nan(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nan(item) for item in value]
    return value


def format_table(report: Report) -> str:
    """A row per subset, then "overall"; RewardBench's sections and average below when present."""
    rows = {**report.subsets, OVERALL: report.overall}
    names = ["groups", "pairs", "accuracy", "margin", "ece"]
    names += [name for name in ("ties", "best_of_k") if any(name in row for row in rows.values())]
    columns = [(name, max(len(name), 8)) for name in names]
    first = max(len("subset"), *map(len, rows))
    lines = [f"{'subset':<{first}} " + " ".join(f"{name:>{width}}" for name, width in columns)]
    for subset, row in rows.items():
        lines.append(f"{subset:<{first}} " + " ".join(f"{_cell(row.get(name)):>{width}}" for name, width in columns))
    if report.rewardbench is not None:
        first = max(len("RewardBench"), *map(len, report.rewardbench))
        lines += ["", f"{'RewardBench':<{first}} {'score':>8}"]
        lines += [f"{section:<{first}} {_cell(score):>8}" for section, score in report.rewardbench.items()]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
