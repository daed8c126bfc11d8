"""Run a command and watch it: wall time, CPU time and peak resident memory of its process tree.

Shared by the benchmarks (run as `python bench/<name>.py`, so this folder is on the path).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def run_watched(name: str, command: list[str], logs: Path) -> dict:
    """Run `command` from the repo root; returns its wall time, the CPU time of its processes
    (as last sampled), its stdout and the peak RSS of its whole process tree (summed) and of
    each process (by label); exits on failure."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = str(REPO)
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    print(f"$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        job = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        root = psutil.Process(job.pid)
        peak_total, peaks, labels, cpu, root_trace = 0, {}, {}, {}, []
        while job.poll() is None:
            total = 0
            for process in [root, *_children(root)]:
                try:
                    rss = process.memory_info().rss
                    cpu[process.pid] = sum(process.cpu_times()[:2])
                    labels.setdefault(process.pid, _label(process, root))
                except psutil.Error:
                    continue  # it ended between listing and reading
                if rss == 0:
                    continue  # a zombie: ended, not yet reaped
                total += rss
                peaks[process.pid] = max(peaks.get(process.pid, 0), rss)
                if process is root:
                    root_trace.append(rss)
            peak_total = max(peak_total, total)
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    if job.returncode != 0:
        sys.exit(f"{name} failed (exit {job.returncode}): {' '.join(command)}\n"
                 f"--- stdout tail ---\n{out.read_text()[-3000:]}\n--- stderr tail ---\n{err.read_text()[-6000:]}")
    by_label: dict[str, int] = {}
    for pid, rss in peaks.items():
        by_label[labels[pid]] = max(by_label.get(labels[pid], 0), rss)
    return {"seconds": seconds, "cpu_seconds": sum(cpu.values()), "stdout": out.read_text(),
            "peak_total": peak_total, "peak_process": max(peaks.values(), default=0), "by_label": by_label,
            "root_trace": root_trace}


def _children(root: psutil.Process) -> list[psutil.Process]:
    try:
        return root.children(recursive=True)
    except psutil.Error:
        return []


def _label(process: psutil.Process, root: psutil.Process) -> str:
    if process.pid == root.pid:
        return "main"
    try:
        rank = process.environ().get("RANK")
    except psutil.Error:
        rank = None
    # Processes that a rank starts inherit its RANK; only the rank itself is torchrun's child.
    if rank is not None and process.ppid() == root.pid:
        return f"rank {rank}"
    return "helper" if rank is not None else "worker"
