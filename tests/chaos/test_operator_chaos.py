"""Issue #14's operator rows through the CLI: bad weights files (a negative bonus, 1e308), a model name
that is a path, a damaged policy.json, and bad input to operator commands — each refused with exit 2
and one clear line, never a traceback, and nothing in force changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from streamrl.checkpoints.serving import ServingError, ServingRoot
from streamrl.configs.schema import RewardsFile

PROMO = """
promotions:
  - name: p
    match: {{merchant_ids: [m1]}}
    bonus: {{relevance: {bonus}}}
    start: 2020-01-01T00:00:00Z
    end: 2099-01-01T00:00:00Z
"""


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    sets = [
        f"serving.root={tmp / 'serving'}",
        f"weights.dir={tmp / 'weights'}",
        f"learn.run_dir={tmp / 'run'}",
    ]
    cmd = [sys.executable, "-m", "streamrl", *args, *[x for s in sets for x in ("--set", s)]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)


def refused(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    assert all(w in proc.stderr for w in words), proc.stderr[-2000:]


def test_bad_weights_files_are_refused_and_the_old_ones_stay(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(PROMO.format(bonus=1.0))
    assert run(tmp_path, "weights", "apply", str(good), "--author", "a", "--reason", "r").returncode == 0
    for content, word in (
        (PROMO.format(bonus=-1), "greater than or equal to 0"),  # the docs say negatives are refused
        ("weights: {relevance: 1e308}\n", "less than or equal to 1000"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(content)
        refused(run(tmp_path, "weights", "apply", str(bad), "--author", "a", "--reason", "r"), word)
    for content in (
        PROMO.format(bonus=1e308),
        "weights: {relevance: .nan}\n",
        "w_item: -2\n",
        "v_click: 1e300\n",
    ):
        with pytest.raises(ValidationError):
            RewardsFile.model_validate(yaml.safe_load(content))
    shown = json.loads(run(tmp_path, "weights", "show", "--json").stdout)
    assert shown["version"] == 1  # the good file is still in force


def test_a_model_name_that_is_a_path_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    for args in (
        ("rollback", "--to", "1", "--reason", "x", "--model", "../../evil"),
        ("push", "resume", "--model", "a/b"),
        ("serving", "status", "--model", ".."),
        ("serve", "--model", "../x"),
    ):
        refused(run(tmp_path, *args), "model name")
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path / "serving").exists()


def test_a_damaged_policy_is_reported_and_repaired_with_one_command(tmp_path: Path) -> None:
    serving = ServingRoot(tmp_path / "serving", "default")
    serving.dir.mkdir(parents=True)
    for garbage in ('["a list"]', '{"mode": "pinned"}', '{"mode": "pinned", "version": "3"}', "[1, 2"):
        (serving.dir / "policy.json").write_text(garbage)
        with pytest.raises(ServingError, match="serving repair"):
            serving.policy()
    refused(run(tmp_path, "serving", "status"), "policy.json", "serving repair")
    done = run(tmp_path, "serving", "repair", "--reason", "damaged by hand")
    assert done.returncode == 0 and "latest" in done.stderr, done.stderr
    assert serving.policy()["mode"] == "latest"
    (serving.dir / "policy.json").write_text("[1, 2")
    serving.resume("x", None)  # push resume replaces a damaged policy instead of failing on it
    assert serving.policy()["mode"] == "latest"
    assert [h["action"] for h in serving.history()] == ["repair", "resume"]


@pytest.mark.parametrize(
    "args",
    [
        ("eval", "--checkpoint", "/nonexistent", "--records", "/nonexistent"),
        ("push", "--step", "99"),
        ("rollback", "--to", "3", "--reason", "x"),
        ("learn", "--records", "/nonexistent", "--sids", "/nonexistent", "--steps", "1"),
        ("replay", "/nonexistent.jsonl", "--out", "x"),
        ("weights", "revert", "7", "--author", "a", "--reason", "r"),
        ("learn", "--steps", "1", "--sids", "/nonexistent", "--set", "learn.lr=-1"),
    ],
)
def test_operator_commands_refuse_bad_input_with_exit_2_and_one_line(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    refused(run(tmp_path, *args))
