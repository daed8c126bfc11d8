"""examples/slurm/train_rm.sbatch, run by real bash against fake Slurm commands.

`scontrol`, `srun` and `scancel` are small scripts on PATH in tmp_path; DRY_RUN=1 makes
the batch script print the srun command and the per-node torchrun command, which the
tests parse with shlex. The signal tests run the script for real against the fake srun.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "slurm" / "train_rm.sbatch"

# `scontrol show hostnames LIST` for the forms Slurm prints ("gpu-[003-004,007],login1"),
# `scontrol requeue JOBID` recorded in $FAKE_LOG/requeue.
FAKE_SCONTROL = f"""#!{sys.executable}
import os, re, sys

def groups(text):
    depth, start = 0, 0
    for i, char in enumerate(text):
        depth += {{"[": 1, "]": -1}}.get(char, 0)
        if char == "," and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]

def expand(group):
    match = re.fullmatch(r"([^\\[]*)\\[([^\\]]+)\\](.*)", group)
    if not match:
        return [group]
    prefix, ranges, rest = match.groups()
    names = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        for number in range(int(low), int(high or low) + 1):
            names += [prefix + str(number).zfill(len(low)) + tail for tail in expand(rest)]
    return names

if sys.argv[1:3] == ["show", "hostnames"]:
    for group in groups(sys.argv[3]):
        print(*expand(group), sep="\\n")
elif sys.argv[1] == "requeue":
    with open(os.path.join(os.environ["FAKE_LOG"], "requeue"), "a") as log:
        log.write(" ".join(sys.argv[2:]) + "\\n")
else:
    sys.exit("fake scontrol: unsupported " + " ".join(sys.argv[1:]))
"""

# Records its arguments, then runs until SIGTERM and exits with $FAKE_SRUN_STATUS.
FAKE_SRUN = """#!/bin/bash
printf '%s\\n' "$@" > "$FAKE_LOG/srun.args"
trap 'echo TERM >> "$FAKE_LOG/srun.signals"; exit "${FAKE_SRUN_STATUS:-0}"' TERM
echo $$ > "$FAKE_LOG/srun.pid.tmp" && mv "$FAKE_LOG/srun.pid.tmp" "$FAKE_LOG/srun.pid"
while :; do sleep 0.05; done
"""

# Records its arguments and, like scancel --signal=TERM JOB, signals the running step.
FAKE_SCANCEL = """#!/bin/bash
echo "$*" >> "$FAKE_LOG/scancel"
kill -TERM "$(cat "$FAKE_LOG/srun.pid")"
"""

JOB_ID = "4242"
_STARTED: list[subprocess.Popen] = []


def _write_tool(directory: Path, name: str, text: str) -> None:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def slurm(tmp_path):
    """A fake two-node allocation: environment for the script, with fake tools on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_tool(bin_dir, "scontrol", FAKE_SCONTROL)
    _write_tool(bin_dir, "srun", FAKE_SRUN)
    _write_tool(bin_dir, "scancel", FAKE_SCANCEL)
    log = tmp_path / "log"
    log.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "CONTAINER_", "NPROC", "MASTER_", "RUN_DIR", "REPO_DIR", "DRY_RUN"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        FAKE_LOG=str(log),
        SLURM_JOB_ID=JOB_ID,
        SLURM_JOB_NAME="rm-test",
        SLURM_JOB_NODELIST="gpu-[003-004]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_GPUS_ON_NODE="8",
        SLURM_SUBMIT_DIR=str(REPO),
    )
    yield env
    # A failed signal test may leave the batch shell or the fake srun running.
    for process in _STARTED:
        if process.poll() is None:
            process.kill()
            process.communicate()
    _STARTED.clear()
    pid_file = log / "srun.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run(env: dict, *overrides: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *overrides], cwd=REPO, env={**env, **extra_env},
                          capture_output=True, text=True, timeout=60)


