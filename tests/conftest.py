"""Shared helpers: the repo's paths, launching real torchrun jobs, one in-process rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
DEMO = REPO / "examples" / "demo"
# Variables of the in-process rank (see `single_rank`) that must not leak into child jobs.
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["PYTHONPATH"] = str(REPO)
    return env


def run_command(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`args` in the repository with the test environment (plus `env`)."""
    return subprocess.run(args, cwd=REPO, env={**child_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def torchrun(nproc: int, script: str | Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Launch `script` on `nproc` real ranks (gloo on CPU); fail the test with its output on error."""
    result = run_command(
        [TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", str(script), *args], timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"torchrun {script} {' '.join(args)} failed ({result.returncode}):\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def tiny_model_config():
    from megatron_rm.config import ModelConfig

    fields = yaml.safe_load((REPO / "conf" / "model" / "tiny.yaml").read_text())
    fields["tokenizer"] = str(REPO / fields["tokenizer"])
    return ModelConfig(**fields)


@pytest.fixture(scope="session")
def single_rank():
    """This pytest process as a one-rank megatron job (tp=pp=dp=1), shared by in-process tests."""
    from megatron_rm.config import ParallelConfig
    from megatron_rm.runtime import parallel

    layout = parallel.initialize(ParallelConfig(), seed=1234)
    yield layout
    parallel.shutdown()
