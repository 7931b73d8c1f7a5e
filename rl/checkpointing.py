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
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from streamrl.checkpoints.files import sha256_file
from streamrl.checkpoints.store import (
    CTR_STATE,
    LEARNER_STATE,
    MANIFEST,
    OPTIMIZER,
    CheckpointError,
    CheckpointStore,
    verify,
)
from streamrl.configs.schema import JoinConfig, LearnConfig
from streamrl.rewards.weights import RewardPolicy
from streamrl.rl.learner import Learner
from streamrl.rl.policy import SidVocab, load_pretrained
from streamrl.rl.sid import CENTROIDS_FILE, CODEBOOK_FILE, META_FILE, SidCodebook, level_sizes, load_codebook


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
    portable_tokenizer_config(folder)
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
        "lr_origin": learner.lr_origin,
        "base_lr": learner.base_lr,
        "rng": learner.rng_state(),
        **(extra or {}),
    }
    (folder / LEARNER_STATE).write_text(json.dumps(state, indent=2, sort_keys=True))


def pin_codebook(learner: Learner, run_dir: Path) -> None:
    """Copy the learner's codebook into RUN_DIR/codebook/<sha256[:16]>/ (once) and read it from there:
    a learner resumed from a checkpoint must not depend on that checkpoint's folder, which retention
    deletes (issue #14)."""
    digest = sha256_file(learner.codebook_dir / CODEBOOK_FILE)[:16]
    home = run_dir / "codebook" / digest
    if not (home / META_FILE).exists():
        tmp = home.with_name(f".tmp-{digest}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in (CODEBOOK_FILE, CENTROIDS_FILE, META_FILE):
            shutil.copy2(learner.codebook_dir / name, tmp / name)
        shutil.rmtree(home, ignore_errors=True)  # a half copy from a crash
        os.replace(tmp, home)
    learner.codebook_dir = home


def portable_tokenizer_config(folder: Path) -> None:
    """transformers 5.x names its fast tokenizer class `TokenizersBackend`, which 4.x does not know;
    `PreTrainedTokenizerFast` loads the same tokenizer.json in 4.45 through 5.x."""
    path = folder / "tokenizer_config.json"
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg.pop("backend", None)
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def save(
    store: CheckpointStore,
    learner: Learner,
    offsets: dict[str, dict[int, int]] | None = None,
    metrics: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
    more: Callable[[Path], None] | None = None,
) -> Path:
    """Checkpoint the learner at its step; `more(folder)` writes further files into it (the
    streaming learner's buffer) before the store hashes and publishes it."""
    meta = {
        "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in (offsets or {}).items()},
        "weights_version": learner.policy.version,
        "metrics": metrics or {},
        "algo": learner.cfg.algo,
    }

    def write(folder: Path) -> None:
        fill(folder, learner, extra)
        if more is not None:
            more(folder)

    return store.write(learner.steps, write, meta).path


class InitError(ValueError):
    """A learner cannot start as configured (foreign codebook, an anchor missing)."""


def check_same_codebook(init_from: Path, sids_dir: Path) -> None:
    """RL starts from a checkpoint of the same codebook only: SIDs would name other items."""
    for folder in (init_from, sids_dir):
        if not (folder / CODEBOOK_FILE).exists():
            raise InitError(f"{folder}: no {CODEBOOK_FILE} (not a checkpoint or SID folder)")
    a, b = sha256_file(init_from / CODEBOOK_FILE), sha256_file(sids_dir / CODEBOOK_FILE)
    if a != b:
        raise InitError(
            f"init-from {init_from} was trained on codebook sha256 {a[:12]}, but the SIDs in "
            f"{sids_dir} are codebook sha256 {b[:12]}: the same SIDs would name other items. "
            f"Warm start on this codebook, or learn with --sids set to the checkpoint's codebook."
        )


def new_learner(
    cfg: LearnConfig,
    sids_dir: Path,
    seed: int,
    *,
    resume_from: Path | None = None,
    init_from: Path | None = None,
    policy: RewardPolicy | None = None,
    join: JoinConfig | None = None,
    anchor_later: bool = False,
) -> Learner:
    """A learner over the codebook in `sids_dir`: a fresh policy (built from `cfg.model`, or
    `cfg.model.pretrained_path`); or — `init_from` — a checkpoint's model and CTR table (a warm
    start: fresh optimizer and counters; the checkpoint must hold the same codebook); or —
    `resume_from` — a checkpoint's model, codebook, optimizer and counters (it must verify against
    its manifest when it has one). `learn.beta > 0` anchors the KL term to the model it starts
    from, so it needs one of these (or `anchor_later`: the caller warm starts, then anchors)."""
    from streamrl.rl.policy import PolicyShape, build_model, build_tokenizer

    torch.manual_seed(seed)
    start = resume_from or init_from
    if start is not None and (start / MANIFEST).exists():
        verify(start)
    if init_from is not None and resume_from is None:
        check_same_codebook(init_from, sids_dir)
    source = resume_from or sids_dir
    book, _ = load_codebook(source)
    categories, merchants = item_tables(source)
    m = cfg.model
    anchored = start is not None or bool(m.pretrained_path)
    if cfg.beta > 0 and cfg.algo != "sft" and not (anchored or anchor_later):
        raise InitError(
            f"learn.beta={cfg.beta} needs a model to anchor to: set learn.init_from (an SFT "
            "checkpoint), learn.warm_start, or learn.model.pretrained_path; a randomly initialised "
            "policy is no reference (or set learn.beta=0)"
        )
    if start is not None:
        model, tok = load_pretrained(str(start), level_sizes(book))
    elif m.pretrained_path:
        model, tok = load_pretrained(m.pretrained_path, level_sizes(book))
    else:
        tok = build_tokenizer(level_sizes(book))
        model = build_model(tok, PolicyShape(m.hidden, m.layers, m.heads, m.intermediate), seed)
    learner = Learner(cfg, model, tok, book, categories, seed, merchants=merchants, policy=policy, join=join)
    learner.codebook_dir = source
    if start is not None:
        restore_state(learner, start, counters=resume_from is not None)
    if cfg.beta > 0 and anchored and cfg.algo != "sft":
        learner.anchor()
    return learner


def restore_state(learner: Learner, folder: Path, counters: bool = True) -> None:
    """The CTR table; with `counters` (a resume) also the optimizer, step counters and resets."""
    if counters and (folder / OPTIMIZER).exists():
        state = torch.load(folder / OPTIMIZER, map_location=learner.device, weights_only=True)
        learner.opt.load_state_dict(state)
    if (folder / LEARNER_STATE).exists():
        s = json.loads((folder / LEARNER_STATE).read_text())
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
        if not counters:
            return
        learner.steps = int(s.get("steps", 0))
        learner.skipped = int(s.get("skipped", 0))
        learner.resets_done = set(s.get("resets_done", []))
        learner.lr_origin = int(s.get("lr_origin", 0))
        learner.base_lr = float(s.get("base_lr", learner.base_lr))
        if "rng" in s:  # the rollouts after a resume draw what they would have drawn without a stop
            learner.set_rng_state(s["rng"])


def resolve(path: Path) -> Path:
    """A checkpoint folder as given, or a RUN_DIR's newest checkpoint that verifies."""
    if (path / "config.json").exists():
        return path
    latest = CheckpointStore(path).latest_valid()
    if latest is None:
        raise CheckpointError(f"{path}: neither a checkpoint nor a run folder with a valid checkpoint")
    return latest[0].path


def load_for_inference(
    folder: Path, device: str = "cpu", manifest: dict[str, Any] | None = None
) -> tuple[Any, Any, SidCodebook, SidVocab]:
    """Model (eval mode), tokenizer, codebook and SID vocabulary of a checkpoint or served version.

    With `manifest` (a server), the weights are read into memory once, checked against the manifest's
    sha256 from those very bytes, and built from them: nothing is memory-mapped from the folder, so a
    file copied over or truncated later cannot change or crash a loaded model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if manifest is None:
        model: Any = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    else:
        model = _from_verified_bytes(folder, manifest)
    model = model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    book, _ = load_codebook(folder)
    return model, tok, book, SidVocab(tok, level_sizes(book), list(book.sids.values()))


def is_weights_file(rel: str) -> bool:
    """model.safetensors or a shard of it (model-00001-of-00002.safetensors)."""
    return rel.startswith("model") and rel.endswith(".safetensors")


def _from_verified_bytes(folder: Path, manifest: dict[str, Any]) -> Any:
    import hashlib

    from safetensors.torch import load as load_safetensors
    from transformers import AutoConfig, AutoModelForCausalLM

    shards = sorted(filter(is_weights_file, manifest["files"]))
    if not shards:
        raise CheckpointError(f"{folder}: the manifest lists no model*.safetensors")
    state: dict[str, torch.Tensor] = {}
    for name in shards:
        data = (folder / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest["files"][name]:
            raise CheckpointError(f"{folder}: {name} does not match its sha256 (changed after the push)")
        state.update(load_safetensors(data))
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not fit the config (missing {missing}, unexpected {unexpected})"
        )
    if tied:
        model.tie_weights()
    return model
