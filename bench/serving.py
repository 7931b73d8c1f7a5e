"""Serving speed (issue #12), in one run on one model and one set of prompts:

- `POST /search` on a real `streamrl serve` process: p50 / p99 latency and requests/s at
  concurrency 1 and 8 (keep-alive HTTP clients, k = 10, serving.beam);
- `model.generate(num_beams=beam, prefix_allowed_tokens_fn=…)`, the stock transformers way to
  constrain beams to the codebook's trie, on the same model and prompts (in this process, after the
  server is idle);
- the floor: the model work alone — one prompt forward (last position's logits) and one forward per
  further SID level for `beam` beams, the cheaper of two layouts (beams as rows sharing a copied
  cache; beams side by side in the prompt's row, as rl/decode.py does); no search logic, no HTTP;
- the server's start-up (process start to bound, loaded, as it prints), and `streamrl eval` on
  `--eval` records, wall-clock.

The model is the demo's (hidden 128, 2 layers, default world: 3,000 items, SIDs 64,16,8 + 2x16),
trained for 2 steps (speed does not depend on training). Goals: p50 at concurrency 1 <= 0.5x
generate, within 1.5x of the floor; requests/s at concurrency 8 >= 3x concurrency 1; eval of 500
records < 30 s.

    .venv/bin/python bench/serving.py [--requests 200] [--beam 32] [--eval 500] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from streamrl.checkpoints.serving import ServingRoot  # noqa: E402
from streamrl.checkpoints.store import CheckpointStore  # noqa: E402
from streamrl.rl.checkpointing import load_for_inference  # noqa: E402
from streamrl.rl.hf_compat import cached_forward, select_rows  # noqa: E402
from streamrl.rl.offline import load_records  # noqa: E402
from streamrl.rl.policy import _positions, format_prompt  # noqa: E402

CLI = [sys.executable, "-m", "streamrl"]


def build(tmp: Path) -> tuple[Path, Path]:
    """The demo-shaped model over the default world, pushed as version 1; returns (serving, records)."""

    def run(*args: str) -> None:
        subprocess.run([*CLI, *args], check=True, capture_output=True, cwd=tmp)

    run(
        "simulate",
        "--world",
        str(ROOT / "configs" / "world.yaml"),
        "--out",
        "e.jsonl",
        "--requests",
        "3000",
        "--truth",
        "truth",
    )
    run("replay", "e.jsonl", "--out", "rec")
    run(
        "sids",
        "build",
        "--world-truth",
        "truth",
        "--out",
        "sids",
        "--encoder",
        "hash",
        "--levels",
        "64,16,8",
        "--unique",
        "2x16",
    )
    run(
        "learn",
        "--records",
        "rec",
        "--sids",
        "sids",
        "--steps",
        "2",
        "--set",
        f"learn.run_dir={tmp / 'run'}",
        "--set",
        "learn.beta=0",
    )
    checkpoint = CheckpointStore(tmp / "run").checkpoints()[-1].path
    ServingRoot(tmp / "serving", "bench").push(checkpoint, {"trigger": "bench/serving.py"})
    return tmp / "serving", tmp / "rec"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def load(port: int, bodies: list[bytes], concurrency: int) -> tuple[list[float], float]:
    """Each of `concurrency` keep-alive clients sends its share of `bodies` back to back: (latencies
    in seconds, wall seconds)."""
    lat: list[float] = []
    lock = threading.Lock()

    def client(mine: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for body in mine:
            t = time.perf_counter()
            conn.request("POST", "/search", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
            with lock:
                lat.append(time.perf_counter() - t)
        conn.close()

    threads = [threading.Thread(target=client, args=(bodies[i::concurrency],)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.perf_counter() - start


def batches(port: int) -> tuple[float, float]:
    """(prompts decoded, batches) so far, from the server's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("streamrl_serve_batch_size_")
    )
    return float(values["streamrl_serve_batch_size_sum"]), float(values["streamrl_serve_batch_size_count"])


