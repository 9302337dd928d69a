"""Ring-to-pop latency of CTI calls against a bare webhook-to-WebSocket forwarder, in one run.

`python -m bench.screenpop [--rate 200] [--seconds 20] [--windows 4] [--cpus apart|shared]
[--profile]` (from the repo root):

1. 50 agents (`--agents`) are created with `gateway agent add` (extensions 201, 202, ...) in a
   fresh temporary directory, so the gateway runs on the embedded default (a new SQLite file).
2. Two servers, each its own process: the bare baseline (`bench._bare_ws`: `POST /ring` forwards a
   small JSON message to the named agent's `GET /ws` socket) and the gateway (`python -m gateway
   serve`, `POST /webhooks/cti`). The load generator is this process; everything is loopback. With
   `--cpus apart` (the default, on two CPUs or more) the load generator keeps to the last CPU and
   both servers to the others, as if it sent from a machine of its own. Left to the scheduler, it
   was often woken on the gateway's CPU (the gateway keeps its loop to one; the bare app moved to
   the other CPU) and took a tenth of that CPU's time. Having run more than its share against it,
   the gateway's woken loop was not yet due, and Linux (6.18, EEVDF) ran the gateway's idle-policy
   database writer instead, up to the next 4 ms tick: in perf traces the loop's wake-up-to-run p99
   was 1.0 and 3.2 ms shared, 0.08 ms apart. Apart, the bare app is woken across CPUs too, as by a
   remote PBX, where shared it often ran beside the load generator: its p99 rises with it (0.6-0.8
   to 0.8-1.3 ms on the project's VM), the gateway's falls (1.6-2.2 to 1.1-1.6 ms). `--cpus shared`
   leaves all three to the scheduler, as before. Both servers are up for the whole run and take the
   very same load in turn, one at a time: `--seconds` per server split into `--windows` windows,
   bare-gateway, then gateway-bare, and so on (ABBA). Whatever the machine does over the minutes of
   a run falls on both alike (on the project's VM the same work cost a third more CPU from one
   minute to the next), and the ratio compares like with like. Each window warms up uncounted, the
   first for `--warmup` seconds, the later ones (the server warm by then) for at most
   `WINDOW_LEAD_IN_S`.
3. The load, per window: one WebSocket per agent, each set `available` (the presence reply
   awaited); then an open loop at a fixed `--rate`, scheduled by the clock and not by responses
   (a slow server shows as latency, not as a lower rate). Each call is a form-encoded `newCall`
   naming one agent's extension (round robin) with a caller number and `callId` new to the run;
   `--hangup-after` seconds (plus half a slot, so hang-ups fall between rings, not on them)
   after its scheduled ring, and never before the ring was answered, a `hangup`
   (`normalClearing`) ends it, untimed. The hang-ups are part of the load: an unanswered call
   that ends is a missed call with a callback ticket, routed like any other. A window ends when
   its last hang-up is answered, and the agents leave; windows never overlap.
4. Ring-to-pop: from the moment the `newCall` POST is handed to the socket (aiohttp's
   `on_request_chunk_sent`, called just before it writes the request) to the moment the named
   agent's socket receives the `screen_pop` whose `call.id` is the callId (`time.perf_counter`,
   this one process). The time from calling `post()` to that write is the load generator's own
   (its one event loop also reads every pop and every webhook's answer, which arrive in bursts
   from the gateway's group commits); it is shown apart, as ring-to-pop from the `post()` call.
   Also the webhook's HTTP response time and each window's p99; pops missing after `--drain`
   seconds, pops on the wrong socket and duplicates are counted (none may be missing).
5. Prints a table and writes it as JSON to bench/results/screenpop.json (screenpop-profile.json
   and the profile itself under --profile). Exit status 1 when a pop is missing or a webhook
   failed; the latency targets are reported, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from bench import _profile
from bench._load import (
    LOOPBACK,
    ServerProcess,
    cpu_seconds,
    free_port,
    http_ok,
    on_cpus,
    split_cpus,
    tcp_open,
)
from bench._load import wait_ready as _wait_ready
from bench.ingest import _env, _gateway_argv

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CTI_PATH = "/webhooks/cti"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CALLEE = "+4930123456"
TARGET_P99_MS = 25.0
TARGET_RATIO = 3.0
AGENT_ADD_ATTEMPTS = 3
DRAIN_POLL_S = 0.05
WINDOW_LEAD_IN_S = 1.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.screenpop", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rate", type=float, default=200.0, help="newCall webhooks per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per server")
    parser.add_argument(
        "--windows", type=int, default=4, help="windows per server the seconds are split into"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="uncounted warm-up per server")
    parser.add_argument("--agents", type=int, default=50, help="agent WebSockets (<= 799)")
    parser.add_argument(
        "--hangup-after", type=float, default=1.0, help="seconds from a ring to its hang-up"
    )
    parser.add_argument(
        "--drain", type=float, default=10.0, help="seconds to wait for late pops at the end"
    )
    parser.add_argument(
        "--connections", type=int, default=512, help="HTTP connection pool of the load generator"
    )
    parser.add_argument(
        "--cpus",
        choices=("apart", "shared"),
        default="apart",
        help="apart: the load generator on the last CPU, both servers on the others (as a PBX "
        "on a machine of its own); shared: all of them left to the system's scheduler",
    )
    parser.add_argument("--target-p99-ms", type=float, default=TARGET_P99_MS)
    parser.add_argument("--target-ratio", type=float, default=TARGET_RATIO)
    _profile.add_arguments(parser)
    return parser


# --- setup -------------------------------------------------------------------------------------


async def _add_agents(workdir: Path, env: dict[str, str], count: int) -> list[tuple[str, str]]:
    """`gateway agent add` for agents 1..count: [(extension, token)] in agent order.

    The first runs alone (it creates and migrates the database), the rest a few at a time.
    """

    async def add(n: int) -> tuple[str, str]:
        extension = str(200 + n)
        argv = [
            *(sys.executable, "-m", "gateway", "agent", "add"),
            *("--name", f"Agent {n}", "--email", f"agent{n}@example.com"),
            *("--password", "benchpass1", "--extension", extension),
        ]
        stderr = b""
        for _ in range(AGENT_ADD_ATTEMPTS):
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise RuntimeError(f"`gateway agent add` for agent {n} took over 120 s") from None
            lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
            if proc.returncode == 0 and lines:
                agent = json.loads(lines[-1])
                return str(agent["extension"]), str(agent["token"])
            await asyncio.sleep(0.2)  # e.g. "database is locked" from a concurrent add
        raise RuntimeError(f"`gateway agent add` failed for agent {n}:\n{stderr.decode()}")

    first = await add(1)
    limit = asyncio.Semaphore(max(2, os.cpu_count() or 2))

    async def limited(n: int) -> tuple[str, str]:
        async with limit:
            return await add(n)

    rest = await asyncio.gather(*(limited(n) for n in range(2, count + 1)))
    return [first, *rest]


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    ring_url: str
    ws_urls: list[str]  # one per agent
    extensions: list[str]  # the extension each agent is rung by (`user[]`)
    server_pid: int


@dataclass(frozen=True)
class Window:
    """One stretch of load on one server: `warmup` uncounted seconds, then `seconds` counted.
    Its callers are numbered on from `first_caller`, so that no caller rings twice in a run
    (each is a new caller to the gateway, as in one long run)."""

    number: int
    warmup: float
    seconds: float
    first_caller: int


@dataclass(slots=True)
class Call:
    index: int
    window: int
    caller: int
    call_id: str
    agent: int
    scheduled: float
    measured: bool
    sent: float = 0.0  # as the POST is started (`http.post` called)
    written: float | None = None  # as its bytes are handed to the socket
    responded: float | None = None
    status: int = 0
    error: str | None = None
    popped: float | None = None


@dataclass
class RunResult:
    name: str
    rate: float
    warmup_s: float
    seconds: float
    calls: list[Call]
    pops_wrong_socket: int = 0
    pops_duplicate: int = 0
    pops_unknown: int = 0
    other_messages: Counter[str] = field(default_factory=Counter)
    hangup_errors: Counter[str] = field(default_factory=Counter)
    unfinished_tasks: int = 0
    server_cpu_s: float | None = None
    load_cpu_s: float = 0.0


class _Agent:
    """One agent's WebSocket and the reader that timestamps what arrives on it."""

    def __init__(self, index: int, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.index = index
        self.socket = socket
        self.presence = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    async def read(self, calls: dict[str, Call], result: RunResult) -> None:
        async for message in self.socket:
            arrived = time.perf_counter()  # before anything else is done with the message
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            kind = data.get("type") if isinstance(data, dict) else None
            if kind == "screen_pop":
                call_id = (data.get("call") or {}).get("id")
                call = calls.get(call_id) if isinstance(call_id, str) else None
                if call is None:
                    result.other_messages[f"screen_pop ({data.get('reason')})"] += 1
                    if data.get("reason") == "incoming_call":
                        result.pops_unknown += 1
                elif call.agent != self.index:
                    result.pops_wrong_socket += 1
                elif call.popped is not None:
                    result.pops_duplicate += 1
                else:
                    call.popped = arrived
            elif kind == "presence":
                if data.get("state") == "available":
                    self.presence.set()
            else:
                result.other_messages[str(kind)] += 1


async def _connect_agents(
    session: aiohttp.ClientSession, target: Target, calls: dict[str, Call], result: RunResult
) -> list[_Agent]:
    async def connect(index: int, url: str) -> _Agent:
        socket = await session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        agent = _Agent(index, socket)
        agent.reader = asyncio.create_task(agent.read(calls, result))
        await socket.send_json({"type": "presence", "state": "available"})
        await asyncio.wait_for(agent.presence.wait(), timeout=15)
        return agent

    connecting = [asyncio.create_task(connect(i, url)) for i, url in enumerate(target.ws_urls)]
    try:
        return list(await asyncio.wait_for(asyncio.gather(*connecting), timeout=60))
    except BaseException:
        for task in connecting:
            task.cancel()
        raise


async def _close_agents(agents: list[_Agent]) -> None:
    async def close(agent: _Agent) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(agent.socket.close(), timeout=5)
        if agent.reader is not None:
            agent.reader.cancel()
            with contextlib.suppress(BaseException):
                await agent.reader

    await asyncio.gather(*(close(agent) for agent in agents))


async def _stamp_written(
    _session: aiohttp.ClientSession,
    context: SimpleNamespace,
    _params: aiohttp.TraceRequestChunkSentParams,
) -> None:
    """Called by aiohttp just before it hands the ring's body (with its headers) to the
    socket: the moment the webhook is sent, not counting the time the load generator's own
    event loop took to get there (it is one process, also reading 50 sockets' pops and every
    webhook's answer)."""
    call = context.trace_request_ctx
    if isinstance(call, Call) and call.written is None:
        call.written = time.perf_counter()


def _form(call: Call, target: Target, event: str) -> bytes:
    fields = [
        ("event", event),
        ("from", f"+49151{10_000_000 + call.caller:08d}"),  # unique, valid German mobile
        ("to", CALLEE),
        ("direction", "in"),
        ("callId", call.call_id),
        ("user[]", target.extensions[call.agent]),
    ]
    if event == "hangup":
        fields.append(("cause", "normalClearing"))
    return urllib.parse.urlencode(fields).encode()


async def run_screenpop(target: Target, args: argparse.Namespace, window: Window) -> RunResult:
    """Drive `target` with the open-loop schedule for one window; every wait below is
    bounded. The agents connect (and say they are available) at its start and leave at its
    end, after the last hang-up has been answered: windows never overlap."""
    run_id = secrets.token_hex(4)
    total = round((window.warmup + window.seconds) * args.rate)
    warmup_calls = round(window.warmup * args.rate)
    result = RunResult(target.name, args.rate, window.warmup, window.seconds, calls=[])
    calls: dict[str, Call] = {}
    connector = aiohttp.TCPConnector(limit=args.connections, limit_per_host=args.connections)
    timeout = aiohttp.ClientTimeout(total=30)
    writes = aiohttp.TraceConfig()
    writes.on_request_chunk_sent.append(_stamp_written)
    async with (
        aiohttp.ClientSession() as ws_session,
        aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=FORM, trace_configs=[writes]
        ) as http,
    ):
        agents = await _connect_agents(ws_session, target, calls, result)
        tasks: set[asyncio.Task[None]] = set()
        marking: asyncio.Task[None] | None = None
        marks: dict[str, tuple[float, float | None]] = {}
        try:

            async def one_call(call: Call) -> None:
                ring = _form(call, target, "newCall")
                call.sent = time.perf_counter()
                try:
                    async with http.post(
                        target.ring_url, data=ring, trace_request_ctx=call
                    ) as response:
                        await response.read()
                        call.status = response.status
                except (aiohttp.ClientError, TimeoutError, OSError) as error:
                    call.error = type(error).__name__
                call.responded = time.perf_counter()
                # Hang up on the same fixed-rate grid, shifted by half a slot so that a hang-up
                # never lands on the same instant as a ring; never before the ring answered.
                hangup_at = call.scheduled + args.hangup_after + 0.5 / args.rate
                delay = hangup_at - time.perf_counter()
                await asyncio.sleep(max(0.0, delay))
                try:
                    async with http.post(
                        target.ring_url, data=_form(call, target, "hangup")
                    ) as response:
                        await response.read()
                        if response.status != 200:
                            result.hangup_errors[f"HTTP {response.status}"] += 1
                except (aiohttp.ClientError, TimeoutError, OSError) as error:
                    result.hangup_errors[type(error).__name__] += 1

            start = time.perf_counter() + 0.2
            measure_from = start + warmup_calls / args.rate
            stop_at = start + total / args.rate

            def mark(name: str) -> None:
                marks[name] = (time.process_time(), cpu_seconds(target.server_pid))

            async def marker() -> None:
                await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
                mark("from")
                await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
                mark("to")

            marking = asyncio.create_task(marker())
            index = 0
            while index < total:
                now = time.perf_counter()
                # Everything due is launched now: a late loop catches up rather than slows.
                while index < total and start + index / args.rate <= now:
                    call = Call(
                        index=index,
                        window=window.number,
                        caller=window.first_caller + index,
                        call_id=f"sp-{run_id}-{index}",
                        agent=index % len(agents),
                        scheduled=start + index / args.rate,
                        measured=index >= warmup_calls,
                    )
                    calls[call.call_id] = call
                    result.calls.append(call)
                    task = asyncio.create_task(one_call(call))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    index += 1
                if index < total:
                    await asyncio.sleep(max(0.0, start + index / args.rate - time.perf_counter()))
            await marking

            # Late pops: wait (bounded) until every answered ring of the window has popped.
            for _ in range(math.ceil(args.drain / DRAIN_POLL_S)):
                if not any(
                    c.measured and c.popped is None and (c.responded is None or c.status == 200)
                    for c in result.calls
                ):
                    break
                await asyncio.sleep(DRAIN_POLL_S)
            # The hang-ups, so the server ends idle; bounded by the request timeout.
            if tasks:
                _, pending = await asyncio.wait(
                    set(tasks), timeout=args.hangup_after + timeout.total + 5
                )
                result.unfinished_tasks = len(pending)
        finally:
            if marking is not None:
                marking.cancel()
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.wait(set(tasks), timeout=5)
            await _close_agents(agents)
    load_from, server_from = marks["from"]
    load_to, server_to = marks["to"]
    result.load_cpu_s = load_to - load_from
    if server_from is not None and server_to is not None:
        result.server_cpu_s = server_to - server_from
    return result


