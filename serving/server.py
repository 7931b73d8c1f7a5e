"""`streamrl serve`: the reference server over the serving layout (checkpoints/serving.py).

    GET  /healthz   200 {"ok": true, "version": N} once a version is loaded, else 503
    GET  /version   {"version": N, "step": S, "weights_version": W, "pinned": bool, "failed": {...}}
    GET  /metrics   Prometheus: requests by route and status, /search latency, batch sizes, queue
                    depth, loaded version, reload failures, start-up seconds
    POST /search    {"query": str, "user_id": str, "history": [item_id, ...], "k": int}
                    -> {"version": N, "items": [{"item_id", "sid", "score"}, ...], "latency_ms": ms}
                    503 when the decoder queue is full, 504 past serving.request_timeout_s
    POST /reload    re-read policy.json now (what a push notifies); answers like /version

/search requests are batched (serving/batcher.py) through the one constrained decoder that eval and
the push gate use (rl/decode.py: KV cache, beams sharing the prompt's cache, trie as tensors).

It follows policy.json and new versions: a watcher thread re-reads them every `serving.poll_s`
seconds, loads the version to serve in the background (manifest hashes verified first), and swaps
the reference between requests; a request keeps the model it started with. A version that fails to
load or verify is logged, reported under "failed", and the old model keeps serving. Requests are
bounded (body bytes, query length, history length, k). Binds 127.0.0.1 unless configured.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamrl.checkpoints.serving import ServingError, ServingRoot
from streamrl.checkpoints.store import CheckpointError, verify
from streamrl.configs.schema import ServingConfig
from streamrl.rl.checkpointing import is_weights_file, load_for_inference
from streamrl.rl.policy import MAX_QUERY_TOKENS, format_prompt
from streamrl.serving.batcher import Batcher, Job, ServerMetrics
from streamrl.stream.metrics import LoggingHTTPServer

log = logging.getLogger("streamrl.serve")


@dataclass(frozen=True)
class Loaded:
    version: int
    step: int
    weights_version: int | None
    model: Any
    tok: Any
    book: Any
    vocab: Any
    by_sid: dict[tuple[int, ...], str]
    counter: Any = None  # a second tokenizer for the HTTP threads (a fast tokenizer is not thread-safe)
    counter_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Failure:
    reason: str
    tries: int
    retry_at: float  # monotonic seconds


class ModelHolder:
    """The version being served. A version that fails to load or verify is reported (/healthz,
    /version, /metrics) and retried with doubling backoff (serving.poll_s up to RETRY_MAX_S). At start,
    with nothing loaded, following "latest", the newest version that loads is served instead."""

    RETRY_MAX_S = 300.0

    def __init__(self, serving: ServingRoot, poll_s: float, metrics: ServerMetrics | None = None) -> None:
        self.serving = serving
        self.metrics = metrics or ServerMetrics()
        self.metrics.version.set_function(lambda: self.current.version if self.current else 0)
        self.metrics.failing.set_function(lambda: len(self.failed))
        self.poll_s = poll_s
        self.current: Loaded | None = None
        self.failed: dict[int, Failure] = {}
        self.pinned = False
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def refresh(self) -> Loaded | None:
        with self._lock:  # one load at a time; requests never wait on this lock
            try:
                target = self.serving.served()
                self.pinned = self.serving.held()
            except ServingError as exc:
                log.error("serving policy unreadable, keeping version %s: %s", self._v(), exc)
                return self.current
            present = set(self.serving.versions())
            self.failed = {v: f for v, f in self.failed.items() if v in present}  # removed by hand
            if target is None or (self.current and self.current.version == target):
                return self.current
            if self._load(target) is None and self.current is None and not self.pinned:
                for older in reversed([v for v in self.serving.versions() if v < target]):
                    if self._load(older) is not None:  # the newest good version, until the newest loads
                        break
            return self.current

    def _load(self, version: int) -> Loaded | None:
        failure = self.failed.get(version)
        if failure is not None and time.monotonic() < failure.retry_at:
            return None
        path = self.serving.version_path(version)
        try:
            manifest = verify(path, is_weights_file)  # the weights: hashed from the bytes loaded
            model, tok, book, vocab = load_for_inference(path, manifest=manifest)
        except (CheckpointError, OSError, ValueError) as exc:
            tries = failure.tries + 1 if failure else 1
            wait = min(self.poll_s * 2**tries, self.RETRY_MAX_S)
            self.failed[version] = Failure(str(exc), tries, time.monotonic() + wait)
            self.metrics.reload_failures.inc()
            log.error(
                "version %d failed to load (try %d, next in %.0f s), serving %s: %s",
                version,
                tries,
                wait,
                self._v(),
                exc,
            )
            return None
        self.failed.pop(version, None)
        self.current = Loaded(
            version,
            int(manifest["step"]),
            manifest.get("weights_version"),
            model,
            tok,
            book,
            vocab,
            {sid: item for item, sid in book.sids.items()},
            copy.deepcopy(tok),
        )
        log.info("serving version %d (step %d)", version, self.current.step)
        return self.current

    def _v(self) -> str:
        return str(self.current.version) if self.current else "none"

    def watch(self) -> threading.Thread:
        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                try:
                    self.refresh()
                except Exception:  # the watcher must outlive any single bad version
                    log.exception("refresh failed")

        t = threading.Thread(target=loop, name="serving-watcher", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    def describe(self) -> dict[str, Any]:
        cur = self.current
        return {
            "version": cur.version if cur else None,
            "step": cur.step if cur else None,
            "weights_version": cur.weights_version if cur else None,
            "catalog_items": len(cur.book.sids) if cur else None,  # the codebook this version decodes
            "pinned": self.pinned,
            "failed": {str(k): f.reason for k, f in self.failed.items()},
        }


class BadRequest(ValueError):
    pass


def parse_search(body: bytes, cfg: ServingConfig) -> tuple[str, list[str], int]:
    try:
        req = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(req, dict):
        raise BadRequest("body must be a JSON object")
    query, history, k = req.get("query"), req.get("history", []), req.get("k", 10)
    if not isinstance(query, str) or not query.strip():
        raise BadRequest("query must be a non-empty string")
    if len(query) > cfg.max_query_chars:
        raise BadRequest(f"query longer than {cfg.max_query_chars} characters")
    if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
        raise BadRequest("history must be a list of item_id strings")
    if len(history) > cfg.max_history:
        raise BadRequest(f"history longer than {cfg.max_history} items")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= cfg.max_k:
        raise BadRequest(f"k must be an integer in 1..{cfg.max_k}")
    return query, history, k


def prompt_for(m: Loaded, query: str, history: list[str], history_len: int, max_tokens: int) -> str:
    """The prompt, built in an HTTP thread with the lock-guarded copy of the tokenizer (the decoder
    thread has `tok` to itself). The query is tokenised once: BadRequest over `max_tokens`, and
    clipped to the prompts' MAX_QUERY_TOKENS only when it is longer."""
    sids = [m.book.sids[h] for h in history[:history_len] if h in m.book.sids]
    with m.counter_lock:
        tok = m.counter if m.counter is not None else m.tok
        n = len(tok(query[: max_tokens * 16], add_special_tokens=False)["input_ids"])
        if n > max_tokens:
            raise BadRequest(f"query longer than {max_tokens} tokens")
        whole = len(query) <= max_tokens * 16  # the count saw all of it
        return format_prompt(query, sids, tok, clip=n > MAX_QUERY_TOKENS or not whole)