def generate_ms(model: Any, tok: Any, book: Any, vocab: Any, prompts: list[str], beam: int) -> list[float]:
    """Stock transformers: generate with prefix_allowed_tokens_fn walking the codebook trie."""
    from streamrl.rl.policy import sid_token

    L = vocab.L
    trie: dict[tuple[int, ...], list[int]] = {}
    for sid in set(book.sids.values()):
        for lvl in range(L):
            trie.setdefault(tuple(sid[:lvl]), []).append(sid[lvl])
    ids = [
        [tok.convert_tokens_to_ids(sid_token(lvl, c)) for c in range(len(vocab.level_ids[lvl]))]
        for lvl in range(L)
    ]
    code_of = [{t: c for c, t in enumerate(level)} for level in ids]
    allowed = {prefix: [ids[len(prefix)][c] for c in sorted(set(codes))] for prefix, codes in trie.items()}
    out = []
    for prompt in prompts:
        enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
        n = enc["input_ids"].shape[1]

        def fn(_: int, input_ids: torch.Tensor, n: int = n) -> list[int]:
            gen = input_ids[n:].tolist()
            if len(gen) >= L:
                return [tok.eos_token_id]
            return allowed.get(
                tuple(code_of[lvl].get(t, -1) for lvl, t in enumerate(gen)), [tok.eos_token_id]
            )

        t = time.perf_counter()
        with torch.no_grad():
            model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                num_beams=beam,
                num_return_sequences=10,
                max_new_tokens=L,
                do_sample=False,
                prefix_allowed_tokens_fn=fn,
                pad_token_id=tok.pad_token_id,
            )
        out.append((time.perf_counter() - t) * 1e3)
    return out


