"""Relevance sources for generated items outside the impression: catalog rule, table, HTTP service."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamrl.rewards.relevance import CategoryRelevance, HttpRelevance, TableRelevance, make_relevance

CATS = {"a": ("apparel", "knit", "sweaters"), "b": ("apparel", "shoes", "boots"), "c": ("home", "lamps")}
REF = [("apparel", "knit", "sweaters")]


def test_catalog_rule() -> None:
    assert CategoryRelevance(CATS).tiers("q", ["a", "b", "c", "unknown"], REF) == [2, 1, 0, 0]


def test_table_with_fallback_for_unlisted_queries(tmp_path: Path) -> None:
    path = tmp_path / "relevance.parquet"
    pq.write_table(
        pa.table({"query": ["wool sweater", "wool sweater"], "item_id": ["a", "c"], "tier": [3, 1]}), path
    )
    src = TableRelevance(path, CategoryRelevance(CATS))
    assert src.tiers("wool sweater", ["a", "b", "c"], REF) == [3, 0, 1]  # listed query: missing pair = 0
    assert src.tiers("boots", ["a", "b", "c"], REF) == [2, 1, 0]  # unlisted query: the catalog rule


def test_table_refuses_tiers_outside_range(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"query": ["q"], "item_id": ["a"], "tier": [7]}), path)
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        TableRelevance(path, CategoryRelevance(CATS))


class _Service(BaseHTTPRequestHandler):
    mode = "ok"
    seen: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Service.seen.append(body)
        if _Service.mode == "slow":
            time.sleep(1.0)
        tiers = [3 if i == "a" else 1 for i in body["item_ids"]]
        if _Service.mode == "short":
            tiers = tiers[:-1]
        data = json.dumps({"tiers": tiers}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except BrokenPipeError:  # the client gave up (the timeout case)
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Service.mode, _Service.seen = "ok", []
    yield f"http://127.0.0.1:{server.server_address[1]}/relevance"
    server.shutdown()


def test_http_service_answers(service: str) -> None:
    src = HttpRelevance(service, 2.0, CategoryRelevance(CATS))
    assert src.tiers("wool", ["a", "b", "c"], REF) == [3, 1, 1]
    assert _Service.seen == [{"query": "wool", "item_ids": ["a", "b", "c"]}] and src.errors == 0


@pytest.mark.parametrize("mode", ["short", "slow"])
def test_http_failures_fall_back_to_the_catalog_rule_and_are_counted(service: str, mode: str) -> None:
    _Service.mode = mode
    src = HttpRelevance(service, 0.3, CategoryRelevance(CATS))
    assert src.tiers("wool", ["a", "b", "c"], REF) == [2, 1, 0]
    assert src.errors == 1


def test_unreachable_service_falls_back() -> None:
    src = HttpRelevance("http://127.0.0.1:9/relevance", 0.3, CategoryRelevance(CATS))
    assert src.tiers("q", ["a"], REF) == [2] and src.errors == 1


def test_make_relevance_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="path"):
        make_relevance("table", CATS)
    with pytest.raises(ValueError, match="url"):
        make_relevance("http", CATS)
    assert make_relevance("catalog", CATS).name == "catalog"
