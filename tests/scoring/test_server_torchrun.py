"""tools/serve_rm.py as users run it: a real two-rank torchrun job at TP2 answers like the
one-process scorer, keeps its idle rank waiting through idle ticks, and stops cleanly on SIGTERM,
within --drain-timeout-s even when a client has stalled mid-request.

The SIGTERM goes to rank 0, the server: it drains, stops rank 1 and both exit 0, so torchrun
does too. (A SIGTERM to torchrun itself ends the ranks the same way, but torchrun then
exits 1 whatever its workers did: that is torchrun's own rule for signals.)
"""

from __future__ import annotations

import contextlib
import queue
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest
import requests
import torch

from megatron_rm.loading.reward import load_model
from megatron_rm.scoring.scorer import Scorer
from tests.conftest import PYTHON, REPO, TORCHRUN, child_env
from tests.convert.hf_models import save_model

pytestmark = pytest.mark.slow  # a real torchrun job

TOOL = str(REPO / "tools" / "serve_rm.py")
PAIRS = [("What is 2+2?", " It is 4."), ("Name a colour.", " Blue, like the sky over the sea at noon.")]


def ready_url(job: subprocess.Popen, timeout: float, layout: str = "(tp=2 pp=1 dp=1)") -> str:
    """The URL of the job's ready line, read from its stdout while it starts."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in job.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert job.poll() is None, f"the server exited with {job.returncode}"
            continue
        if line.startswith("serving "):
            assert line.rstrip().endswith(layout), line
            return line.split(" on ")[1].split()[0]
    pytest.fail("no ready line")


def test_tp2_server_answers_like_one_process_and_stops_on_sigterm(tmp_path, single_rank):
    folder = tmp_path / "rm"
    save_model("llama", folder, seed=7)
    scorer = Scorer(load_model(folder))
    expected = scorer.score([item.ids for item in scorer.encoder.texts(PAIRS)])[:, 0]
    job = subprocess.Popen([TORCHRUN, "--standalone", "--nproc-per-node=2", TOOL, "--model", str(folder), "--tp", "2",
                            "--port", "0", "--idle-tick-s", "0.2"], cwd=REPO, env=child_env(), text=True,
                           stdout=subprocess.PIPE, stderr=(tmp_path / "stderr").open("w"))
    ranks = []
    try:
        url = ready_url(job, timeout=180)
        ranks = psutil.Process(job.pid).children()
        time.sleep(1)  # rank 1 sits through a few idle ticks
        native = requests.post(url + "/score", json={"items": [{"prompt": p, "response": r} for p, r in PAIRS]},
                               timeout=60).json()
        openrlhf = requests.post(url + "/get_reward", json={"query": [p + r for p, r in PAIRS]}, timeout=60).json()
        verl = [requests.post(url + "/classify", json={"model": "rm", "input": p + r, "use_activation": False},
                              timeout=60).json()["data"][-1]["probs"][-1] for p, r in PAIRS]
        for rewards in (native["rewards"], openrlhf["rewards"], verl):
            torch.testing.assert_close(torch.tensor(rewards), expected, rtol=1e-5, atol=1e-6)
        assert requests.get(url + "/health", timeout=60).json()["batches"] == 4
        rank0 = next(rank for rank in ranks if rank.environ().get("RANK") == "0")
        rank0.send_signal(signal.SIGTERM)
        assert job.wait(timeout=60) == 0, (tmp_path / "stderr").read_text()[-4000:]
    finally:
        if job.poll() is None:  # a failed check: leave no server behind
            for process in [*ranks, psutil.Process(job.pid)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            job.wait()


def test_sigterm_drains_in_bounded_time_with_a_stalled_client(tmp_path):
    """A client stalled mid-body keeps its request in flight; on SIGTERM the server waits for it at
    most --drain-timeout-s, then exits 0, where it would otherwise wait out the body timeout."""
    folder = tmp_path / "rm"
    save_model("llama", folder, seed=7)
    job = subprocess.Popen([PYTHON, TOOL, "--model", str(folder), "--port", "0", "--drain-timeout-s", "1",
                            "--body-timeout-s", "600"], cwd=REPO, env=child_env(), text=True,
                           stdout=subprocess.PIPE, stderr=(tmp_path / "stderr").open("w"))
    try:
        url = ready_url(job, timeout=180, layout="(tp=1 pp=1 dp=1)")
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as stalled:
            stalled.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 100\r\n\r\n" + b'{"items": [')
            time.sleep(0.5)  # the request is in flight, waiting for the rest of its body
            job.send_signal(signal.SIGTERM)
            assert job.wait(timeout=60) == 0, (tmp_path / "stderr").read_text()[-4000:]
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
