"""Outcome and process reward models at TP1, TP2, PP2 and DP2 from one checkpoint: the same
per-token losses, gradient norms and evaluation metrics, with padded and with packed micro-batches.

Real torchrun jobs over gloo run token_parity_worker.py: one rank makes the checkpoints and the
single-process reference, one 2-rank job runs TP2, PP2 and DP2 in turn.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO
from tests.distributed.layout_steps import LAYOUTS, layout_runs

pytestmark = pytest.mark.slow  # real torchrun jobs

WORKER = REPO / "tests" / "distributed" / "token_parity_worker.py"
EVAL_METRICS = {"prm": ("loss", "step_accuracy", "ece", "auroc", "first_error_accuracy", "solution_accuracy"),
                "orm": ("loss", "token_accuracy", "ece", "auroc", "solution_accuracy")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return layout_runs(tmp_path_factory.mktemp("token_parity"), WORKER)


def _tensor(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("loss", list(EVAL_METRICS))
def test_packed_training_follows_padded_training_on_one_rank(runs, loss):
    reference = runs["tp1"][0][loss]
    assert reference["packed"]["terms"] == reference["padded"]["terms"]
    torch.testing.assert_close(_tensor(reference["packed"]["losses"]), _tensor(reference["padded"]["losses"]),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("loss", list(EVAL_METRICS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_training_steps_follow_the_single_rank_reference(runs, layout, loss):
    reference = runs["tp1"][0][loss]["padded"]
    losses = _tensor(reference["losses"])
    assert len(losses) == 4 and losses.unique().numel() == 4  # the weights do move
    assert len(runs[layout]) == 2
    for rank in runs[layout]:
        for kind in ("padded", "packed"):
            got = rank[loss][kind]
            assert got["terms"] == reference["terms"]
            torch.testing.assert_close(_tensor(got["losses"]), losses, rtol=1e-5, atol=0)
            torch.testing.assert_close(_tensor(got["grad_norms"]), _tensor(reference["grad_norms"]), rtol=1e-4, atol=0)
            for name in EVAL_METRICS[loss]:
                torch.testing.assert_close(_tensor([got["eval"][name]]), _tensor([reference["eval"][name]]),
                                           rtol=1e-5, atol=1e-12, msg=f"{layout} {kind} eval {name}")
