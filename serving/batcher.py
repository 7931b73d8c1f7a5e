"""Request batching for `streamrl serve`: concurrent /search requests are decoded together.

HTTP handler threads `submit` a job and wait on it; one decoder thread takes the first waiting job,
gathers more for up to `serving.batch_window_ms` (or until `serving.max_batch`) — only when company is
likely (the last batch had more than one, or more are queued), so a lone client never waits — and
runs the batched
constrained decoder (rl/decode.py) once per group of jobs that share a model version and a beam
width — so a request's answer never depends on the company it came with. The queue is bounded
(`serving.max_queue`): when it is full, `submit` says so at once and the handler answers 503. A job
whose caller gave up (deadline, 504) before decoding started is skipped.

Why batching pays even on a CPU: the tree-attention decoder's per-level forward costs about the
same for 1 prompt as for 8 (fixed per-call overhead dominates small models), so 8 queued
requests cost little more than one (bench/serving.py measures it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamrl.rl.decode import Beams, beam_search

log = logging.getLogger("streamrl.serve")


class ServerMetrics:
    """The server's Prometheus series, in its own registry (exposed on GET /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "streamrl_serve_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "streamrl_serve_search_seconds",
            "POST /search latency, parse to answer",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.batch = Histogram(
            "streamrl_serve_batch_size",
            "prompts per decoder batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.queue = Gauge("streamrl_serve_queue_depth", "requests waiting for the decoder", registry=r)
        self.version = Gauge(
            "streamrl_serve_loaded_version", "the version being served (0: none)", registry=r
        )
        self.reload_failures = Counter(
            "streamrl_serve_reload_failures", "versions that failed to load or verify", registry=r
        )
        self.failing = Gauge(
            "streamrl_serve_failing_versions", "versions that failed and wait for a retry", registry=r
        )
        self.startup = Gauge("streamrl_serve_startup_seconds", "process start to first bind", registry=r)


@dataclass
class Job:
    model: Any  # serving.server.Loaded: the version this request started with
    prompt: str
    beam: int
    done: threading.Event = field(default_factory=threading.Event)
    beams: Beams | None = None
    error: str | None = None
    abandoned: bool = False


class Batcher:
    def __init__(
        self,
        max_batch: int,
        window_s: float,
        max_queue: int,
        metrics: ServerMetrics,
        decode: Callable[..., list[Beams]] = beam_search,
    ) -> None:
        self.decode = decode
        self._last_batch = 1
        self.max_batch = max_batch
        self.window_s = window_s
        self.metrics = metrics
        self._q: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        metrics.queue.set_function(self._q.qsize)
        self._thread = threading.Thread(target=self._loop, name="decoder", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (the caller answers 503)."""
        try:
            self._q.put_nowait(job)
        except queue.Full:
            return False
        return True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _gather(self, first: Job) -> list[Job]:
        """The first job plus what is waiting; the window is waited out only when company is likely
        (the last batch had some, or others are already queued): a lone client pays no window."""
        jobs = [first]
        company = self._last_batch > 1 or not self._q.empty()
        until = time.monotonic() + (self.window_s if company else 0.0)
        while len(jobs) < self.max_batch:
            left = until - time.monotonic()
            try:
                jobs.append(self._q.get(timeout=left) if left > 0 else self._q.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            groups: dict[tuple[int, int], list[Job]] = defaultdict(list)
            batch = self._gather(first)
            self._last_batch = len(batch)
            for job in batch:
                if not job.abandoned:
                    groups[(id(job.model), job.beam)].append(job)
            for group in groups.values():
                self._decode(group)

    def _decode(self, jobs: list[Job]) -> None:
        m = jobs[0].model
        self.metrics.batch.observe(len(jobs))
        try:
            results = self.decode(m.model, m.tok, [j.prompt for j in jobs], m.vocab, jobs[0].beam)
        except Exception as exc:  # one bad batch must not stop the decoder thread
            log.exception("decoding a batch of %d failed", len(jobs))
            for j in jobs:
                j.error = f"decoding failed: {type(exc).__name__}: {exc}"
                j.done.set()
            return
        for j, beams in zip(jobs, results, strict=True):
            j.beams = beams
            j.done.set()
