"""Data moves one way (STYLE.md §1): checked on the import statements of every module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("stream", "rewards", "rl", "checkpoints", "configs", "sim", "serving")
PACKAGES = (*SUBPACKAGES, "streamrl")


def layer(module: str) -> str:
    """`streamrl.rl.policy` → `rl` (the card's folders install under streamrl); `streamrl.cli` →
    `streamrl`."""
    parts = module.split(".")
    if parts[0] == "streamrl" and len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    return parts[0]


def imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    # streamrl/ links the other folders in; its own modules are the files at its top.
    paths = (ROOT / package).glob("*.py") if package == "streamrl" else (ROOT / package).rglob("*.py")
    for path in paths:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {layer(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(layer(node.module))
        found[str(path.relative_to(ROOT))] = names
    return found


def test_nothing_imports_rl_or_the_cli() -> None:
    for package in ("stream", "rewards", "checkpoints", "configs", "sim"):
        for module, names in imports(package).items():
            assert not names & {"rl", "streamrl", "serving"}, module
    for module, names in imports("rl").items():
        assert not names & {"streamrl", "serving"}, module


def test_checkpoints_know_no_model_code() -> None:
    """The store, serving layout and gate handle folders and files; model evaluation is injected."""
    for module, names in imports("checkpoints").items():
        assert not names & {"transformers", "kafka", "stream"}, module


def test_rewards_is_pure() -> None:
    for module, names in imports("rewards").items():
        assert not names & {"kafka", "torch", "stream"}, module


def test_one_module_talks_to_kafka() -> None:
    talkers = {m for p in PACKAGES for m, names in imports(p).items() if "kafka" in names}
    assert talkers == {"stream/kafka_io.py"}
