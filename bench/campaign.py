"""Campaign throughput: an SMS campaign to 100,000 contacts through the real `twilio` client,
against the Twilio stub's own ceiling measured in the same run; and the gateway's memory, which
must not grow with the audience.

`python -m bench.campaign [--audiences 20000,100000] [--concurrency 32]` (from the repo root):

1. The Twilio REST stub (`tests.stubs.twilio_api`) runs as its own process.
2. Ceiling: a plain aiohttp client posts the same requests to the stub with `--concurrency` in
   flight, before and after the gateway's turns; their mean is the ceiling (`bench.outbox`).
3. For each audience size: a fresh SQLite file with that many contacts (a phone number each),
   `python -m gateway serve` on it, and one campaign (pacing off, no quiet hours) created and
   started through the API. End to end is from the campaign's `started_at` to the last outbox
   `sent_at`: materialising the audience, rendering, consent checks, enqueueing and sending.
   Peak memory is the gateway's VmHWM. Every contact must be sent exactly once (the stub's
   count and the outbox rows are checked).
4. Prints the rates, the ratio to the ceiling (target: at least 0.3) and the peak RSS per
   audience (target: under 300 MB, and flat), and writes bench/results/campaign.json.
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
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench._load import LOOPBACK, ServerProcess, free_port, http_ok, tcp_open, wait_ready
from bench.outbox import (
    RESULTS,
    _ceiling,
    _cpu_seconds,
    _env,
    _peak_rss_mib,
    _stub_count,
    twilio_stub,
)
from gateway.agents import NewAgent, create_agent
from routing.capacity import Capacity
from timeline import store
from timeline.db import Database
from timeline.models import Role

TEMPLATE = {"body": "Hello {{ first_name | default('there') }}, your order ships today."}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.campaign", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--audiences", default="20000,100000", help="contacts per run")
    parser.add_argument("--concurrency", type=int, default=32, help="sends in flight")
    parser.add_argument("--ceiling-messages", type=int, default=20_000)
    return parser


def _number(n: int) -> str:
    return f"+49152{n:08d}"


async def _populate(database_url: str, contacts: int) -> str:
    """The audience and a supervisor; the supervisor's API token."""
    database = Database(database_url)
    try:
        await database.upgrade()
        for start in range(0, contacts, 5000):
            people = [
                (f"Customer {n}", [("phone", _number(n))])
                for n in range(start, min(contacts, start + 5000))
            ]
            await database.run(store.create_contacts, people, tags=["bench"])
        supervisor = NewAgent(
            name="Bench",
            email="bench@example.com",
            password="bench password",
            role=Role.SUPERVISOR,
            capacity=Capacity.parse("1"),
        )
        _agent, token = await database.run(create_agent, supervisor)
        return str(token)
    finally:
        await database.dispose()


def _outcome(db_path: Path, campaign_id: int) -> dict[str, Any]:
    with sqlite3.connect(db_path, timeout=30) as connection:
        (started,) = connection.execute(
            "SELECT started_at FROM campaigns WHERE id = ?", (campaign_id,)
        ).fetchone()
        last, sent = connection.execute(
            "SELECT max(sent_at), count(*) FROM outbox_messages WHERE status = 'sent'"
        ).fetchone()
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(started)).total_seconds()
    return {"span_s": span, "sent_rows": sent}


