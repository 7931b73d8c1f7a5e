"""Issue #13's process observability: /healthz turns 503 when the loop's heartbeat is stale, the
standard process_* metrics are exported, and every log line (library output included) is one JSON
object carrying the pid and the member name."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator

import pytest

from streamrl import logs
from streamrl.stream.metrics import MEMBER_ENV, ProcessMetrics


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_stale_heartbeat_turns_healthz_503_and_a_new_one_clears_it() -> None:
    m = ProcessMetrics("joiner", stale_after_s=0.5, member="joiner-1")
    port = m.start("127.0.0.1", 0)
    try:
        m.publish({"streamrl_x_total": ("x", 1.0)}, {"ok": True, "lag": 0})
        code, body = _get(port, "/healthz")
        h = json.loads(body)
        assert code == 200 and h["ok"] and h["member"] == "joiner-1" and h["pid"] == os.getpid()
        assert 0 <= h["heartbeat_age_s"] < 0.5
        time.sleep(0.8)  # the loop hangs: no publish
        code, body = _get(port, "/healthz")
        h = json.loads(body)
        assert code == 503 and h["ok"] is False and "stale" in h["error"] and h["heartbeat_age_s"] >= 0.5
        m.publish({}, {"ok": True})
        assert _get(port, "/healthz")[0] == 200
        # a loop that reports itself unhealthy stays 503 whatever the heartbeat
        m.publish({}, {"ok": False, "last_error": "boom"})
        assert _get(port, "/healthz")[0] == 503
    finally:
        m.stop()


def test_process_metrics_are_exported() -> None:
    m = ProcessMetrics("learner")
    port = m.start("127.0.0.1", 0)
    try:
        m.publish({"streamrl_learner_steps_total": ("steps", 3.0)}, {"ok": True})
        text = _get(port, "/metrics")[1]
        for series in (
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_start_time_seconds ",
            "streamrl_learner_steps_total 3.0",
        ):
            assert series in text, series
    finally:
        m.stop()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    from transformers.utils import logging as hf_logging

    hf_logging.disable_propagation()
    hf_logging.enable_default_handler()
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_log_line_is_json_with_pid_and_member_library_output_included(
    restore_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MEMBER_ENV, "joiner-3")
    logs.setup("joiner", transformers=True)
    from transformers.utils import logging as hf_logging

    logging.getLogger("streamrl.test").info("ours")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library warning", UserWarning, stacklevel=1)
    hf_logging.get_logger("transformers.modeling_utils").warning("from transformers")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {p["member"] for p in parsed} == {"joiner-3"} and {p["pid"] for p in parsed} == {os.getpid()}
    msgs = " | ".join(p["msg"] for p in parsed)
    assert "ours" in msgs and "a library warning" in msgs and "from transformers" in msgs
    loggers = {p["logger"] for p in parsed}
    assert {"streamrl.test", "py.warnings", "transformers.modeling_utils"} <= loggers
