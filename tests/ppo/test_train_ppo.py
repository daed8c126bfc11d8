"""tools/train_ppo.py as real torchrun jobs over gloo: one PPO step of two mini-batches agrees at
every layout, a run killed with -9 resumes onto the uninterrupted run's exact metrics (the KL
coefficient's trajectory included), a resume at another data-parallel size follows it too,
SIGTERM saves and stops, and a run resumes at another layout."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

import pytest

from tests.conftest import DEMO, PYTHON, REPO, TORCHRUN, child_env, torchrun
from tests.ppo.checkpoints import save_run_inputs
from tests.training.test_resume import _kill_9, _wait_for

pytestmark = pytest.mark.slow  # real torchrun jobs

TOOL = str(REPO / "tools" / "train_ppo.py")
STEPS = 4
# Wall-clock metrics, which differ between any two runs.
TIMING = ("generation_s", "scoring_s", "update_s", "weights_s", "generation_tokens_per_s", "scoring_tokens_per_s",
          "update_tokens_per_s")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_rank):
    root = tmp_path_factory.mktemp("ppo")
    models = save_run_inputs(root)
    (root / "eval.jsonl").write_text("".join((DEMO / "data" / "eval.jsonl").read_text().splitlines(keepends=True)[:6]))
    return root, models


def _args(setup, run_dir, *extra) -> list[str]:
    root, models = setup
    # Two mini-batches per step, each split over the data-parallel replicas as training splits a
    # global batch: what the parity checks compare. A high actor learning rate and a short horizon
    # make the KL and its coefficient move at once. With ratio 1 the surrogate is
    # -mean(whitened advantage), about 0: the entropy bonus gives the policy loss a size to compare.
    return [f"actor.init={models['policy']}", f"reward.model={models['reward']}",
            f"data.prompts_path={root / 'prompts.jsonl'}", f"data.eval_prompts_path={root / 'eval.jsonl'}",
            f"train.max_steps={STEPS}", "train.prompts_per_step=4", "train.micro_batch_size=2",
            "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8", "rollout.no_eos=penalty",
            "ppo.mini_batch_size=4", "ppo.entropy_coef=0.01", "actor.optim.lr=3e-3", "critic.optim.lr=1e-3",
            "kl.init_coef=0.2", "kl.target=0.01", "kl.horizon=16",
            "checkpoint.save_interval=2", "logging.tensorboard=false", f"run.dir={run_dir}", *extra]


def _rows(run_dir, split="train") -> dict[int, dict]:
    """The last row of each step (a resumed run logs the steps after its checkpoint again)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows if row["split"] == split}


def _start(setup, run_dir, nproc: int, *extra) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "output.log").open("a") as output:
        return subprocess.Popen([TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", TOOL,
                                 *_args(setup, run_dir, *extra)],
                                cwd=REPO, env=child_env(), stdout=output, stderr=subprocess.STDOUT)


def _latest(run_dir) -> str | None:
    latest = run_dir / "checkpoints" / "latest"
    return latest.read_text().strip() if latest.is_file() else None


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    torchrun(1, TOOL, *_args(setup, run_dir, "checkpoint.keep=0"))
    return run_dir


