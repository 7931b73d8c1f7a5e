"""A living codebook: items that appear on the items topic while the learner runs get SIDs without a
rebuild and without re-IDing any existing item.

Rank 0 follows the items topic from its beginning (`kafka_io.TopicFollower`; the newest event of an
item wins), embeds each item the codebook does not know with the codebook's own encoder
(`sid_meta.json` names it), and places it with the stored centroids and the next free unique number
of its prefix (`SidCodebook.assign`). An item whose prefix is full is refused and counted (a rebuild
with more unique levels makes room). The rows (item, SID, category, merchant) go to every rank
(rl/distributed.py), whose learner adds them to its reward tables and decoding trie at the next step
boundary (`Learner.add_items`). Rank 0 then writes the grown codebook as a new version
(`sid_meta.json` `version` + 1) under RUN_DIR/codebook/<sha>/: the next checkpoint carries it, and a
push carries it to serving, whose server loads it with the version (no restart anywhere).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from streamrl.configs.schema import KafkaConfig
from streamrl.rl.checkpointing import pin_codebook
from streamrl.rl.encoders import Encoder, load_encoder
from streamrl.rl.learner import Learner
from streamrl.rl.sid import META_FILE, CatalogItem, CodebookError, save_codebook
from streamrl.stream.events import ItemEvent, Malformed, decode_event

log = logging.getLogger("streamrl.catalog")
Row = tuple[str, tuple[int, ...], tuple[str, ...], str]  # item, SID, category, merchant


class CatalogWatch:
    def __init__(self, kcfg: KafkaConfig, topic: str, learner: Learner) -> None:
        from streamrl.stream.kafka_io import TopicFollower

        self.follower = TopicFollower(kcfg, topic)
        meta = json.loads((learner.codebook_dir / META_FILE).read_text())
        self.encoder_name = str(meta["encoder"])
        # what load_encoder takes: the spec `sids build` recorded; a hash encoder's name is one too
        spec = meta.get("encoder_spec") or (
            self.encoder_name if self.encoder_name.startswith("hash") else None
        )
        self.encoder_spec: str | None = spec
        self.version = int(meta.get("version", 0))
        self._encoder: Encoder | None = None
        self.added = 0
        self.refused = 0
        self.dirty = False  # items added since the last saved version
        if spec is None:
            log.warning(
                "codebook encoder %s has no loadable spec (built before codebooks recorded one): new "
                "items are not followed; rebuild the codebook with `streamrl sids build` to follow them",
                self.encoder_name,
            )

    def poll(self, learner: Learner) -> list[Row]:
        """SIDs for the items the codebook does not know yet, among what arrived on the topic."""
        fresh: dict[str, CatalogItem] = {}
        for value in self.follower.poll():
            try:
                ev = decode_event(value)
            except Malformed:
                continue  # the joiner dead-letters malformed events; here they are not catalog items
            if isinstance(ev, ItemEvent) and ev.item_id not in learner.book.sids:
                fresh[ev.item_id] = CatalogItem(
                    ev.item_id, ev.title, ev.category, ev.merchant_id, dict(ev.attrs)
                )
        if not fresh or self.encoder_spec is None:
            return []
        try:
            if self._encoder is None:
                self._encoder = load_encoder(self.encoder_spec)
            x = self._encoder.encode([it.text() for it in fresh.values()])
        except (OSError, ValueError, RuntimeError) as exc:  # never a crash loop over one catalog event
            log.error("new items not followed from now on: encoder %s failed: %s", self.encoder_spec, exc)
            self.encoder_spec = None
            return []
        rows: list[Row] = []
        for it, vec in zip(fresh.values(), x, strict=True):
            try:
                sid = learner.book.assign(it.item_id, vec)
            except CodebookError as exc:
                self.refused += 1
                log.warning("new item refused: %s", exc)
                continue
            rows.append((it.item_id, sid, it.category, it.merchant_id))
        return rows

    def save_version(self, learner: Learner, run_dir: Path) -> Path:
        """The grown codebook as the next version, pinned under RUN_DIR/codebook/<sha>/ (at a
        checkpoint: the checkpoint copies it); older pinned copies are removed (checkpoints hold
        their own)."""
        self.dirty = False
        self.version += 1
        items = {
            i: CatalogItem(i, "", category, merchant, {})
            for i, _sid, category, merchant in map(learner.item_row, learner.book.sids)
        }
        tmp = run_dir / f".codebook-v{self.version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_codebook(learner.book, items, tmp, self.encoder_name, self.version, self.encoder_spec)
        learner.codebook_dir = tmp
        pin_codebook(learner, run_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        for old in (run_dir / "codebook").iterdir():
            if old != learner.codebook_dir and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        log.info(
            "codebook version %d: %d items (%d added since start) in %s",
            self.version,
            len(learner.book.sids),
            self.added,
            learner.codebook_dir,
        )
        return learner.codebook_dir

    def close(self) -> None:
        self.follower.close()
