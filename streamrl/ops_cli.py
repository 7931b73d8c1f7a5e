"""Operator commands (issue #5): serve, push, rollback, checkpoints, serving status, weights.

Every refusal prints why and exits 2 with nothing changed; every change is recorded with who, when
and why (serving history.jsonl, weights history.jsonl). Paths come from the config (`serving.root`,
`serving.model`, `learn.run_dir`, `weights.dir`) unless given.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from streamrl import logs
from streamrl.checkpoints.serving import ServingError, ServingRoot
from streamrl.checkpoints.store import CheckpointError, CheckpointStore, verify
from streamrl.cli import (
    ConfigOpt,
    JsonOpt,
    RunDirOpt,
    SetOpt,
    _config,
    _emit,
    _stop_on_signals,
    app,
    console,
)
from streamrl.configs import StreamrlConfig

RootOpt = Annotated[Path | None, typer.Option("--serving-root", help="SERVING_ROOT (serving.root).")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Model name under SERVING_ROOT (serving.model).")
]
AuthorOpt = Annotated[str | None, typer.Option("--author", help="Who (default: user@host).")]


def _serving(cfg: StreamrlConfig, root: Path | None, model: str | None) -> ServingRoot:
    return ServingRoot(root or Path(cfg.serving.root), model or cfg.serving.model)


def _refuse(msg: object) -> None:
    console.print(f"[red]refused:[/red] {msg}")
    raise typer.Exit(2)


# -- serve ----------------------------------------------------------------------------------------
@app.command()
def serve(
    serving_root: RootOpt = None,
    model: ModelOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (serving.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (serving.port; 0 = any free).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The reference server: /healthz, /version, POST /search, POST /reload."""
    from streamrl.serving.server import serve as run

    cfg = _config(config, set_)
    sc = cfg.serving.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
    logs.setup("serving", transformers=True)
    root = serving_root or Path(sc.root)
    raise typer.Exit(run(sc, root, model or sc.model, _stop_on_signals(), cfg.learn.history_len))


# -- push -----------------------------------------------------------------------------------------
push_app = typer.Typer(
    invoke_without_command=True, help="Push a checkpoint to serving now, through the gate."
)
app.add_typer(push_app, name="push")


