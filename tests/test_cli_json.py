"""Issue #13: every command whose output is data takes `--json` and prints exactly one JSON line on
stdout (human text, if any, on stderr). The commands run in-process (typer's CliRunner) on a tiny
world, in the order an operator would meet them: simulate → replay → sids build → learn → eval →
push → rollback → resume → repair → status views → weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tiny_world import TINY_LEARN, TINY_WORLD
from typer.testing import CliRunner

from streamrl.cli import app

ROOT = Path(__file__).resolve().parents[1]


def one_line(*args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (args, result.output, result.exception)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, (args, result.stdout[-2000:])
    return json.loads(lines[0])


def test_every_json_output_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "world.yaml").write_text(TINY_WORLD)
    sets = [
        x
        for o in [
            *TINY_LEARN,
            f"learn.run_dir={tmp_path / 'run'}",
            f"serving.root={tmp_path / 'serving'}",
            f"weights.dir={tmp_path / 'weights'}",
            "push.eval_beam=4",
            "metrics.supervisor_port=0",
            "metrics.joiner_port=0",
            "metrics.learner_port=0",
        ]
        for x in ("--set", o)
    ]
    sim = one_line(
        "simulate", "--world", "world.yaml", "--out", "e.jsonl", "--requests", "200", "--truth", "truth"
    )
    assert sim["logging ranker"]["requests"] == 200
    assert one_line("synth", "--out", "s.jsonl", "--requests", "20")["events"] > 0
    assert one_line("replay", "e.jsonl", "--out", "rec")["records"] > 0
    sids = one_line(
        "sids", "build", "--world-truth", "truth", "--out", "sids", "--encoder", "hash", "--levels", "8,4,4"
    )
    assert sids["items"] == 120
    # learn prints a JSON line per step; its summary is the last line
    result = CliRunner().invoke(app, ["learn", "--records", "rec", "--sids", "sids", "--steps", "2", *sets])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["steps"] == 2
    ev = one_line(
        "eval", "--checkpoint", str(tmp_path / "run"), "--records", "rec", "--limit", "5", "--beam", "4"
    )
    assert 0.0 <= ev["hr@10"] <= 1.0
    assert one_line("push", *sets, "--set", "push.max_regression=1.0")["pushed"] is True
    result = CliRunner().invoke(app, ["learn", "--records", "rec", "--sids", "sids", "--steps", "4", *sets])
    assert result.exit_code == 0, result.output
    assert one_line("push", *sets, "--set", "push.max_regression=1.0")["version"] == 2
    assert one_line("rollback", "--previous", "--reason", "test", *sets)["version"] == 1
    assert one_line("push", "resume", "--reason", "ok", *sets)["served_version"] == 2
    assert one_line("serving", "repair", "--reason", "check", *sets)["mode"] == "latest"
    assert one_line("serving", "status", *sets)["served_version"] == 2
    assert [c["step"] for c in one_line("checkpoints", "list", *sets)] == [2, 4]
    assert one_line("weights", "show", *sets)["version"] == 0
    applied = one_line(
        "weights", "apply", str(ROOT / "configs/rewards.yaml"), "--author", "me", "--reason", "r", *sets
    )
    assert applied["version"] == 1
    assert one_line("weights", "revert", "0", "--author", "me", "--reason", "back", *sets)["version"] == 2
    assert len(one_line("weights", "history", *sets)) == 2
    status = one_line("status", *sets)  # nothing running: every process has no endpoint configured
    assert status["serving"]["served_version"] == 2 and status["weights_version"] == 2
