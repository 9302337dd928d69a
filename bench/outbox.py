"""Outbox throughput: queued SMS sent through the real `twilio` client, against the stub's own
ceiling measured in the same run.

`python -m bench.outbox [--messages 20000] [--concurrency 32]` (from the repo root):

1. The Twilio REST stub (`tests.stubs.twilio_api`) runs as its own process.
2. Ceiling: a plain aiohttp client in this process posts the same requests (Basic auth, form
   `To`/`From`/`Body`/`StatusCallback` to `Messages.json`) with `--concurrency` in flight,
   once before and once after the gateway's turn; their mean is the ceiling (on a shared
   machine the load drifts during a run).
3. Gateway: `--messages` SMS are queued straight into a fresh SQLite file (as replies queue
   them: an outbound timeline event and an outbox row each), then `python -m gateway serve`
   starts on it with the same concurrency and rate limits off, and sends them all. Its rate is
   messages over the span between the first and the last `sent_at`; its peak memory is the
   process's VmHWM. Every row must end `sent`, exactly once (the stub's count is checked).
4. Prints both rates and the ratio (target: at least 0.3), and writes bench/results/outbox.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench._load import (
    LOOPBACK,
    ServerProcess,
    cpu_seconds,
    free_port,
    http_ok,
    tcp_open,
    wait_ready,
)
from channels.sending import Reply, Thread
from channels.twilio_sms import SmsAccount, TwilioSmsSender
from timeline import outbox
from timeline.db import Database
from timeline.outbox import NewOutbound

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "0" * 32
OUR_NUMBER = "+4930555716000"
STATUS_CALLBACK = "https://switchboard.example.com/webhooks/twilio/sms/status"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.outbox", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32, help="sends in flight")
    return parser


def _env(stub_url: str, concurrency: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        SWITCHBOARD_LOG_LEVEL="WARNING",
        SWITCHBOARD_PUBLIC_URL="https://switchboard.example.com",
        SWITCHBOARD_TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        SWITCHBOARD_TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        SWITCHBOARD_TWILIO_API_URL=stub_url,
        SWITCHBOARD_TWILIO_SMS_FROM=OUR_NUMBER,
        SWITCHBOARD_OUTBOX_CONCURRENCY=str(concurrency),
        SWITCHBOARD_OUTBOX_POLL_SECONDS="0.5",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    return env


def _recipient(n: int) -> str:
    return f"+49151{n % 10_000_000:08d}"


async def _ceiling(stub_url: str, messages: int, concurrency: int) -> float:
    """Messages/s of a bare aiohttp client posting the same requests to the stub."""
    url = f"{stub_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    auth = {"Authorization": aiohttp.encode_basic_auth(ACCOUNT_SID, AUTH_TOKEN)}
    numbers = iter(range(messages))

    async def worker(http: aiohttp.ClientSession) -> None:
        for n in numbers:
            form = {
                "To": _recipient(n),
                "From": OUR_NUMBER,
                "Body": f"Bench reply {n}",
                "StatusCallback": STATUS_CALLBACK,
            }
            async with http.post(url, data=form, headers=auth) as response:
                if response.status != 201:
                    raise RuntimeError(f"stub answered {response.status}")
                await response.read()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        return messages / (time.perf_counter() - started)


async def _queue(database_url: str, messages: int) -> None:
    """The messages as replies leave them: an outbound event and a queued outbox row each."""
    sender = TwilioSmsSender(SmsAccount(ACCOUNT_SID, AUTH_TOKEN, from_number=OUR_NUMBER))
    database = Database(database_url)
    await database.upgrade()

    def queue_all(session: Any, numbers: range) -> None:
        for n in numbers:
            draft = sender.draft(Reply(_recipient(n), f"Bench reply {n}"), Thread(None))
            outbox.enqueue(
                session,
                NewOutbound(
                    channel="sms",
                    idempotency_key=f"bench:{n}",
                    recipient=_recipient(n),
                    sender=draft.sender,
                    payload=draft.payload,
                    external_id=draft.external_id,
                    ticket_id=None,
                    contact_id=None,
                    text=draft.text,
                ),
            )

    try:
        for start in range(0, messages, 2000):
            await database.run(queue_all, range(start, min(messages, start + 2000)))
    finally:
        await database.dispose()


def _progress(db_path: Path) -> tuple[int, int]:
    """(rows sent, rows still queued or sending)."""
    with sqlite3.connect(db_path, timeout=30) as connection:
        rows = dict(
            connection.execute("SELECT status, count(*) FROM outbox_messages GROUP BY status")
        )
    return rows.get("sent", 0), rows.get("queued", 0) + rows.get("sending", 0)


def _sent_span(db_path: Path) -> float:
    with sqlite3.connect(db_path, timeout=30) as connection:
        first, last = connection.execute(
            "SELECT min(sent_at), max(sent_at) FROM outbox_messages"
        ).fetchone()
    return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """The process's CPU time so far, all its threads, user and system: per message, a
    figure that other work on the machine hardly moves, unlike a rate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stub_count(stub_url: str) -> int:
    with urllib.request.urlopen(f"{stub_url}/_count", timeout=10) as response:
        return int(json.loads(response.read())["messages"])


