"""Serving a reward model on a whole TP/PP/DP job: rank 0 gathers concurrent requests into
batches and leads each forward; every other rank follows.

`Scorer.outputs` (`score`, or `token_logits` for a token head) is collective, so every rank
must run the same forwards in the same order.
Rank 0 owns the order: one thread (the batcher's) makes every collective call there, and
before each forward it broadcasts a one-integer command (score, idle tick or stop), then the
batch's token ids (`broadcast_sequences`). Only integers cross ranks. The other ranks wait
in `follow`; while no request arrives rank 0 sends an idle tick now and then, so that a
waiting rank never reaches the process group's timeout (30 minutes by default).

Dynamic batching: the first request of a batch waits `wait_s` for others to join it, up
to `max_tokens` tokens and `max_requests` requests; the whole batch is one `scorer.outputs`
call and each request gets back exactly its own rows. A request larger than `max_tokens`
goes alone; it is never split. Requests arriving while a forward runs join the next one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from megatron_rm import runtime
from megatron_rm.runtime.parallel import broadcast_sequences
from megatron_rm.scoring.scorer import Scorer

log = logging.getLogger(__name__)
SCORE, IDLE, STOP = 0, 1, 2
IDLE_TICK_S = 30.0


class Lead:
    """Rank 0's forward: each batch is announced to the other ranks, so that every rank calls
    `scorer.outputs` with it. In a one-rank job it is the scorer alone."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._others = dist.get_world_size() > 1

    def score(self, sequences: list[list[int]]):
        """`scorer.outputs`: rewards (a sequence head) or per-token logits (a token head)."""
        if self._others:
            self._announce(SCORE)
            sequences = broadcast_sequences(sequences)
        return self.scorer.outputs(sequences)

    def idle(self) -> None:
        self._announce(IDLE)

    def stop(self) -> None:
        self._announce(STOP)

    def _announce(self, command: int) -> None:
        if self._others:
            dist.broadcast(torch.tensor([command], dtype=torch.int64, device=runtime.device()), src=0)


def follow(scorer: Scorer) -> None:
    """Every rank but 0: run rank 0's forwards until it says stop."""
    command = torch.empty(1, dtype=torch.int64, device=runtime.device())
    while True:
        dist.broadcast(command, src=0)
        if int(command) == SCORE:
            scorer.outputs(broadcast_sequences(None))
        elif int(command) == STOP:
            return


@dataclass(frozen=True)
class BatchLimits:
    max_tokens: int = 65536
    """Tokens (sum of input lengths) gathered into one forward; a larger request goes alone."""
    max_requests: int | None = None
    """Requests gathered into one forward; None: no limit; 1 scores one request at a time."""
    wait_s: float = 0.005
    """How long the first request of a batch waits for others to join it."""


class Closed(RuntimeError):
    """The server is stopping and takes no new work."""


@dataclass
class _Job:
    sequences: list[list[int]]
    tokens: int
    arrival: float
    future: Future = field(default_factory=Future)


class Batcher:
    """Gathers concurrent requests into forwards on one thread, which makes every collective call."""

    def __init__(self, forward: Lead, limits: BatchLimits = BatchLimits(), idle_tick_s: float = IDLE_TICK_S):
        self.forward, self.limits, self.idle_tick_s = forward, limits, idle_tick_s
        self.counts = {"batches": 0, "requests": 0, "items": 0}
        """Forwards run, requests and items scored: how much batching merged."""
        self._pending: deque[_Job] = deque()
        self._pending_tokens = 0
        self._closing = False
        self._failure = "the server is shutting down"
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="forward", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def score(self, sequences: list[list[int]]):
        """This request's outputs (`Scorer.outputs`: (len(sequences), num_labels) rewards, or each
        sequence's per-token logits), scored with whatever joins it. An empty request (OpenRLHF's
        multi-server client sends one to a server whose share is empty) runs no forward: the
        scorer's empty outputs need no other rank."""
        if not sequences:
            return self.forward.scorer.outputs([])
        job = _Job(sequences, sum(map(len, sequences)), time.monotonic())
        with self._wake:
            if self._closing:
                raise Closed(self._failure)
            self._pending.append(job)
            self._pending_tokens += job.tokens
            self._wake.notify()
        return await asyncio.wrap_future(job.future)

    def close(self) -> None:
        """Score what is pending, then tell the other ranks to stop."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def serving(self) -> bool:
        return self._thread.is_alive() and not self._closing

    def _run(self) -> None:
        try:
            while (jobs := self._next_batch()) is not None:
                if not jobs:
                    self.forward.idle()
                    continue
                # A request cancelled while it waited (its future cancelled) is dropped before the forward.
                live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
                if live:
                    self._score(live)
            self.forward.stop()
        except Exception as error:  # the job is broken (a rank gone?): refuse work rather than let it hang
            with self._wake:
                self._closing, self._failure = True, f"the forward loop failed ({type(error).__name__}: {error})"
                pending, self._pending = self._pending, deque()
            for job in pending:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(Closed(self._failure))
            log.exception("the forward loop failed; the server refuses new requests")

    def _next_batch(self) -> list[_Job] | None:
        """The next batch; [] after an idle tick's worth of waiting; None once closed and drained."""
        with self._wake:
            if not self._wake.wait_for(lambda: self._pending or self._closing, timeout=self.idle_tick_s):
                return []
            if not self._pending:
                return None
            deadline = self._pending[0].arrival + self.limits.wait_s
            while not self._full() and not self._closing and (left := deadline - time.monotonic()) > 0:
                self._wake.wait(left)
            return self._take()

    def _full(self) -> bool:
        limit = self.limits.max_requests
        return self._pending_tokens >= self.limits.max_tokens or (limit is not None and len(self._pending) >= limit)

    def _take(self) -> list[_Job]:
        """Pending jobs in arrival order while they fit; the first one always does."""
        jobs, tokens = [], 0
        while self._pending and (not jobs or (tokens + self._pending[0].tokens <= self.limits.max_tokens
                                              and len(jobs) != self.limits.max_requests)):
            job = self._pending.popleft()
            jobs.append(job)
            tokens += job.tokens
        self._pending_tokens -= tokens
        return jobs

    def _score(self, jobs: list[_Job]) -> None:
        try:
            rewards = self.forward.score([ids for job in jobs for ids in job.sequences])
        except Exception as error:  # every waiting request learns of it; the server goes on
            for job in jobs:
                job.future.set_exception(error)
            return
        self.counts["batches"] += 1
        self.counts["requests"] += len(jobs)
        self.counts["items"] += len(rewards)
        start = 0
        for job in jobs:
            job.future.set_result(rewards[start:start + len(job.sequences)])
            start += len(job.sequences)
