"""A reward server that fails mid-run loses nothing: tools/train_ppo.py on two data-parallel
replicas against a real HTTP server on loopback that stops answering in the middle of step 3, so
that one replica's request succeeds and the other's fails. Every rank stops together with the
server's error, after saving step 2 (the last completed one) exactly as a save after step 2
writes it, and the run resumed from it logs the uninterrupted run's step 3."""

from __future__ import annotations

import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from tests.conftest import REPO, TORCHRUN, run_command, torchrun
from tests.ppo.checkpoints import save_run_inputs
from tests.ppo.test_train_ppo import TIMING

pytestmark = pytest.mark.slow  # real torchrun jobs

TOOL = str(REPO / "tools" / "train_ppo.py")
NPROC = 2  # two replicas, each asking the server for its own responses


class FlakyServer(ThreadingHTTPServer):
    """POST /get_reward with a reward of its own (a hash of each text); after `answers` requests
    (None: no limit) every request is answered 503."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.answers: int | None = None
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FlakyServer

    def do_POST(self):  # noqa: N802 (http.server's name)
        texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["query"]
        with self.server.lock:
            self.server.requests += 1
            down = self.server.answers is not None and self.server.requests > self.server.answers
        status, reply = ((503, {"error": {"message": "restarting"}}) if down else
                         (200, {"rewards": [zlib.crc32(text.encode()) % 1000 / 500 - 1 for text in texts]}))
        body = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    served = FlakyServer()
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, single_rank):
    root = tmp_path_factory.mktemp("ppo_flaky")
    return root, save_run_inputs(root)


def _args(setup, server, run_dir, *extra) -> list[str]:
    root, models = setup
    return [f"actor.init={models['policy']}", "reward.model=null", f"reward.url={server.url}",
            f"critic.init={models['reward']}", f"data.prompts_path={root / 'prompts.jsonl'}",
            "data.eval_prompts_path=null", "train.max_steps=3", "train.prompts_per_step=4",
            "train.micro_batch_size=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
            "actor.optim.lr=3e-3", "critic.optim.lr=1e-3", "kl.init_coef=0.2", "kl.target=0.01", "kl.horizon=16",
            "reward.retries=1", "reward.backoff_s=0.01", "reward.timeout_s=10", "logging.tensorboard=false",
            f"run.dir={run_dir}", *extra]


def _rows(run_dir) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows if row["split"] == "train"}


def _run_state(checkpoint) -> tuple[dict, list[list[torch.Tensor]]]:
    """A checkpoint's run state (KL controller, sampler, skip counters) and each rank's torch and
    megatron RNG states: the ones a run seeds (Python's and numpy's start from the OS's entropy in
    every process, and nothing draws from them)."""
    state = json.loads((checkpoint / "megatron_rm.json").read_text())["state"]
    rngs = []
    for rank in range(NPROC):
        saved = torch.load(checkpoint / "rng" / f"rank_{rank:05d}.pt", weights_only=False)
        rngs.append([saved["torch"], *(saved["tracker"][name] for name in sorted(saved["tracker"]))])
    return state, rngs


def test_a_server_failing_mid_run_saves_the_last_completed_step_and_the_run_resumes_exactly(setup, server,
                                                                                            tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    server.answers = None
    torchrun(NPROC, TOOL, *_args(setup, server, uninterrupted, "checkpoint.save_interval=1", "checkpoint.keep=0"))

    # One request per replica and step: steps 1 and 2, then one replica's request of step 3.
    run_dir = tmp_path / "run"
    server.answers, server.requests = 2 * NPROC + 1, 0
    failed = run_command([TORCHRUN, "--standalone", f"--nproc-per-node={NPROC}", TOOL,
                          *_args(setup, server, run_dir, "checkpoint.save_interval=0")], timeout=300)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0, output[-4000:]
    assert server.requests == 2 * NPROC + 1 + 2  # the failing replica tried twice (reward.retries=1)
    assert f"error: {server.url}/get_reward: 2 attempts failed; last: HTTP 503: restarting" in output, output[-4000:]
    saved = run_dir / "checkpoints" / "step_2"
    assert (f"the last completed step, 2, is saved in {saved}; once the server answers again, resume with "
            "checkpoint.load=auto") in output
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_2"
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["latest", "step_2"]
    assert sorted(_rows(run_dir)) == [1, 2]
    # What a save after step 2 writes: the uninterrupted run's own step-2 checkpoint.
    state, rngs = _run_state(saved)
    reference_state, reference_rngs = _run_state(uninterrupted / "checkpoints" / "step_2")
    assert state == reference_state and state["sampler"]["step"] == 2
    assert all(torch.equal(a, b) for mine, reference in zip(rngs, reference_rngs, strict=True)
               for a, b in zip(mine, reference, strict=True))

    server.answers = None
    resumed = torchrun(NPROC, TOOL, *_args(setup, server, run_dir))
    assert f"resumed from {saved} at step 2" in resumed.stdout
    mine, reference = _rows(run_dir), _rows(uninterrupted)
    assert sorted(mine) == [1, 2, 3]
    for step in (1, 2, 3):
        for key, value in reference[step].items():
            if key not in TIMING:
                assert mine[step][key] == value, (step, key)