def test_the_first_update_of_every_step_has_ratio_exactly_one_and_the_coefficient_moves(uninterrupted):
    rows = _rows(uninterrupted)
    assert sorted(rows) == list(range(1, STEPS + 1))
    for row in rows.values():
        assert row["first_clip_fraction"] == 0.0 and row["first_approx_kl"] == 0.0
        assert row["responses"] == 8 and row["policy_tokens"] > 0
    assert rows[1]["kl"] == 0.0 and rows[STEPS]["kl"] > 0  # the policy moved away from its reference
    coefficients = [rows[step]["kl_coef"] for step in range(1, STEPS + 1)]
    assert len(set(coefficients)) == STEPS  # adaptive: a new value every step
    for step in range(1, STEPS):
        assert rows[step + 1]["kl_coef"] == rows[step]["kl_coef_next"]
    evals = _rows(uninterrupted, "eval")
    assert sorted(evals) == [0, STEPS]
    samples = [json.loads(line) for line in
               (uninterrupted / "samples" / f"eval_step_{STEPS}.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and {"prompt", "chosen", "rejected", "response", "reward"} <= set(samples[0])
    assert evals[STEPS]["reward_mean"] == pytest.approx(sum(s["reward"] for s in samples) / 6, rel=1e-9)


def test_kill_9_then_resume_follows_the_uninterrupted_run_exactly(setup, uninterrupted, tmp_path):
    kill_9_then_resume(TOOL, lambda run_dir: _args(setup, run_dir), tmp_path / "run", uninterrupted)


def kill_9_then_resume(tool: str, args, run_dir, uninterrupted) -> None:
    """`tool` with `args(run_dir)` killed with -9 once step 2 is saved, then resumed: every step's
    metrics (timings aside) and the last evaluation equal the uninterrupted run's."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "output.log").open("a") as output:
        job = subprocess.Popen([TORCHRUN, "--standalone", "--nproc-per-node=1", tool, *args(run_dir)], cwd=REPO,
                               env=child_env(), stdout=output, stderr=subprocess.STDOUT)
    _wait_for(lambda: _latest(run_dir) == "step_2", job, "the checkpoint of step 2")
    _kill_9(job)
    resumed = torchrun(1, tool, *args(run_dir))
    assert "resumed from" in resumed.stdout
    mine, reference = _rows(run_dir), _rows(uninterrupted)
    assert sorted(mine) == sorted(reference)
    for step in reference:
        for key, value in reference[step].items():
            if key not in TIMING:
                assert mine[step][key] == value, (step, key)
    assert _rows(run_dir, "eval") == _rows(uninterrupted, "eval")


def test_a_resume_at_another_data_parallel_size_follows_the_uninterrupted_run(setup, uninterrupted, tmp_path):
    """Step 2's checkpoint of the one-rank run, resumed on two data-parallel replicas: the same
    mini-batches (responses and their split into updates do not depend on DP), so the same steps."""
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted / "checkpoints" / "step_2", run_dir / "checkpoints" / "step_2")
    (run_dir / "checkpoints" / "latest").write_text("step_2")
    torchrun(2, TOOL, *_args(setup, run_dir))
    mine, reference = _rows(run_dir), _rows(uninterrupted)
    assert sorted(mine) == [3, 4]
    for step in (3, 4):
        assert mine[step]["response_length_mean"] == reference[step]["response_length_mean"]
        for key in ("reward_mean", "kl", "kl_coef", "policy_loss", "value_loss", "actor_grad_norm",
                    "critic_grad_norm"):
            assert mine[step][key] == pytest.approx(reference[step][key], rel=1e-4, abs=1e-7), (step, key)


@pytest.fixture(scope="module")
def layouts(setup, tmp_path_factory):
    return one_step_at_every_layout(TOOL, "train_ppo", lambda *a: _args(setup, *a), tmp_path_factory.mktemp("layouts"))


def one_step_at_every_layout(tool: str, config: str, args, root) -> dict:
    """Run dirs of one step of `tool` (conf/<config>.yaml, `args(run_dir, *extra)`) at TP2, PP2 and
    DP2 (one two-rank job) and TP2xPP2 (the tool on four)."""
    runs = {name: root / name for name in ("tp2", "pp2", "dp2", "tp2xpp2")}
    one_step = ("train.max_steps=1", "data.eval_prompts_path=null")
    overrides = [arg for arg in args(root / "unused", *one_step) if not arg.startswith("run.dir=")]
    torchrun(2, str(REPO / "tests" / "ppo" / "parity_worker.py"), "--config", config,
             "--layout", "2", "1", str(runs["tp2"]), "--layout", "1", "2", str(runs["pp2"]),
             "--layout", "1", "1", str(runs["dp2"]), "--", *overrides)
    torchrun(4, tool, *args(runs["tp2xpp2"], *one_step, "parallel.tp=2", "parallel.pp=2"))
    return runs


@pytest.mark.parametrize("layout", ["tp2", "pp2", "dp2", "tp2xpp2"])
def test_one_update_agrees_at_every_layout(layouts, uninterrupted, layout):
    mine, reference = _rows(layouts[layout])[1], _rows(uninterrupted)[1]
    assert mine["response_length_mean"] == reference["response_length_mean"]  # the same responses
    for key in ("reward_mean", "policy_loss", "value_loss", "explained_variance"):
        assert mine[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key
    for key in ("actor_grad_norm", "critic_grad_norm"):
        assert mine[key] == pytest.approx(reference[key], rel=1e-4), key


@pytest.fixture
def reward_server(setup):
    """tools/serve_rm.py on a free loopback port, serving the tiny reward model; its URL."""
    _, models = setup
    job = subprocess.Popen([PYTHON, str(REPO / "tools" / "serve_rm.py"), "--model", str(models["reward"]),
                            "--port", "0"], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        for line in job.stdout:
            if line.startswith("serving "):
                yield line.split(" on ")[1].split()[0]
                break
        else:
            pytest.fail(f"the server exited with {job.wait()}")
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)


def test_sigterm_saves_and_the_run_resumes_at_another_layout(setup, reward_server, tmp_path):
    _, models = setup
    run_dir = tmp_path / "run"
    # Rewards from a server (the critic from the same reward model's checkpoint), several
    # shuffled mini-batches and epochs per step, and a critic warm-up, which the other runs do not take.
    extra = ("reward.model=null", f"reward.url={reward_server}", f"critic.init={models['reward']}", "ppo.epochs=2",
             "ppo.mini_batch_size=4", "checkpoint.save_interval=0", "critic.warmup_steps=1")
    job = _start(setup, run_dir, 2, "parallel.tp=2", *extra)
    _wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and _rows(run_dir), job, "step 1")
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=120)
    output = (run_dir / "output.log").read_text()
    stopped = [line for line in output.splitlines() if "on SIGTERM" in line]
    assert stopped, output[-4000:]
    step = int(stopped[0].split("after step ")[1].split()[0])
    assert step < STEPS and _latest(run_dir) == f"step_{step}"
    saved = json.loads((run_dir / "checkpoints" / f"step_{step}" / "megatron_rm.json").read_text())
    assert saved["state"]["sampler"]["step"] == step
    assert saved["state"]["kl_controller"]["value"] == _rows(run_dir)[step]["kl_coef_next"]
    assert json.loads((run_dir / "stopped.json").read_text())["step"] == step  # the requeue script's marker

    resumed = torchrun(2, TOOL, *_args(setup, run_dir, "parallel.pp=2", *extra))
    fresh = "actor had not stepped: a fresh optimizer state; " if step <= 1 else ""  # warm-up: step 1
    assert f"at step {step}; {fresh}RNG states not restored" in resumed.stdout
    assert not (run_dir / "stopped.json").exists()
    rows = _rows(run_dir)
    assert sorted(rows) == list(range(1, STEPS + 1))
    assert rows[step + 1]["kl_coef"] == saved["state"]["kl_controller"]["value"]
    assert all(row["reward_raw_mean"] == row["reward_mean"] for row in rows.values())  # the server's own scores
    # The warm-up step trained the critic alone: no actor update, and the coefficient waited.
    assert not rows[1]["actor_trained"] and "policy_loss" not in rows[1] and rows[1]["value_loss"] > 0
    assert rows[2]["kl_coef"] == rows[1]["kl_coef"] == 0.2 and rows[2]["actor_trained"]


def test_the_trained_actor_exports_to_a_causal_lm_that_answers_alike(uninterrupted, tmp_path):
    """Hugging Face's greedy answer to an evaluation prompt is the run's own final one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_rm.convert.megatron_to_hf import export_hf

    out = export_hf(uninterrupted / "checkpoints", tmp_path / "actor", model_name="actor", kind="policy")
    model, loading = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    sample = json.loads((uninterrupted / "samples" / f"eval_step_{STEPS}.jsonl").read_text().splitlines()[0])
    prompt = tokenizer(sample["prompt"], return_tensors="pt")
    answer = model.generate(prompt["input_ids"], attention_mask=prompt["attention_mask"], do_sample=False,
                            max_new_tokens=8, eos_token_id=tokenizer.eos_token_id)
    new = answer[0, prompt["input_ids"].shape[1]:].tolist()
    if new and new[-1] == tokenizer.eos_token_id:
        new = new[:-1]
    assert tokenizer.decode(new) == sample["response"]