# --- the two servers ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _bare_server(
    workdir: Path, env: dict[str, str], args: argparse.Namespace
) -> AsyncIterator[Target]:
    port = free_port()
    bare = ServerProcess(
        "bare_ws",
        [sys.executable, "-m", "bench._bare_ws", "--host", LOOPBACK, "--port", str(port)],
        cwd=workdir,
        env=env,
    )
    try:
        await _wait_ready(bare, tcp_open(port))
        extensions = [str(200 + n) for n in range(1, args.agents + 1)]
        yield Target(
            "bare",
            f"http://{LOOPBACK}:{port}/ring",
            [f"http://{LOOPBACK}:{port}/ws?agent={ext}" for ext in extensions],
            extensions,
            bare.server_pid(),
        )
    finally:
        bare.stop(signal.SIGTERM)


@contextlib.asynccontextmanager
async def _gateway_server(
    workdir: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    agents: list[tuple[str, str]],
    profile: Path | None,
) -> AsyncIterator[Target]:
    cti_token = env["SWITCHBOARD_CTI_TOKEN"]
    port = free_port()
    gateway = ServerProcess(
        "gateway", _gateway_argv(port, profile, args.profiler), cwd=workdir, env=env
    )
    try:
        await _wait_ready(gateway, http_ok(f"http://{LOOPBACK}:{port}/healthz"), within=120)
        yield Target(
            "gateway",
            f"http://{LOOPBACK}:{port}{CTI_PATH}?token={cti_token}",
            [f"http://{LOOPBACK}:{port}/ws/agent?token={token}" for _, token in agents],
            [extension for extension, _ in agents],
            gateway.server_pid(),
        )
    finally:
        # SIGINT: a graceful stop, and the profiler (if any) writes its report.
        gateway.stop(signal.SIGINT, timeout=60)
        tail = gateway.log_tail(15)
        if "Traceback" in tail or "ERROR" in tail:
            print(f"--- gateway log (tail) ---\n{tail}\n---", file=sys.stderr)


