"""Freshness: time from an order event being produced to the first served version whose training
consumed its record (issue #6; target p50 <= 30 s), on the demo config.

    .venv/bin/python bench/freshness.py [--duration 300] [--encoder minilm|hash]

It runs the demo (broker, closed-loop simulated traffic, `streamrl run`, `streamrl serve`) and
records when each order event was produced. Before the broker stops it reads the rewards topic:
request_id → (partition, offset) of its record. A version "consumed" a record when its manifest's
offsets for that partition are past the record's offset (the learner had read it into its buffer
by that checkpoint). Served at: the server's confirmation of the version (`notified` in
history.jsonl, POST /reload then GET /version), else the push time. Orders whose record no version
consumed before the run ended are counted, not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from streamrl.checkpoints.serving import ServingRoot
from streamrl.checkpoints.store import read_manifest
from streamrl.configs.schema import StreamrlConfig
from streamrl.demo import Traffic, run_demo
from streamrl.stream import kafka_io
from streamrl.stream.records import decode_batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    where: dict[str, tuple[int, int]] = {}

    def read_records(cfg: StreamrlConfig) -> None:
        for part, offset, value in kafka_io.read_span(cfg.kafka, cfg.kafka.topics.rewards, timeout_s=10):
            for rid in decode_batch(value).column("request_id").to_pylist():
                where.setdefault(rid, (part, offset))

    traffic = Traffic()
    with tempfile.TemporaryDirectory() as d:
        out = args.out or Path(d)
        code = run_demo(
            args.duration,
            out,
            Console(stderr=True, quiet=True),
            threading.Event(),
            args.encoder,
            traffic,
            read_records,
        )
        serving = ServingRoot(out / "serving", "default")
        hist = serving.history()
        confirmed = {
            h["version"]: h["at"] for h in hist if h.get("action") == "notified" and h.get("verified")
        }
        versions = []
        for h in hist:
            if h.get("action") == "push":
                m = read_manifest(serving.version_path(h["version"]))
                at = confirmed.get(h["version"], h["at"])
                offsets = {int(p): int(o) for p, o in next(iter(m["offsets"].values()), {}).items()}
                versions.append((datetime.fromisoformat(at).timestamp(), h["version"], offsets))
        versions.sort()
    lat, unserved, unjoined = [], 0, 0
    for rid, produced in traffic.orders:
        if rid not in where:
            unjoined += 1
            continue
        part, offset = where[rid]
        served = next((t for t, _, offs in versions if offs.get(part, 0) > offset and t >= produced), None)
        if served is None:
            unserved += 1
        else:
            lat.append(served - produced)
    res = {
        "orders": len(traffic.orders),
        "timed": len(lat),
        "not_yet_served": unserved,
        "no_record_yet": unjoined,
        "versions": len(versions),
        "p50_s": round(statistics.median(lat), 1) if lat else None,
        "p95_s": round(statistics.quantiles(lat, n=20)[-1], 1) if len(lat) >= 2 else None,
        "target_p50_s": 30,
        "demo_exit": code,
    }
    print(json.dumps(res))
    print(
        f"order produced → served: p50 {res['p50_s']} s, p95 {res['p95_s']} s over {len(lat)} orders "
        f"({unserved} not served yet, {unjoined} without a record yet at the end; {len(versions)} versions)"
    )


if __name__ == "__main__":
    main()
