"""tools/train_grpo.py as real torchrun jobs over gloo: GRPO with reward functions mixed with a
reward model, dynamic sampling, the KL in the loss and no critic (none in the checkpoint); the
first update of every step has ratio exactly 1; a run killed with -9 resumes onto the
uninterrupted run's exact metrics (the prompt cursor included); one update agrees at TP2, PP2,
DP2 and TP2xPP2; dynamic sampling that cannot fill a step stops naming its bound."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DEMO, REPO, TORCHRUN, run_command, torchrun
from tests.ppo.checkpoints import save_run_inputs
from tests.ppo.test_train_ppo import _rows, kill_9_then_resume, one_step_at_every_layout

pytestmark = pytest.mark.slow  # real torchrun jobs

TOOL = str(REPO / "tools" / "train_grpo.py")
STEPS = 4
RULE = f"{REPO / 'examples' / 'grpo' / 'rewards.py'}:right_count"
# A reward on which a random policy's groups sometimes tie (all 0 or all 1) and sometimes differ.
THIRDS = "def thirds(prompts, completions, **columns):\n    return [float(len(c) % 3 == 0) for c in completions]\n"


def grpo_inputs(root, **fields) -> tuple:
    """(root, the tiny models): `save_run_inputs(root, **fields)`, with `root/thirds.py` (THIRDS)
    and `root/eval.jsonl` (4 demo eval prompts)."""
    models = save_run_inputs(root, **fields)
    (root / "thirds.py").write_text(THIRDS)
    (root / "eval.jsonl").write_text("".join((DEMO / "data" / "eval.jsonl").read_text().splitlines(keepends=True)[:4]))
    return root, models


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_rank):
    return grpo_inputs(tmp_path_factory.mktemp("grpo"))


def grpo_args(setup, run_dir, *extra, steps: int = STEPS, reward_model: bool = True) -> list[str]:
    root, models = setup
    # The step's reward is 1 x the rule (always 0 for a random policy) + 1 x `thirds`; the reward
    # model is logged beside them at weight 0, so that groups can tie and dynamic sampling has
    # groups to drop. A high learning rate and an entropy bonus move the policy, so the KL term
    # has a size.
    model = [f"reward.model={models['reward']}", "reward.weights=[1.0,1.0,0.0]"] if reward_model else []
    return [f"actor.init={models['policy']}", f"reward.functions=[{RULE},{root / 'thirds.py'}:thirds]", *model,
            "rollout.dynamic_sampling=true", f"data.prompts_path={root / 'prompts.jsonl'}",
            f"data.eval_prompts_path={root / 'eval.jsonl'}", f"train.max_steps={steps}", "train.prompts_per_step=4",
            "train.micro_batch_size=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8",
            "rollout.no_eos=penalty", "ppo.entropy_coef=0.01", "actor.optim.lr=3e-3", "kl.init_coef=0.1",
            "checkpoint.save_interval=2", "logging.tensorboard=false", f"run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    torchrun(1, TOOL, *grpo_args(setup, run_dir, "checkpoint.keep=0"))
    return run_dir


def test_a_grpo_run_has_no_critic_logs_each_reward_source_and_fills_its_steps(uninterrupted, setup):
    rows = _rows(uninterrupted)
    assert sorted(rows) == list(range(1, STEPS + 1))
    thirds = f"{setup[0] / 'thirds.py'}:thirds"
    for row in rows.values():
        assert row["first_clip_fraction"] == 0.0 and row["first_approx_kl"] == 0.0  # ratio exactly 1
        assert row["responses"] == 16 and row["kl_coef"] == 0.1
        assert not {"value_loss", "critic_grad_norm", "explained_variance"} & set(row)
        assert row[f"reward_{RULE}"] == 0.0  # a random policy never lists the right number of items
        assert row["reward_mean"] == pytest.approx(row[f"reward_{thirds}"]) and row["reward_model"] != 0
        assert 0 < row[f"reward_{thirds}"] < 1  # every kept group differs
    # Some groups tied and were dropped; a step then sampled another round of prompts.
    assert sum(row["dropped_groups"] for row in rows.values()) > 0
    assert max(row["sampling_rounds"] for row in rows.values()) > 1
    assert rows[1]["kl_loss"] == 0.0 and rows[STEPS]["kl_loss"] > 0  # the policy moved from its reference
    saved = json.loads((uninterrupted / "checkpoints" / f"step_{STEPS}" / "megatron_rm.json").read_text())
    assert set(saved["models"]) == {"actor"}
    assert saved["state"]["sampler"]["cursor"] == 4 * sum(row["sampling_rounds"] for row in rows.values())
    samples = [json.loads(line) for line in
               (uninterrupted / "samples" / f"eval_step_{STEPS}.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {f"reward_{RULE}", "reward_model", "reward"} <= set(samples[0])


def test_kill_9_then_resume_follows_the_uninterrupted_run_exactly(setup, uninterrupted, tmp_path):
    kill_9_then_resume(TOOL, lambda run_dir: grpo_args(setup, run_dir), tmp_path / "run", uninterrupted)


@pytest.fixture(scope="module")
def layouts(setup, tmp_path_factory):
    return one_step_at_every_layout(TOOL, "train_grpo", lambda *a: grpo_args(setup, *a),
                                    tmp_path_factory.mktemp("layouts"))


@pytest.mark.parametrize("layout", ["tp2", "pp2", "dp2", "tp2xpp2"])
def test_one_update_agrees_at_every_layout(layouts, uninterrupted, layout):
    mine, reference = _rows(layouts[layout])[1], _rows(uninterrupted)[1]
    assert mine["response_length_mean"] == reference["response_length_mean"]  # the same responses
    for key in ("reward_mean", "reward_model", "policy_loss", "entropy", "dropped_groups"):
        assert mine[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key
    assert mine["actor_grad_norm"] == pytest.approx(reference["actor_grad_norm"], rel=1e-4)


def test_dynamic_sampling_that_cannot_fill_a_step_stops_naming_its_bound(setup, tmp_path):
    """The rule alone: a random policy gets 0 on every response, so every group ties."""
    result = run_command([TORCHRUN, "--standalone", "--nproc-per-node=1", TOOL,
                          *grpo_args(setup, tmp_path / "run", f"reward.functions=[{RULE}]", "reward.model=null",
                                     "reward.weights=null", "rollout.dynamic_sampling_max_batches=2")], timeout=300)
    assert result.returncode != 0
    assert ("dynamic sampling found 0 of train.prompts_per_step=4 groups whose rewards differ in "
            "rollout.dynamic_sampling_max_batches=2 rounds") in result.stdout + result.stderr
