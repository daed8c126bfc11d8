"""One-process runs of tools/train_sft.py: supervised fine-tuning learns the demo's chosen responses,
its checkpoint is a policy that warm-starts a run, a run stopped by SIGTERM resumes with
checkpoint.load=auto to the same per-step losses, and bad input stops it with the key or row named."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from tests.conftest import DEMO, PYTHON, REPO, child_env, run_command

pytestmark = pytest.mark.slow

TOOL = str(REPO / "tools" / "train_sft.py")
COMPARED = ("loss", "target_tokens", "tokens", "grad_norm", "lr")


def _rows(run_dir, split: str) -> dict[int, dict]:
    """The last row logged for each step (a resumed run logs the steps after its checkpoint again)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows if row["split"] == split}


def _run(*args: str) -> subprocess.CompletedProcess:
    result = run_command([PYTHON, TOOL, *args], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    train, held_out = (DEMO / "data" / "train.jsonl").read_text().splitlines(), (DEMO / "data" / "eval.jsonl")
    (folder / "train.jsonl").write_text("\n".join(train[:960]) + "\n")
    (folder / "eval.jsonl").write_text("".join(held_out.read_text().splitlines(keepends=True)[:64]))
    return folder


def _common(data, run_dir, *extra):
    return ["logging.tensorboard=false", "train.global_batch_size=16", "train.micro_batch_size=8",
            f"data.train_path={data / 'train.jsonl'}", f"data.eval_path={data / 'eval.jsonl'}",
            f"run.dir={run_dir}", *extra]


def test_sft_learns_the_chosen_responses_and_warm_starts_from_its_checkpoint(tmp_path, data):
    """Held-out NLL per response token: random weights, after 60 steps, and the saved policy
    evaluated again through checkpoint.load (same number: the weights and the kind round-trip)."""
    _run(*_common(data, tmp_path / "before", "train.max_steps=0"))
    _run(*_common(data, tmp_path / "run", "train.max_steps=60", "train.lr=3e-3", "train.log_interval=20",
                  "eval.interval=0", "data.batching=pack"))
    _run(*_common(data, tmp_path / "again", "train.max_steps=0", f"checkpoint.load={tmp_path / 'run' / 'checkpoints'}"))
    before, after = _rows(tmp_path / "before", "eval")[0], _rows(tmp_path / "run", "eval")[60]
    again = _rows(tmp_path / "again", "eval")[0]
    print(f"held-out NLL per token: {before['loss']:.4f} (perplexity {before['perplexity']:.1f}) -> "
          f"{after['loss']:.4f} (perplexity {after['perplexity']:.1f})")
    assert before["target_tokens"] == after["target_tokens"] > 500
    assert before["loss"] > 5.0 and after["loss"] < before["loss"] - 2.0
    assert again["loss"] == pytest.approx(after["loss"], rel=1e-6)
    metadata = json.loads((tmp_path / "run" / "checkpoints" / "step_60" / "megatron_rm.json").read_text())
    assert metadata["models"]["model"]["kind"] == "policy" and "reward_normalization" not in metadata
    assert (tmp_path / "run" / "checkpoints" / "step_60" / "tokenizer" / "tokenizer.json").is_file()


def test_a_run_stopped_by_sigterm_resumes_to_the_same_losses(tmp_path, data):
    args = ["train.max_steps=40", "train.log_interval=1", "train.lr_warmup_steps=3", "eval.interval=0"]
    _run(*_common(data, tmp_path / "whole", *args))
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    with (tmp_path / "output.log").open("w") as output:
        job = subprocess.Popen([PYTHON, TOOL, *_common(data, run_dir, *args)], cwd=REPO, env=child_env(),
                               stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "output.log").read_text()
            time.sleep(0.01)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=300) == 0
    log = (tmp_path / "output.log").read_text()
    assert "stopping after step" in log, log[-3000:]
    stopped_at = max(_rows(run_dir, "train"))
    assert 3 <= stopped_at < 40
    marker = json.loads((run_dir / "stopped.json").read_text())
    assert marker == {"step": stopped_at, "checkpoint": str(run_dir / "checkpoints" / f"step_{stopped_at}"),
                      "signal": "SIGTERM"}
    resumed = _run(*_common(data, run_dir, *args, "checkpoint.load=auto"))
    assert f"at step {stopped_at}" in resumed.stdout
    assert not (run_dir / "stopped.json").exists()  # the resumed run finished
    whole, again = _rows(tmp_path / "whole", "train"), _rows(run_dir, "train")
    assert sorted(again) == list(range(1, 41))
    for step in range(1, 41):
        assert {k: again[step][k] for k in COMPARED} == {k: whole[step][k] for k in COMPARED}, step
    assert _rows(run_dir, "eval")[40]["loss"] == _rows(tmp_path / "whole", "eval")[40]["loss"]
    # Every RNG a step may draw from carries on as in the uninterrupted run, read or not.
    rng = [torch.load(d / "checkpoints" / "step_40" / "rng" / "rank_00000.pt", weights_only=False)
           for d in (tmp_path / "whole", run_dir)]
    assert rng[0]["python"] == rng[1]["python"]
    assert all(np.array_equal(a, b) for a, b in zip(rng[0]["numpy"], rng[1]["numpy"]))
    assert torch.equal(rng[0]["torch"], rng[1]["torch"])


@pytest.mark.parametrize("case, args, message", [
    ("reward_loss", ["loss.type=bradley_terry"],
     "loss.type=bradley_terry trains a reward model (tools/train_rm.py); this run trains a policy model"),
    ("reward_checkpoint", [f"checkpoint.load={REPO / 'tests' / 'fixtures' / 'format1_checkpoint'}"],
     "is a reward model, not a policy model"),
    ("no_response", ["data.train_path={bad}"], "bad.jsonl:2: field 'response': missing; an example needs"),
])
def test_bad_input_stops_the_run_naming_it(tmp_path, data, case, args, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q:", "response": " A"}) + "\n" + json.dumps({"prompt": "Q:"}) + "\n")
    result = run_command([PYTHON, TOOL, *_common(data, tmp_path / "run", "train.max_steps=1"),
                          *[a.format(bad=bad) for a in args]], timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-3000:]