@push_app.callback()
def push_now(
    ctx: typer.Context,
    step: Annotated[int | None, typer.Option("--step", help="Checkpoint step (default: newest).")] = None,
    run_dir: RunDirOpt = None,
    serving_root: RootOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """`streamrl push [--step STEP]`: gate (hashes, finite parameters, held-out HR@10), copy as the
    next version, notify the server if `push.notify_url` is set."""
    if ctx.invoked_subcommand is not None:
        return
    from streamrl.checkpoints.push import push
    from streamrl.rl.gate import heldout_evaluator
    from streamrl.rl.streaming import HELDOUT

    cfg = _config(config, set_)
    rd = run_dir or Path(cfg.learn.run_dir)
    pc = cfg.push
    result = push(
        CheckpointStore(rd),
        _serving(cfg, serving_root, model),
        step=step,
        evaluate=heldout_evaluator(rd / HELDOUT, pc.eval_records, pc.eval_beam, cfg.learn),
        max_regression=pc.max_regression,
        min_distinct_top1=pc.min_distinct_top1,
        alpha=pc.alpha,
        min_heldout=pc.min_heldout,
        scheduled=False,
        notify_url=pc.notify_url,
        verify_timeout_s=pc.verify_timeout_s,
    )
    if as_json:
        _emit(result.as_dict())
    if not result.pushed:
        _refuse(result.reason)
    if not as_json:
        console.print(f"pushed step {result.step} as version {result.version} {result.metrics or ''}")
    try:
        serving = _serving(cfg, serving_root, model)
        if serving.held():
            console.print(
                f"[yellow]serving stays pinned to version {serving.policy()['version']}[/yellow]: "
                "`streamrl push resume` returns it to latest"
            )
    except ServingError:
        pass


@push_app.command("resume")
def push_resume(
    reason: Annotated[str, typer.Option(help="Why.")] = "resume scheduled pushes",
    author: AuthorOpt = None,
    serving_root: RootOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Lift the hold of a rollback: serving returns to the latest version, scheduled pushes resume."""
    cfg = _config(config, set_)
    serving = _serving(cfg, serving_root, model)
    serving.resume(reason, author)
    _notify(cfg)
    if as_json:
        _emit({"served_version": serving.served(), "policy": serving.policy()})
        return
    console.print(f"serving follows the latest version ({serving.served()}); scheduled pushes resume")


# -- rollback -------------------------------------------------------------------------------------
@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in history.jsonl).")],
    to: Annotated[int | None, typer.Option("--to", help="Version to serve.")] = None,
    previous: Annotated[bool, typer.Option("--previous", help="The version before the one served.")] = False,
    reset_learner: Annotated[
        bool, typer.Option("--reset-learner", help="The learner continues from that version's checkpoint.")
    ] = False,
    author: AuthorOpt = None,
    serving_root: RootOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Pin serving to an earlier version and hold scheduled pushes (`streamrl push resume` lifts it)."""
    cfg = _config(config, set_)
    serving = _serving(cfg, serving_root, model)
    if (to is None) == (not previous):
        _refuse("give exactly one of --to VERSION or --previous")
    try:
        version = serving.previous_version() if previous else int(to or 0)
        policy = serving.pin(version, reason, author, reset_learner)
    except ServingError as exc:
        _refuse(exc)
    _notify(cfg)
    if as_json:
        _emit(policy)
        return
    console.print(
        f"serving pinned to version {policy['version']} (step {policy['step']}); scheduled pushes held"
        + ("; the learner will continue from it" if reset_learner else "")
    )


def _notify(cfg: StreamrlConfig) -> None:
    """Tell a configured server to re-read policy.json now (it would within `serving.poll_s` anyway)."""
    url = cfg.push.notify_url
    if not url:
        return
    try:
        req = urllib.request.Request(url, b"{}", {"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=2).read()
    except OSError as exc:
        console.print(
            f"[yellow]server not notified ({url}): {exc}; it re-reads policy.json on its own[/yellow]"
        )


# -- checkpoints, serving status -------------------------------------------------------------------
checkpoints_app = typer.Typer(no_args_is_help=True, help="The learner's checkpoint store.")
app.add_typer(checkpoints_app, name="checkpoints")


@checkpoints_app.command("list")
def checkpoints_list(
    run_dir: RunDirOpt = None,
    serving_root: RootOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Steps, creation times, validity, weights versions, metrics, and which were pushed as what."""
    cfg = _config(config, set_)
    store = CheckpointStore(run_dir or Path(cfg.learn.run_dir))
    serving = _serving(cfg, serving_root, model)
    pushed: dict[int, list[int]] = {}
    for h in serving.history():
        if h.get("action") == "push":
            pushed.setdefault(int(h["step"]), []).append(int(h["version"]))
    rows: list[dict[str, Any]] = []
    for c in store.checkpoints():
        try:
            m, problem = verify(c.path), None
        except CheckpointError as exc:
            m, problem = {}, str(exc)
        rows.append(
            {
                "step": c.step,
                "created": m.get("created"),
                "valid": problem is None,
                "problem": problem,
                "weights_version": m.get("weights_version"),
                "pushed_as": pushed.get(c.step, []),
                "metrics": {k: v for k, v in m.get("metrics", {}).items() if k in _SHOWN},
                "path": str(c.path),
            }
        )
    if as_json:
        _emit(rows)
        return
    table = Table(title=f"checkpoints in {store.root}")
    for col in ("step", "created", "valid", "weights", "pushed as", "reward_mean", "loss"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["step"]),
            str(r["created"]),
            "yes" if r["valid"] else f"[red]no: {r['problem']}[/red]",
            str(r["weights_version"]),
            ",".join(map(str, r["pushed_as"])),
            _fmt(r["metrics"].get("reward_mean")),
            _fmt(r["metrics"].get("loss")),
        )
    console.print(table)


_SHOWN = {"loss", "reward_mean", "valid_sid_rate", "grad_norm", "weights_version", "promoted_share"}


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v)


serving_app = typer.Typer(no_args_is_help=True, help="The serving layout.")
app.add_typer(serving_app, name="serving")


@serving_app.command("repair")
def serving_repair(
    reason: Annotated[str, typer.Option(help="Why (recorded in history.jsonl).")],
    author: AuthorOpt = None,
    serving_root: RootOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Rewrite a damaged policy.json from history.jsonl: the last rollback's pin (if no resume came
    after it and its version still verifies), else latest."""
    cfg = _config(config, set_)
    policy = _serving(cfg, serving_root, model).repair(reason, author)
    _notify(cfg)
    if as_json:
        _emit(policy)
        return
    where = (
        f"pinned to version {policy['version']}"
        if policy["mode"] == "pinned"
        else "following the latest version"
    )
    console.print(f"policy.json rewritten: serving is {where}")


@serving_app.command("status")
def serving_status(
    serving_root: RootOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Versions, push times, metrics, weights versions, the pin, and what a server reports."""
    cfg = _config(config, set_)
    try:
        status = _serving(cfg, serving_root, model).status()
    except ServingError as exc:
        _refuse(exc)
    status["server"] = _server_version(cfg)
    if as_json:
        _emit(status)
        return
    pol = status["policy"]
    pin = (
        f"pinned to {pol['version']} by {pol.get('author')}: {pol.get('reason')}"
        if status["held"]
        else "latest"
    )
    console.print(
        f"model {status['model']} in {status['dir']}: serving version {status['served_version']} ({pin})"
    )
    if status["server"] is not None:
        console.print(f"server reports: {status['server']}")
    table = Table()
    for col in ("version", "step", "pushed at", "weights", "hr@10"):
        table.add_column(col)
    for v in status["versions"]:
        table.add_row(
            str(v["version"]),
            str(v["step"]),
            str(v["pushed_at"]),
            str(v["weights_version"]),
            _fmt(v["metrics"].get("hr@10")),
        )
    console.print(table)


def _server_version(cfg: StreamrlConfig) -> dict[str, Any] | None:
    url = cfg.push.notify_url
    if not url:
        return None
    try:
        with urllib.request.urlopen(url.rsplit("/", 1)[0] + "/version", timeout=2) as resp:
            return dict(json.loads(resp.read()))
    except (OSError, ValueError):
        return {"error": "unreachable"}


# -- weights --------------------------------------------------------------------------------------
weights_app = typer.Typer(no_args_is_help=True, help="Live reward weights and promotions.")
app.add_typer(weights_app, name="weights")


def _weights(cfg: StreamrlConfig) -> Any:
    from streamrl.rl.streaming import weights_store

    return weights_store(cfg)


@weights_app.command("show")
def weights_show(as_json: JsonOpt = False, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The version in force and its content, with which promotions are active now."""
    from streamrl.rewards.weights import WeightsError

    cfg = _config(config, set_)
    try:
        policy = _weights(cfg).load()
    except WeightsError as exc:
        _refuse(exc)
    out = policy.describe()
    out["active_now"] = [p.name for p in policy.active(int(time.time() * 1000))]
    if as_json:
        _emit(out)
    else:
        console.print_json(json.dumps(out, default=str))  # the human view: indented


@weights_app.command("apply")
def weights_apply(
    file: Annotated[Path, typer.Argument(help="A rewards file (configs/rewards.yaml shape).")],
    author: Annotated[str, typer.Option(help="Who.")],
    reason: Annotated[str, typer.Option(help="Why.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Validate and store as a new version; a running learner switches at its next step boundary."""
    from streamrl.rewards.weights import WeightsError

    cfg = _config(config, set_)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        _refuse(f"{file}: {exc.strerror or exc}")
    try:
        policy = _weights(cfg).apply(text, author, reason, str(file))
    except WeightsError as exc:
        _refuse(exc)
    if as_json:
        _emit(policy.describe())
        return
    console.print(f"weights version {policy.version} in force (from {file}, by {author}: {reason})")


@weights_app.command("history")
def weights_history(as_json: JsonOpt = False, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Every apply and revert: version, who, when, why, from what."""
    hist = _weights(_config(config, set_)).history()
    if as_json:
        _emit(hist)
        return
    table = Table(title="reward weights history")
    for col in ("version", "action", "applied_at", "author", "reason", "source"):
        table.add_column(col)
    for h in hist:
        table.add_row(
            *(str(h.get(c, "")) for c in ("version", "action", "applied_at", "author", "reason", "source"))
        )
    console.print(table)


@weights_app.command("revert")
def weights_revert(
    version: Annotated[int, typer.Argument(help="The version whose content comes back.")],
    author: Annotated[str, typer.Option(help="Who.")],
    reason: Annotated[str, typer.Option(help="Why.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Store an earlier version's content as a new version (versions only grow)."""
    from streamrl.rewards.weights import WeightsError

    try:
        policy = _weights(_config(config, set_)).revert(version, author, reason)
    except WeightsError as exc:
        _refuse(exc)
    if as_json:
        _emit(policy.describe())
        return
    console.print(f"weights version {policy.version} in force (content of version {version})")


# -- status ---------------------------------------------------------------------------------------
@app.command()
def status(as_json: JsonOpt = False, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """A running daemon at a glance: health of every process (the supervisor, each joiner member
    joiner-0 … joiner-{run.joiners - 1} on metrics.joiner_port + i, the learner), lag, step, served
    version, pin, weights version, last error. Reads the /healthz endpoints and the serving and
    weights folders; a process that does not answer, or whose loop's heartbeat is stale, is reported
    as down. Exit 1 when anything is down."""
    cfg = _config(config, set_)
    m = cfg.metrics
    members = [("supervisor", m.supervisor_port)]
    members += [(f"joiner-{i}", m.joiner_port + i if m.joiner_port else 0) for i in range(cfg.run.joiners)]
    members.append(("learner", m.learner_port))
    procs: dict[str, dict[str, Any]] = {
        name: _health(m.host, port) if port else {"ok": None, "note": "no endpoint configured"}
        for name, port in members
    }
    out: dict[str, Any] = {"processes": procs}
    try:
        s = _serving(cfg, None, None).status()
        out["serving"] = {
            "served_version": s["served_version"],
            "pinned": s["policy"] if s["held"] else None,
            "last_push": s["last_push"],
            "last_event": s["last_event"],
        }
    except ServingError as exc:
        out["serving"] = {"error": str(exc)}
    try:
        out["weights_version"] = _weights(cfg).current_version()
    except ValueError as exc:
        out["weights_version"] = f"unreadable: {exc}"
    errors = [
        f"{n}: {p.get('last_error') or p.get('error')}" for n, p in procs.items() if p.get("ok") is False
    ]
    out["last_error"] = errors[-1] if errors else None
    down = any(p.get("ok") is False for p in procs.values())
    if as_json:
        _emit(out)
        raise typer.Exit(1 if down else 0)
    table = Table(title="streamrl status")
    table.add_column("what")
    table.add_column("state")
    for name, p in procs.items():
        if p.get("ok") is None:
            state = "[dim]no endpoint[/dim]"
        elif not p.get("ok"):
            state = f"[red]DOWN[/red] {p.get('error') or p.get('last_error') or ''}"
        elif name.startswith("joiner"):
            state = f"up; lag {p.get('lag')} messages, {p.get('open_requests')} open requests"
        elif name == "learner":
            state = f"up; step {p.get('step')}, {p.get('rollouts_per_s')} rollouts/s"
        else:
            kids: dict[str, Any] = p.get("children") or {}
            state = "up; " + ", ".join(
                f"{k} {'up' if v['up'] else 'DOWN'} ({v['restarts']} restarts)" for k, v in kids.items()
            )
        table.add_row(name, state)
    sv = out["serving"]
    pin = sv.get("pinned")
    table.add_row(
        "served version",
        f"{sv.get('served_version')}" + (f" [yellow]pinned[/yellow]: {pin.get('reason')}" if pin else ""),
    )
    lp = sv.get("last_push") or {}
    table.add_row(
        "last push", f"v{lp.get('version')} (step {lp.get('step')}) at {lp.get('at')}" if lp else "none"
    )
    table.add_row("weights version", str(out["weights_version"]))
    table.add_row("last error", str(out["last_error"] or "none"))
    console.print(table)
    raise typer.Exit(1 if down else 0)


def _health(host: str, port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        try:
            return {"ok": False, **json.loads(exc.read())}
        except ValueError:
            return {"ok": False, "error": f"HTTP {exc.code}"}
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": f"not answering on {host}:{port} ({exc})"}
