"""Shared fixtures. The broker fixture starts a real Kafka-protocol broker (Tansu) on loopback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from streamrl.configs import StreamrlConfig, load_config
from streamrl.stream.broker import LocalBroker

SHARED = Path(os.environ.get("STREAMRL_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sim" / "data"


def shared_data(relative: str) -> Path:
    """A fixture file from ../shared/data (the full fixtures, when beside the clone), else the licensed
    sample the repository ships (sim/data: 40 ESCI queries, the 20 OTTO sessions): nothing skips."""
    path = SHARED / "data" / relative
    return path if path.exists() else SAMPLE_DATA / relative


# Test-sized timeouts (BROKER.md: first group join takes about half the session timeout).
FAST_KAFKA = ["kafka.session_timeout_ms=6000", "kafka.heartbeat_interval_ms=1000"]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with LocalBroker(log=log) as b:
        yield b


@pytest.fixture
def kafka_cfg(broker: LocalBroker, request: pytest.FixtureRequest, tmp_path: Path) -> StreamrlConfig:
    """A config on the session broker with topic names unique to this test."""
    prefix = f"t{abs(hash(request.node.nodeid)) % 10**8}"
    topics = ["impressions", "clicks", "orders", "items", "rewards", "dlq"]
    return load_config(
        overrides=[
            f"kafka.bootstrap_servers={broker.bootstrap}",
            f"kafka.join_group={prefix}-joiner",
            f"kafka.learn_group={prefix}-learner",
            f"archive.dir={tmp_path / 'archive'}",
            "metrics.supervisor_port=0",  # tests open endpoints on free ports when they check them
            "metrics.joiner_port=0",
            "metrics.learner_port=0",
            *FAST_KAFKA,
            *[f"kafka.topics.{t}={prefix}.{t}" for t in topics],
        ]
    )
