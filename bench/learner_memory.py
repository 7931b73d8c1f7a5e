"""Learner memory: the peak resident memory of one TPMA learner step for a ~0.5B-parameter policy,
with and without `learn.micro_batch` (issue #11).

    .venv/bin/python bench/learner_memory.py [--hidden 1024] [--layers 36] [--heads 16]
        [--intermediate 3072] [--batch 4] [--group 8] [--micro-batch 1] [--max-gib 20]
        [--mmap-threshold BYTES] [--json]

The policy is the Llama architecture built from a config (rl/policy.py `build_model`, no download,
fp32 on the CPU) over the SID tokenizer: byte-level tokens plus the SID codes of an ESCI-shaped
codebook (levels 256,256,256 + 2x16, 6,600 items with random distinct SIDs), so the vocabulary is
small and the size comes from depth and width (the defaults: 36 layers of hidden 1024, MLP 3072,
16 heads — about Qwen3-0.6B's non-embedding size). Prompts are `format_prompt(query, history)` with
15-45-character queries and 5 history SIDs. Each prompt's record shows 10 items, one clicked.

Each arm runs in a fresh subprocess, so peaks do not mix: import; build the learner (weights, the
frozen KL reference when learn.beta > 0, as after a warm start, and AdamW's moments, materialised by
a zero-gradient step so the measured step is a steady-state step, not the first one, whose moments
do not yet exist during its backward pass); then one `Learner.step` of B prompts x G rollouts.
Peak = `getrusage(RUSAGE_SELF).ru_maxrss` (the process's high-water resident set). torch's own count
beside it: the bytes autograd saves for backward (distinct storages, weights excluded), the most over
the micro-batches; the gradients are 4 bytes a parameter; `rest` is the remainder (transients inside
the passes, the reference pass's, and what glibc keeps resident after frees — `--mmap-threshold`
sets MALLOC_MMAP_THRESHOLD_ for the arms, which returns freed tensors' pages at once). A child caps
its address space at --max-gib, so a shape too big for the host fails with an allocation error
(reported as "no") instead of waking the OOM killer on a shared machine.

The extrapolation to the paper's B=256, G=8 at 512 prompt tokens is computed, not measured: build +
whole gradients + saved-for-backward fitted as c + s x rows x tokens through the two arms (rows =
prompts per pass x G; tokens = mean prompt length + L), `rest` left out. Linear in length holds for
what dominates the saved bytes (each cached SID step's concatenated copy of the G-times-repeated
prompt K/V); a T x T attention matrix would add to it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GIB = 1024**3
LEVELS, UNIQUE = (256, 256, 256), (2, 16)  # the ESCI world's codebook shape (`sids build` defaults)
ITEMS = 6600
VOCAB = (  # product-search words, for queries of realistic length
    "women's men's kids waterproof hiking boots wide size 8 9 10 wireless noise cancelling headphones "
    "stainless steel kitchen knife set organic cotton bed sheets queen king bluetooth speaker portable "
    "gaming laptop 16gb ram usb c charger fast cable replacement for iphone samsung galaxy case clear "
    "leather wallet rfid blocking running shoes lightweight breathable summer dress floral long sleeve"
)
WORDS = VOCAB.split()


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic_world(seed: int) -> tuple[Any, dict[str, tuple[str, ...]]]:
    """A codebook of ITEMS random distinct SIDs (no k-means: only the SIDs matter to the learner)."""
    from streamrl.rl.sid import SidCodebook

    rng = random.Random(seed)
    book = SidCodebook(LEVELS, UNIQUE)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < ITEMS:
        seen.add(
            tuple(rng.randrange(k) for k in LEVELS)
            + tuple(rng.randrange(UNIQUE[1]) for _ in range(UNIQUE[0]))
        )
    book.sids = {f"i{n}": sid for n, sid in enumerate(sorted(seen))}
    categories: dict[str, tuple[str, ...]] = {
        i: (f"c{n % 12}", f"m{n % 48}", f"l{n % 144}") for n, i in enumerate(book.sids)
    }
    return book, categories


def synthetic_records(n: int, items: list[str], seed: int) -> list[dict[str, Any]]:
    """`n` reward records: a 15-45-character query, 5 history items, 10 shown items, one clicked."""
    rng = random.Random(seed)
    out = []
    for r in range(n):
        words: list[str] = []
        target = rng.randint(15, 45)
        while len(" ".join(words)) < target:
            words.append(rng.choice(WORDS))
        shown = rng.sample(items, 10)
        click = rng.randrange(10)
        out.append(
            {
                "request_id": f"r{r}",
                "user_id": f"u{r}",
                "query": " ".join(words),
                "ts_ms": 1_000 + r,
                "history": rng.sample(items, 5),
                "items": [
                    {
                        "item_id": item,
                        "position": p + 1,
                        "rel_tier": 3 if p == click else rng.randint(0, 2),
                        "ctr": 0.1,
                        "clicked": p == click,
                        "ordered": p == click and r % 4 == 0,
                        "co_score": 3.0 if p == click else 0.0,
                    }
                    for p, item in enumerate(shown)
                ],
            }
        )
    return out


class SavedBytes:
    """Bytes autograd holds for backward (distinct storages, parameters excluded), the most over the
    micro-batches' graphs: torch's own count of activation memory, whatever the allocator keeps."""

    def __init__(self, params: list[Any]) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in params}
        self.live: dict[int, int] = {}
        self.most = 0

    def pack(self, t: Any) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.live[storage.data_ptr()] = storage.nbytes()
        return t

    def graph_done(self) -> None:  # called as a backward pass starts: this graph is complete
        self.most = max(self.most, sum(self.live.values()))
        self.live.clear()


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One arm in this (fresh) process: build, then one step; peaks in bytes."""
    import torch

    from streamrl.configs.schema import LearnConfig
    from streamrl.rl.learner import Learner
    from streamrl.rl.policy import PolicyShape, build_model, build_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    out: dict[str, Any] = {"micro_batch": args.micro_batch, "imports_peak": peak_bytes()}
    book, categories = synthetic_world(args.seed)
    tok = build_tokenizer([*LEVELS, *([UNIQUE[1]] * UNIQUE[0])])
    shape = PolicyShape(args.hidden, args.layers, args.heads, args.intermediate)
    model = build_model(tok, shape, args.seed)
    cfg = LearnConfig(
        batch_prompts=args.batch, group_size=args.group, micro_batch=args.micro_batch, device="cpu"
    )
    learner = Learner(cfg, model, tok, book, categories, args.seed)
    if cfg.beta > 0:
        learner.anchor()  # the KL reference: a frozen copy, as after the warm start
    for p in learner.model.parameters():  # AdamW's moments exist in every step after the first
        p.grad = torch.zeros_like(p)
    learner.opt.step()  # zero gradient, no weight decay: the weights do not move
    learner.opt.zero_grad(set_to_none=True)
    out["params"] = sum(p.numel() for p in learner.model.parameters())
    out["build_rss"], out["build_peak"] = rss_bytes(), peak_bytes()
    records = synthetic_records(args.batch, list(book.sids), args.seed)
    learner.observe(records)
    batch = learner.make_batch(records)
    lens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in batch.prompts]
    out["prompt_tokens"] = sum(lens) / len(lens)
    out["L"] = learner.vocab.L
    opt_step = learner.opt.step

    def marked_step(*a: Any, **k: Any) -> Any:  # the peak of rollout, scoring and backward, before AdamW
        out["backward_peak"] = peak_bytes()
        return opt_step(*a, **k)

    learner.opt.step = marked_step  # type: ignore[method-assign]
    saved = SavedBytes(list(learner.model.parameters()))
    backward = torch.Tensor.backward

    def counted_backward(self: Any, *a: Any, **k: Any) -> Any:
        saved.graph_done()
        return backward(self, *a, **k)

    torch.Tensor.backward = counted_backward  # type: ignore[method-assign]
    start = time.perf_counter()
    try:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            stats = learner.step(batch)
        out["ok"] = not stats.skipped
        out["loss"] = stats.values.get("loss")
    except (RuntimeError, MemoryError) as exc:  # over --max-gib: the allocation failed
        out["ok"], out["error"] = False, str(exc).splitlines()[0][:200]
    out["step_s"] = time.perf_counter() - start
    out["step_peak"] = peak_bytes()
    out["saved_for_backward"] = saved.most
    return out


