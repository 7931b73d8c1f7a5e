"""What a learner checkpoint holds, and how a learner, an evaluator or a server loads one.

Files written into the store's temp folder (checkpoints/store.py adds manifest.json and publishes):
    config.json, model.safetensors, generation_config.json   the policy, HF format (from_pretrained)
    tokenizer.json, tokenizer_config.json, ...                its tokenizer, SID tokens included
    sid_codebook.parquet, sid_centroids.safetensors, sid_meta.json   the codebook it was trained on
    optimizer.pt          AdamW state; loaded with torch.load(weights_only=True) (no pickle of code)
    learner_state.json    steps, skipped steps, weights version, honoured reset requests, CTR clock
    ctr_table.parquet     the posterior CTR counts the learner keeps for items a request did not show
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from checkpoints.store import MANIFEST, CheckpointError, CheckpointStore, verify
from configs.schema import LearnConfig
from rewards.weights import RewardPolicy
from rl.learner import Learner
from rl.policy import SidVocab, load_pretrained
from rl.sid import CENTROIDS_FILE, CODEBOOK_FILE, META_FILE, SidCodebook, load_codebook

OPTIMIZER = "optimizer.pt"
STATE = "learner_state.json"
CTR_STATE = "ctr_table.parquet"  # the learner's posterior CTR counts (for items a request did not show)


def level_sizes(book: SidCodebook) -> list[int]:
    return [*book.levels, *([book.unique[1]] * book.unique[0])]


def item_tables(folder: Path) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Category path and merchant of every item in a codebook (promotions and relevance need them)."""
    rows = pq.read_table(folder / CODEBOOK_FILE, columns=["item_id", "category", "merchant_id"]).to_pylist()
    return (
        {r["item_id"]: tuple(r["category"]) for r in rows},
        {r["item_id"]: r["merchant_id"] or "" for r in rows},
    )


def fill(folder: Path, learner: Learner, extra: dict[str, Any] | None = None) -> None:
    learner.model.save_pretrained(folder)  # config.json + model.safetensors
    learner.tok.save_pretrained(folder)
    for name in (CODEBOOK_FILE, CENTROIDS_FILE, META_FILE):
        shutil.copy2(learner.codebook_dir / name, folder / name)
    torch.save(learner.opt.state_dict(), folder / OPTIMIZER)
    clock, counts = learner.ctr.state()
    pq.write_table(
        pa.table(
            {
                "kind": [name for name, (keys, _, _) in counts.items() for _ in keys],
                "key": [k for keys, _, _ in counts.values() for k in keys],
                "clicks": np.concatenate([c for _, c, _ in counts.values()]),
                "impressions": np.concatenate([n for _, _, n in counts.values()]),
            }
        ),
        folder / CTR_STATE,
    )
    state = {
        "ctr_clock": clock,
        "steps": learner.steps,
        "skipped": learner.skipped,
        "weights_version": learner.policy.version,
        "resets_done": sorted(learner.resets_done),
        **(extra or {}),
    }
    (folder / STATE).write_text(json.dumps(state, indent=2, sort_keys=True))


def save(
    store: CheckpointStore,
    learner: Learner,
    offsets: dict[str, dict[int, int]] | None = None,
    metrics: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    meta = {
        "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in (offsets or {}).items()},
        "weights_version": learner.policy.version,
        "metrics": metrics or {},
        "algo": learner.cfg.algo,
    }
    return store.write(learner.steps, lambda folder: fill(folder, learner, extra), meta).path


def new_learner(
    cfg: LearnConfig,
    sids_dir: Path,
    seed: int,
    *,
    init_from: Path | None = None,
    policy: RewardPolicy | None = None,
) -> Learner:
    """A learner over the codebook in `sids_dir`: a fresh policy (built from `cfg.model`, or
    `cfg.model.pretrained_path`), or — `init_from` — a checkpoint's model, codebook, optimizer and
    counters (which must verify against its manifest when it has one)."""
    from rl.policy import PolicyShape, build_model, build_tokenizer

    torch.manual_seed(seed)
    source = init_from or sids_dir
    if init_from is not None and (init_from / MANIFEST).exists():
        verify(init_from)
    book, _ = load_codebook(source)
    categories, merchants = item_tables(source)
    m = cfg.model
    if init_from is not None:
        model, tok = load_pretrained(str(init_from), level_sizes(book))
    elif m.pretrained_path:
        model, tok = load_pretrained(m.pretrained_path, level_sizes(book))
    else:
        tok = build_tokenizer(level_sizes(book))
        model = build_model(tok, PolicyShape(m.hidden, m.layers, m.heads, m.intermediate), seed)
    learner = Learner(cfg, model, tok, book, categories, seed, merchants=merchants, policy=policy)
    learner.codebook_dir = source
    if init_from is not None:
        restore_state(learner, init_from)
    return learner


def restore_state(learner: Learner, folder: Path) -> None:
    if (folder / OPTIMIZER).exists():
        state = torch.load(folder / OPTIMIZER, map_location=learner.device, weights_only=True)
        learner.opt.load_state_dict(state)
    if (folder / STATE).exists():
        s = json.loads((folder / STATE).read_text())
        if "ctr_clock" in s and (folder / CTR_STATE).exists():
            import pyarrow.compute as pc

            t = pq.read_table(folder / CTR_STATE)
            counts = {}
            for name in ("items", "pairs"):
                part = t.filter(pc.equal(t["kind"], name))
                counts[name] = (
                    part["key"].to_pylist(),
                    part["clicks"].to_numpy().astype(np.float64),
                    part["impressions"].to_numpy().astype(np.float64),
                )
            learner.ctr.load_state(s["ctr_clock"], counts)
        learner.steps = int(s.get("steps", 0))
        learner.skipped = int(s.get("skipped", 0))
        learner.resets_done = set(s.get("resets_done", []))


def resolve(path: Path) -> Path:
    """A checkpoint folder as given, or a RUN_DIR's newest checkpoint that verifies."""
    if (path / "config.json").exists():
        return path
    latest = CheckpointStore(path).latest_valid()
    if latest is None:
        raise CheckpointError(f"{path}: neither a checkpoint nor a run folder with a valid checkpoint")
    return latest[0].path


def load_for_inference(folder: Path, device: str = "cpu") -> tuple[Any, Any, SidCodebook, SidVocab]:
    """Model (eval mode), tokenizer, codebook and SID vocabulary of a checkpoint or served version."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    model = model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    book, _ = load_codebook(folder)
    return model, tok, book, SidVocab(tok, level_sizes(book), list(book.sids.values()))
