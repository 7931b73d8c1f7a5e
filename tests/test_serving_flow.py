"""Issue #5's offline check, through the CLI and over HTTP: learn → push → serve → /search; push
again; rollback --previous (served within 2 s, scheduled pushes held); push resume; a damaged
checkpoint is never pushed; rollback to a missing version is refused; a version that fails
verification is never loaded by the server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tiny_world import TINY_LEARN, build_tiny_world, start_server

from streamrl.checkpoints.push import push
from streamrl.checkpoints.serving import ServingRoot
from streamrl.checkpoints.store import CheckpointStore


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("flow")
    build_tiny_world(tmp)
    return tmp


def _sets(tmp: Path) -> list[str]:
    o = [*TINY_LEARN, f"serving.root={tmp / 'serving'}", "serving.model=tiny", f"learn.run_dir={tmp / 'run'}"]
    o += [f"weights.dir={tmp / 'weights'}", "serving.poll_s=0.2", "serving.beam=8", "push.eval_beam=8"]
    return [x for s in o for x in ("--set", s)]


def cli(tmp: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "streamrl", *args, *_sets(tmp)], capture_output=True, text=True, timeout=300
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def learn(tmp: Path, steps: int) -> None:
    cli(tmp, "learn", "--records", str(tmp / "rec"), "--sids", str(tmp / "sids"), "--steps", str(steps))


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read()))


def wait_version(base: str, version: int, within_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        if get(f"{base}/version")["version"] == version:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(
        f"server did not report version {version} within {within_s} s: {get(base + '/version')}"
    )


@pytest.fixture(scope="module")
def server(world: Path) -> Iterator[str]:
    learn(world, 2)
    cli(world, "push")  # version 1 exists before the server starts
    proc, hello = start_server(_sets(world))
    assert hello["version"] == 1 and 0 < hello["startup_s"] < 300  # reported (bench/serving.py times it)
    yield hello["serving"]
    proc.terminate()
    assert proc.wait(timeout=20) == 0


def test_push_serve_rollback_resume(world: Path, server: str) -> None:
    assert get(f"{server}/healthz") == {"ok": True, "version": 1}
    code, body = post(f"{server}/search", json.dumps({"query": "red wool", "user_id": "u1", "k": 5}).encode())
    assert code == 200 and body["version"] == 1 and len(body["items"]) == 5
    book = set(pq.read_table(world / "sids" / "sid_codebook.parquet").column("item_id").to_pylist())
    assert all(it["item_id"] in book and len(it["sid"]) == 5 for it in body["items"])
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)

    learn(world, 3)
    cli(world, "push")
    assert wait_version(server, 2, 2.0) < 2.0

    rb = cli(world, "rollback", "--previous", "--reason", "CTR dropped after v2", "--author", "oncall")
    assert "pinned to version 1" in rb.stderr
    assert wait_version(server, 1, 2.0) < 2.0  # within 2 s of the command
    assert get(f"{server}/version")["pinned"] is True

    learn(world, 4)  # a new checkpoint; the scheduled push must not replace the pin
    serving = ServingRoot(world / "serving", "tiny")
    held = push(CheckpointStore(world / "run"), serving, scheduled=True)
    assert not held.pushed and "pinned" in held.reason
    time.sleep(0.5)
    assert get(f"{server}/version")["version"] == 1 and serving.versions() == [1, 2]

    cli(world, "push", "resume", "--reason", "v2 was fine after all")
    assert wait_version(server, 2, 2.0) < 2.0  # latest again (step 4 was never pushed)

    out = cli(world, "serving", "status", "--json").stdout
    assert len(out.strip().splitlines()) == 1  # --json prints one line
    status = json.loads(out)
    assert status["served_version"] == 2 and not status["held"]
    assert [v["step"] for v in status["versions"]] == [2, 3]
    actions = [h["action"] for h in serving.history()]
    assert actions == ["push", "push", "rollback", "held_push", "resume"]
    listing = json.loads(cli(world, "checkpoints", "list", "--json").stdout)
    assert [(c["step"], c["pushed_as"], c["valid"]) for c in listing] == [
        (2, [1], True),
        (3, [2], True),
        (4, [], True),
    ]


def test_damaged_checkpoints_and_versions_are_never_pushed_loaded_or_pinned(world: Path, server: str) -> None:
    serving = ServingRoot(world / "serving", "tiny")
    learn(world, 5)
    model = world / "run" / "checkpoints" / "0000000005" / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated
    before = serving.versions()
    proc = cli(world, "push", ok=False)
    assert proc.returncode == 2 and "sha256" in proc.stderr
    assert serving.versions() == before and serving.history()[-1]["action"] == "refused_push"

    proc = cli(world, "rollback", "--to", "99", "--reason", "typo", ok=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    served = get(f"{server}/version")["version"]

    # a version folder damaged after the push: the server keeps the old model, rollback refuses it
    bad = max(before) + 1
    shutil.copytree(serving.version_path(max(before)), serving.version_path(bad))
    (serving.version_path(bad) / "config.json").write_text("{}")
    time.sleep(1.0)
    v = get(f"{server}/version")
    assert v["version"] == served and str(bad) in v["failed"]
    with urllib.request.urlopen(f"{server}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    failures = re.search(r"^streamrl_serve_reload_failures_total (\S+)$", text, re.M)
    assert failures and float(failures.group(1)) >= 1  # retried with backoff: 1 or 2 tries so far
    assert "streamrl_serve_failing_versions 1.0" in text
    assert str(bad) in get(f"{server}/healthz")["failing"]
    proc = cli(world, "rollback", "--to", str(bad), "--reason", "x", ok=False)
    assert proc.returncode == 2 and "fails verification" in proc.stderr
    shutil.rmtree(serving.version_path(bad))


def test_requests_are_bounded(server: str) -> None:
    for body, code in (
        (b"not json", 400),
        (json.dumps({"query": ""}).encode(), 400),
        (json.dumps({"query": "x" * 10_000}).encode(), 400),
        (json.dumps({"query": "a", "k": 1000}).encode(), 400),
        (json.dumps({"query": "a", "history": [1, 2]}).encode(), 400),
        (json.dumps({"query": "a", "history": ["i"] * 500}).encode(), 400),
        (b"{" + b" " * 100_000 + b"}", 413),
    ):
        got, answer = post(f"{server}/search", body)
        assert got == code and answer["error"], (body[:40], got, answer)
    code, answer = post(
        f"{server}/search", json.dumps({"query": "毛衣 红色", "history": ["nope"], "k": 3}).encode()
    )
    assert code == 200 and len(answer["items"]) == 3  # any Unicode; unknown history items are ignored


SERVED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "sid_codebook.parquet",
    "sid_centroids.safetensors",
    "sid_meta.json",
    "manifest.json",
}


def test_served_version_holds_what_serving_reads_readable_by_all(world: Path, server: str) -> None:
    serving = ServingRoot(world / "serving", "tiny")
    folder = serving.version_path(1)
    assert {p.name for p in folder.iterdir()} == SERVED_FILES  # no optimizer.pt, learner state, CTR table
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in folder.iterdir())
    assert folder.stat().st_mode & 0o777 == 0o755
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == SERVED_FILES - {"manifest.json"}
    assert manifest["learner_files_left_out"] == ["ctr_table.parquet", "learner_state.json", "optimizer.pt"]
    source = Path(serving.history()[0]["source"])
    assert (source / "optimizer.pt").exists()  # the learner's checkpoint keeps what a resume needs
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in source.iterdir())
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # known to transformers 4.x and 5.x


def test_plain_generate_with_the_shipped_constraint_returns_real_items(world: Path, server: str) -> None:
    """A pushed version through plain transformers: from_pretrained + generate + SidConstraint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from streamrl.rl.policy import format_prompt
    from streamrl.serving.sid_constraint import SidConstraint

    folder = ServingRoot(world / "serving", "tiny").version_path(1)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    book = set(pq.read_table(folder / "sid_codebook.parquet").column("item_id").to_pylist())
    tok.padding_side = "left"
    enc = tok([format_prompt(q, [], tok) for q in ("red wool", "毛衣")], return_tensors="pt", padding=True)
    sid = SidConstraint.from_pretrained(folder, tok, prompt_len=enc["input_ids"].shape[1])
    common = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "max_new_tokens": sid.L}
    beams = model.generate(
        **common,
        logits_processor=[sid],
        num_beams=6,
        num_return_sequences=6,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    items = sid.items(beams)
    assert len(items) == 12 and all(i in book for i in items)
    assert len(set(items[:6])) == 6 and len(set(items[6:])) == 6  # six distinct real items per prompt
    sampled = model.generate(
        **common,
        logits_processor=[sid],
        do_sample=True,
        num_return_sequences=8,
        pad_token_id=tok.pad_token_id,
    )
    assert all(i in book for i in sid.items(sampled))


ROOT = Path(__file__).resolve().parents[1]
COMPAT = sorted(ROOT.glob(".venv-tf*/bin/python"))


@pytest.mark.parametrize("python", COMPAT, ids=[p.parts[-3] for p in COMPAT])
def test_older_transformers_load_and_decode_a_pushed_version(world: Path, server: str, python: Path) -> None:
    """The oldest supported transformers (4.45) and the last 4.x load a version pushed by this one
    (5.x), and streamrl's decoder and generate + SidConstraint run there, with the same answers."""
    from streamrl.rl.checkpointing import load_for_inference
    from streamrl.rl.decode import beam_search
    from streamrl.rl.policy import format_prompt

    folder = ServingRoot(world / "serving", "tiny").version_path(1)
    model, tok, book, vocab = load_for_inference(folder)
    prompt = format_prompt("red wool socks 毛衣", list(book.sids.values())[:2], tok)
    proc = subprocess.run(
        [str(python), str(ROOT / "tests" / "compat" / "check_version.py"), str(folder), prompt],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["transformers"] == python.parts[-3].removeprefix(".venv-tf")
    assert got["ids"] == tok(prompt, add_special_tokens=False)["input_ids"]  # the same tokens
    assert all(i in set(book.sids) for i in got["generate_items"]) and len(got["generate_items"]) == 4
    here = beam_search(model, tok, [prompt], vocab, 8)[0]
    assert [tuple(s) for s, _ in got["decoder"]] == [s for s, _ in here]
    assert [v for _, v in got["decoder"]] == pytest.approx([v for _, v in here], abs=1e-4)


def test_compat_environments_exist() -> None:
    """`make test` builds them (make compat); a bare pytest run without them says so here."""
    if os.environ.get("STREAMRL_REQUIRE_COMPAT") == "1":
        assert len(COMPAT) >= 2, "make compat did not build .venv-tf<version> environments"
    elif not COMPAT:
        pytest.skip("no .venv-tf* environments: run `make compat` (make test does)")


def test_server_metrics(server: str) -> None:
    post(f"{server}/search", json.dumps({"query": "red wool", "k": 3}).encode())
    with urllib.request.urlopen(f"{server}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'streamrl_serve_requests_total{route="/search",status="200"}' in text
    for name in (
        "streamrl_serve_search_seconds_bucket",
        "streamrl_serve_batch_size_count",
        "streamrl_serve_loaded_version",
        "streamrl_serve_reload_failures_total",
        "streamrl_serve_startup_seconds",
        "streamrl_serve_queue_depth",
    ):
        assert name in text, name
