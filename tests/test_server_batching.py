"""`streamrl serve`'s request batching over real HTTP (in-process server, tiny random model): concurrent
requests are decoded together and get the answers they get alone; a full queue answers 503 at once,
a stuck decoder 504; /metrics reports requests, batch sizes and the loaded version."""

from __future__ import annotations

import copy
import json
import random
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streamrl.checkpoints.serving import ServingRoot
from streamrl.configs.schema import ServingConfig
from streamrl.rl.decode import beam_search
from streamrl.rl.policy import PolicyShape, SidVocab, build_model, build_tokenizer
from streamrl.serving.batcher import Batcher, ServerMetrics
from streamrl.serving.server import Loaded, ModelHolder, make_server

LEVELS = (8, 4, 4)


def loaded() -> Loaded:
    rng = random.Random(0)
    sids = sorted({tuple(rng.randrange(k) for k in LEVELS) for _ in range(80)})
    tok = build_tokenizer(LEVELS)
    model = build_model(tok, PolicyShape(hidden=32, layers=1, heads=2, intermediate=64)).eval()
    book = SimpleNamespace(sids={f"i{n}": s for n, s in enumerate(sids)})
    by_sid = {s: i for i, s in book.sids.items()}
    return Loaded(1, 10, 0, model, tok, book, SidVocab(tok, LEVELS, sids), by_sid, copy.deepcopy(tok))


def start(tmp: Path, cfg: ServingConfig, batcher: Batcher | None = None) -> tuple[str, Any, ModelHolder]:
    holder = ModelHolder(ServingRoot(tmp, "m"), cfg.poll_s, batcher.metrics if batcher else None)
    holder.current = loaded()
    server = make_server(cfg, holder, batcher=batcher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server, holder


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


@pytest.fixture
def batching_server(tmp_path: Path) -> Iterator[str]:
    cfg = ServingConfig(port=0, beam=8, max_batch=8, batch_window_ms=200)
    base, server, _ = start(tmp_path, cfg)
    yield base
    server.shutdown()


def test_concurrent_requests_are_batched_and_answer_as_alone(batching_server: str) -> None:
    queries = [f"query number {n} {'很长 ' * n}" for n in range(8)]
    together: dict[int, dict[str, Any]] = {}

    def ask(n: int) -> None:
        code, body = post(f"{batching_server}/search", {"query": queries[n], "k": 5})
        assert code == 200
        together[n] = body

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    metrics = urllib.request.urlopen(f"{batching_server}/metrics", timeout=10).read().decode()
    batches = metric(metrics, "streamrl_serve_batch_size_count")
    assert metric(metrics, "streamrl_serve_batch_size_sum") == 8 and batches < 8  # some went together
    for n, query in enumerate(queries):
        code, alone = post(f"{batching_server}/search", {"query": query, "k": 5})
        assert code == 200
        assert [i["item_id"] for i in alone["items"]] == [i["item_id"] for i in together[n]["items"]]
        assert [i["score"] for i in alone["items"]] == pytest.approx(
            [i["score"] for i in together[n]["items"]], abs=1e-4
        )
    metrics = urllib.request.urlopen(f"{batching_server}/metrics", timeout=10).read().decode()
    assert metric(metrics, 'streamrl_serve_requests_total{route="/search",status="200"}') == 16
    assert metric(metrics, "streamrl_serve_loaded_version") == 1
    assert metric(metrics, "streamrl_serve_search_seconds_count") == 16


def test_full_queue_answers_503_and_a_stuck_decoder_504(tmp_path: Path) -> None:
    release = threading.Event()
    started = threading.Event()

    def stuck(*args: Any) -> Any:
        started.set()
        release.wait(30)
        return beam_search(*args)

    cfg = ServingConfig(port=0, beam=4, max_batch=1, batch_window_ms=0, max_queue=1, request_timeout_s=1.0)
    batcher = Batcher(1, 0.0, 1, ServerMetrics(), decode=stuck)
    base, server, _ = start(tmp_path, cfg, batcher)
    try:
        results: list[tuple[int, dict[str, Any]]] = []
        first = threading.Thread(target=lambda: results.append(post(f"{base}/search", {"query": "a"})))
        first.start()
        assert started.wait(10)  # the decoder holds request 1
        second = threading.Thread(target=lambda: results.append(post(f"{base}/search", {"query": "b"})))
        second.start()  # request 2 waits in the queue (size 1)
        for _ in range(100):
            if batcher._q.qsize() == 1:
                break
            threading.Event().wait(0.02)
        code, body = post(f"{base}/search", {"query": "c"})
        assert code == 503 and "busy" in body["error"]
        first.join()
        second.join()
        assert sorted(c for c, _ in results) == [504, 504]  # nobody answered within 1 s
        release.set()
        text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
        assert metric(text, 'streamrl_serve_requests_total{route="/search",status="503"}') == 1
        assert metric(text, 'streamrl_serve_requests_total{route="/search",status="504"}') == 2
    finally:
        release.set()
        server.shutdown()
