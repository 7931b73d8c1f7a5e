"""Live reward weights and promotions: a versioned store the CLI writes and the learner follows.

Layout (`weights.dir`, default runs/local/weights):

    versions/000001.json   {"version", "author", "reason", "applied_at", "source", "sha256", "content"}
    current.json           {"version": N}            (replaced atomically; absent = version 0)
    history.jsonl          one line per apply / revert, append-only

Version 0 is the config's defaults (learn.rewards, learn.w_item, join.v_click/v_order), no file.
`apply` validates first (configs.schema.RewardsFile: unknown keys, negative or non-finite weights,
end before start, empty match are refused with the field named) and changes nothing on failure.
Versions only grow: `revert V` stores V's content as a new version, so a running learner sees a
change and the history reads in order. A lock file serialises concurrent operators.

`RewardPolicy` is what the learner uses at each step: the weights in force, and the promotions
active at a record's event time (start inclusive, end exclusive) with their bonuses per item.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streamrl.checkpoints.files import append_jsonl, folder_lock, read_jsonl, write_json
from streamrl.configs.schema import Promotion, RewardsFile, RewardWeightsConfig
from streamrl.rewards.item import Components, RewardWeights


class WeightsError(ValueError):
    """A weights file or version that cannot be used; the message names the field or version."""


def parse_rewards(text: str, source: str = "<text>") -> RewardsFile:
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WeightsError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise WeightsError(f"{source}: top level must be a mapping")
    try:
        return RewardsFile.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in exc.errors()
        )
        raise WeightsError(f"{source}: {problems}") from exc


@dataclass(frozen=True)
class ItemInfo:
    merchant_id: str
    category: tuple[str, ...]


class RewardPolicy:
    """The weights in force (one version) and the promotions it defines."""

    def __init__(self, content: RewardsFile, version: int = 0) -> None:
        self.content = content
        self.version = version
        w = content.weights
        self.weights = RewardWeights(w.click_order, w.ctr, w.relevance)
        self.w_item = content.w_item
        self.v_click = content.v_click
        self.v_order = content.v_order
        self._windows = [
            (p, int(p.start.timestamp() * 1000), int(p.end.timestamp() * 1000)) for p in content.promotions
        ]

    def active(self, ts_ms: int) -> list[Promotion]:
        return [p for p, start, end in self._windows if start <= ts_ms < end]

    @staticmethod
    def matches(p: Promotion, item_id: str, info: ItemInfo | None) -> bool:
        m = p.match
        if item_id in m.item_ids:
            return True
        if info is None:
            return False
        if info.merchant_id in m.merchant_ids:
            return True
        prefix = tuple(m.category_prefix)
        return bool(prefix) and info.category[: len(prefix)] == prefix

    def promote(
        self, comp: Components, item_id: str, info: ItemInfo | None, ts_ms: int
    ) -> tuple[Components, list[str]]:
        """The components plus the bonuses of every promotion active at `ts_ms` that matches."""
        hits = [p for p in self.active(ts_ms) if self.matches(p, item_id, info)]
        if not hits:
            return comp, []
        return (
            Components(
                comp.co + sum(p.bonus.click_order for p in hits),
                comp.ctr + sum(p.bonus.ctr for p in hits),
                comp.rel + sum(p.bonus.relevance for p in hits),
            ),
            [p.name for p in hits],
        )

    def co(self, clicked: bool, ordered: bool) -> float:
        from streamrl.rewards.scores import co_score

        return co_score(clicked, ordered, self.v_click, self.v_order)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, **self.content.model_dump(mode="json")}


def default_policy(
    weights: RewardWeightsConfig, w_item: float, v_click: float, v_order: float
) -> RewardPolicy:
    """Version 0: the config's values, no promotions."""
    return RewardPolicy(RewardsFile(weights=weights, w_item=w_item, v_click=v_click, v_order=v_order), 0)


class WeightsStore:
    def __init__(self, root: Path, defaults: RewardPolicy) -> None:
        self.root = root
        self.defaults = defaults

    # -- reading -----------------------------------------------------------------------------
    def current_version(self) -> int:
        try:
            return int(json.loads((self.root / "current.json").read_text())["version"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"{self.root / 'current.json'}: unreadable: {exc}") from exc

    def entry(self, version: int) -> dict[str, Any]:
        path = self.root / "versions" / f"{version:06d}.json"
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise WeightsError(f"weights version {version} does not exist") from exc
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{path}: unreadable: {exc}") from exc

    def load(self, version: int | None = None) -> RewardPolicy:
        v = self.current_version() if version is None else version
        if v == 0:
            return self.defaults
        entry = self.entry(v)
        try:
            return RewardPolicy(RewardsFile.model_validate(entry["content"]), v)
        except (ValidationError, KeyError) as exc:
            raise WeightsError(f"weights version {v}: stored content is invalid: {exc}") from exc

    def versions(self) -> list[dict[str, Any]]:
        folder = self.root / "versions"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []

    def history(self) -> list[dict[str, Any]]:
        return read_jsonl(self.root / "history.jsonl")

    # -- writing -----------------------------------------------------------------------------
    def apply(self, text: str, author: str, reason: str, source: str = "<text>") -> RewardPolicy:
        content = parse_rewards(text, source)  # refused here: nothing below runs, nothing changes
        if not author.strip() or not reason.strip():
            raise WeightsError("--author and --reason must not be empty")
        return self._store(
            content, author, reason, source, "apply", hashlib.sha256(text.encode()).hexdigest()
        )

    def revert(self, version: int, author: str, reason: str) -> RewardPolicy:
        if not author.strip() or not reason.strip():
            raise WeightsError("--author and --reason must not be empty")
        content = self.load(version).content
        return self._store(content, author, reason, f"revert to version {version}", "revert", None)

    def _store(
        self, content: RewardsFile, author: str, reason: str, source: str, action: str, sha: str | None
    ) -> RewardPolicy:
        with folder_lock(self.root):
            v = max([self.current_version(), *(e["version"] for e in self.versions())]) + 1
            entry = {
                "version": v,
                "author": author,
                "user": getpass.getuser(),
                "reason": reason,
                "applied_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "source": source,
                "sha256": sha,
                "content": content.model_dump(mode="json"),
            }
            write_json(self.root / "versions" / f"{v:06d}.json", entry)
            write_json(self.root / "current.json", {"version": v})
            append_jsonl(
                self.root / "history.jsonl",
                {"action": action, **{k: v_ for k, v_ in entry.items() if k != "content"}},
            )
        return RewardPolicy(content, v)


class WeightsWatcher:
    """The learner's view: `poll()` at a step boundary returns the policy in force, switching when
    current.json names a new version. A version that cannot be read or validated is refused with a
    log line and the old policy stays in force. Reads at most every `every_s` (a stat is cheap)."""

    def __init__(self, store: WeightsStore, log: Any, every_s: float = 1.0) -> None:
        self.store = store
        self.log = log
        self.every_s = every_s
        self.policy = store.defaults
        self._refused: int | None = None
        self._next = 0.0
        self.poll(force=True)

    def poll(self, force: bool = False) -> RewardPolicy:
        now = time.monotonic()
        if not force and now < self._next:
            return self.policy
        self._next = now + self.every_s
        v = -1  # current.json itself unreadable
        try:
            v = self.store.current_version()
            if v != self.policy.version and v != self._refused:
                self.policy = self.store.load(v)
                self.log.info("reward weights version %d in force", v)
        except WeightsError as exc:
            if self._refused != v:
                self.log.error(
                    "reward weights refused, version %d stays in force: %s", self.policy.version, exc
                )
            self._refused = v
        return self.policy
