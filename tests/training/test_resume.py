"""Crash-safe checkpoints: kill -9 and resume, a kill during a save, SIGTERM, another layout,
damaged checkpoints. Every run is a real torchrun job of tools/train_rm.py over gloo."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import psutil
import pytest

from tests.conftest import DEMO, PYTHON, REPO, TORCHRUN, child_env, run_command, torchrun

pytestmark = pytest.mark.slow  # real torchrun jobs

TOOL = str(REPO / "tools" / "train_rm.py")
STEPS = 24
COMPARED = ("loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "grad_norm", "lr")


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "eval.jsonl"
    path.write_text("".join((DEMO / "data" / "eval.jsonl").read_text().splitlines(keepends=True)[:32]))
    return path


def _args(run_dir, eval_file, *extra):
    return ["parallel.tp=2", f"train.max_steps={STEPS}", "train.global_batch_size=16", "train.micro_batch_size=4",
            "train.lr_warmup_steps=2", "train.log_interval=1", "eval.interval=0", "checkpoint.save_interval=4",
            f"data.eval_path={eval_file}", f"run.dir={run_dir}", "logging.tensorboard=false", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, eval_file):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    torchrun(2, TOOL, *_args(run_dir, eval_file, "checkpoint.keep=0"))
    return run_dir


def _rows(run_dir, split="train") -> dict[int, dict]:
    """The row logged for each step of `split`."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r["split"] == split}


