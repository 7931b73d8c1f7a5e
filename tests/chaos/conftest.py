"""Every test under tests/chaos/ carries the `chaos` marker: `pytest -m chaos` runs the suite alone,
`-m "not chaos"` skips it (make test runs it: it fits the time budget)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.chaos)