def windows(args: argparse.Namespace) -> list[Window]:
    """`--windows` windows per server sharing `--seconds`; the first warms up for `--warmup`,
    the others (the server warm by then) for `WINDOW_LEAD_IN_S` at most."""
    seconds = args.seconds / args.windows
    plan, first_caller = [], 0
    for number in range(args.windows):
        warmup = args.warmup if number == 0 else min(args.warmup, WINDOW_LEAD_IN_S)
        plan.append(Window(number, warmup, seconds, first_caller))
        first_caller += round((warmup + seconds) * args.rate)
    return plan


async def run_alternating(
    bare: Target, gateway: Target, args: argparse.Namespace, say: Callable[[str], None]
) -> tuple[list[RunResult], list[RunResult]]:
    """Each server's windows in turn, bare-gateway then gateway-bare (ABBA): whatever the
    machine does over the minutes of a run (its speed drifted by a third between minutes on
    the project's VM) falls on both servers alike, and a steady drift cancels out."""
    bare_runs: list[RunResult] = []
    gateway_runs: list[RunResult] = []
    for window in windows(args):
        pair = [(bare, bare_runs), (gateway, gateway_runs)]
        for target, runs in pair if window.number % 2 == 0 else pair[::-1]:
            say(f"window {window.number + 1}/{args.windows}: {target.name}")
            runs.append(await run_screenpop(target, args, window))
    return bare_runs, gateway_runs