def twilio_stub(port: int, workdir: Path, env: dict[str, str]) -> ServerProcess:
    """The Twilio REST stub as its own process, so its work is not counted as ours."""
    return ServerProcess(
        "twilio-stub",
        [sys.executable, "-m", "tests.stubs.twilio_api", "--port", str(port),
         "--account-sid", ACCOUNT_SID, "--auth-token", AUTH_TOKEN],
        cwd=workdir,
        env=env,
    )  # fmt: skip


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    stub_port, gateway_port = free_port(), free_port()
    stub_url = f"http://{LOOPBACK}:{stub_port}"
    env = _env(stub_url, args.concurrency)
    stub = twilio_stub(stub_port, workdir, env)
    try:
        await wait_ready(stub, tcp_open(stub_port))
        print(f"ceiling: {args.messages} posts from a bare aiohttp client ...", flush=True)
        ceiling_before = await _ceiling(stub_url, args.messages, args.concurrency)
        db_path = workdir / "switchboard.db"
        env["SWITCHBOARD_DATABASE_URL"] = f"sqlite+aiosqlite:///{db_path}"
        print(f"queueing {args.messages} SMS ...", flush=True)
        await _queue(env["SWITCHBOARD_DATABASE_URL"], args.messages)
        before = _stub_count(stub_url)
        gateway = ServerProcess(
            "gateway",
            [sys.executable, "-m", "gateway", "serve", "--port", str(gateway_port)],
            cwd=workdir,
            env=env,
        )
        try:
            await wait_ready(gateway, http_ok(f"http://{LOOPBACK}:{gateway_port}/healthz"))
            print("gateway sending ...", flush=True)
            cpu_before, wall_before = cpu_seconds(gateway.proc.pid), time.perf_counter()
            while (progress := await asyncio.to_thread(_progress, db_path))[1] > 0:
                if not gateway.running:
                    raise RuntimeError("the gateway died:\n" + gateway.log_tail())
                await asyncio.sleep(0.5)
            peak_mib = _peak_rss_mib(gateway.proc.pid)
            cpu_after, wall = cpu_seconds(gateway.proc.pid), time.perf_counter() - wall_before
            busy = (cpu_after or 0.0) - (cpu_before or 0.0)
        finally:
            gateway.stop()
        sent, _ = progress
        received = _stub_count(stub_url) - before
        rate = sent / _sent_span(db_path)
        print("ceiling again ...", flush=True)
        ceiling_after = await _ceiling(stub_url, args.messages, args.concurrency)
    finally:
        stub.stop()
    result = {
        "messages": args.messages,
        "concurrency": args.concurrency,
        "ceiling_messages_per_s": round((ceiling_before + ceiling_after) / 2, 1),
        "ceiling_before_after": [round(ceiling_before, 1), round(ceiling_after, 1)],
        "gateway_messages_per_s": round(rate, 1),
        "ratio": round(rate / ((ceiling_before + ceiling_after) / 2), 3),
        "gateway_peak_rss_mib": round(peak_mib, 1),
        # Share of one core the gateway used while sending: near 1.0 means CPU-bound.
        "gateway_cpu_share": round(busy / wall, 2),
        "sent_rows": sent,
        "stub_received": received,
    }
    return result


def run() -> None:
    args = _parser().parse_args()
    result = asyncio.run(main(args))
    print()
    before, after = result["ceiling_before_after"]
    print(
        f"  stub ceiling (bare aiohttp client): {result['ceiling_messages_per_s']:>9.1f} msg/s"
        f"  (before {before:.0f}, after {after:.0f})"
    )
    print(f"  gateway outbox (twilio client):     {result['gateway_messages_per_s']:>9.1f} msg/s")
    print(f"  ratio gateway/ceiling:              {result['ratio']:>9.3f}  (target >= 0.3)")
    print(f"  gateway peak RSS:                   {result['gateway_peak_rss_mib']:>9.1f} MiB")
    print(f"  gateway CPU while sending:          {result['gateway_cpu_share']:>9.2f} cores")
    print(f"  rows sent {result['sent_rows']}, requests the stub took {result['stub_received']}")
    if result["sent_rows"] != result["messages"] or result["stub_received"] != result["messages"]:
        print("  MISMATCH: every queued message must be sent exactly once", file=sys.stderr)
        sys.exit(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "outbox.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run()