def _start(run_dir, eval_file, *extra) -> subprocess.Popen:
    """tools/train_rm.py on 2 ranks, in the background; its output goes to run_dir's parent/output.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir.parent / "output.log").open("a") as output:
        return subprocess.Popen([TORCHRUN, "--standalone", "--nproc-per-node=2", TOOL,
                                 *_args(run_dir, eval_file, *extra)],
                                cwd=REPO, env=child_env(), stdout=output, stderr=subprocess.STDOUT)


def _output(run_dir) -> str:
    return (run_dir.parent / "output.log").read_text()


def _wait_for(condition, job: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if job.poll() is not None:
            pytest.fail(f"the run ended before {what}")
        if time.monotonic() > deadline:
            _kill_9(job)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def _kill_9(job: subprocess.Popen) -> None:
    """SIGKILL torchrun and every process under it (its workers run in sessions of their own),
    as when a node dies."""
    processes = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    for process in processes:
        process.kill()
    job.wait()


def _latest(run_dir) -> str | None:
    latest = run_dir / "checkpoints" / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def _logged_steps(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _resume(run_dir, eval_file, nproc=2, *extra):
    return torchrun(nproc, TOOL, *_args(run_dir, eval_file, "checkpoint.load=auto", *extra))


def _assert_same_trajectory(resumed: dict, reference: dict, steps) -> None:
    for step in steps:
        for key in COMPARED:
            assert resumed[step][key] == reference[step][key], (step, key)


def test_kill_9_then_resume_follows_the_uninterrupted_run_exactly(uninterrupted, eval_file, tmp_path):
    run_dir = tmp_path / "run"
    job = _start(run_dir, eval_file)
    _wait_for(lambda: _latest(run_dir) == "step_8" and _logged_steps(run_dir) >= 10, job, "step 10")
    _kill_9(job)
    killed_at = max(_rows(run_dir))
    assert 10 <= killed_at < STEPS
    result = _resume(run_dir, eval_file)
    assert f"resumed from {run_dir / 'checkpoints'}/step_" in result.stdout
    resumed_from = int(_latest_line(result.stdout).split("at step ")[1].split(";")[0])
    assert 8 <= resumed_from <= killed_at
    _assert_same_trajectory(_rows(run_dir), _rows(uninterrupted), range(resumed_from + 1, STEPS + 1))
    assert _rows(run_dir, "eval")[STEPS]["loss"] == _rows(uninterrupted, "eval")[STEPS]["loss"]
    # The steps redone after the checkpoint are logged once: one row per step and split.
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    logged = [(row["step"], row["split"]) for row in map(json.loads, lines)]
    assert len(logged) == len(set(logged))
    # checkpoint.keep=3 (the default): the three newest remain, `latest` names the last.
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["latest", "step_16", "step_20", "step_24"]
    assert _latest(run_dir) == "step_24"


def _latest_line(stdout: str) -> str:
    return [line for line in stdout.splitlines() if line.startswith("resumed from")][-1]


def test_a_kill_during_a_save_leaves_latest_at_the_previous_checkpoint(uninterrupted, eval_file, tmp_path):
    run_dir = tmp_path / "run"
    job = _start(run_dir, eval_file)
    staging = run_dir / "checkpoints" / ".step_8.incomplete"
    _wait_for(lambda: staging.exists(), job, "the save of step 8")
    _kill_9(job)
    assert _latest(run_dir) == "step_4"
    assert not (run_dir / "checkpoints" / "step_8").exists()
    result = _resume(run_dir, eval_file)
    assert f"resumed from {run_dir / 'checkpoints' / 'step_4'} at step 4" in result.stdout
    _assert_same_trajectory(_rows(run_dir), _rows(uninterrupted), range(5, STEPS + 1))
    assert not staging.exists()  # the next save cleared the leftover


def test_sigterm_saves_and_exits_cleanly(eval_file, tmp_path):
    run_dir = tmp_path / "run"
    job = _start(run_dir, eval_file)
    _wait_for(lambda: _logged_steps(run_dir) >= 5, job, "step 5")
    job.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers, as under srun
    job.wait(timeout=120)
    output = _output(run_dir)
    stopped = [line for line in output.splitlines() if "on SIGTERM" in line]
    assert stopped, output[-4000:]
    step = int(stopped[0].split("after step ")[1].split()[0])
    assert step < STEPS
    assert _latest(run_dir) == f"step_{step}"
    saved = json.loads((run_dir / "checkpoints" / f"step_{step}" / "megatron_rm.json").read_text())
    assert saved["step"] == step and saved["state"]["sampler"]["consumed_samples"] == 16 * step
    # What a requeue script reads: torchrun's own status reports the signal it was sent.
    assert json.loads((run_dir / "stopped.json").read_text())["step"] == step
    # The one traceback is torchrun's own report of the signal it relayed.
    assert output.count("Traceback") == output.count("SignalException: Process") == 1, output[-4000:]


def test_resume_at_another_layout_reshards_the_optimizer(uninterrupted, eval_file, tmp_path):
    """The TP2 checkpoint of step 8 continues at PP2; a fresh optimizer state would not follow."""
    reference = _rows(uninterrupted)
    runs = {}
    for name, extra in (("resharded", []), ("fresh_optimizer", ["checkpoint.load_optimizer=false"])):
        run_dir = tmp_path / name
        (run_dir / "checkpoints").mkdir(parents=True)
        shutil.copytree(uninterrupted / "checkpoints" / "step_8", run_dir / "checkpoints" / "step_8")
        result = torchrun(2, TOOL, *_args(run_dir, eval_file, "checkpoint.load=auto", "parallel.tp=1",
                                          "parallel.pp=2", "train.max_steps=12", *extra))
        assert "RNG states not restored" in result.stdout
        runs[name] = _rows(run_dir)
    for step in range(9, 13):
        for key in ("loss", "chosen_reward", "grad_norm"):
            assert runs["resharded"][step][key] == pytest.approx(reference[step][key], rel=1e-4), (step, key)
    # Same weights at step 9; after one update from zeroed Adam moments the runs part.
    assert runs["fresh_optimizer"][9]["loss"] == pytest.approx(reference[9]["loss"], rel=1e-4)
    assert runs["fresh_optimizer"][10]["loss"] != pytest.approx(reference[10]["loss"], rel=1e-3)


def test_a_damaged_checkpoint_is_named_and_auto_falls_back(uninterrupted, eval_file, tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    for step in (20, 24):
        shutil.copytree(uninterrupted / "checkpoints" / f"step_{step}", checkpoints / f"step_{step}")
    (checkpoints / "latest").write_text("step_24\n")
    shard = sorted((checkpoints / "step_24").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])  # a partial copy
    explicit = run_command([PYTHON, TOOL, "train.max_steps=0", f"checkpoint.load={checkpoints / 'step_24'}",
                            f"data.eval_path={eval_file}", f"run.dir={tmp_path / 'eval'}"])
    assert explicit.returncode == 2
    assert f"{shard}: 100 bytes," in explicit.stderr and "Traceback" not in explicit.stderr
    fallback = run_command([PYTHON, TOOL, "train.max_steps=0", "checkpoint.load=auto",
                            f"data.eval_path={eval_file}", f"run.dir={tmp_path / 'run'}"])
    assert fallback.returncode == 0, fallback.stderr[-4000:]
    assert f"warning: {shard}: 100 bytes," in fallback.stderr
    assert f"falling back to {checkpoints / 'step_20'}" in fallback.stderr
    assert f"loaded weights from {checkpoints / 'step_20'}" in fallback.stdout
