"""The checkpoint store: `RUN_DIR/checkpoints/<step, 10 digits>/`, written atomically and verified.

A checkpoint folder holds whatever the learner writes (HF model config + safetensors, tokenizer,
`sid_codebook.parquet`, optimizer state, learner state) plus `manifest.json`:

    step, created (UTC ISO), offsets {topic: {partition: next offset}}, weights_version,
    codebook_sha256, files {relative path: sha256}, metrics {...}, parent (previous step or null)

Write: fill a temp folder → hash every file → write the manifest → fsync files and folders → rename.
A crash leaves either the old set or the new checkpoint, never half of one (temp folders are swept
on the next write). Verify: the manifest parses and every listed file exists with its sha256; a
checkpoint that fails is skipped with a log line naming the file, and is never loaded or pushed.
Retention keeps the last `keep_last` plus every step named in `keep` (the ones ever pushed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamrl.checkpoints.files import folder_lock, fsync_dir, fsync_tree, make_readable, sha256_file

MANIFEST = "manifest.json"
CODEBOOK = "sid_codebook.parquet"
# What only a learner reads to resume (rl/checkpointing.py writes them); a served version leaves them out.
OPTIMIZER = "optimizer.pt"  # AdamW state, loaded with torch.load(weights_only=True)
LEARNER_STATE = "learner_state.json"  # steps, skipped steps, weights version, resets, CTR clock
CTR_STATE = "ctr_table.parquet"  # the learner's posterior CTR counts
BUFFER = "buffer.parquet"  # the streaming learner's sampling buffer, with use counts (rl/buffer.py)
LEARNER_ONLY = frozenset({OPTIMIZER, LEARNER_STATE, CTR_STATE, BUFFER})
log = logging.getLogger("streamrl.checkpoints")


class CheckpointError(ValueError):
    """A checkpoint that must not be used; the message says which and why."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no {MANIFEST}") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / MANIFEST}: unreadable: {exc}") from exc
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or "step" not in m:
        raise CheckpointError(f"{path / MANIFEST}: not a checkpoint manifest")
    return m


def verify(path: Path, hashed_by_caller: Callable[[str], bool] = lambda rel: False) -> dict[str, Any]:
    """The manifest of a checkpoint whose every listed file matches its sha256; else CheckpointError.
    Files for which `hashed_by_caller(rel)` is true are only checked to exist: the caller hashes the
    very bytes it reads (a server reading the weights into memory), so they are not read twice."""
    m = read_manifest(path)
    if not m["files"]:
        raise CheckpointError(f"{path}: manifest lists no files")
    for rel, digest in sorted(m["files"].items()):
        f = path / rel
        if hashed_by_caller(rel):
            if not f.is_file():
                raise CheckpointError(f"{path}: {rel} is missing")
            continue
        if not f.is_file():
            raise CheckpointError(f"{path}: {rel} is missing")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{path}: {rel} does not match its sha256 (truncated or edited)")
    return m


def hash_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


class CheckpointStore:
    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir / "checkpoints"

    def path(self, step: int) -> Path:
        return self.root / f"{step:010d}"

    def write(self, step: int, fill: Callable[[Path], None], meta: dict[str, Any]) -> Checkpoint:
        """`fill(folder)` writes the files; the store adds the manifest and publishes atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        tmp = self.root / f".tmp-{step:010d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            fill(tmp)
            make_readable(tmp)
            files = hash_tree(tmp)
            previous = [c.step for c in self.checkpoints() if c.step < step]
            manifest = {
                "step": step,
                "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "parent": previous[-1] if previous else None,
                "codebook_sha256": files.get(CODEBOOK),
                **meta,
                "files": files,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.chmod(tmp / MANIFEST, 0o644)
            fsync_tree(tmp)
            final = self.path(step)
            if final.exists():  # the same step saved again (e.g. a drain right after a save)
                old = self.root / f".old-{step:010d}-{os.getpid()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Checkpoint(step, final)

    def checkpoints(self) -> list[Checkpoint]:
        if not self.root.is_dir():
            return []
        return sorted(
            (Checkpoint(int(p.name), p) for p in self.root.iterdir() if p.is_dir() and p.name.isdigit()),
            key=lambda c: c.step,
        )

    def get(self, step: int) -> Checkpoint:
        path = self.path(step)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint step {step} does not exist in {self.root}")
        return Checkpoint(step, path)

    def latest_valid(self) -> tuple[Checkpoint, dict[str, Any]] | None:
        """The newest checkpoint that verifies; every newer one that does not is logged and skipped."""
        for ckpt in reversed(self.checkpoints()):
            try:
                return ckpt, verify(ckpt.path)
            except CheckpointError as exc:
                log.error("skipping checkpoint %d: %s", ckpt.step, exc)
        return None

    def retain(self, keep_last: int, keep: Iterable[int] = ()) -> list[int]:
        """Delete all but the newest `keep_last`, the steps in `keep` and any checkpoint held by a push
        in progress (any process); returns the deleted steps."""
        with folder_lock(self.root):
            pinned = set(keep) | self._held()
            ckpts = self.checkpoints()
            doomed = [c for c in ckpts[: max(len(ckpts) - keep_last, 0)] if c.step not in pinned]
            for c in doomed:
                shutil.rmtree(c.path, ignore_errors=True)
        return [c.step for c in doomed]

    @contextmanager
    def holding(self, step: int) -> Iterator[Checkpoint]:
        """Keep a checkpoint from retention while it is evaluated and copied (a `.hold-` marker with
        this pid; a dead holder's marker is ignored)."""
        marker = self.root / f".hold-{step:010d}-{os.getpid()}-{threading.get_ident()}"
        with folder_lock(self.root):
            ckpt = self.get(step)
            marker.touch()
        try:
            yield ckpt
        finally:
            marker.unlink(missing_ok=True)

    def _held(self) -> set[int]:
        """Steps held by a live process; a dead holder's marker is removed."""
        held = set()
        for p in self.root.glob(".hold-*"):
            _, step, pid, _ = p.name.split("-", 3)
            if _alive(int(pid)):
                held.add(int(step))
            else:
                p.unlink(missing_ok=True)
        return held

    def _sweep(self) -> None:
        """Temp folders left by a crashed writer (another pid's are left alone while it lives)."""
        for p in self.root.glob(".tmp-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
