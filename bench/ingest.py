"""Inbound throughput of the gateway against a bare aiohttp baseline, measured in the same run.

`python -m bench.ingest [--seconds 10] [--concurrency 32] [--profile]` (from the repo root):

1. A bare aiohttp app (`bench._bare`: parse the JSON body, answer 200) runs as its own process
   and takes the load; then the gateway (`python -m gateway serve`, embedded default: a new
   SQLite file in a fresh temporary directory) takes the very same load on
   `POST /api/v1/inbound`. The load generator is this process; both servers are subprocesses.
2. Each load is a closed loop of `--concurrency` workers over one keep-alive connection pool:
   a warm-up that is not counted, then `--seconds` that are.
3. "Every 202 means committed": the gateway is then killed with SIGKILL (a crash, so nothing
   unfinished can still be flushed by a graceful shutdown) and its SQLite file is opened: the
   rows in `timeline_events` must be exactly the events that were answered 202 (all phases).
   Under `--profile` the gateway gets SIGINT instead, so the profiler can write its report.
4. Prints a table and writes it as JSON to bench/results/ingest.json (ingest-profile.json and
   the profile itself under --profile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench import _profile
from bench._load import (
    LOOPBACK,
    Bodies,
    LoadResult,
    ServerProcess,
    free_port,
    http_ok,
    run_load,
    tcp_open,
    wait_ready,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
INBOUND_PATH = "/api/v1/inbound"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per server")
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted warm-up per server")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent workers")
    parser.add_argument("--senders", type=int, default=2000, help="distinct sender numbers")
    parser.add_argument(
        "--available-agents",
        type=int,
        default=0,
        help="agents available with room for every ticket, so each event is routed and popped",
    )
    _profile.add_arguments(parser)
    return parser


def _env() -> dict[str, str]:
    """The caller's environment without SWITCHBOARD_* (so: the embedded default), quiet logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env["SWITCHBOARD_LOG_LEVEL"] = "WARNING"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _add_agent(workdir: Path, env: dict[str, str], n: int = 0) -> tuple[int, str]:
    """Agent `n` (0: the integration sending the load) as the CLI prints it: (id, token)."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "agent", "add"),
            *("--name", f"Bench {n}", "--email", f"bench{n}@example.com"),
            *("--password", "benchpass1", "--capacity", "100000"),
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`gateway agent add` failed ({done.returncode}):\n{done.stderr}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"`gateway agent add` printed no JSON:\n{done.stdout}{done.stderr}")
    agent = json.loads(lines[-1])
    return int(agent["id"]), str(agent["token"])


async def _make_available(port: int, agents: list[tuple[int, str]]) -> None:
    """Agents that take every new ticket, so each event is also routed and popped."""
    async with aiohttp.ClientSession() as http:
        for agent_id, token in agents:
            async with http.patch(
                f"http://{LOOPBACK}:{port}/api/v1/agents/{agent_id}",
                json={"presence": "available"},
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"could not make agent {agent_id} available")


def _gateway_argv(port: int, profile: Path | None, profiler: str) -> list[str]:
    serve = ["-m", "gateway", "serve", "--host", LOOPBACK, "--port", str(port)]
    if profile is None:
        return [sys.executable, *serve]
    if profiler == "py-spy":
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        return [
            py_spy,
            "record",
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--rate",
            str(_profile.PY_SPY_RATE),
            "--output",
            str(profile),
            "--",
            sys.executable,
            *serve,
        ]
    return [
        sys.executable,
        "-m",
        "pyinstrument",
        "--renderer",
        "pyisession",
        "--outfile",
        str(profile),
        *serve,
    ]


async def _bench_bare(workdir: Path, env: dict[str, str], args: argparse.Namespace) -> LoadResult:
    port = free_port()
    bare = ServerProcess(
        "bare",
        [sys.executable, "-m", "bench._bare", "--host", LOOPBACK, "--port", str(port)],
        cwd=workdir,
        env=env,
    )
    try:
        await wait_ready(bare, tcp_open(port))
        return await run_load(
            f"http://{LOOPBACK}:{port}{INBOUND_PATH}",
            Bodies(f"bare-{uuid.uuid4().hex[:8]}", args.senders),
            concurrency=args.concurrency,
            warmup=args.warmup,
            seconds=args.seconds,
            success_status=200,
            server_pid=bare.server_pid(),
        )
    finally:
        bare.stop(signal.SIGTERM)


async def _bench_gateway(
    workdir: Path, env: dict[str, str], args: argparse.Namespace, profile: Path | None
) -> tuple[LoadResult, dict[str, Any]]:
    _, token = _add_agent(workdir, env)
    available = [_add_agent(workdir, env, n) for n in range(1, args.available_agents + 1)]
    port = free_port()
    gateway = ServerProcess(
        "gateway", _gateway_argv(port, profile, args.profiler), cwd=workdir, env=env
    )
    stopped = False
    try:
        await wait_ready(gateway, http_ok(f"http://{LOOPBACK}:{port}/healthz"), within=120)
        await _make_available(port, available)
        result = await run_load(
            f"http://{LOOPBACK}:{port}{INBOUND_PATH}",
            Bodies(f"gw-{uuid.uuid4().hex[:8]}", args.senders),
            concurrency=args.concurrency,
            warmup=args.warmup,
            seconds=args.seconds,
            success_status=202,
            headers={"Authorization": f"Bearer {token}"},
            server_pid=gateway.server_pid(),
        )
        # SIGKILL is the strict test of "202 means committed"; a profiler needs a clean exit.
        stop_signal = signal.SIGINT if profile is not None else signal.SIGKILL
        code = gateway.stop(stop_signal, timeout=60)
        stopped = True
        check = _commit_check(workdir / "switchboard.db", result)
        check["gateway_stopped_by"] = signal.Signals(stop_signal).name
        check["gateway_exit_code"] = code
        return result, check
    finally:
        if not stopped:
            gateway.stop(signal.SIGINT, timeout=30)
        if gateway.log_path.exists() and gateway.log_path.stat().st_size:
            tail = gateway.log_tail(15)
            if "Traceback" in tail or "ERROR" in tail:
                print(f"--- gateway log (tail) ---\n{tail}\n---", file=sys.stderr)


def _commit_check(database: Path, result: LoadResult) -> dict[str, Any]:
    """The rows in timeline_events are exactly the events answered 202, in every phase."""
    answered = {external_id for external_id, _ in result.accepted}
    answered_ids: set[int] = set()
    duplicates = 0
    for _, payload in result.accepted:
        body = json.loads(payload)
        answered_ids.add(int(body["event_id"]))
        duplicates += bool(body.get("duplicate"))
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT id, external_id FROM timeline_events").fetchall()
        journal = dict(
            connection.execute("SELECT status, count(*) FROM inbound_journal GROUP BY status")
        )
    finally:
        connection.close()
    stored = {external_id for _, external_id in rows}
    stored_ids = {event_id for event_id, _ in rows}
    missing = answered - stored
    ok = len(rows) == len(result.accepted) and not missing and answered_ids <= stored_ids
    return {
        "ok": ok,
        "accepted_202": len(result.accepted),
        "accepted_202_warmup": result.warmup_ok,
        "accepted_202_measured": result.measured_ok,
        "accepted_202_after_window": result.tail_ok,
        "timeline_events_rows": len(rows),
        "answered_but_not_stored": len(missing),
        "stored_but_not_answered": len(stored - answered),
        "event_ids_missing": len(answered_ids - stored_ids),
        "answered_as_duplicate": duplicates,
        "journal_by_status": {str(k): v for k, v in journal.items()},
    }


def _side(result: LoadResult) -> dict[str, Any]:
    wall = result.seconds
    return {
        "ok_per_s": round(result.rate, 1),
        "ok_measured": result.measured_ok,
        "p50_ms": _round(result.percentile_ms(50)),
        "p99_ms": _round(result.percentile_ms(99)),
        "max_ms": _round(result.percentile_ms(100)),
        "errors": dict(result.errors),
        "warmup_errors": dict(result.warmup_errors),
        "server_cpu_pct": _round(100 * result.server_cpu_s / wall)
        if result.server_cpu_s is not None
        else None,
        "loadgen_cpu_pct": _round(100 * result.load_cpu_s / wall),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0"


def _table(report: dict[str, Any]) -> str:
    gateway, bare, check = report["gateway"], report["bare"], report["commit_check"]

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    rows = [
        ("gateway inbound events/s (202)", f"{gateway['ok_per_s']:.1f}"),
        ("bare requests/s (200)", f"{bare['ok_per_s']:.1f}"),
        ("ratio gateway/bare", f"{report['ratio_gateway_over_bare']:.4f}"),
        ("gateway p50 / p99 latency ms", f"{ms(gateway['p50_ms'])} / {ms(gateway['p99_ms'])}"),
        ("bare p50 / p99 latency ms", f"{ms(bare['p50_ms'])} / {ms(bare['p99_ms'])}"),
        ("gateway errors (measured)", _errors_text(gateway["errors"])),
        ("bare errors (measured)", _errors_text(bare["errors"])),
        (
            "CPU % gateway / bare / loadgen*",
            f"{ms(gateway['server_cpu_pct'])} / {ms(bare['server_cpu_pct'])} / "
            f"{ms(gateway['loadgen_cpu_pct'])}",
        ),
        (
            "commit check (rows == 202s)",
            f"{'PASS' if check['ok'] else 'FAIL'}: {check['timeline_events_rows']} rows, "
            f"{check['accepted_202']} x 202 (warm-up {check['accepted_202_warmup']}, "
            f"measured {check['accepted_202_measured']}, "
            f"after window {check['accepted_202_after_window']}), "
            f"stopped by {check['gateway_stopped_by']}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    setup = report["setup"]
    lines = [
        f"bench.ingest: {setup['concurrency']} workers, {setup['seconds']:g} s measured after "
        f"{setup['warmup_s']:g} s warm-up, {setup['senders']} senders, {setup['cpus']} CPUs "
        f"(load average {setup['loadavg_1m_at_start']:g} at start)"
        + (f", gateway under {setup['profiler']}" if setup["profiler"] else ""),
        "-" * (width + 40),
    ]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(f"* loadgen CPU during the gateway run (bare run: {ms(bare['loadgen_cpu_pct'])})")
    if (bare["loadgen_cpu_pct"] or 0) >= 85:
        lines.append(
            "  the load generator was near one full core in the bare run: the bare figure is a "
            "lower bound of what aiohttp can do here, so the ratio is an upper bound"
        )
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "ingest-profile" if args.profile else "ingest"
    profile: Path | None = None
    loadavg = os.getloadavg()[0]  # other work on the machine skews every figure below
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    env = _env()
    try:
        if args.profile:
            suffix = "pyisession" if args.profiler == "pyinstrument" else "pyspy.txt"
            profile = workdir / f"gateway.{suffix}"
        print(f"bench.ingest: bare baseline ({args.warmup:g} + {args.seconds:g} s)...", flush=True)
        bare = await _bench_bare(workdir, env, args)
        print(f"bench.ingest: gateway ({args.warmup:g} + {args.seconds:g} s)...", flush=True)
        gateway, check = await _bench_gateway(workdir, env, args, profile)
        ratio = gateway.rate / bare.rate if bare.rate else 0.0
        report: dict[str, Any] = {
            "setup": {
                "concurrency": args.concurrency,
                "seconds": args.seconds,
                "warmup_s": args.warmup,
                "senders": args.senders,
                "available_agents": args.available_agents,
                "cpus": os.cpu_count(),
                "loadavg_1m_at_start": round(loadavg, 2),
                "python": sys.version.split()[0],
                "profiler": args.profiler if args.profile else None,
                "database": "sqlite (embedded default, fresh file)",
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            "gateway": _side(gateway),
            "bare": _side(bare),
            "ratio_gateway_over_bare": round(ratio, 4),
            "commit_check": check,
        }
        if profile is not None:
            report["profile"] = _profile.report(
                profile, name="ingest", profiler=args.profiler, top=args.top
            )
        print()
        print(_table(report))
        if not check["ok"]:
            print("commit check details: " + json.dumps(check), file=sys.stderr)
        out = RESULTS / f"{stem}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwritten: {out.relative_to(REPO)}")
        return 0 if check["ok"] else 1
    finally:
        if args.keep_temp:
            print(f"temporary directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.concurrency < 1 or args.seconds <= 0 or args.warmup < 0 or args.senders < 1:
        print("bench.ingest: --concurrency, --seconds, --senders must be > 0", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        print("bench.ingest: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