# --- report ------------------------------------------------------------------------------------


def _percentile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return round(ordered[index] * 1000, 2)


def _latencies(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}_ms": _percentile_ms(values, q) for q in (50, 90, 99)} | {
        "max_ms": _percentile_ms(values, 100)
    }


def _side(runs: list[RunResult]) -> dict[str, Any]:
    """One server's figures over all its windows."""
    calls = [c for run in runs for c in run.calls]
    measured = [c for c in calls if c.measured]
    answered = [c for c in measured if c.status == 200 and c.responded is not None]
    popped = [c for c in measured if c.popped is not None]
    failed = Counter(c.error or f"HTTP {c.status}" for c in measured if c not in answered)
    wall = sum(run.seconds for run in runs)
    server_cpu = [run.server_cpu_s for run in runs]
    by_window: dict[int, list[Call]] = defaultdict(list)
    for call in popped:
        by_window[call.window].append(call)
    return {
        "offered_per_s": round(runs[0].rate, 1),
        "calls_measured": len(measured),
        "sent_per_s": _sent_per_s(measured),
        "answered_200_per_s": round(len(answered) / wall, 1),
        "popped_per_s": round(len(popped) / wall, 1),
        "ring_to_pop": _latencies(_ring_to_pop(popped)),
        "ring_to_pop_p99_ms_per_window": [
            _percentile_ms(_ring_to_pop(by_window[n]), 99) for n in sorted(by_window)
        ],
        "ring_to_pop_from_post_call": _latencies(
            [c.popped - c.sent for c in popped if c.popped is not None]
        ),
        "webhook_response": _latencies(
            [c.responded - c.sent for c in answered if c.responded is not None]
        ),
        "pop_before_response": sum(
            1 for c in popped if c.popped is not None and c.responded and c.popped < c.responded
        ),
        "missing_pops": sum(1 for c in measured if c.popped is None),
        "missing_pops_all_phases": sum(1 for c in calls if c.popped is None),
        "pops_wrong_socket": sum(run.pops_wrong_socket for run in runs),
        "pops_duplicate": sum(run.pops_duplicate for run in runs),
        "pops_unknown_call": sum(run.pops_unknown for run in runs),
        "webhook_errors": dict(failed),
        "hangup_errors": dict(sum((run.hangup_errors for run in runs), Counter())),
        "unfinished_requests": sum(run.unfinished_tasks for run in runs),
        "other_ws_messages": dict(sum((run.other_messages for run in runs), Counter())),
        "schedule_lag": _latencies([c.sent - c.scheduled for c in measured]),
        "server_cpu_pct": round(100 * sum(filter(None, server_cpu)) / wall, 1)
        if None not in server_cpu
        else None,
        "loadgen_cpu_pct": round(100 * sum(run.load_cpu_s for run in runs) / wall, 1),
    }


