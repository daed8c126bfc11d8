"""The run lifecycle every training loop shares: the eval and save cadence, the final step, and a
SIGTERM that stops the run after the step it arrived in, saved and marked."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pytest
import yaml

from megatron_rm.config import LoggingConfig
from megatron_rm.training.lifecycle import STOPPED, RunLifecycle


@dataclasses.dataclass
class Settings:
    lr: float = 0.1


def _run(tmp_path, total, *, start=0, eval_interval=0, save_interval=0, signal_at=None):
    life = RunLifecycle(tmp_path / "run", Settings())
    life.begin()
    calls = []

    def step(n):
        calls.append(("step", n))
        if n == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)

    result = life.run(start, total, step, lambda last: calls.append(("finish", last)) or "summary",
                      evaluate=lambda n: calls.append(("eval", n)), save=lambda n: calls.append(("save", n)),
                      eval_interval=eval_interval, save_interval=save_interval)
    return life, calls, result


def test_cadence_leaves_the_last_step_to_the_loop(single_rank, tmp_path):
    life, calls, result = _run(tmp_path, 6, eval_interval=2, save_interval=3)
    assert calls == [("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("save", 3), ("step", 4), ("eval", 4),
                     ("step", 5), ("step", 6), ("finish", 6)]
    assert result == "summary"
    assert yaml.safe_load((life.run_dir / "config.yaml").read_text()) == {"lr": 0.1}
    assert not (life.run_dir / STOPPED).exists()


def test_a_resumed_run_continues_after_its_start(single_rank, tmp_path):
    _, calls, _ = _run(tmp_path, 4, start=2, save_interval=1)
    assert calls == [("step", 3), ("save", 3), ("step", 4), ("finish", 4)]
    _, calls, _ = _run(tmp_path, 4, start=4)
    assert calls == [("finish", 4)]  # nothing left to run: the loop's final evaluation alone


def test_sigterm_saves_marks_and_stops_after_its_step(single_rank, tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    life, calls, result = _run(tmp_path, 10, eval_interval=3, save_interval=5, signal_at=3)
    assert result is None
    assert calls == [("step", 1), ("step", 2), ("step", 3), ("eval", 3), ("save", 3)]
    marker = json.loads((life.run_dir / STOPPED).read_text())
    assert marker == {"step": 3, "checkpoint": str(life.run_dir / "checkpoints" / "step_3"), "signal": "SIGTERM"}
    assert signal.getsignal(signal.SIGTERM) == previous
    life.begin()  # the next start of the run clears the marker
    assert not (life.run_dir / STOPPED).exists()


def test_the_metrics_log_drops_the_steps_a_resume_runs_again(single_rank, tmp_path):
    life = RunLifecycle(tmp_path / "run", Settings())
    life.begin()
    logging = LoggingConfig(tensorboard=False)
    log = life.metrics_log(logging, since=0)
    for step in (1, 2, 3):
        log.write(step, "train", {"loss": float(step)})
    log.close()
    log = life.metrics_log(logging, since=2)
    log.write(3, "train", {"loss": 30.0})
    log.close()
    rows = [json.loads(line) for line in (life.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["loss"]) for row in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_only_rank_0_prints(monkeypatch, capsys, tmp_path, rank, printed):
    monkeypatch.setenv("RANK", rank)
    life = RunLifecycle(tmp_path, Settings())
    life.say("hello")
    life.say("warning: careful")
    out, err = capsys.readouterr()
    assert (out, err) == (("hello\n", "warning: careful\n") if printed else ("", ""))
