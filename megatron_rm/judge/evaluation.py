"""`tools/eval_rm.py --judge`: a judge evaluated on a preference set like a reward model, in the
same report (`scoring.report`), so the two compare side by side.

A pair's rewards are [logit(preference), 0]. The report's accuracy counts chosen > rejected, so
preference > 0.5; a preference of exactly 0.5 is a tie, counted wrong and reported (`ties`).
Its calibration reads p = sigmoid(chosen - rejected), which is the preference itself, so the
ECE is the preference's; its margin is the mean log-odds. Rows too long for the model are
left out and counted, as the reward model's are.
"""

from __future__ import annotations

import math

from megatron_rm.data.rows import RowProblem
from megatron_rm.data.sources import RawRow
from megatron_rm.judge.judge import Judge, verdict
from megatron_rm.scoring.evaluation import evaluate_rows
from megatron_rm.scoring.report import Report

LOG_ODDS_LIMIT = 50.0
"""|logit| kept below this, so a preference of 0 or 1 stays finite; sigmoid(50) is 1.0 in float64."""


def log_odds(p: float) -> float:
    """logit(p) = log(p / (1 - p)), exactly 0 at 0.5 (so a tie stays a tie), within the limit."""
    if p <= 0.0 or p >= 1.0:
        return math.copysign(LOG_ODDS_LIMIT, p - 0.5)
    return max(-LOG_ODDS_LIMIT, min(LOG_ODDS_LIMIT, math.log(p / (1.0 - p))))


def evaluate_judge_file(path: str, judge: Judge, *, on_invalid: str = "error",
                        bins: int = 10) -> tuple[Report, dict] | None:
    """The report of `judge` on the pairs of `path` and what was read, on rank 0 (None elsewhere).
    Collective: every rank calls it."""
    def documents(raw: RawRow):
        (found,) = judge.documents([raw])
        too_long = isinstance(found, RowProblem) and found.reason == "too_long"
        return found.reason if too_long else found

    return evaluate_rows(path, documents, lambda ids: judge.label_logprobs(ids).tolist(),
                         rewards=lambda values: [log_odds(verdict(*values).preference), 0.0],
                         on_invalid=on_invalid, bins=bins, ties=True)