def _ring_to_pop(popped: list[Call]) -> list[float]:
    """From the ring's bytes handed to the socket to its pop received."""
    return [c.popped - c.written for c in popped if c.popped is not None and c.written]


def _sent_per_s(measured: list[Call]) -> float | None:
    """The rate the rings were sent at within the windows (not counting the gaps between)."""
    sent: dict[int, list[float]] = defaultdict(list)
    for call in measured:
        sent[call.window].append(call.sent)
    spans = [max(times) - min(times) for times in sent.values() if len(times) > 1]
    intervals = sum(len(times) - 1 for times in sent.values() if len(times) > 1)
    return round(intervals / sum(spans), 1) if sum(spans) else None


def _ok(side: dict[str, Any]) -> bool:
    return (
        side["missing_pops"] == 0
        and not side["webhook_errors"]
        and not side["hangup_errors"]
        and side["pops_wrong_socket"] == 0
        and side["unfinished_requests"] == 0
    )


def _table(report: dict[str, Any]) -> str:
    gateway, bare, setup, targets = (
        report["gateway"],
        report["bare"],
        report["setup"],
        report["targets"],
    )

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    def dist(lat: dict[str, float | None]) -> str:
        return " / ".join(ms(lat[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))

    def errors(counts: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "0"

    def windows_p99(side: dict[str, Any]) -> str:
        return " ".join(ms(p99) for p99 in side["ring_to_pop_p99_ms_per_window"])

    def rate(side: dict[str, Any]) -> str:
        return (
            f"{side['sent_per_s']} sent, {side['answered_200_per_s']} answered 200, "
            f"{side['popped_per_s']} popped (offered {side['offered_per_s']:g})"
        )

    ratio = report["ratio_p99_gateway_over_bare"]
    rows = [
        ("gateway calls/s", rate(gateway)),
        ("bare calls/s", rate(bare)),
        ("gateway ring-to-pop ms p50/p90/p99/max", dist(gateway["ring_to_pop"])),
        ("bare round trip ms p50/p90/p99/max", dist(bare["ring_to_pop"])),
        ("ratio of p99s gateway/bare", "n/a" if ratio is None else f"{ratio:.2f}"),
        (
            "p99 ms per window gw / bare",
            f"{windows_p99(gateway)} / {windows_p99(bare)}",
        ),
        (
            "from the post() call: p99 ms gw / bare",
            f"{ms(gateway['ring_to_pop_from_post_call']['p99_ms'])} / "
            f"{ms(bare['ring_to_pop_from_post_call']['p99_ms'])} (with the load generator's "
            "own wait before it writes)",
        ),
        (
            "gateway webhook response ms p50/p99",
            f"{ms(gateway['webhook_response']['p50_ms'])} / "
            f"{ms(gateway['webhook_response']['p99_ms'])}",
        ),
        (
            "bare webhook response ms p50/p99",
            f"{ms(bare['webhook_response']['p50_ms'])} / {ms(bare['webhook_response']['p99_ms'])}",
        ),
        (
            "missing pops gateway / bare",
            f"{gateway['missing_pops']} / {bare['missing_pops']} "
            f"(of {gateway['calls_measured']} / {bare['calls_measured']}; wrong socket "
            f"{gateway['pops_wrong_socket']} / {bare['pops_wrong_socket']}, duplicates "
            f"{gateway['pops_duplicate']} / {bare['pops_duplicate']})",
        ),
        (
            "webhook errors gateway / bare",
            f"{errors(gateway['webhook_errors'])} / {errors(bare['webhook_errors'])}",
        ),
        (
            "hang-up errors gateway / bare",
            f"{errors(gateway['hangup_errors'])} / {errors(bare['hangup_errors'])}",
        ),
        (
            "CPU % gateway / bare",
            f"{ms(gateway['server_cpu_pct'])} / {ms(bare['server_cpu_pct'])}",
        ),
        (
            "CPU % loadgen (gateway run / bare run)",
            f"{ms(gateway['loadgen_cpu_pct'])} / {ms(bare['loadgen_cpu_pct'])}",
        ),
        (
            "schedule lag ms p99/max (gw / bare)",
            f"{ms(gateway['schedule_lag']['p99_ms'])}/{ms(gateway['schedule_lag']['max_ms'])}"
            f" / {ms(bare['schedule_lag']['p99_ms'])}/{ms(bare['schedule_lag']['max_ms'])}",
        ),
        (
            f"target p99 < {targets['p99_ms']:g} ms",
            "MET" if targets["p99_met"] else "MISSED",
        ),
        (
            f"target ratio <= {targets['ratio']:g}",
            "MET" if targets["ratio_met"] else "MISSED",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [
        f"bench.screenpop: {setup['rate']:g} calls/s, {setup['seconds']:g} s measured per "
        f"server in {setup['windows']} windows taken in turn (warm-up {setup['warmup_s']:g} s, "
        f"then {setup['window_lead_in_s']:g} s), {setup['agents']} agent sockets, hang-up after "
        f"{setup['hangup_after_s']:g} s, {setup['cpus']} CPUs ({setup['placement']}; load "
        f"average {setup['loadavg_1m_at_start']:g} at start)"
        + (f", gateway under {setup['profiler']}" if setup["profiler"] else ""),
        "-" * (width + 60),
    ]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    if max(gateway["loadgen_cpu_pct"], bare["loadgen_cpu_pct"]) >= 85:
        lines.append(
            "note: the load generator was near one full core; its own delays are in the figures"
        )
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    loadavg = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-screenpop-"))
    env = _env()
    env["SWITCHBOARD_CTI_TOKEN"] = secrets.token_urlsafe(24)
    profile: Path | None = None
    if args.profile:
        suffix = "pyisession" if args.profiler == "pyinstrument" else "pyspy.txt"
        profile = workdir / f"gateway.{suffix}"
    try:
        print(f"bench.screenpop: creating {args.agents} agents...", flush=True)
        began = time.monotonic()
        agents = await _add_agents(workdir, env, args.agents)
        agents_s = time.monotonic() - began
        print(
            f"bench.screenpop: {args.windows} windows of {args.seconds / args.windows:g} s "
            f"per server at {args.rate:g} calls/s, in turn...",
            flush=True,
        )
        split = split_cpus() if args.cpus == "apart" else None
        async with contextlib.AsyncExitStack() as servers:
            with on_cpus(split.servers if split else None):
                bare_target = await servers.enter_async_context(_bare_server(workdir, env, args))
                gateway_target = await servers.enter_async_context(
                    _gateway_server(workdir, env, args, agents, profile)
                )
            with on_cpus(split.load_generator if split else None):
                bare_runs, gateway_runs = await run_alternating(
                    bare_target, gateway_target, args, lambda line: print(f"  {line}", flush=True)
                )
        bare, gateway = _side(bare_runs), _side(gateway_runs)
        gw_p99 = gateway["ring_to_pop"]["p99_ms"]
        bare_p99 = bare["ring_to_pop"]["p99_ms"]
        ratio = round(gw_p99 / bare_p99, 2) if gw_p99 is not None and bare_p99 else None
        report: dict[str, Any] = {
            "setup": {
                "rate": args.rate,
                "seconds": args.seconds,
                "windows": args.windows,
                "warmup_s": args.warmup,
                "window_lead_in_s": min(args.warmup, WINDOW_LEAD_IN_S),
                "agents": args.agents,
                "hangup_after_s": args.hangup_after,
                "connections": args.connections,
                "cpus": os.cpu_count(),
                "placement": split.describe() if split else "left to the system's scheduler",
                "loadavg_1m_at_start": round(loadavg, 2),
                "agents_created_in_s": round(agents_s, 1),
                "python": sys.version.split()[0],
                "profiler": args.profiler if args.profile else None,
                "database": "sqlite (embedded default, fresh file)",
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            "gateway": gateway,
            "bare": bare,
            "ratio_p99_gateway_over_bare": ratio,
            "targets": {
                "p99_ms": args.target_p99_ms,
                "ratio": args.target_ratio,
                "p99_met": gw_p99 is not None
                and gw_p99 < args.target_p99_ms
                and gateway["missing_pops"] == 0,
                "ratio_met": ratio is not None and ratio <= args.target_ratio,
            },
        }
        if profile is not None:
            report["profile"] = _profile.report(
                profile, name="screenpop", profiler=args.profiler, top=args.top
            )
        print()
        print(_table(report))
        out = RESULTS / ("screenpop-profile.json" if args.profile else "screenpop.json")
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwritten: {out.relative_to(REPO)}")
        return 0 if _ok(gateway) and _ok(bare) else 1
    finally:
        if args.keep_temp:
            print(f"temporary directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (
        args.rate <= 0
        or args.seconds <= 0
        or args.warmup < 0
        or not 1 <= args.agents <= 799
        or args.hangup_after < 0
        or args.drain < 0
        or args.connections < 1
        or args.windows < 1
    ):
        print("bench.screenpop: invalid arguments (see --help)", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        print("bench.screenpop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
