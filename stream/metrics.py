"""Per-process observability: Prometheus `/metrics` and JSON `/healthz` on one small HTTP server.

prometheus-client (the reference Prometheus client) formats the exposition; each process has its own
registry with one custom collector that reads a snapshot the process publishes from its own loop
(`publish`), so a scrape never walks live state while the loop mutates it. Names ending in `_total`
are counters, the rest gauges; a value may be a number or {((label, value), ...): number}.
Binds 127.0.0.1 unless `metrics.host` says otherwise; port 0 in config means no endpoint.

Each `publish` is the loop's heartbeat: `/healthz` answers 503 with `"stale"` once the last one is
older than `metrics.stale_after_s` (a hung loop no longer looks healthy), and always reports its age.
The standard `process_*` metrics (CPU seconds, resident memory, open fds, start time) come from
prometheus-client's process collector.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("streamrl.metrics")
MEMBER_ENV = "STREAMRL_MEMBER"  # set by `streamrl run` for each child: joiner-0, joiner-1, learner


def member_name(process: str) -> str:
    """This process's member name: STREAMRL_MEMBER when a supervisor set it, else its role; a rank of
    a torchrun group (WORLD_SIZE > 1) adds `-rank<RANK>`."""
    name = os.environ.get(MEMBER_ENV) or process
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        name += f"-rank{os.environ.get('RANK', '0')}"
    return name


Labels = tuple[tuple[str, str], ...]
Value = float | Mapping[Labels, float]


class LoggingHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server whose request errors go to the JSON log, not raw to stderr (the
    standard library prints a traceback between dashed lines); a client that hung up is debug."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            log.debug("client %s went away: %r", client_address, exc)
        else:
            log.exception("request from %s failed", client_address)


class ProcessMetrics:
    def __init__(self, process: str, stale_after_s: float = 120.0, member: str | None = None) -> None:
        self.process = process
        self.member = member or member_name(process)
        self.stale_after_s = stale_after_s
        self.started = time.time()
        self.beat = time.monotonic()
        self.registry = CollectorRegistry()
        self._values: dict[str, tuple[str, Value]] = {}
        self._health: dict[str, Any] = {"ok": True}
        self._lock = threading.Lock()
        self.registry.register(self)  # a duck-typed collector: collect() and describe()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes…
        self.server: LoggingHTTPServer | None = None

    def publish(
        self, values: Mapping[str, tuple[str, Value]], health: Mapping[str, Any] | None = None
    ) -> None:
        """Replace the snapshot: {metric name: (help, value)} and the /healthz body."""
        with self._lock:
            self.beat = time.monotonic()
            self._values = dict(values)
            if health is not None:
                self._health = dict(health)

    def health(self) -> dict[str, Any]:
        """The last published body, with the heartbeat's age; not ok once the heartbeat is stale."""
        with self._lock:
            body = dict(self._health)
            age = time.monotonic() - self.beat
        out = {
            "process": self.process,
            "member": self.member,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            **body,
            "heartbeat_age_s": round(age, 1),
        }
        if age > self.stale_after_s:
            out["ok"] = False
            out["error"] = (
                f"stale: the {self.process} loop has not reported for {age:.0f} s "
                f"(metrics.stale_after_s = {self.stale_after_s:g})"
            )
        return out

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            values = dict(self._values)
        for name, (doc, value) in sorted(values.items()):
            counter = name.endswith("_total")
            base = name[: -len("_total")] if counter else name
            if isinstance(value, Mapping):
                label_names = [k for k, _ in next(iter(value))] if value else []
                fam: Metric = (CounterMetricFamily if counter else GaugeMetricFamily)(
                    base, doc, labels=label_names
                )
                for labels, v in value.items():
                    fam.add_metric([lv for _, lv in labels], float(v))  # type: ignore[attr-defined]
            else:
                fam = (CounterMetricFamily if counter else GaugeMetricFamily)(base, doc, value=float(value))
            yield fam

    def describe(self) -> list[Metric]:
        return []  # collected lazily; nothing to pre-register

    def start(self, host: str, port: int) -> int:
        """Serve /metrics and /healthz on a daemon thread; returns the bound port."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(metrics.registry), "text/plain; version=0.0.4", 200
                elif self.path == "/healthz":
                    h = metrics.health()
                    body, ctype, code = (
                        json.dumps(h).encode(),
                        "application/json",
                        200 if h.get("ok") else 503,
                    )
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = LoggingHTTPServer((host, port), Handler)
        threading.Thread(
            target=self.server.serve_forever, name=f"metrics-{self.process}", daemon=True
        ).start()
        bound = int(self.server.server_address[1])
        log.info("%s metrics on http://%s:%d/metrics", self.process, host, bound)
        return bound

    def serve(self, host: str, port: int) -> None:
        """`start` when a port is configured (0 = none); a port in use is logged, not fatal: the
        process's work matters more than its metrics."""
        if not port:
            return
        try:
            self.start(host, port)
        except OSError as exc:
            log.error("%s metrics endpoint not started on %s:%d: %s", self.process, host, port, exc)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def deep_size(obj: Any, seen: set[int] | None = None, depth: int = 0) -> int:
    """Bytes of an object graph (containers, slots and __dict__ followed), for sampled estimates."""
    seen = seen if seen is not None else set()
    if id(obj) in seen or depth > 6:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen, depth + 1) + deep_size(v, seen, depth + 1) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep_size(x, seen, depth + 1) for x in obj)
    elif hasattr(obj, "__slots__"):
        size += sum(deep_size(getattr(obj, s), seen, depth + 1) for s in obj.__slots__ if hasattr(obj, s))
    elif hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen, depth + 1)
    return size