def answer(m: Loaded, beams: list[tuple[tuple[int, ...], float]], k: int) -> list[dict[str, Any]]:
    return [{"item_id": m.by_sid[s], "sid": list(s), "score": round(score, 6)} for s, score in beams[:k]]


def make_server(
    cfg: ServingConfig, holder: ModelHolder, history_len: int = 5, batcher: Batcher | None = None
) -> LoggingHTTPServer:
    metrics = holder.metrics
    decoder = batcher or Batcher(cfg.max_batch, cfg.batch_window_ms / 1000, cfg.max_queue, metrics)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall
        timeout = cfg.idle_timeout_s  # a silent connection is closed, not held for ever

        def _send(self, code: int, obj: Any, route: str | None = None) -> None:
            metrics.requests.labels(route or self.path.split("?")[0][:32], str(code)).inc()
            data = json.dumps(obj).encode()
            self._raw(code, data, "application/json")

        def _raw(self, code: int, data: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes | None:
            try:
                n = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                n = -1
            if n < 0 or n > cfg.max_body_bytes:
                self._send(413, {"error": f"body must be at most {cfg.max_body_bytes} bytes"})
                self.close_connection = True
                return None
            return self.rfile.read(n)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                cur = holder.current
                body: dict[str, Any] = {"ok": cur is not None, "version": cur.version if cur else None}
                if holder.failed:
                    body["failing"] = {str(k): f.reason for k, f in holder.failed.items()}
                self._send(200 if cur else 503, body)
            elif self.path == "/version":
                self._send(200, holder.describe())
            elif self.path == "/metrics":
                metrics.requests.labels("/metrics", "200").inc()
                self._raw(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, {"error": f"no route GET {self.path}"}, "other")

        def do_POST(self) -> None:
            body = self._body()
            if body is None:
                return
            if self.path == "/reload":
                holder.refresh()
                self._send(200, holder.describe())
                return
            if self.path != "/search":
                self._send(404, {"error": f"no route POST {self.path}"}, "other")
                return
            m = holder.current  # this request keeps this model even if a swap happens meanwhile
            if m is None:
                self._send(503, {"error": "no version loaded yet"})
                return
            try:
                query, history, k = parse_search(body, cfg)
            except BadRequest as exc:
                self._send(400, {"error": str(exc)})
                return
            try:
                prompt = prompt_for(m, query, history, history_len, cfg.max_query_tokens)
            except BadRequest as exc:
                self._send(400, {"error": str(exc)})
                return
            started = time.perf_counter()
            job = Job(m, prompt, max(cfg.beam, k))
            if not decoder.submit(job):
                self._send(503, {"error": f"server busy: {cfg.max_queue} requests already waiting"})
                return
            if not job.done.wait(cfg.request_timeout_s):
                job.abandoned = True
                self._send(504, {"error": f"no answer within {cfg.request_timeout_s} s"})
                return
            if job.error is not None or job.beams is None:
                self._send(500, {"error": job.error or "no result"})
                return
            seconds = time.perf_counter() - started
            metrics.latency.observe(seconds)
            ms = round(seconds * 1000, 1)
            self._send(200, {"version": m.version, "items": answer(m, job.beams, k), "latency_ms": ms})

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

    class Server(LoggingHTTPServer):
        request_queue_size = cfg.listen_backlog

    return Server((cfg.host, cfg.port), Handler)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): start-up includes imports."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def serve(cfg: ServingConfig, root: Path, model: str, stop: threading.Event, history_len: int = 5) -> int:
    began = time.perf_counter()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no progress bars in the JSON log stream
    holder = ModelHolder(ServingRoot(root, model), cfg.poll_s)
    holder.refresh()
    holder.watch()
    batcher = Batcher(cfg.max_batch, cfg.batch_window_ms / 1000, cfg.max_queue, holder.metrics)
    server = make_server(cfg, holder, history_len, batcher)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    age = process_age_s()
    startup = round(age if age is not None else time.perf_counter() - began, 2)
    holder.metrics.startup.set(startup)
    print(
        json.dumps(
            {"serving": f"http://{host}:{port}", "model": model, "startup_s": startup, **holder.describe()}
        ),
        flush=True,
    )
    t = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    t.start()
    stop.wait()
    server.shutdown()
    batcher.stop()
    holder.stop()
    return 0
