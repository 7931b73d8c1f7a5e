"""Training curves: every learner step's scalars and every push decision into TensorBoard event files
under RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR/tensorboard`).

tensorboardX writes the event files (a small, well-kept writer: numpy + protobuf, no TensorFlow and no
`tensorboard` server needed to write); it is the optional extra `streamrl[tensorboard]`. Without it,
or with `learn.tensorboard: false`, curves are off and the learner says so once; nothing else changes
(the JSON lines on stdout and /metrics stay the source of truth). A write error is logged once and
turns the curves off: curves never stop training.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("streamrl.curves")
FOLDER = "tensorboard"
SKIP = {"step", "ts"}  # the x axis and the wall clock are not curves


class Curves:
    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path: Path | None = None
        self._writer: Any = None
        if not enabled:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            log.info("training curves off: pip install 'streamrl[tensorboard]' (tensorboardX) to write them")
            return
        self.path = run_dir / FOLDER
        self.path.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(logdir=str(self.path), flush_secs=10)
        log.info("training curves in %s (tensorboard --logdir %s)", self.path, self.path)

    @property
    def on(self) -> bool:
        return self._writer is not None

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """Every finite number in `values` as `prefix/name` at `step`."""
        if self._writer is None:
            return
        try:
            for name, value in values.items():
                if isinstance(value, bool):
                    value = float(value)
                if isinstance(value, (int, float)) and math.isfinite(value) and name not in SKIP:
                    # TensorBoard tags are [-/\w.]: hr@10 → hr_at_10
                    self._writer.add_scalar(f"{prefix}/{name.replace('@', '_at_')}", float(value), step)
        except Exception:
            log.exception("writing training curves failed; curves off for this run")
            self.close()

    def push(self, result: Mapping[str, Any], step: int) -> None:
        """A push decision: pushed 1/0 and the gate's metrics (hr@10 of both sides, …)."""
        metrics = result.get("metrics") or {}
        flat = {k: v for k, v in metrics.items() if not isinstance(v, Mapping)}
        for side, inner in metrics.items():
            if isinstance(inner, Mapping):
                flat.update({f"{side}_{k}": v for k, v in inner.items()})
        self.scalars("push", {"pushed": bool(result.get("pushed")), **flat}, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                log.exception("closing training curves failed")


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] from the event files in `folder` (TFRecord framing: length, its CRC, the
    Event proto, its CRC), for tests and reports; needs tensorboardX."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack_from("<Q", data, i)
            event = Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
    return out
