"""One JSON log stream per process: every line on stderr is one object with ts, level, logger, msg,
the process's pid and its member name (`joiner-1`, `learner`, …), so a log shipper can tell the
members of one daemon apart.

Library output joins the same stream: Python warnings go through logging (`captureWarnings`), and for
the processes that load models transformers' own handler and progress bars are switched off and its
records propagate here. transformers is routed only where a command uses it, so the joiner does not
pay its import."""

from __future__ import annotations

import json
import logging
import os
import sys

from streamrl.stream.metrics import member_name


class JsonFormatter(logging.Formatter):
    def __init__(self, member: str) -> None:
        super().__init__()
        self.member = member

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "member": self.member,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(role: str, level: str = "INFO", transformers: bool = False) -> None:
    """Structured JSON logs on stderr for the process playing `role` (its member name unless
    STREAMRL_MEMBER names it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(member_name(role)))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn(...) → the "py.warnings" logger, as JSON
    if transformers:
        route_transformers()


def route_transformers() -> None:
    """transformers writes through its own stderr handler and tqdm bars; send it through ours."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()
