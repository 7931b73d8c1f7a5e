"""`streamrl broker`: a human's local broker, on a free loopback port, stopped by Ctrl-C/SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_broker_command_serves_kafka_and_stops_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrl", "broker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        bootstrap = proc.stdout.readline().strip()
        host, port = bootstrap.split(":")
        assert host == "127.0.0.1"
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        assert isinstance(admin.list_topics(), list)
        admin.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert code == 0
    with pytest.raises(OSError):  # the broker went with it
        socket.create_connection((host, int(port)), timeout=1)
