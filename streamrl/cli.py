"""`streamrl`: the command line. Thin wiring only: parse, load config, call one stage, report."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streamrl import logs
from streamrl.configs import ConfigError, StreamrlConfig, load_config

app = typer.Typer(  # shell completion: streamrl --install-completion (bash, zsh, fish, PowerShell)
    no_args_is_help=True,
    help="streamrl: a streaming TPMA-GRPO trainer for generative search.",
)
console = Console(stderr=True, soft_wrap=True)  # a refusal stays one line, whatever the width


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"streamrl {version('streamrl')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """streamrl: a streaming TPMA-GRPO trainer for generative search."""


# One name per concept across commands: --config/--set the daemon's settings, --run-dir a learner run
# folder, --serving-root/--model the serving layout, --out a file or folder a command writes data
# to, --step a checkpoint step, --checkpoint a checkpoint folder, --json one JSON line on stdout.
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override: section.key=value.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON line on stdout.")]
RunDirOpt = Annotated[
    Path | None,
    typer.Option("--run-dir", help="Learner run folder: RUN_DIR/checkpoints/<step>/ (learn.run_dir)."),
]


def _emit(obj: object) -> None:
    """The result as one JSON line on stdout (what --json promises)."""
    print(json.dumps(obj, default=str, separators=(",", ":")), flush=True)


def _config(path: Path | None, overrides: list[str] | None) -> StreamrlConfig:
    try:
        return load_config(path, overrides or [])
    except ConfigError as exc:
        console.print(f"[red]config refused:[/red] {exc}")
        raise typer.Exit(2) from None


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _counts_table(title: str, counts: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column("counter")
    table.add_column("value", justify="right")
    for key in sorted(counts):
        table.add_row(key, str(counts[key]))
    return table


@app.command()
def replay(
    events: Annotated[list[Path], typer.Argument(help="Event JSON-lines files, in arrival order.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Join event files into reward records (DIR/*.parquet) and dead letters (DIR/dlq.jsonl). The
    summary is one JSON line on stdout (--json: nothing else)."""
    from streamrl.stream.replay import ReplayInputError
    from streamrl.stream.replay import replay as run_replay

    cfg = _config(config, set_)
    try:
        result = run_replay(events, out, cfg.join)
    except ReplayInputError as exc:
        console.print(f"[red]cannot read input:[/red] {exc}")
        raise typer.Exit(2) from None
    if not as_json:
        console.print(_counts_table(f"replay → {out}", dict(result.counts)))
    _emit(
        {
            "records": result.counts["records"],
            "dead_letters": sum(v for k, v in result.counts.items() if k.startswith("dead_")),
            "files": [str(p) for p in result.record_files],
            "dlq": str(result.dlq_path),
        }
    )


@app.command()
def join(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    archive: Annotated[bool, typer.Option(help="Also write the Parquet archive.")] = True,
) -> None:
    """Run one joiner member: impressions ⋈ clicks ⋈ orders → reward records (until SIGTERM)."""
    from streamrl.stream.joiner import run_joiner

    cfg = _config(config, set_)
    logs.setup("joiner")
    raise typer.Exit(run_joiner(cfg, _stop_on_signals(), archive=archive))


@app.command()
def records(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="JSON-lines file (default stdout).")] = None,
    group: Annotated[str, typer.Option(help="Consumer group of this reader.")] = "streamrl-records-dump",
    idle_s: Annotated[float, typer.Option(help="Stop after this long without a new record.")] = 5.0,
) -> None:
    """Read the rewards topic through the learner's reader (each request once) as JSON lines."""
    import orjson

    from streamrl.stream.kafka_io import RewardReader

    cfg = _config(config, set_)
    reader = RewardReader(cfg.kafka, group)
    sink = open(out, "wb") if out else sys.stdout.buffer  # noqa: SIM115
    n, last = 0, time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            batch = reader.poll(500)
            if not reader.consumer.assignment():
                last = time.monotonic()  # still joining the group: the idle clock has not started
            for rec in batch:
                sink.write(orjson.dumps(rec) + b"\n")
            if batch:
                n += len(batch)
                last = time.monotonic()
                reader.commit()
    finally:
        reader.close()
        if out:
            sink.close()
    console.print(f"{n} records, {reader.seen.duplicates} duplicate copies dropped")


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = a free one).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Start a local Kafka-protocol broker (Tansu, in memory) and keep it up until Ctrl-C. Prints its
    bootstrap address on stdout (--json: as {"bootstrap": …})."""
    from streamrl.stream.broker import LocalBroker

    stop = _stop_on_signals()
    with LocalBroker(port or None) as b:
        console.print(f"broker up: [bold]{b.bootstrap}[/bold] (in memory; Ctrl-C stops it)")
        if as_json:
            _emit({"bootstrap": b.bootstrap})
        else:
            print(b.bootstrap, flush=True)
        while not stop.wait(0.5):
            if b.proc is None or b.proc.poll() is not None:
                console.print("[red]broker exited[/red]")
                raise typer.Exit(1)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="JSON-lines file to write.")],
    requests: int = 1000,
    seed: int = 0,
    faults: Annotated[float, typer.Option(help="Rate of each fault kind.")] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Write generated contract events (disordered, optional faults) for tests and demos."""
    from streamrl.stream.synthetic import SynthSpec, write_jsonl

    spec = SynthSpec(
        requests=requests,
        seed=seed,
        dup_rate=faults,
        orphan_rate=faults,
        not_impressed_rate=faults,
        late_rate=faults,
        malformed_rate=faults,
    )
    n = write_jsonl(spec, str(out))
    if as_json:
        _emit({"events": n, "out": str(out)})
    else:
        console.print(f"wrote {n} events to {out}")