async def _run_campaign(
    workdir: Path, env: dict[str, str], stub_url: str, contacts: int
) -> dict[str, Any]:
    db_path = workdir / f"campaign-{contacts}.db"
    env = {**env, "SWITCHBOARD_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}"}
    print(f"{contacts}: creating the contacts ...", flush=True)
    token = await _populate(env["SWITCHBOARD_DATABASE_URL"], contacts)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    before = _stub_count(stub_url)
    gateway = ServerProcess(
        f"gateway-{contacts}",
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=workdir,
        env=env,
    )
    try:
        await wait_ready(gateway, http_ok(f"{url}/healthz"))
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            body = {
                "name": f"Bench {contacts}",
                "channel": "sms",
                "filter": {"tags_any": ["bench"]},
                "template": TEMPLATE,
                "pacing": None,
            }
            async with http.post(f"{url}/api/v1/campaigns", json=body) as response:
                campaign_id = (await response.json())["id"]
            cpu_before = _cpu_seconds(gateway.proc.pid)
            async with http.post(f"{url}/api/v1/campaigns/{campaign_id}/start") as response:
                assert response.status == 200, await response.text()
            print(f"{contacts}: sending ...", flush=True)
            counts = await _until_completed(http, url, campaign_id, gateway)
        cpu = _cpu_seconds(gateway.proc.pid) - cpu_before
        peak = _peak_rss_mib(gateway.proc.pid)
    finally:
        gateway.stop()
    outcome = _outcome(db_path, campaign_id)
    return {
        "contacts": contacts,
        "messages_per_s": round(contacts / outcome["span_s"], 1),
        "seconds": round(outcome["span_s"], 1),
        "gateway_peak_rss_mib": round(peak, 1),
        "gateway_cpu_us_per_message": round(cpu / contacts * 1e6),
        "sent_rows": outcome["sent_rows"],
        "stub_received": _stub_count(stub_url) - before,
        "counts": counts,
    }


async def _until_completed(
    http: aiohttp.ClientSession, url: str, campaign_id: int, gateway: ServerProcess
) -> dict[str, Any]:
    shown = time.monotonic()
    while True:
        if not gateway.running:
            raise RuntimeError("the gateway died:\n" + gateway.log_tail())
        async with http.get(f"{url}/api/v1/campaigns/{campaign_id}") as response:
            campaign = await response.json()
        if campaign["status"] == "completed":
            return dict(campaign["counts"])
        if time.monotonic() - shown > 10:
            shown = time.monotonic()
            print(f"  {campaign['counts']['sent']} sent", flush=True)
        await asyncio.sleep(1.0)  # as the campaign page polls


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-campaign-"))
    stub_port = free_port()
    stub_url = f"http://{LOOPBACK}:{stub_port}"
    env = _env(stub_url, args.concurrency)
    stub = twilio_stub(stub_port, workdir, env)
    try:
        await wait_ready(stub, tcp_open(stub_port))
        print(f"ceiling: {args.ceiling_messages} posts from a bare aiohttp client ...", flush=True)
        ceiling_before = await _ceiling(stub_url, args.ceiling_messages, args.concurrency)
        runs = [
            await _run_campaign(workdir, env, stub_url, int(n)) for n in args.audiences.split(",")
        ]
        print("ceiling again ...", flush=True)
        ceiling_after = await _ceiling(stub_url, args.ceiling_messages, args.concurrency)
    finally:
        stub.stop()
    ceiling = (ceiling_before + ceiling_after) / 2
    largest = runs[-1]
    return {
        "concurrency": args.concurrency,
        "ceiling_messages_per_s": round(ceiling, 1),
        "ceiling_before_after": [round(ceiling_before, 1), round(ceiling_after, 1)],
        "runs": runs,
        "ratio": round(largest["messages_per_s"] / ceiling, 3),
        "load_average": list(os.getloadavg()),
    }


def run() -> None:
    args = _parser().parse_args()
    result = asyncio.run(main(args))
    print()
    before, after = result["ceiling_before_after"]
    print(
        f"  stub ceiling (bare aiohttp client): {result['ceiling_messages_per_s']:>9.1f} msg/s"
        f"  (before {before:.0f}, after {after:.0f})"
    )
    exact = True
    for run_ in result["runs"]:
        print(
            f"  campaign to {run_['contacts']:>7} contacts: {run_['messages_per_s']:>9.1f} msg/s"
            f" end to end ({run_['seconds']} s), peak RSS {run_['gateway_peak_rss_mib']:.1f} MiB,"
            f" gateway CPU {run_['gateway_cpu_us_per_message']} µs/msg"
        )
        exact = exact and run_["sent_rows"] == run_["stub_received"] == run_["contacts"]
    print(f"  ratio largest campaign/ceiling:     {result['ratio']:>9.3f}  (target >= 0.3)")
    print(f"  load average: {', '.join(f'{x:.2f}' for x in result['load_average'])}")
    if not exact:
        print("  MISMATCH: every contact must be sent exactly once", file=sys.stderr)
        sys.exit(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "campaign.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run()
