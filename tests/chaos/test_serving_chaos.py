"""Issue #14's serving rows against a real `streamrl serve` process: a legal but huge query, 200
concurrent requests, idle connections, the served weights overwritten or truncated under the server,
a restart with the newest version bad, and a failing version retried with backoff, not hammered."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_world import TINY_LEARN, build_tiny_world, start_server

from streamrl.checkpoints.serving import ServingRoot
from streamrl.checkpoints.store import CheckpointStore


def _sets(tmp: Path) -> list[str]:
    o = [*TINY_LEARN, f"serving.root={tmp / 'serving'}", "serving.model=tiny", f"learn.run_dir={tmp / 'run'}"]
    o += ["serving.poll_s=0.2", "serving.beam=8", "serving.idle_timeout_s=1", "serving.max_queue=64"]
    return [x for s in o for x in ("--set", s)]


def _cli(tmp: Path, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamrl", *args, *_sets(tmp)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _serve(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    proc, hello = start_server(_sets(tmp))
    return proc, hello["serving"]


def _post(url: str, body: dict[str, Any], timeout: float = 60) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("chaos-serving")
    build_tiny_world(tmp)
    for steps in (2, 3):
        _cli(tmp, "learn", "--records", str(tmp / "rec"), "--sids", str(tmp / "sids"), "--steps", str(steps))
        _cli(tmp, "push")
    return tmp


@pytest.fixture(scope="module")
def server(world: Path) -> Iterator[str]:
    proc, url = _serve(world)
    yield url
    proc.terminate()
    assert proc.wait(timeout=20) == 0


def test_a_huge_legal_query_is_refused_or_answered_quickly(server: str) -> None:
    start = time.monotonic()
    code, body = _post(f"{server}/search", {"query": "𝔘" * 512, "k": 100})  # 512 four-byte characters
    assert code == 400 and "tokens" in body["error"] and time.monotonic() - start < 5
    start = time.monotonic()
    code, body = _post(f"{server}/search", {"query": "𝔘" * 30, "k": 100})  # 120 tokens: allowed
    assert code == 200 and time.monotonic() - start < 20
    code, _ = _post(f"{server}/search", {"query": "a", "k": 101})
    assert code == 400


def test_200_concurrent_requests_get_answers_not_resets(server: str) -> None:
    codes: list[int | str] = []
    lock = threading.Lock()

    def ask(n: int) -> None:
        try:
            code, _ = _post(f"{server}/search", {"query": f"wool {n}", "k": 5}, timeout=120)
        except OSError as exc:  # a reset or refused connection: what must not happen
            code = type(exc).__name__
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(codes) == 200 and set(codes) <= {200, 503}, sorted(set(map(str, codes)))
    assert codes.count(200) >= 64  # the queue's worth at least; the rest told to come back (503)


def test_idle_connections_are_closed_and_do_not_starve_health(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(20)]
    assert _get(f"{server}/healthz")[0] == 200  # answered while 20 connections sit idle
    time.sleep(2.5)  # serving.idle_timeout_s=1
    for s in idle:
        s.settimeout(5)
        assert s.recv(1) == b""  # closed by the server
        s.close()


def test_weights_overwritten_or_truncated_under_the_server_change_nothing(world: Path, server: str) -> None:
    ask = {"query": "red wool", "k": 5}
    before = _post(f"{server}/search", ask)[1]["items"]
    served = ServingRoot(world / "serving", "tiny").version_path(2) / "model.safetensors"
    original = served.read_bytes()
    try:
        other = CheckpointStore(world / "run").path(2) / "model.safetensors"  # same shape, other weights
        served.write_bytes(other.read_bytes())
        assert _post(f"{server}/search", ask)[1]["items"] == before  # weights live in memory, verified
        served.write_bytes(original[: len(original) // 3])  # truncated: once a SIGBUS
        code, body = _post(f"{server}/search", ask)
        assert code == 200 and body["items"] == before
    finally:
        served.write_bytes(original)


def test_restart_with_the_newest_version_bad_serves_the_newest_good_and_backs_off(world: Path) -> None:
    newest = ServingRoot(world / "serving", "tiny").version_path(2) / "model.safetensors"
    original = newest.read_bytes()
    newest.write_bytes(original[:-100])
    proc, url = _serve(world)
    try:
        status, health = _get(f"{url}/healthz")
        health = json.loads(health)
        assert status == 200 and health["version"] == 1 and "2" in health["failing"]
        time.sleep(3.0)  # poll 0.2 s: 15 tries without backoff, about 4 with it
        text = _get(f"{url}/metrics")[1]
        failures = float(re.search(r"^streamrl_serve_reload_failures_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        assert 1 <= failures <= 5
        assert "streamrl_serve_failing_versions 1.0" in text
        newest.write_bytes(original)  # repaired: picked up at the next retry
        deadline = time.monotonic() + 30
        while json.loads(_get(f"{url}/healthz")[1])["version"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        newest.write_bytes(original)
        proc.terminate()
        proc.wait(timeout=20)
