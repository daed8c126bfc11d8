"""SIGTERM (what SLURM sends before a time limit or preemption) as a request to save and stop.

The handler only sets a flag; the loop checks it between steps, all ranks
together, so every rank stops after the same step and saves one consistent
checkpoint. A signal can reach the ranks at slightly different times, hence the
all-reduce rather than each rank's own flag.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from megatron_rm import runtime


class StopRequest:
    def __init__(self):
        self.signal = None
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def agreed(self) -> bool:
        """Whether any rank received SIGTERM (collective: call on every rank)."""
        flag = torch.tensor([0 if self.signal is None else 1], dtype=torch.int32, device=runtime.device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
