"""The serving layout and its audit trail:

    SERVING_ROOT/MODEL/<version>/      what serving needs of a checkpoint: model, tokenizer, codebook and
                                       a manifest of just those files (files 0644, folders 0755) —
                                       a standard transformers folder (from_pretrained) plus the SIDs
    SERVING_ROOT/MODEL/policy.json     {"mode": "latest"} or {"mode": "pinned", "version": N, ...}
    SERVING_ROOT/MODEL/history.jsonl   append-only: push, refused_push, held_push, rollback, resume,
                                       learner_reset

Versions are consecutive integers from 1. A push copies a verified checkpoint, less what only a
learner reads (optimizer state, learner counters, CTR table: store.LEARNER_ONLY), into a temp
folder with the manifest narrowed to the copied files, verifies the copy and renames it to the next
version, so a server never sees half a version. While serving is pinned (a rollback), scheduled
pushes are held: they are recorded as `held_push` and copy nothing. A lock file serialises pushes
and rollbacks from any process. `served()` is the version a server must load: the pin, else the
newest version.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamrl.checkpoints.files import (
    append_jsonl,
    folder_lock,
    fsync_dir,
    fsync_tree,
    make_readable,
    read_jsonl,
    write_json,
)
from streamrl.checkpoints.store import LEARNER_ONLY, MANIFEST, CheckpointError, verify

POLICY = "policy.json"
HISTORY = "history.jsonl"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


class ServingError(ValueError):
    """A serving operation refused; nothing was changed."""


REPAIR = "repair: streamrl serving repair --reason ..."
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ServingRoot:
    def __init__(self, root: Path, model: str) -> None:
        if not MODEL_NAME.fullmatch(model):
            raise ServingError(
                f"model name {model!r} refused: 1-64 of letters, digits, '_', '.', '-', starting with a "
                "letter or digit (it names a folder under the serving root)"
            )
        self.dir = root / model
        self.model = model

    # -- reading -----------------------------------------------------------------------------
    def versions(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.dir.iterdir() if p.is_dir() and p.name.isdigit())

    def version_path(self, version: int) -> Path:
        return self.dir / str(version)

    def policy(self) -> dict[str, Any]:
        try:
            p = json.loads((self.dir / POLICY).read_text())
        except FileNotFoundError:
            return {"mode": "latest"}
        except (OSError, ValueError) as exc:
            raise ServingError(f"{self.dir / POLICY}: unreadable: {exc} ({REPAIR})") from exc
        if not isinstance(p, dict) or p.get("mode") not in ("latest", "pinned"):
            raise ServingError(f"{self.dir / POLICY}: mode must be latest or pinned ({REPAIR})")
        version = p.get("version")
        if p["mode"] == "pinned" and (not isinstance(version, int) or isinstance(version, bool)):
            raise ServingError(f"{self.dir / POLICY}: pinned without a version ({REPAIR})")
        return dict(p)

    def _policy_or_none(self) -> dict[str, Any] | None:
        try:
            return self.policy()
        except ServingError:
            return None

    def held(self) -> bool:
        return self.policy()["mode"] == "pinned"

    def served(self) -> int | None:
        p = self.policy()
        if p["mode"] == "pinned":
            return int(p["version"])
        versions = self.versions()
        return versions[-1] if versions else None

    def history(self) -> list[dict[str, Any]]:
        return read_jsonl(self.dir / HISTORY)

    def last_of(self, action: str, tail_bytes: int = 1 << 16) -> dict[str, Any] | None:
        """The newest history entry with this action, reading only the file's tail (cheap enough for
        a once-a-second metrics refresh however long the history grows); None when the tail has none."""
        path = self.dir / HISTORY
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(size - tail_bytes, 0))
                lines = fh.read().splitlines()[1 if size > tail_bytes else 0 :]  # first may be cut
        except FileNotFoundError:
            return None
        for line in reversed(lines):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("action") == action:
                return dict(row)
        return None

    def pushed_steps(self) -> set[int]:
        return {int(h["step"]) for h in self.history() if h.get("action") == "push" and "step" in h}

    def status(self) -> dict[str, Any]:
        hist = self.history()
        pushes = [h for h in hist if h.get("action") == "push"]
        versions = []
        for v in self.versions():
            entry: dict[str, Any] = next((h for h in reversed(pushes) if h.get("version") == v), {})
            versions.append(
                {
                    "version": v,
                    "step": entry.get("step"),
                    "pushed_at": entry.get("at"),
                    "weights_version": entry.get("weights_version"),
                    "metrics": entry.get("metrics", {}),
                }
            )
        return {
            "model": self.model,
            "dir": str(self.dir),
            "policy": self.policy(),
            "served_version": self.served(),
            "held": self.held(),
            "last_push": pushes[-1] if pushes else None,
            "last_event": hist[-1] if hist else None,
            "versions": versions,
        }

    # -- writing -----------------------------------------------------------------------------
    def push(self, checkpoint: Path, info: dict[str, Any]) -> int:
        """Copy a verified checkpoint in as the next version; returns it."""
        manifest = verify(checkpoint)
        with self.lock():
            version = (self.versions() or [0])[-1] + 1
            tmp = self.dir / f".tmp-{version}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            files = {rel: digest for rel, digest in manifest["files"].items() if rel not in LEARNER_ONLY}
            for rel in files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(checkpoint / rel, tmp / rel)
            dropped = sorted(set(manifest["files"]) - set(files))
            served = {**manifest, "files": files, "learner_files_left_out": dropped}
            (tmp / MANIFEST).write_text(json.dumps(served, indent=2, sort_keys=True) + "\n")
            make_readable(tmp)
            try:
                verify(tmp)  # the copy, not only the source
            except CheckpointError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_tree(tmp)
            os.replace(tmp, self.version_path(version))
            fsync_dir(self.dir)
            self.record(
                "push",
                version=version,
                step=manifest["step"],
                weights_version=manifest.get("weights_version"),
                source=str(checkpoint),
                **info,
            )
        return version

    def pin(self, version: int, reason: str, author: str | None, reset_learner: bool) -> dict[str, Any]:
        """Rollback: pin serving to `version` (which must exist and verify) and hold pushes."""
        if not reason.strip():
            raise ServingError("--reason must not be empty")
        with self.lock():
            if version not in self.versions():
                raise ServingError(f"version {version} does not exist (have {self.versions() or 'none'})")
            try:
                manifest = verify(self.version_path(version))
            except CheckpointError as exc:
                raise ServingError(f"version {version} fails verification, not pinned: {exc}") from exc
            # a damaged policy.json is replaced, not an obstacle
            before = self.served() if self._policy_or_none() is not None else None
            policy = {
                "mode": "pinned",
                "version": version,
                "step": manifest["step"],
                "reason": reason,
                "author": author or who(),
                "at": now_iso(),
                "reset_learner": reset_learner,
                "request_id": f"{version}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}",
            }
            write_json(self.dir / POLICY, policy)
            self.record(
                "rollback",
                version=version,
                previous=before,
                **{k: policy[k] for k in ("step", "reason", "author", "reset_learner", "request_id")},
            )
        return policy

    def previous_version(self) -> int:
        """The version served before the one served now (for `rollback --previous`)."""
        served = self.served()
        older = [v for v in self.versions() if served is not None and v < served]
        if not older:
            raise ServingError(f"no version before {served} to roll back to")
        return older[-1]

    def resume(self, reason: str, author: str | None) -> None:
        with self.lock():
            before = self._policy_or_none() or {}  # a damaged policy.json is replaced too
            write_json(self.dir / POLICY, {"mode": "latest", "at": now_iso(), "author": author or who()})
            self.record("resume", previous=before.get("version"), reason=reason, author=author or who())

    def repair(self, reason: str, author: str | None) -> dict[str, Any]:
        """Rewrite a damaged policy.json from the audit trail: the last rollback (if its version still
        exists and verifies) unless a resume came after it, else latest. Returns the new policy."""
        with self.lock():
            damaged = self._policy_or_none() is None
            policy: dict[str, Any] = {"mode": "latest", "at": now_iso(), "author": author or who()}
            for entry in reversed(self.history()):
                if entry.get("action") == "resume":
                    break
                if entry.get("action") == "rollback" and isinstance(entry.get("version"), int):
                    version = entry["version"]
                    try:
                        verify(self.version_path(version))
                    except CheckpointError:
                        break
                    keep = ("step", "reason", "author", "reset_learner", "request_id")
                    policy = {
                        "mode": "pinned",
                        "version": version,
                        "at": now_iso(),
                        **{k: entry.get(k) for k in keep},
                    }
                    break
            write_json(self.dir / POLICY, policy)
            self.record(
                "repair",
                damaged=damaged,
                mode=policy["mode"],
                version=policy.get("version"),
                reason=reason,
                author=author or who(),
            )
        return policy

    def record(self, action: str, **fields: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.dir / HISTORY, {"action": action, "at": now_iso(), "by": who(), **fields})

    def lock(self) -> AbstractContextManager[None]:
        return folder_lock(self.dir)
