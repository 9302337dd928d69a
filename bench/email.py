"""IMAP intake rate of the gateway against a bare aioimaplib FETCH, measured in the same run.

`python -m bench.email [--messages 5000]` (from the repo root; needs Debian's dovecot-imapd):

1. A throw-away Dovecot (the test suite's `tests.dovecot`) gets `--messages` real-shaped
   messages by APPEND into a staging folder: distinct Message-IDs, senders drawn from a pool,
   every fifth a reply to an earlier one, some with an attachment.
2. Baseline: a bare aioimaplib client SELECTs the staging folder and UID FETCHes every
   message (`BODY.PEEK[]`, in the batch size intake uses), doing nothing with them.
3. Gateway: `python -m gateway serve` runs as its own process on the embedded default (a
   fresh SQLite file), with one mailbox reading the folder `Bench` (IDLE). Once it is up, one
   `UID MOVE` puts every message into `Bench`; the clock runs from that MOVE until every
   message is on a timeline (rows in `timeline_events`, polled read-only).
4. Dovecot tells an idling client of new mail only some time after it came (a fixed delay of
   the server's, 0.5 s), which is not intake work: a bare aioimaplib client in IDLE measures
   it in the same run (a MOVE of one message until its EXISTS, the median of a few), and the
   table shows the intake rate and the ratio both as measured and net of that delay.
5. Checks that every message became exactly one event and was flagged in the mailbox, prints
   a table and writes it as JSON to bench/results/email.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from bench._load import LOOPBACK, ServerProcess, cpu_seconds, free_port, http_ok, wait_ready
from channels.email.imap import FETCH_BATCH
from tests.dovecot import Dovecot

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
STAGING = "Staging"
BENCH = "Bench"
PROBE_STAGING = "ProbeStaging"
PROBE = "Probe"
PROBES = 5
APPEND_CONNECTIONS = 4
MOVE_SLICE = 500


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.email", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--messages", type=int, default=5000, help="messages in the mailbox")
    parser.add_argument("--senders", type=int, default=500, help="distinct sender addresses")
    parser.add_argument("--within", type=float, default=900.0, help="give up after (s)")
    return parser


def _messages(n: int, senders: int, seed: int = 1) -> list[bytes]:
    """Plain-text customer mail; every fifth answers an earlier one, every tenth has a file."""
    rng = random.Random(seed)
    messages = []
    for i in range(n):
        message = EmailMessage()
        message["From"] = f"Customer {i % senders} <customer{i % senders}@bench.example>"
        message["To"] = "support@switchboard.example"
        message["Subject"] = f"Order {10_000 + i}: question"
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = f"<bench-{i}@bench.example>"
        if i % 5 == 4:
            parent = rng.randrange(i)
            message["In-Reply-To"] = f"<bench-{parent}@bench.example>"
            message["References"] = f"<bench-{parent}@bench.example>"
        message.set_content(f"Hello,\n\nwhere is order {10_000 + i}?\n\nThanks\n" * 3)
        if i % 10 == 9:
            message.add_attachment(
                rng.randbytes(2048), maintype="application", subtype="pdf", filename="scan.pdf"
            )
        messages.append(message.as_bytes())
    return messages


async def _append(dovecot: Dovecot, messages: list[bytes], folder: str) -> None:
    """APPEND over a few connections at once; order does not matter for the benchmark."""
    chunks = [messages[i::APPEND_CONNECTIONS] for i in range(APPEND_CONNECTIONS)]
    await asyncio.gather(*(dovecot.append(chunk, folder=folder) for chunk in chunks))


async def _bare_fetch(dovecot: Dovecot, folder: str) -> dict[str, Any]:
    """What IMAP alone costs: SELECT, SEARCH, FETCH every message in intake's batch size."""
    client = await dovecot.connect()
    try:
        started = time.perf_counter()
        await client.select(folder)
        found = await client.uid_search("ALL")
        uids = [int(u) for u in bytes(found.lines[0]).split()]
        fetched_bytes = messages = 0
        for start in range(0, len(uids), FETCH_BATCH):
            batch = ",".join(map(str, uids[start : start + FETCH_BATCH]))
            response = await client.uid("fetch", batch, "(UID BODY.PEEK[])")
            literals = [line for line in response.lines if isinstance(line, bytearray)]
            messages += len(literals)
            fetched_bytes += sum(len(x) for x in literals)
        seconds = time.perf_counter() - started
    finally:
        await client.logout()
    return {"messages": messages, "bytes": fetched_bytes, "seconds": seconds}


