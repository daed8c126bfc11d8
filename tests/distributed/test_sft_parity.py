"""SFT at TP1, TP2, PP2 and DP2 from one policy checkpoint: the same per-token losses, gradient
norms and evaluation, with padded and with packed micro-batches.

Real torchrun jobs over gloo run sft_parity_worker.py: one rank makes the checkpoint and the
single-process reference, one 2-rank job runs TP2, PP2 and DP2 in turn.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO
from tests.distributed.layout_steps import LAYOUTS, layout_runs

pytestmark = pytest.mark.slow  # real torchrun jobs

WORKER = REPO / "tests" / "distributed" / "sft_parity_worker.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return layout_runs(tmp_path_factory.mktemp("sft_parity"), WORKER)


def _tensor(values):
    return torch.tensor(values, dtype=torch.float64)


def test_packed_training_follows_padded_training_on_one_rank(runs):
    reference = runs["tp1"][0]
    assert reference["packed"]["terms"] == reference["padded"]["terms"]
    torch.testing.assert_close(_tensor(reference["packed"]["losses"]), _tensor(reference["padded"]["losses"]),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_training_steps_follow_the_single_rank_reference(runs, layout):
    reference = runs["tp1"][0]["padded"]
    losses = _tensor(reference["losses"])
    assert len(losses) == 4 and losses.unique().numel() == 4  # the weights do move
    assert len(runs[layout]) == 2
    for rank in runs[layout]:
        for kind in ("padded", "packed"):
            got = rank[kind]
            assert got["terms"] == reference["terms"]
            torch.testing.assert_close(_tensor(got["losses"]), losses, rtol=1e-5, atol=0)
            torch.testing.assert_close(_tensor(got["grad_norms"]), _tensor(reference["grad_norms"]),
                                       rtol=1e-4, atol=0)
            torch.testing.assert_close(_tensor([got["eval"]["loss"]]), _tensor([reference["eval"]["loss"]]),
                                       rtol=1e-5, atol=0)