@torch.no_grad()
def floor_ms(
    model: Any, tok: Any, vocab: Any, prompts: list[str], beam: int
) -> tuple[list[float], list[float]]:
    """Raw model work per prompt: prompt forward + (L - 1) forwards of `beam` beams, two layouts."""
    rows, tree = [], []
    level_tokens = [vocab.level_ids[lvl][:1].repeat(beam) for lvl in range(vocab.L)]
    for prompt in prompts:
        enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        t = time.perf_counter()  # beams as rows: the prompt cache copied to `beam` rows
        _, past = cached_forward(model, ids, mask, _positions(mask), last=True)
        past = select_rows(past, torch.zeros(beam, dtype=torch.long))
        m = mask.repeat(beam, 1)
        for lvl in range(vocab.L - 1):
            m = torch.cat([m, torch.ones(beam, 1, dtype=m.dtype)], dim=1)
            _, past = cached_forward(model, level_tokens[lvl][:, None], m, _positions(m)[:, -1:], past)
        rows.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()  # beams side by side in the prompt's row (a 4D mask)
        _, past = cached_forward(model, ids, mask, _positions(mask), last=True)
        T = ids.shape[1]
        for lvl in range(vocab.L - 1):
            kv = T + beam * (lvl + 1)
            mask4 = torch.zeros(1, 1, beam, kv)
            _, past = cached_forward(
                model, level_tokens[lvl][None], mask4, torch.full((1, beam), T + lvl, dtype=torch.long), past
            )
        tree.append((time.perf_counter() - t) * 1e3)
    return rows, tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100, help="requests per concurrency level and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every measure, interleaved")
    ap.add_argument("--beam", type=int, default=32)
    ap.add_argument("--eval", type=int, default=500, help="records for the streamrl eval timing (0: skip)")
    ap.add_argument("--window-ms", type=float, default=None, help="serving.batch_window_ms (default: config)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        serving, rec = build(tmp)
        records = load_records(rec)
        bodies = [
            json.dumps(
                {"query": r["query"], "user_id": r["user_id"], "history": r["history"][:5], "k": 10}
            ).encode()
            for r in records[: args.requests]
        ]
        began = time.perf_counter()
        proc = subprocess.Popen(
            [
                *CLI,
                "serve",
                "--port",
                "0",
                "--serving-root",
                str(serving),
                "--model",
                "bench",
                "--set",
                f"serving.beam={args.beam}",
                *(
                    ["--set", f"serving.batch_window_ms={args.window_ms}"]
                    if args.window_ms is not None
                    else []
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        hello = json.loads(proc.stdout.readline())
        ready_s = time.perf_counter() - began
        port = int(hello["serving"].rsplit(":", 1)[1])
        folder = ServingRoot(serving, "bench").version_path(1)
        model, tok, book, vocab = load_for_inference(folder)
        prompts = [
            format_prompt(r["query"], [book.sids[h] for h in r["history"][:5] if h in book.sids], tok)
            for r in records[:50]
        ]
        # rounds interleave every measure, so a noisy neighbour on a shared host hits them alike
        lat: dict[int, list[float]] = {1: [], 8: []}
        wall = {1: 0.0, 8: 0.0}
        counts = {1: [0.0, 0.0], 8: [0.0, 0.0]}
        gen: list[float] = []
        rows: list[float] = []
        tree: list[float] = []
        try:
            load(port, bodies[:20], 1)  # warm-up
            generate_ms(model, tok, book, vocab, prompts[:3], args.beam)
            for _ in range(args.rounds):
                for c in (1, 8):
                    before = batches(port)
                    times, seconds = load(port, bodies, c)
                    after = batches(port)
                    lat[c] += times
                    wall[c] += seconds
                    counts[c][0] += after[0] - before[0]
                    counts[c][1] += after[1] - before[1]
                g_rows, g_tree = floor_ms(model, tok, vocab, prompts, args.beam)
                rows += g_rows
                tree += g_tree
                gen += generate_ms(model, tok, book, vocab, prompts[:20], args.beam)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        result: dict[str, Any] = {
            f"c{c}": {
                "p50_ms": pct(lat[c], 0.5) * 1e3,
                "p99_ms": pct(lat[c], 0.99) * 1e3,
                "rps": len(lat[c]) / wall[c],
                "mean_batch": counts[c][0] / max(counts[c][1], 1),
            }
            for c in (1, 8)
        }
        result["startup_s"] = hello["startup_s"]
        result["ready_wall_s"] = round(ready_s, 2)
        result["generate_p50_ms"] = statistics.median(gen)
        result["floor_rows_p50_ms"] = statistics.median(rows)
        result["floor_tree_p50_ms"] = statistics.median(tree)
        result["floor_p50_ms"] = min(result["floor_rows_p50_ms"], result["floor_tree_p50_ms"])

        if args.eval:
            t = time.perf_counter()
            subprocess.run(
                [
                    *CLI,
                    "eval",
                    "--checkpoint",
                    str(folder),
                    "--records",
                    str(rec),
                    "--limit",
                    str(args.eval),
                    "--beam",
                    str(args.beam),
                    "--json",
                ],
                check=True,
                capture_output=True,
            )
            result["eval_records"] = args.eval
            result["eval_s"] = round(time.perf_counter() - t, 1)

    c1, c8 = result["c1"], result["c8"]
    print(
        f"model: demo shape, {len(book.sids)} items, L={vocab.L}, beam {args.beam}, k 10, "
        f"{args.rounds} rounds x {args.requests} requests per level, torch threads {torch.get_num_threads()}"
    )
    print("| measure | p50 ms | p99 ms | requests/s | mean batch |")
    print("|---|---|---|---|---|")
    for name in ("c1", "c8"):
        r = result[name]
        print(
            f"| POST /search, concurrency {name[1:]} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['rps']:.1f} | {r['mean_batch']:.1f} |"
        )
    print(f"| generate + prefix_allowed_tokens_fn | {result['generate_p50_ms']:.1f} | | | |")
    print(f"| floor (beams as rows) | {result['floor_rows_p50_ms']:.1f} | | | |")
    print(f"| floor (beams in the prompt's row) | {result['floor_tree_p50_ms']:.1f} | | | |")
    print(
        f"p50 / generate = {c1['p50_ms'] / result['generate_p50_ms']:.2f} (goal <= 0.5); "
        f"p50 / floor = {c1['p50_ms'] / result['floor_p50_ms']:.2f} (goal <= 1.5); "
        f"rps c8 / c1 = {c8['rps'] / c1['rps']:.2f} (goal >= 3)"
    )
    print(
        f"start-up {result['startup_s']} s (process start to serving; "
        f"wall from spawn {result['ready_wall_s']} s)"
    )
    if args.eval:
        print(f"streamrl eval, {args.eval} records: {result['eval_s']} s (goal < 30 s)")
    if args.json:
        flat = {
            "p50_ms": {"1": c1["p50_ms"], "8": c8["p50_ms"]},
            "p99_ms": {"1": c1["p99_ms"], "8": c8["p99_ms"]},
            "rps": {"1": c1["rps"], "8": c8["rps"]},
            **{k: v for k, v in result.items() if k not in ("c1", "c8")},
        }
        print(json.dumps(flat))


if __name__ == "__main__":
    main()