@app.command()
def simulate(
    world: Annotated[Path, typer.Option("--world", help="World file (configs/world.yaml).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write events as JSON lines.")] = None,
    kafka: Annotated[bool, typer.Option("--kafka", help="Produce to the configured topics.")] = False,
    seed: Annotated[int | None, typer.Option(help="World and traffic seed (default: the file's).")] = None,
    requests: Annotated[int | None, typer.Option(help="Requests to simulate.")] = None,
    duration: Annotated[
        float | None, typer.Option(help="Seconds (of event time for --out, wall time for --kafka).")
    ] = None,
    rate: Annotated[float, typer.Option(help="Events per second produced with --kafka.")] = 2000.0,
    truth: Annotated[Path | None, typer.Option(help="Write the ground truth here.")] = None,
    serving_url: Annotated[
        str | None, typer.Option(help="Closed loop: POST /search URL of the served model.")
    ] = None,
    loop_stats: Annotated[
        Path | None,
        typer.Option(help="Closed loop: requests, CTR and orders/request per arm per minute, 95 % CIs."),
    ] = None,
    arm: Annotated[
        list[str] | None,
        typer.Option(
            "--arm",
            help="Online A/B: NAME=URL of a model arm's POST /search (repeat: frozen=..., live=...); "
            "users split by a stable hash over logging + these arms.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Simulated search traffic with known ground truth: item events, then requests. The traffic
    totals are one JSON line on stdout (--json: nothing else)."""
    from pydantic import ValidationError

    from streamrl.sim.closed_loop import ArmRanker, HttpRanker, LoopStats
    from streamrl.sim.output import TruthWriter, to_file, to_kafka
    from streamrl.sim.simulate import Request, Simulator
    from streamrl.sim.world import build_world, load_world_config

    if (out is None) == (not kafka):
        console.print("[red]give exactly one of --out FILE or --kafka[/red]")
        raise typer.Exit(2)
    try:
        wcfg = load_world_config(world, seed)
    except (OSError, ValidationError, ValueError) as exc:
        console.print(f"[red]world refused:[/red] {world}: {exc}")
        raise typer.Exit(2) from None
    arms = dict(a.split("=", 1) for a in arm or [] if "=" in a)
    if len(arms) != len(arm or []) or "logging" in arms or (arms and serving_url):
        console.print("[red]--arm takes NAME=URL (not logging), and not together with --serving-url[/red]")
        raise typer.Exit(2)
    w = build_world(wcfg)
    ranker: HttpRanker | ArmRanker | None = ArmRanker(arms) if arms else None
    if serving_url:
        ranker = HttpRanker(serving_url)
    sim = Simulator(w, seed, ranker=ranker)
    stats = LoopStats(ranker)
    n_req = requests or int((duration or 60.0) * wcfg.behaviour.requests_per_s)
    if kafka and duration is not None and requests is None:
        n_req = 10**9  # bounded by the wall-clock duration instead
    writer = TruthWriter(w, truth) if truth else None

    def on_request(req: Request) -> None:
        stats.on_request(req)
        if writer:
            writer.on_request(req)

    def report() -> None:
        if loop_stats:
            loop_stats.write_text("".join(json.dumps(r) + "\n" for r in stats.rows()))
        _emit(stats.totals())  # machine-readable, on stdout

    if out is not None:
        n = to_file(sim, n_req, out, writer, on_request)
        if not as_json:
            console.print(f"wrote {n} events ({len(w.items)} items, {n_req} requests) to {out}")
        report()
        return
    from streamrl.stream import kafka_io

    cfg = _config(config, set_)
    t = cfg.kafka.topics
    kafka_io.ensure_topics(cfg.kafka, [t.impressions, t.clicks, t.orders, t.items])
    producer = kafka_io.make_producer(cfg.kafka, linger_ms=20)
    n, achieved = to_kafka(sim, n_req, producer, t, rate, duration, writer, on_request)
    producer.close()
    if not as_json:
        console.print(f"produced {n} events at {achieved:.0f} events/s (asked {rate:.0f})")
    report()


import_app = typer.Typer(no_args_is_help=True, help="Convert real log layouts into contract events.")
app.add_typer(import_app, name="import")


@import_app.command("kuaisearch")
def import_kuaisearch(
    folder: Annotated[Path, typer.Argument(help="Folder with recall.jsonl, items.jsonl, ...")],
    out: Annotated[Path, typer.Option("--out", help="Events as JSON lines.")],
    time_index_s: Annotated[float, typer.Option(help="Seconds per time_index unit.")] = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """The KuaiSearch layout (OneSearch authors' dataset) → events for `streamrl replay`."""
    from streamrl.sim.kuaisearch import import_kuaisearch as run_import

    if not folder.is_dir():
        console.print(f"[red]{folder} is not a folder[/red]")
        raise typer.Exit(1)
    counts = run_import(folder, out, time_index_s)
    if as_json:
        _emit({"out": str(out), **dict(counts)})
    else:
        console.print(_counts_table(f"kuaisearch → {out}", dict(counts)))


sids_app = typer.Typer(no_args_is_help=True, help="Semantic IDs of the catalog.")
app.add_typer(sids_app, name="sids")


@sids_app.command("build")
def sids_build(
    out: Annotated[Path, typer.Option("--out", help="Folder for sid_codebook.parquet and centroids.")],
    items: Annotated[Path | None, typer.Option(help="Item events, JSON lines.")] = None,
    world_truth: Annotated[Path | None, typer.Option(help="A `simulate --truth` folder.")] = None,
    encoder: Annotated[str, typer.Option(help="minilm | hash | a local model folder.")] = "minilm",
    levels: Annotated[str, typer.Option(help="Residual k-means sizes, coarse to fine.")] = "256,256,256",
    unique: Annotated[str, typer.Option(help="Unique levels x size.")] = "2x16",
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Embed item text, quantise it into hierarchical semantic IDs, write the codebook. Its statistics
    are one JSON line on stdout (--json: nothing else)."""
    from streamrl.rl.catalog import read_catalog
    from streamrl.rl.encoders import load_encoder
    from streamrl.rl.sid import SidCodebook, save_codebook

    if (items is None) == (world_truth is None):
        console.print("[red]give exactly one of --items FILE or --world-truth DIR[/red]")
        raise typer.Exit(2)
    try:
        sizes = tuple(int(x) for x in levels.split(","))
        n_unique, size = (int(x) for x in unique.lower().split("x"))
        enc = load_encoder(encoder)
        catalog = read_catalog(items, world_truth)
    except (ValueError, OSError) as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from None
    ids = sorted(catalog)
    book = SidCodebook(sizes, (n_unique, size)).build(ids, enc.encode([catalog[i].text() for i in ids]), seed)
    save_codebook(book, catalog, out, enc.name, encoder_spec=encoder)
    stats = book.stats()
    if not as_json:
        console.print(
            f"codebook in {out}: {stats['items']} items, {stats['distinct_prefixes']} prefixes; "
            f"{stats['items_sharing_a_prefix']} items share a prefix with another (largest group "
            f"{stats['largest_prefix_group']}, capacity {stats['prefix_capacity']}); no two items share a SID"
        )
    _emit(stats)


@app.command()
def learn(
    sids: Annotated[
        Path | None, typer.Option(help="A `streamrl sids build` folder (default learn.sids_dir).")
    ] = None,
    run_dir: RunDirOpt = None,
    records: Annotated[
        Path | None,
        typer.Option(
            help="Offline: Parquet records (streamrl replay output). Without it: the rewards topic."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (streaming: at most).")] = None,
    algo: Annotated[str | None, typer.Option(help="tpma | grpo | sft")] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Offline: a rewards file (weights, promotions) instead of version 0.")
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Start from this checkpoint or run folder (same codebook), e.g. an SFT run "
            "(learn.init_from)."
        ),
    ] = None,
    seed: int = 0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The learner: on the live rewards topic, or offline on replayed records (--records)."""
    from streamrl.checkpoints.store import CheckpointError
    from streamrl.rewards.weights import RewardPolicy, WeightsError, parse_rewards
    from streamrl.rl.checkpointing import InitError
    from streamrl.rl.offline import run_offline

    extra = [
        *([f"learn.algo={algo}"] if algo else []),
        *([f"learn.init_from={init_from}"] if init_from else []),
    ]
    cfg = _config(config, [*(set_ or []), *extra])
    if records is None:
        from streamrl.rl.streaming import run_streaming

        logs.setup("learner", transformers=True)
        try:
            code = run_streaming(
                cfg, sids or Path(cfg.learn.sids_dir), run_dir, _stop_on_signals(), steps, seed
            )
        except InitError as exc:
            console.print(f"[red]refused:[/red] {exc}")
            raise typer.Exit(2) from None
        raise typer.Exit(code)
    if steps is None:
        console.print("[red]offline learning needs --steps[/red]")
        raise typer.Exit(2)
    policy = None
    try:
        if weights is not None:
            policy = RewardPolicy(parse_rewards(weights.read_text(encoding="utf-8"), str(weights)), 0)
        summary = run_offline(
            cfg.learn,
            records,
            sids or Path(cfg.learn.sids_dir),
            steps,
            run_dir or Path(cfg.learn.run_dir),
            seed,
            policy=policy,
            join=cfg.join,
        )
    except (ValueError, OSError, WeightsError, CheckpointError) as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from None
    if "checkpoint" not in summary:  # a rank other than 0 under torchrun: rank 0 reports
        raise typer.Exit(0)
    print(json.dumps(summary), flush=True)  # the last stdout line: the run's summary, one JSON line
    console.print(f"checkpoint {summary['checkpoint']}")
    if summary.get("tensorboard"):
        console.print(f"curves {summary['tensorboard']} (tensorboard --logdir {summary['tensorboard']})")


@app.command()
def run(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The daemon: the joiner(s) and the learner as supervised child processes (restarted with
    backoff); SIGTERM drains them and exits 0."""
    from streamrl.supervisor import child_commands, supervise

    cfg = _config(config, set_)
    logs.setup("supervisor")
    raise typer.Exit(supervise(cfg, child_commands(cfg, config, set_ or []), _stop_on_signals()))


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[
        Path, typer.Option(help="A checkpoint or served version folder, or a run folder (its newest valid).")
    ],
    records: Annotated[Path, typer.Option(help="Parquet records to evaluate on.")],
    k: int = 10,
    beam: int = 32,
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 500,
    as_json: JsonOpt = False,
) -> None:
    """HR@K / MRR@K by constrained beam search, and the valid-SID rate of free decoding."""
    from streamrl.checkpoints.store import CheckpointError
    from streamrl.rl.checkpointing import load_for_inference, resolve
    from streamrl.rl.evaluate import evaluate
    from streamrl.rl.offline import load_records

    try:
        model, tok, book, vocab = load_for_inference(resolve(checkpoint))
    except (CheckpointError, OSError) as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from None
    result = evaluate(model, tok, book, vocab, load_records(records)[:limit], k, beam)
    result.pop("hits", None)  # per-request hits: for the push gate's paired test, not a report
    if as_json:
        _emit(result)
        return
    table = Table(title=f"eval of {checkpoint} on {records}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
def demo(
    duration: Annotated[
        float, typer.Option(help="Seconds the whole run takes, set-up and warm start included.")
    ] = 480.0,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="The demo's run folder (emptied first).")] = Path(
        "runs/demo"
    ),
    encoder: Annotated[
        str, typer.Option(help="SID text encoder: minilm | hash | a local folder.")
    ] = "minilm",
    world: Annotated[Path | None, typer.Option(help="World file (default configs/world.yaml).")] = None,
    seed: Annotated[int | None, typer.Option(help="World and traffic seed (default: the file's).")] = None,
) -> None:
    """The main job on the embedded default: local broker, simulated search engine with a logged
    backlog, the daemon (warm start, then live RL), live and frozen reference servers, an online A/B
    against the engine's ranker, a live panel, and a PNG report at the end."""
    from streamrl.demo import WORLD, run_demo

    logs.setup("demo", "WARNING", transformers=True)
    code = run_demo(
        duration, run_dir, console, _stop_on_signals(), encoder, world_file=world or WORLD, seed=seed
    )
    raise typer.Exit(code)


from streamrl import ops_cli  # noqa: E402,F401 - registers serve, push, rollback, checkpoints, weights

# The refusals an operator's bad input raises (all ValueErrors), matched by name so that `main` does
# not import the modules (rl/ pulls in torch) before a command needs them.
REFUSALS = {
    "ConfigError",
    "ServingError",
    "CheckpointError",
    "WeightsError",
    "InitError",
    "ValidationError",
    "CodebookError",
}


def main() -> None:
    """The console entry point. An operator's bad input — a config, weights file, model name, serving
    policy, checkpoint or init the command refuses — ends in one line on stderr and exit 2, never a
    traceback; anything else is a bug and keeps its traceback (exit 1)."""
    try:
        app()
    except ValueError as exc:
        if not any(c.__name__ in REFUSALS for c in type(exc).__mro__):
            raise
        first = str(exc).strip().splitlines()
        console.print(f"[red]refused:[/red] {type(exc).__name__}: {' '.join(first[:3])}")
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