async def _idle_delay(dovecot: Dovecot, trials: int) -> float:
    """Seconds from a MOVE of one message until an idling client hears of it (the median of
    `trials`): the server's own delay, which the gateway waits out as any IDLE client does."""
    watcher, mover = await dovecot.connect(), await dovecot.connect()
    delays = []
    try:
        await watcher.select(PROBE)
        await mover.select(PROBE_STAGING)
        for uid in range(1, trials + 1):
            idle = await watcher.idle_start(timeout=10)
            started = time.perf_counter()
            await mover.uid("move", str(uid), PROBE)
            while not any(b"EXISTS" in bytes(line) for line in await watcher.wait_server_push()):
                pass
            delays.append(time.perf_counter() - started)
            watcher.idle_done()
            await asyncio.wait_for(idle, 10)
    finally:
        await watcher.logout()
        await mover.logout()
    return statistics.median(delays)


def _env(workdir: Path, dovecot: Dovecot) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    mailbox = {
        "name": "bench",
        "host": dovecot.host,
        "port": dovecot.port,
        "tls": False,
        "username": dovecot.user,
        "password": dovecot.password,
        "folder": BENCH,
        "address": "support@switchboard.example",
    }
    env.update(
        SWITCHBOARD_LOG_LEVEL="WARNING",
        SWITCHBOARD_MAILBOXES=json.dumps([mailbox]),
        SWITCHBOARD_DATA_DIR=str(workdir / "data"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    return env


def _stored(database: Path) -> int:
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return 0
    try:
        query = "SELECT count(*) FROM timeline_events WHERE channel = 'email'"
        return int(connection.execute(query).fetchone()[0])
    except sqlite3.Error:  # not migrated yet, or busy for a moment
        return 0
    finally:
        connection.close()


async def _gateway_intake(dovecot: Dovecot, workdir: Path, n: int, within: float) -> dict[str, Any]:
    port = free_port()
    gateway = ServerProcess(
        "gateway",
        [sys.executable, "-m", "gateway", "serve", "--host", LOOPBACK, "--port", str(port)],
        cwd=workdir,
        env=_env(workdir, dovecot),
    )
    database = workdir / "switchboard.db"
    try:
        await wait_ready(gateway, http_ok(f"http://{LOOPBACK}:{port}/healthz"), within=120)
        await asyncio.sleep(1.0)  # the mailbox worker logs in and starts its IDLE
        client = await dovecot.connect()
        try:
            await client.select(STAGING)
            cpu_before = _cpu(gateway.proc.pid)
            started = time.perf_counter()
            # In slices: aioimaplib parses a response recursively, line by line, and a few
            # thousand EXPUNGE lines in one answer exceed Python's recursion limit.
            for first in range(1, n + 1, MOVE_SLICE):
                await client.uid("move", f"{first}:{first + MOVE_SLICE - 1}", BENCH)
        finally:
            await client.logout()
        stored = 0
        while stored < n and time.perf_counter() - started < within:
            await asyncio.sleep(0.02)  # the end is known to 20 ms
            stored = await asyncio.to_thread(_stored, database)
        seconds = time.perf_counter() - started
        cpu_after = _cpu(gateway.proc.pid)
        await asyncio.sleep(1.0)  # the last batch's flags, after its commit
    finally:
        gateway.stop(signal.SIGTERM, timeout=30)
    cpu = {part: round(cpu_after[part] - cpu_before[part], 2) for part in cpu_after}
    return {"messages": stored, "seconds": seconds, "cpu_seconds": cpu, **_check(database, n)}


def _cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of the gateway's own process and of its children (the parsers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return {
        "gateway": cpu_seconds(pid) or 0.0,
        "children": sum(cpu_seconds(int(child)) or 0.0 for child in children),
    }


def _check(database: Path, n: int) -> dict[str, Any]:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        events, distinct = connection.execute(
            "SELECT count(*), count(DISTINCT external_id) FROM timeline_events "
            "WHERE channel = 'email'"
        ).fetchone()
        tickets = connection.execute("SELECT count(*) FROM tickets").fetchone()[0]
        journal = dict(
            connection.execute("SELECT status, count(*) FROM inbound_journal GROUP BY status")
        )
    finally:
        connection.close()
    return {
        "ok": events == distinct == n,
        "events": events,
        "distinct_message_ids": distinct,
        "tickets": tickets,
        "journal_by_status": journal,
    }


def _table(report: dict[str, Any]) -> str:
    bare, gateway = report["bare"], report["gateway"]
    rows = [
        ("gateway intake messages/s (MOVE → on timelines)", f"{gateway['per_s']:.1f}"),
        ("bare aioimaplib FETCH messages/s", f"{bare['per_s']:.1f}"),
        ("ratio gateway/bare, as measured", f"{report['ratio_gateway_over_bare']:.3f}"),
        ("Dovecot's IDLE notification delay s (bare client)", f"{report['idle_delay_s']:.3f}"),
        ("gateway intake messages/s net of that delay", f"{gateway['net_per_s']:.1f}"),
        ("ratio gateway/bare net of it (target ≥ 0.3)", f"{report['ratio_net']:.3f}"),
        ("gateway seconds / bare seconds", f"{gateway['seconds']:.2f} / {bare['seconds']:.2f}"),
        (
            "gateway CPU seconds: own process / parser processes",
            f"{gateway['cpu_seconds']['gateway']:.2f} / {gateway['cpu_seconds']['children']:.2f}",
        ),
        (
            "check (one event per message)",
            f"{'PASS' if gateway['ok'] else 'FAIL'}: {gateway['events']} events, "
            f"{gateway['distinct_message_ids']} Message-IDs, {gateway['tickets']} tickets, "
            f"{gateway['flagged']} flagged in the mailbox",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    setup = report["setup"]
    head = (
        f"bench.email: {setup['messages']} messages ({setup['megabytes']:.1f} MB), "
        f"{setup['senders']} senders, {setup['cpus']} CPUs "
        f"(load average {setup['loadavg_1m_at_start']:g} at start)"
    )
    return "\n".join([head, "-" * (width + 30), *(f"{k:<{width}}  {v}" for k, v in rows)])


async def _main(args: argparse.Namespace) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    loadavg = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-email-"))
    messages = _messages(args.messages, args.senders)
    dovecot = Dovecot.start()
    try:
        for folder in (STAGING, BENCH, PROBE_STAGING, PROBE):
            await dovecot.command("CREATE", folder)
        print(f"appending {len(messages)} messages …", file=sys.stderr)
        await _append(dovecot, messages, STAGING)
        await dovecot.append(messages[:PROBES], folder=PROBE_STAGING)
        idle_delay = await _idle_delay(dovecot, PROBES)
        bare = await _bare_fetch(dovecot, STAGING)
        gateway = await _gateway_intake(dovecot, workdir, len(messages), args.within)
        gateway["flagged"] = len(await dovecot.uids(BENCH, "SEEN"))
    finally:
        dovecot.stop()
    bare["per_s"] = bare["messages"] / bare["seconds"]
    gateway["per_s"] = gateway["messages"] / gateway["seconds"]
    gateway["net_per_s"] = gateway["messages"] / (gateway["seconds"] - idle_delay)
    gateway["ok"] = gateway["ok"] and gateway["flagged"] == len(messages)
    report = {
        "setup": {
            "messages": len(messages),
            "megabytes": sum(map(len, messages)) / 1e6,
            "senders": args.senders,
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": round(loadavg, 2),
            "fetch_batch": FETCH_BATCH,
        },
        "bare": bare,
        "gateway": gateway,
        "ratio_gateway_over_bare": gateway["per_s"] / bare["per_s"],
        "idle_delay_s": idle_delay,
        "ratio_net": gateway["net_per_s"] / bare["per_s"],
    }
    (RESULTS / "email.json").write_text(json.dumps(report, indent=2, default=str))
    print(_table(report))
    return 0 if gateway["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(_parser().parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
