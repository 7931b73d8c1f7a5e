"""The TPMA-GRPO learner (OneSearch-V2 §3.4) on reward records.

Objective per step, for B prompts with G sampled SIDs each (L tokens):
    loss = -1/|valid| Σ_{i,l} g_{i,l} · r_{i,l} · A_{i,l}          (Eq.19, no clipping)
           + sft_weight · CE(first target SID | prompt)            (released code: per-token mean)
           + beta · KL(π || π_ref)                                 (k3 estimate, per-token mean)
    r = exp(clamp(logp − old_logp, −20, 20)); A and g from rl/advantages.py (Eq.13–17).
`algo=grpo` uses the clipped Eq.12 with sequence advantages of R_item (Eq.11) and the same two
anchors; `algo=sft` trains on the target SIDs only (per-token mean CE).

R_item = w_co·R_C&O + w_ctr·R_CTR + w_rel·R_Rel (Eq.10) of the item a rollout names: a shown item
takes C&O from its click/order flags at the v_click/v_order in force and CTR from its record; its
relevance is the record's tier, or — tier unknown (-1) — the relevance source's, the same source
every unshown item is scored by. v_click, v_order and the CTR prior come from `join` (one source with
the joiner); position weights from `learn.position_weights` or the released code's rule for L.

Deviations, numbered:
 1. w_item defaults to 1.0; the released code defaults it to 0, which leaves the composite item
    reward (Eq.10) unused.
 2. One policy-gradient step per batch of rollouts, as GRPO with a single inner epoch: the log-probs
    of the sampling pass keep their graph and old_logp is their detached copy, so r = 1 with a live
    gradient and the rollouts are not scored a second time. With `constrained=True` these are the
    log-probs of the trie-constrained policy that sampled them (the reference is scored the same way).
 3. Rollouts sample only level-l SID tokens at step l (the released code samples the full vocabulary
    and pads); an unconstrained rollout can still name no real item, earns no item reward, and counts
    against the valid-SID rate.
 4. Prompts are the records with a click or an order (`learn.prompts=engaged`, as the released code);
    `all` also uses requests without engagement, whose rollouts still carry item rewards.
 5. The SFT term and the KL anchor apply to grpo as well as tpma (the released code adds its SFT
    term to TPMA only), so the two algorithms differ only in their advantages (a fair comparison).
 6. The reference of the KL term is the model the learner started from (the init checkpoint, the
    warm-start result, or the checkpoint a restart resumed); the released code has no KL term.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamrl.configs.schema import JoinConfig, LearnConfig
from streamrl.rewards.ctr import CtrTable, prior_from
from streamrl.rewards.item import Components
from streamrl.rewards.relevance import RelevanceSource, make_relevance
from streamrl.rewards.weights import ItemInfo, RewardPolicy, default_policy
from streamrl.rl import distributed
from streamrl.rl.advantages import grpo_advantages, position_weights, tpma_advantages
from streamrl.rl.loss import grpo_loss, kl_k3, tpma_grpo_loss
from streamrl.rl.policy import SidVocab, format_prompt, rollout_with_targets, sequence_logp
from streamrl.rl.sid import SidCodebook

Record = dict[str, Any]


@dataclass
class Batch:
    prompts: list[str]
    targets: list[list[tuple[int, ...]]]  # clicked ∪ ordered SIDs per prompt
    records: list[Record]


@dataclass
class StepStats:
    values: dict[str, float] = field(default_factory=dict)
    skipped: bool = False


def pick_device(choice: str) -> torch.device:
    """`auto`: CUDA when available, else CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Learner:
    def __init__(
        self,
        cfg: LearnConfig,
        model: Any,
        tok: Any,
        book: SidCodebook,
        catalog_category: Mapping[str, tuple[str, ...]],
        seed: int = 0,
        relevance: RelevanceSource | None = None,
        merchants: Mapping[str, str] | None = None,
        policy: RewardPolicy | None = None,
        join: JoinConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device)
        # CUDA: bf16 autocast for rollouts and scoring (weights and optimiser state stay fp32)
        self.bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.tok = tok
        self.book = book
        self.by_sid = {sid: item for item, sid in book.sids.items()}
        self.category = dict(catalog_category)  # grows with new catalog items (`add_items`)
        rc = cfg.relevance
        self.relevance = relevance or make_relevance(rc.source, self.category, rc.path, rc.url, rc.timeout_s)
        self.vocab_sizes = [*book.levels, *([book.unique[1]] * book.unique[0])]
        self.vocab = SidVocab(tok, self.vocab_sizes, list(book.sids.values()))
        L = self.vocab.L
        self.position_weights = cfg.position_weights or position_weights(L)  # Eq.14
        if len(self.position_weights) != L:
            raise ValueError(
                f"learn.position_weights has {len(self.position_weights)} entries; the codebook's SIDs "
                f"have L = {L} tokens (leave it unset for the released code's rule)"
            )
        join = join or JoinConfig()  # reward parameters: the same source as the joiner's
        # reward weights, C&O values and promotions in force (rewards/weights.py); version 0 = config
        self.policy = policy or default_policy(cfg.rewards, cfg.w_item, join.v_click, join.v_order)
        merchants = merchants or {}
        self.info = {i: ItemInfo(merchants.get(i, ""), tuple(c)) for i, c in catalog_category.items()}
        self.ctr = CtrTable(prior_from(join.ctr), join.ctr.max_entries)
        self.ref: Any | None = None  # the frozen KL reference (`anchor`)
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.reset_optimizer()
        self.steps = 0
        self.skipped = 0
        self.codebook_dir: Path = Path(".")  # where the codebook files came from (checkpoints copy them)
        self.resets_done: set[str] = set()  # rollback --reset-learner requests already honoured
        self.dist: distributed.Dist = distributed.SINGLE  # this process's rank (rl/distributed.py)

    def item_row(self, item_id: str) -> tuple[str, tuple[int, ...], tuple[str, ...], str]:
        """(item, SID, category, merchant) of a codebook item: what `add_items` takes."""
        info = self.info.get(item_id)
        merchant = info.merchant_id if info is not None else ""
        return item_id, self.book.sids[item_id], tuple(self.category.get(item_id, ())), merchant

    def add_items(self, rows: list[tuple[str, tuple[int, ...], tuple[str, ...], str]]) -> int:
        """New catalog items with the SIDs rank 0 assigned them (rl/catalog_watch.py): into the
        codebook, the reward tables and the decoding trie, from this step on; existing items keep
        their SIDs. Returns how many were new."""
        new = 0
        for item_id, sid, category, merchant in rows:
            if self.by_sid.get(sid) == item_id:  # known (rank 0's book already holds what it assigned)
                continue
            self.book.place(item_id, sid)
            self.by_sid[sid] = item_id
            self.category[item_id] = category
            self.info[item_id] = ItemInfo(merchant, category)
            new += 1
        if new:
            self.vocab = SidVocab(self.tok, self.vocab_sizes, list(self.book.sids.values()))
        return new

    def reset_optimizer(self, lr: float | None = None) -> None:
        """A fresh AdamW (at `lr`, default learn.lr): RL does not inherit SFT's moment estimates. The
        learning-rate schedule (`learn.lr_schedule`, warm-up first) starts again from here."""
        self.base_lr = lr or self.cfg.lr
        self.lr_origin = getattr(self, "steps", 0)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.base_lr, weight_decay=self.cfg.weight_decay
        )

    def rng_state(self) -> dict[str, Any]:
        """The sampling generators' state, for checkpoints (JSON: base64 of torch's bytes)."""
        version, internal, gauss = self.rng.getstate()
        return {
            "torch": base64.b64encode(self.gen.get_state().numpy().tobytes()).decode(),
            "python": [version, list(internal), gauss],
        }

    def set_rng_state(self, state: Mapping[str, Any]) -> None:
        raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
        self.gen.set_state(torch.from_numpy(raw))
        version, internal, gauss = state["python"]
        self.rng.setstate((version, tuple(internal), gauss))

    def anchor(self) -> None:
        """Freeze a copy of the current model as the KL reference (learn.beta > 0)."""
        self.ref = copy.deepcopy(self.model).eval()
        for p in self.ref.parameters():
            p.requires_grad_(False)

    # -- data --------------------------------------------------------------------------------
    def observe(self, records: list[Record]) -> None:
        """Records the learner reads also feed its CTR table (for items a request did not show)."""
        for rec in records:
            items = rec["items"]
            self.ctr.observe(
                rec["query"], [i["item_id"] for i in items], [i["clicked"] for i in items], rec["ts_ms"]
            )

    def usable(self, rec: Record) -> bool:
        if self.cfg.prompts == "all":
            return True
        return any(i["clicked"] or i["ordered"] for i in rec["items"])

    def make_batch(self, records: list[Record]) -> Batch:
        prompts, targets = [], []
        for rec in records:
            history = [
                self.book.sids[h] for h in rec["history"][: self.cfg.history_len] if h in self.book.sids
            ]
            prompts.append(format_prompt(rec["query"], history, self.tok))
            targets.append(
                [
                    self.book.sids[i["item_id"]]
                    for i in rec["items"]
                    if (i["clicked"] or i["ordered"]) and i["item_id"] in self.book.sids
                ]
            )
        return Batch(prompts, targets, records)

    # -- rewards -----------------------------------------------------------------------------
    def components(
        self, rec: Record, sids: list[tuple[int, ...]]
    ) -> list[tuple[Components, list[str]] | None]:
        """Reward components of each generated SID for one request, with the names of the promotions
        that added to them: from the record for an item it showed (C&O from its click/order flags at
        the C&O values in force); else C&O 0, CTR from the learner's posterior table and relevance from
        the source (asked once per request); plus the bonuses of promotions active at the request's
        event time. `None`: the SID is no real item and earns no item reward."""
        items = [self.by_sid.get(sid) for sid in sids]
        shown = {it["item_id"]: it for it in rec["items"]}
        outside = sorted({i for i in items if i is not None and i not in shown})
        # shown items with an unknown tier (-1) go to the same relevance source as unshown ones
        unknown = sorted({i for i in items if i is not None and i in shown and shown[i]["rel_tier"] < 0})
        tiers: dict[str, int] = {}
        ctrs: dict[str, float] = {}
        if outside or unknown:
            refs = [
                self.category.get(i["item_id"], ())
                for i in rec["items"]
                if i["clicked"] or i["ordered"] or i["rel_tier"] >= 2
            ]
            ask = outside + unknown
            tiers = dict(zip(ask, self.relevance.tiers(rec["query"], ask, refs), strict=True))
        if outside:
            ctrs = dict(zip(outside, self.ctr.score(rec["query"], outside, rec["ts_ms"]), strict=True))
        out: list[tuple[Components, list[str]] | None] = []
        policy = self.policy
        for item in items:
            if item is None:
                out.append(None)
                continue
            if item in shown:
                it = shown[item]
                co = policy.co(it["clicked"], it["ordered"])
                base = Components(co, it["ctr"], it["rel_tier"] if it["rel_tier"] >= 0 else tiers[item])
            else:
                base = Components(0.0, ctrs[item], tiers[item])
            out.append(policy.promote(base, item, self.info.get(item), rec["ts_ms"]))
        return out

    @contextlib.contextmanager
    def amp(self) -> Iterator[None]:
        """bf16 autocast on CUDA; nothing on the CPU."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            yield

    # -- one step ----------------------------------------------------------------------------
    def step(self, batch: Batch, sft: bool = False) -> StepStats:
        """One optimiser step of `learn.algo` (or of SFT, `sft=True`: the warm start's steps): the
        accumulated gradient of the batch (in micro-batches), clipped, at the scheduled learning rate."""
        stats = self.accumulate(batch, sft)
        if stats.skipped:
            self.skipped += 1
            return stats
        distributed.sum_gradients(self.dist, list(self.model.parameters()))
        stats.values["grad_norm"] = float(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        )
        stats.values["lr"] = self.set_lr()
        self.opt.step()
        self.steps += 1
        return stats

    def set_lr(self) -> float:
        """`learn.lr_schedule` at this step, counted from the last optimiser reset (a function of the
        step counts, which checkpoints keep: restart-safe)."""
        lr = self.base_lr * lr_factor(self.cfg, self.steps - self.lr_origin)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def accumulate(self, batch: Batch, sft: bool = False) -> StepStats:
        """Zero the gradients, then back-propagate the batch's loss in micro-batches of
        `learn.micro_batch` prompts, each scaled by its share of the batch's loss terms, so the
        accumulated gradient is the one-batch gradient while only one micro-batch's graph is alive.
        Under torch.distributed (rl/distributed.py) `batch` is the global batch: this rank takes its
        contiguous share, its terms weighted by their share of the global batch, so the ranks'
        summed gradients are the one-process gradient. Skipped (gradients zeroed; `step` counts it)
        on non-finite rewards or loss."""
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        B, G, L = len(batch.prompts), self.cfg.group_size, self.vocab.L
        mine = self.dist.share(B)
        size = self.cfg.micro_batch or max(mine.stop - mine.start, 1)
        parts = [(i, _slice(batch, i, min(i + size, mine.stop))) for i in range(mine.start, mine.stop, size)]
        sft = sft or self.cfg.algo == "sft"
        # one uniform per rollout token, drawn for the whole batch: micro-batches sample what one would
        uniforms = torch.empty(0) if sft else torch.rand((B * G, L), generator=self.gen)
        targets = sum(1 for t in batch.targets if t)  # prompts with a target: the SFT term's rows
        total, skipped = 0.0, False
        acc: dict[str, float] = {}
        for first, part in parts:
            values: dict[str, float] = {}
            share, t_share = len(part.prompts) / B, sum(1 for t in part.targets if t) / max(targets, 1)
            if sft:
                if not any(part.targets):
                    continue
                loss = self._sft_nll(part) * t_share
            else:
                out = self._policy_loss(part, uniforms[first * G : (first + len(part.prompts)) * G])
                if isinstance(out, StepStats):  # non-finite rewards: skipped, nothing learned
                    acc.update(out.values)
                    skipped = True
                    break
                terms, values = out
                loss = share * terms["pg"]
                if "kl" in terms:
                    loss = loss + share * self.cfg.beta * terms["kl"]
                if "sft" in terms:
                    loss = loss + t_share * self.cfg.sft_weight * terms["sft"]
            if not math.isfinite(float(loss.detach())):
                acc.update(values)
                skipped = True
                break
            loss.backward()
            total += float(loss.detach())
            for key, v in values.items():  # statistics: averaged over micro-batches by their prompts
                acc[key] = acc.get(key, 0.0) + v * share
        acc["loss"] = total
        if self.dist.on:  # one exchange: any rank's skip skips all; each rank's shares sum to the batch's
            shares = distributed.gather(self.dist, (skipped, acc))
            skipped = any(s for s, _ in shares)
            acc = {}
            for _, part_stats in shares:
                for key, v in part_stats.items():
                    acc[key] = acc.get(key, 0.0) + v
        if skipped:
            self.opt.zero_grad(set_to_none=True)
        return StepStats(acc, skipped=skipped)

    def _policy_loss(
        self, batch: Batch, uniforms: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]] | StepStats:
        """Rollouts, rewards, advantages and the algo's loss terms: `pg` (the policy-gradient term),
        `sft` (per-token mean NLL of the first target SIDs) and `kl` (mean k3 to the reference), the
        last two when they apply; the caller weighs and sums them."""
        cfg, G = self.cfg, self.cfg.group_size
        # one pass samples, keeps the graph, and teacher-forces each prompt's first target for
        # the SFT term (rl/policy.py `rollout_with_targets`)
        want_sft = cfg.sft_weight > 0
        targets = [t[0] if (t and want_sft) else None for t in batch.targets]
        roll: dict[str, float] = {}
        with self.amp():
            codes, logp, target_logp = rollout_with_targets(
                self.model,
                self.tok,
                batch.prompts,
                self.vocab,
                G,
                cfg.temperature,
                cfg.constrained,
                self.gen,
                True,
                targets,
                roll,
                uniforms,
            )
        old_logp = logp.detach()
        dev = logp.device  # advantages and gates are computed on the CPU (rl/advantages.py)
        rewards, comp, valid = self._rewards(batch, codes)
        if not bool(torch.isfinite(rewards).all()):
            return StepStats({**comp, "nonfinite_rewards": 1.0}, skipped=True)
        ref_logp = self._ref_logp(batch, codes)
        mask = torch.ones_like(logp)
        if cfg.algo == "tpma":
            adv, gates = self._tpma(batch, codes, rewards)
            pg, stats = tpma_grpo_loss(logp, old_logp, adv.to(dev), gates.to(dev), mask)
            stats.update(_moments("adv", adv))
        else:
            adv_seq = torch.cat(
                [grpo_advantages(rewards[b * G : (b + 1) * G]) for b in range(len(batch.prompts))]
            )
            pg, stats = grpo_loss(logp, old_logp, adv_seq.float().to(dev), mask, cfg.clip_eps)
            stats.update(_moments("adv", adv_seq))
        terms = {"pg": pg}
        if len(target_logp) and want_sft:
            terms["sft"] = -target_logp.mean()  # per-token mean (released code)
            stats["sft_nll"] = float(terms["sft"].detach())
        if ref_logp is not None and cfg.beta:
            terms["kl"] = kl_k3(logp, ref_logp, mask)
            stats["kl"] = float(terms["kl"].detach())
        stats.update(comp)
        stats["valid_sid_rate"] = valid
        stats["entropy"] = roll.get("entropy", 0.0)
        stats["distinct_sids"] = len({tuple(r) for r in codes.tolist()}) / max(len(codes), 1)
        stats["relevance_errors"] = float(self.relevance.errors)
        stats["reward_mean"] = float(rewards.mean())
        return terms, stats

    def _ref_logp(self, batch: Batch, codes: torch.Tensor) -> torch.Tensor | None:
        """The reference's log-probs [B*G, L] of the sampled SIDs, scored as they were sampled."""
        if self.ref is None or not self.cfg.beta:
            return None
        with torch.no_grad(), self.amp():
            return sequence_logp(
                self.ref,
                self.tok,
                batch.prompts,
                self.vocab,
                codes,
                self.cfg.group_size,
                self.cfg.temperature,
                self.cfg.constrained,
            )

    def _rewards(self, batch: Batch, codes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], float]:
        """Item rewards [B*G] and their statistics: each component's mean over real-item rollouts,
        unweighted and weighted, and the same for the rollouts that promoted items (`promoted_*`)."""
        G, w = self.cfg.group_size, self.policy.weights
        rows = [tuple(r) for r in codes.tolist()]
        comps = [
            c for b, rec in enumerate(batch.records) for c in self.components(rec, rows[b * G : (b + 1) * G])
        ]
        out: list[float] = []
        sums = {"": [0.0, 0.0, 0.0], "promoted_": [0.0, 0.0, 0.0]}
        counts = {"": 0, "promoted_": 0}
        by_promo: dict[str, int] = {}
        for entry in comps:
            if entry is None:
                out.append(0.0)
                continue
            comp, promos = entry
            out.append(comp.weighted(w))
            for key in ("", "promoted_") if promos else ("",):
                counts[key] += 1
                for n, v in enumerate((comp.co, comp.ctr, comp.rel)):
                    sums[key][n] += v
            for name in promos:
                by_promo[name] = by_promo.get(name, 0) + 1
        stats: dict[str, float] = {"weights_version": float(self.policy.version)}
        for key, (co, ctr, rel) in sums.items():
            k = max(counts[key], 1)
            for name, v, wt in (("co", co, w.click_order), ("ctr", ctr, w.ctr), ("rel", rel, w.relevance)):
                stats[f"{key}reward_{name}"] = v / k
                stats[f"{key}reward_{name}_weighted"] = v / k * wt
        stats["promoted_share"] = counts["promoted_"] / max(len(out), 1)
        for name, n in by_promo.items():
            stats[f"promoted_share.{name}"] = n / max(len(out), 1)
        return torch.tensor(out), stats, counts[""] / max(len(out), 1)

    def _tpma(
        self, batch: Batch, codes: torch.Tensor, rewards: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        G, L = self.cfg.group_size, self.vocab.L
        advs, gates = [], []
        for b, targets in enumerate(batch.targets):
            t = np.array(targets, dtype=np.int64).reshape(-1, L)
            a, g = tpma_advantages(
                codes[b * G : (b + 1) * G].numpy(),
                t,
                rewards[b * G : (b + 1) * G].numpy(),
                tuple(self.position_weights),
                self.policy.w_item,
            )
            advs.append(torch.as_tensor(a, dtype=torch.float32))
            gates.append(torch.as_tensor(g, dtype=torch.float32))
        return torch.cat(advs), torch.cat(gates)

    def _sft_nll(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy of the first target SID of each prompt that has one (Adam makes the
        per-token mean and the old per-SID sum train the same; the mean matches the RL SFT term)."""
        rows = [(p, t[0]) for p, t in zip(batch.prompts, batch.targets, strict=True) if t]
        if not rows:
            return torch.zeros((), requires_grad=True)
        codes = torch.tensor([t for _, t in rows])
        with self.amp():
            logp = sequence_logp(self.model, self.tok, [p for p, _ in rows], self.vocab, codes, 1)
        return -logp.mean()  # per-token mean, as the SFT term of the RL objectives


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(batch.prompts[start:stop], batch.targets[start:stop], batch.records[start:stop])


def lr_factor(cfg: LearnConfig, step: int) -> float:
    """The schedule's multiplier of learn.lr at optimiser step `step` (0-based): linear warm-up over
    warmup_steps, then 1 (constant) or a cosine from 1 to lr_min_ratio over decay_steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    t = min((step - cfg.warmup_steps) / cfg.decay_steps, 1.0)
    return cfg.lr_min_ratio + (1.0 - cfg.lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def _moments(name: str, x: torch.Tensor) -> dict[str, float]:
    x = x.detach().float()
    return {
        f"{name}_mean": float(x.mean()),
        f"{name}_std": float(x.std()) if x.numel() > 1 else 0.0,
        f"{name}_abs_max": float(x.abs().max()) if x.numel() else 0.0,
    }