def _dry_run(env: dict, *overrides: str, **extra_env: str) -> tuple[list[str], list[str]]:
    """The (srun, per-node command) argument lists the script prints with DRY_RUN=1."""
    result = _run(env, *overrides, DRY_RUN="1", **extra_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    return shlex.split(lines[0]), shlex.split(lines[1])


def _torchrun_command(nnodes: int, nproc: int, endpoint: str, *overrides: str) -> list[str]:
    return ["torchrun", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", f"--rdzv-id={JOB_ID}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "tools/train_rm.py", *overrides]


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


def test_dry_run_prints_srun_and_torchrun(slurm):
    srun, command = _dry_run(slurm, "parallel.tp=2", "parallel.pp=2", "train.max_steps=50")
    assert srun == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=0", "--wait=60"]
    assert command == _torchrun_command(
        2, 8, "gpu-003:29500",
        "parallel.tp=2", "parallel.pp=2", "train.max_steps=50", "run.dir=runs/rm-test", "checkpoint.load=auto",
    )
    assert (REPO / command[command.index("tools/train_rm.py")]).is_file()


def test_overrides_keep_spaces_and_quotes(slurm):
    value = "data.train_path=/shared/it's a file.jsonl"
    _, command = _dry_run(slurm, value, "train.lr=1e-4")
    assert command[-4:] == [value, "train.lr=1e-4", "run.dir=runs/rm-test", "checkpoint.load=auto"]


@pytest.mark.parametrize(
    ("variables", "nproc"),
    [
        ({"SLURM_GPUS_ON_NODE": "4"}, 4),
        ({"SLURM_GPUS_ON_NODE": None, "SLURM_GPUS_PER_NODE": "h100:4"}, 4),
        ({"SLURM_GPUS_ON_NODE": None, "SLURM_GPUS_PER_NODE": "gpu:a100:2"}, 2),
        ({"SLURM_GPUS_ON_NODE": None, "SLURM_GPUS_PER_NODE": "6"}, 6),
        ({"SLURM_GPUS_ON_NODE": "8", "NPROC_PER_NODE": "3"}, 3),
        ({"SLURM_GPUS_ON_NODE": None, "SLURM_GPUS_PER_NODE": "h100:8", "NPROC_PER_NODE": "1"}, 1),
    ],
)
def test_processes_per_node(slurm, variables, nproc):
    env = {k: v for k, v in slurm.items() if k not in variables}
    env.update({k: v for k, v in variables.items() if v is not None})
    _, command = _dry_run(env)
    assert command[2] == f"--nproc-per-node={nproc}"


@pytest.mark.parametrize("variable", ["SLURM_GPUS_ON_NODE", "NPROC_PER_NODE"])
@pytest.mark.parametrize("value", ["h100:x", "0", "eight"])
def test_bad_process_count_is_refused(slurm, variable, value):
    result = _run(slurm, DRY_RUN="1", **{variable: value})
    assert result.returncode == 2
    assert f"{variable}={value}" in result.stderr
    assert result.stdout == ""


def test_no_gpu_information_is_refused(slurm):
    env = {k: v for k, v in slurm.items() if k != "SLURM_GPUS_ON_NODE"}
    result = _run(env, DRY_RUN="1")
    assert result.returncode == 2
    assert "NPROC_PER_NODE" in result.stderr and "SLURM_GPUS_PER_NODE" in result.stderr


def test_nodes_and_rendezvous_host(slurm):
    env = {k: v for k, v in slurm.items() if k != "SLURM_JOB_NUM_NODES"}
    # SLURM_NNODES when SLURM_JOB_NUM_NODES is absent; the host list's length when both are.
    _, command = _dry_run(env, SLURM_NNODES="2", SLURM_JOB_NODELIST="node[7-8]")
    assert command[1] == "--nnodes=2" and command[5] == "--rdzv-endpoint=node7:29500"
    _, command = _dry_run(env, SLURM_JOB_NODELIST="a100-[09-11,20],login1")
    assert command[1] == "--nnodes=5" and command[5] == "--rdzv-endpoint=a100-09:29500"
    srun, command = _dry_run(slurm, MASTER_PORT="31000", MASTER_ADDR="gpu-003-ib")
    assert command[5] == "--rdzv-endpoint=gpu-003-ib:31000"
    assert srun[1] == "--nodes=2"


def test_missing_nodelist_is_a_clear_error(slurm):
    env = {k: v for k, v in slurm.items() if k != "SLURM_JOB_NODELIST"}
    result = _run(env, DRY_RUN="1")
    assert result.returncode == 2
    assert "SLURM_JOB_NODELIST is not set" in result.stderr
    assert result.stdout == ""


def test_run_dir_sources(slurm, tmp_path):
    _, command = _dry_run(slurm, RUN_DIR=str(tmp_path / "run"))
    assert command[-2:] == [f"run.dir={tmp_path / 'run'}", "checkpoint.load=auto"]
    # A run.dir override wins over RUN_DIR and is not repeated.
    _, command = _dry_run(slurm, "run.dir=/shared/mine", "train.seed=3", RUN_DIR=str(tmp_path / "run"))
    assert command[-3:] == ["run.dir=/shared/mine", "train.seed=3", "checkpoint.load=auto"]
    assert sum(arg.startswith("run.dir=") for arg in command) == 1


def test_starting_weights_go_in_checkpoint_init(slurm, tmp_path):
    overrides = ("checkpoint.init=/shared/ckpt/llama-rm", "parallel.tp=4")
    _, command = _dry_run(slurm, *overrides, RUN_DIR=str(tmp_path / "run"))
    assert command[-4:] == [*overrides, f"run.dir={tmp_path / 'run'}", "checkpoint.load=auto"]
    result = _run(slurm, "checkpoint.load=/shared/ckpt/llama-rm", DRY_RUN="1")
    assert result.returncode == 2
    assert "checkpoint.init=/shared/ckpt/llama-rm" in result.stderr


def test_container_flags_only_with_an_image(slurm):
    srun, command = _dry_run(slurm, CONTAINER_MOUNTS="/shared:/shared")
    assert not [arg for arg in srun + command if "container" in arg or arg == "apptainer"]

    image = "nvcr.io#nvidia/pytorch:25.09-py3"
    srun, command = _dry_run(slurm, "parallel.tp=2", CONTAINER_IMAGE=image,
                             CONTAINER_MOUNTS=f"{REPO}:{REPO},/shared:/shared")
    assert srun[5:] == [f"--container-image={image}", f"--container-mounts={REPO}:{REPO},/shared:/shared",
                        f"--container-workdir={REPO}"]
    assert command == _torchrun_command(2, 8, "gpu-003:29500", "parallel.tp=2", "run.dir=runs/rm-test",
                                        "checkpoint.load=auto")

    srun, command = _dry_run(slurm, CONTAINER_IMAGE="rm.sif", CONTAINER_RUNTIME="apptainer",
                             CONTAINER_MOUNTS="/shared:/shared", CONTAINER_WORKDIR="/workspace/megatron-rm")
    assert not [arg for arg in srun if "container" in arg]
    assert command[:8] == ["apptainer", "exec", "--nv", "--pwd", "/workspace/megatron-rm",
                           "--bind", "/shared:/shared", "rm.sif"]
    assert command[8:] == _torchrun_command(2, 8, "gpu-003:29500", "run.dir=runs/rm-test", "checkpoint.load=auto")


def test_unknown_container_runtime_is_refused(slurm):
    result = _run(slurm, DRY_RUN="1", CONTAINER_IMAGE="x", CONTAINER_RUNTIME="docker")
    assert result.returncode == 2 and "CONTAINER_RUNTIME=docker" in result.stderr


def _start(env: dict, *overrides: str) -> tuple[subprocess.Popen, Path]:
    """Run the script for real (fake srun); return it once the step is running."""
    log = Path(env["FAKE_LOG"])
    process = subprocess.Popen(["bash", str(SCRIPT), *overrides], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _STARTED.append(process)
    deadline = time.monotonic() + 30
    while not (log / "srun.pid").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the fake srun never started:\n{process.communicate()[1]}")
        time.sleep(0.05)
    return process, log


def test_time_limit_signal_stops_the_step_and_requeues(slurm):
    process, log = _start(slurm, "parallel.tp=2")
    dry_srun, dry_command = _dry_run(slurm, "parallel.tp=2")
    # What runs is exactly what DRY_RUN prints.
    assert (log / "srun.args").read_text().splitlines() == dry_srun[1:] + dry_command

    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert (log / "scancel").read_text() == f"--signal=TERM {JOB_ID}\n"
    assert (log / "srun.signals").read_text() == "TERM\n"
    assert (log / "requeue").read_text() == f"{JOB_ID}\n"


def test_time_limit_without_requeue(slurm):
    process, log = _start({**slurm, "REQUEUE": "0"})
    process.send_signal(signal.SIGUSR1)
    process.communicate(timeout=30)
    assert (log / "scancel").exists() and not (log / "requeue").exists()


def test_sigterm_waits_for_the_step_without_forwarding_or_requeueing(slurm):
    process, log = _start({**slurm, "FAKE_SRUN_STATUS": "7"})
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None, "the batch shell must outlive the step it waits for"
    # Slurm delivers the SIGTERM to the step's processes itself.
    os.kill(int((log / "srun.pid").read_text()), signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 7, stderr
    assert "SIGTERM" in stderr
    assert not (log / "scancel").exists() and not (log / "requeue").exists()


def test_normal_end_passes_the_step_status_through(slurm):
    process, log = _start({**slurm, "FAKE_SRUN_STATUS": "3"})
    os.kill(int((log / "srun.pid").read_text()), signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 3
    assert not (log / "scancel").exists() and not (log / "requeue").exists()