def run_arm(args: argparse.Namespace, micro: int | None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child"]
    for key in ("hidden", "layers", "heads", "intermediate", "batch", "group", "seed", "max_gib"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += ["--micro-batch", str(micro or 0)]
    env = dict(os.environ)
    if args.mmap_threshold is not None:  # a fixed threshold: glibc returns freed tensors' pages at once
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        sys.exit(f"arm micro_batch={micro} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def extrapolate(arms: list[dict[str, Any]], args: argparse.Namespace) -> list[tuple[str, float]]:
    """Computed, not measured: the build, plus whole gradients (4 bytes a parameter), plus what autograd
    saves for backward, fitted as c + s x rows x tokens through the two arms (rows = prompts per pass
    x G; tokens = mean prompt + L). Left out: the table's `rest` (transients, allocator retention)."""
    full, micro = arms
    x = [(a["micro_batch"] or args.batch) * args.group * (a["prompt_tokens"] + a["L"]) for a in arms]
    if x[0] == x[1]:
        return []
    s = (full["saved_for_backward"] - micro["saved_for_backward"]) / (x[0] - x[1])
    c = full["saved_for_backward"] - s * x[0]
    base = full["build_rss"] + 4 * full["params"] + c
    long, here = 512 + full["L"], full["prompt_tokens"] + full["L"]
    out = [
        (f"256x8 at 512 prompt tokens, micro_batch={m or 'none'}", base + s * (m or 256) * 8 * long)
        for m in dict.fromkeys((None, micro["micro_batch"], 1, 2, 4))
    ]
    return [*out, ("16x8 at these prompts, micro_batch=none", base + s * 16 * 8 * here)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-gib", type=float, default=20.0, help="address-space cap of each arm")
    ap.add_argument(
        "--mmap-threshold", type=int, default=None, help="MALLOC_MMAP_THRESHOLD_ for the arms (bytes)"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cap = int(args.max_gib * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        args.micro_batch = args.micro_batch or None
        print(json.dumps(child(args)))
        return
    arms = [run_arm(args, None), run_arm(args, args.micro_batch)]
    report(arms, args)


def report(arms: list[dict[str, Any]], args: argparse.Namespace) -> None:
    full, micro = arms
    alloc = f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold else "glibc defaults"
    print(
        f"policy: Llama hidden {args.hidden}, {args.layers} layers, {args.heads} heads, MLP "
        f"{args.intermediate}: {full['params']:,} parameters (fp32); B={args.batch}, G={args.group}, "
        f"L={full['L']}, mean prompt {full['prompt_tokens']:.1f} tokens; {os.cpu_count()} CPU threads; "
        f"allocator: {alloc}"
    )
    print(
        "| micro_batch | rollouts per pass | build RSS | step peak RSS | above build | of which: saved "
        "for backward | gradients | rest | step s | fits 24 GiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for a in arms:
        m, grads = a["micro_batch"], 4 * a["params"]
        above = a["step_peak"] - a["build_rss"]
        fits = "yes" if a["ok"] and a["step_peak"] < 24 * GIB else f"no ({a.get('error', 'over 24 GiB')})"
        cells = [a["build_rss"], a["step_peak"], above, a["saved_for_backward"], grads]
        cells.append(above - a["saved_for_backward"] - grads)
        gib = " | ".join(f"{v / GIB:.2f}" for v in cells)
        print(f"| {m or 'none'} | {(m or args.batch) * args.group} | {gib} | {a['step_s']:.1f} | {fits} |")
    print("(GiB; rest = transients inside the passes and what the allocator keeps resident)")
    ratio = full["step_peak"] / micro["step_peak"]
    above = (full["step_peak"] - full["build_rss"]) / max(micro["step_peak"] - micro["build_rss"], 1)
    saved = full["saved_for_backward"] / max(micro["saved_for_backward"], 1)
    print(
        f"none / micro_batch={micro['micro_batch']}: peak RSS {ratio:.2f}x, above build {above:.2f}x, "
        f"saved for backward {saved:.2f}x"
    )
    est = extrapolate(arms, args) if full["ok"] and micro["ok"] else []
    for name, value in est:
        print(f"COMPUTED, not measured: {name}: ~{value / GIB:,.0f} GiB peak")
    if args.json:
        print(json.dumps({"arms": arms, "computed": {n: v / GIB for n, v in est}}))


if __name__ == "__main__":
    main()
