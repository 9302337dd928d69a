"""Helpers for `bench.ingest`: server subprocesses and a closed-loop HTTP load generator.

Everything here is bounded in time and talks to loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

LOOPBACK = "127.0.0.1"
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class CpuSplit:
    """The CPUs the servers under test get and the one the load generator keeps to."""

    servers: frozenset[int]
    load_generator: frozenset[int]

    def describe(self) -> str:
        servers, load = _cpus(self.servers), _cpus(self.load_generator)
        return f"load generator on CPU {load}, servers on {servers}"


def split_cpus() -> CpuSplit | None:
    """The last CPU this process may use for the load generator, the others for the servers;
    None where there are fewer than two or the system cannot bind processes.

    As if the load sent from another machine: left to the scheduler, a load generator woken
    by a server's reply is often put on that server's CPU, and then takes turns with it."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        return None
    last = max(allowed)
    return CpuSplit(frozenset(allowed - {last}), frozenset({last}))


@contextlib.contextmanager
def on_cpus(cpus: frozenset[int] | None) -> Iterator[None]:
    """The calling thread on `cpus` meanwhile (None: as it is), and so every process it starts
    meanwhile for good; then on the CPUs it had."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server started as its own process group, with its output in a log file.

    The process group lets a profiler wrapper (py-spy) and the server it launched be signalled
    together; `stop` always ends with SIGKILL if the polite signal is not enough.
    """

    def __init__(self, name: str, argv: Sequence[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = cwd / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def send(self, signum: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Send `signum`, wait up to `timeout` s, then SIGKILL; returns the exit code."""
        try:
            if self.running:
                self.send(signum)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.send(signal.SIGKILL)
                    self.proc.wait(timeout=10)
            # Whatever the leader did, leave nothing of the group behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.returncode
        finally:
            self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def server_pid(self, timeout: float = 10.0) -> int:
        """The pid that runs the server: the leader itself, or the child of a profiler wrapper."""
        if Path(self.argv[0]).name != "py-spy":
            return self.proc.pid
        deadline = time.monotonic() + timeout
        children_file = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while time.monotonic() < deadline:
            try:
                children = children_file.read_text().split()
            except OSError:
                children = []
            if children:
                return int(children[0])
            time.sleep(0.05)
        return self.proc.pid


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), from /proc; None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def wait_ready(
    server: ServerProcess, probe: Callable[[], bool], within: float = 60.0
) -> None:
    """Poll `probe` (blocking, short) until it is true; fail early if the server exits."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not server.running:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode} before it was ready:\n"
                + server.log_tail()
            )
        if await asyncio.to_thread(probe):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.name} was not ready within {within:.0f} s:\n{server.log_tail()}")


def http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return probe


def tcp_open(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return True
        except OSError:
            return False

    return probe


class Bodies:
    """Inbound SMS bodies: unique external ids, senders drawn from a fixed pool of numbers."""

    def __init__(self, run_id: str, senders: int, seed: int = 1) -> None:
        import random

        self._run_id = run_id
        self._random = random.Random(seed)
        # Valid German mobile numbers (+49 151 …), so each is a real phone identity on ingest.
        self._senders = [f"+49151{12_340_000 + i:08d}" for i in range(senders)]
        self._counter = itertools.count(1)

    def next(self) -> tuple[str, bytes]:
        external_id = f"bench-{self._run_id}-{next(self._counter)}"
        body = {
            "channel": "sms",
            "from": self._random.choice(self._senders),
            "to": "+4930123456",
            "external_id": external_id,
            "body": "Hello, my order has not arrived yet. Could you please check? Thanks!",
        }
        return external_id, json.dumps(body).encode()


@dataclass
class LoadResult:
    concurrency: int
    warmup_s: float
    seconds: float
    success_status: int
    measured_ok: int = 0
    warmup_ok: int = 0
    tail_ok: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    warmup_errors: Counter[str] = field(default_factory=Counter)
    # Every success, in any phase: (external_id, response body), for the commit check.
    accepted: list[tuple[str, bytes]] = field(default_factory=list)
    load_cpu_s: float = 0.0
    server_cpu_s: float | None = None

    @property
    def total_ok(self) -> int:
        return self.warmup_ok + self.measured_ok + self.tail_ok

    @property
    def rate(self) -> float:
        return self.measured_ok / self.seconds

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index] * 1000


async def run_load(
    url: str,
    bodies: Bodies,
    *,
    concurrency: int,
    warmup: float,
    seconds: float,
    success_status: int,
    headers: dict[str, str] | None = None,
    server_pid: int | None = None,
    request_timeout: float = 30.0,
) -> LoadResult:
    """`concurrency` workers post back to back for `warmup` + `seconds`; only the latter counts.

    A response is counted in the phase in which it completed; responses still in flight when
    the measured window closes are awaited (for the commit check) but not counted as throughput.
    """
    result = LoadResult(concurrency, warmup, seconds, success_status)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={**_JSON, **(headers or {})}
    ) as session:
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds
        cpu_marks: dict[str, tuple[float, float | None]] = {}

        def mark(name: str) -> None:
            cpu_marks[name] = (
                time.process_time(),
                cpu_seconds(server_pid) if server_pid else None,
            )

        async def marker() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            mark("from")
            await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
            mark("to")

        async def worker() -> None:
            while (sent := time.perf_counter()) < stop_at:
                external_id, data = bodies.next()
                try:
                    async with session.post(url, data=data) as response:
                        payload = await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError, OSError) as error:
                    outcome: str | None = type(error).__name__
                    payload, status = b"", 0
                else:
                    outcome = None if status == success_status else f"HTTP {status}"
                done = time.perf_counter()
                if outcome is None:
                    result.accepted.append((external_id, payload))
                    if done < measure_from:
                        result.warmup_ok += 1
                    elif done <= stop_at:
                        result.measured_ok += 1
                        result.latencies.append(done - sent)
                    else:
                        result.tail_ok += 1
                else:
                    (result.warmup_errors if done < measure_from else result.errors)[outcome] += 1
                    if status == 0:
                        await asyncio.sleep(0.05)  # a dead server must not turn this into a spin

        marking = asyncio.create_task(marker())
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            await marking
        finally:
            marking.cancel()
    load_from, server_from = cpu_marks["from"]
    load_to, server_to = cpu_marks["to"]
    result.load_cpu_s = load_to - load_from
    if server_from is not None and server_to is not None:
        result.server_cpu_s = server_to - server_from
    return result
