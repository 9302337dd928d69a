"""One routing decision on a large centre in PostgreSQL: rule match, agent choice, reservation.

`python -m bench.routing [--agents 10000] [--queues 200] [--contacts 1000000] [--decisions 2000]
[--warmup 200] [--pending 100]`
(from the repo root; PostgreSQL at `--postgres`, default the test server 127.0.0.1:5432):

1. A fresh database `switchboard_bench_routing_<pid>` (dropped at the end) gets the schema,
   `--contacts` contacts and as many resolved tickets with their accepted offers (generated
   in SQL), `--queues` queues (each asking for its own skill, offers with a timeout,
   strategies in turn) with one keyword rule each, and `--agents` available agents with two
   skills each and capacity 5; then VACUUM ANALYZE and a CHECKPOINT.
2. After `--warmup` untimed decisions, each decision is one transaction like the ingest
   path's: the shared routing lock and a new ticket of a random contact about a random
   queue's keyword, then the measured part — the rules pick the queue, and
   `enter_and_route` places the ticket as the ingest path does, in one statement: the
   ticket enters its queue, locked, with who declined it and its contact's sticky agent,
   the qualified agents are read with their load and row versions, one is chosen, claimed
   (still available and unchanged, locked) and reserved (the offer, its expiry timer, the
   agent's last offer time) — then the commit. Agents answer: once `--pending` offers are
   open, each new one is followed (untimed, its own transaction, as the console's accept) by
   the oldest being accepted, so the open offers stay at a centre's steady state rather than
   piling up.
3. Prints p50/p90/p99/max of the decision and of the whole transaction and the load average
   of the machine before and after, and writes them to bench/results/routing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.orm import Session

from routing.assignment import (
    OfferMade,
    RouteRequest,
    accept,
    enter_and_route,
    exclusive,
    shared,
)
from routing.config import RoutingConfig, load_config, replace_rules, save_queue
from routing.queues import QueueConfig
from routing.rules import Facts, Rule, choose_queue
from timeline import store
from timeline.db import Database
from timeline.models import Ticket, utcnow

RESULTS = Path(__file__).resolve().parent / "results"
# Its own database per run (by process id), dropped at the end: two runs at once on one
# server no longer drop each other's.
DATABASE = f"switchboard_bench_routing_{os.getpid()}"
STRATEGIES = ("longest_idle", "least_occupied", "round_robin")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.routing")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--queues", type=int, default=200)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--decisions", type=int, default=2_000)
    parser.add_argument("--warmup", type=int, default=200, help="decisions not timed first")
    parser.add_argument("--pending", type=int, default=100, help="offers open at a time")
    return parser


async def _fresh_database(admin_dsn: str) -> str:
    await _drop_database(admin_dsn)  # a pid reused from a run that died before its end
    await _on_server(admin_dsn, f'CREATE DATABASE "{DATABASE}"')
    base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{DATABASE}"


async def _drop_database(admin_dsn: str) -> None:
    await _on_server(admin_dsn, f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


async def _on_server(admin_dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _settle(admin_dsn: str) -> None:
    """After two million rows went in: vacuum, analyse and checkpoint now, so that the
    database's own catching up (autovacuum, a checkpoint) does not run during the timing."""
    connection = await asyncpg.connect(f"{admin_dsn.rsplit('/', 1)[0]}/{DATABASE}")
    try:
        await connection.execute("VACUUM ANALYZE")
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


def _populate(session: Session, args: argparse.Namespace) -> None:
    """Bulk rows in SQL (a million contacts in seconds), queues and rules through the store."""
    now = utcnow()
    session.execute(
        text(
            "INSERT INTO contacts (name, tags, attributes, created_at) "
            "SELECT 'Customer ' || g, '[]', '{}', now() FROM generate_series(1, :n) g"
        ),
        {"n": args.contacts},
    )
    session.execute(
        text(
            "INSERT INTO tickets (number, contact_id, status, priority, queue, channel, "
            "created_at, updated_at, resolved_at) "
            "SELECT 10000 + g, g, 'resolved', 'normal', 'q' || (g % :queues), 'sms', "
            "now(), now(), now() FROM generate_series(1, :n) g"
        ),
        {"n": args.contacts, "queues": args.queues},
    )
    session.execute(
        text(
            "INSERT INTO agents (name, email, password_hash, role, skills, capacity, presence, "
            "presence_since, missed_offers, last_acked_pop_id, created_at) "
            "SELECT 'Agent ' || g, 'agent' || g || '@example.com', '-', 'agent', '[]', "
            "'{\"total\": 5}', 'available', now() - g * interval '1 second', 0, 0, now() "
            "FROM generate_series(1, :n) g"
        ),
        {"n": args.agents},
    )
    # The history a centre of this size has: every resolved ticket was once offered.
    session.execute(
        text(
            "INSERT INTO offers (ticket_id, agent_id, queue, channel, status, created_at, "
            "expires_at, decided_at) "
            "SELECT g, 1 + g % :agents, 'q' || (g % :queues), 'sms', 'accepted', now(), now(), "
            "now() FROM generate_series(1, :n) g"
        ),
        {"n": args.contacts, "agents": args.agents, "queues": args.queues},
    )
    session.execute(
        text(
            "INSERT INTO agent_skills (agent_id, skill, level) "
            "SELECT g, 's' || (g % :queues), 1 + g % 3 FROM generate_series(1, :n) g "
            "UNION ALL SELECT g, 's' || ((g * 7 + 3) % :queues), 2 FROM generate_series(1, :n) g "
            "ON CONFLICT DO NOTHING"
        ),
        {"n": args.agents, "queues": args.queues},
    )
    for q in range(args.queues):
        queue = QueueConfig.parse(
            {"name": f"q{q}", "skills": {f"s{q}": 1}, "offer_timeout_seconds": 30,
             "strategy": STRATEGIES[q % 3], "sticky_seconds": 3600 if q % 2 else 0}
        )  # fmt: skip
        save_queue(session, queue, now)
    rules = [Rule.parse({"queue": f"q{q}", "when": {"keywords": [f"topic-{q:03d}"]}})
             for q in range(args.queues)]  # fmt: skip
    replace_rules(session, rules, now)
    session.execute(text("ANALYZE"))


def _decide(
    session: Session, config: RoutingConfig, contact: int, topic: int
) -> tuple[float, list[OfferMade]]:
    """One ticket, then the measured decision; (seconds, the offers made)."""
    now = utcnow()
    shared(session)
    (ticket_id,) = store.insert_rows(
        session,
        Ticket,
        [{"contact_id": contact, "channel": "sms", "queue": "default", "created_at": now,
          "updated_at": now}],
    )  # fmt: skip
    started = time.perf_counter()
    facts = Facts("sms", subject="Question", body=f"about topic-{topic:03d} please")
    queue = choose_queue(config.rules, facts, config.queues, now)
    request = RouteRequest(ticket_id, "sms", queue, contact)
    routed = enter_and_route(session, config, [request], now)
    return time.perf_counter() - started, routed.offers


def _answer(session: Session, config: RoutingConfig, offer: OfferMade) -> None:
    """The agent accepts, as `Dispatcher.accept` does it."""
    exclusive(session)
    accept(session, config, offer.id, offer.agent_id, utcnow())


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1] * 1000}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    url = await _fresh_database(args.postgres)
    database = Database(url)
    try:
        await database.upgrade()
        print(f"bench.routing: {args.contacts} contacts, {args.agents} agents, "
              f"{args.queues} queues...", flush=True)  # fmt: skip
        await database.run(_populate, args)
        await _settle(args.postgres)
        config = await database.read(load_config)
        rng = random.Random(6)
        decisions: list[float] = []
        transactions: list[float] = []
        reserved = 0
        pending: deque[OfferMade] = deque()
        for n in range(args.warmup + args.decisions):
            contact, topic = rng.randint(1, args.contacts), rng.randrange(args.queues)
            started = time.perf_counter()
            seconds, offers = await database.run(_decide, config, contact, topic)
            if n >= args.warmup:
                transactions.append(time.perf_counter() - started)
                decisions.append(seconds)
                reserved += len(offers)
            pending.extend(offers)
            while len(pending) > args.pending:
                await database.run(_answer, config, pending.popleft())
    finally:
        await database.dispose()
        await _drop_database(args.postgres)
    result = {
        "agents": args.agents,
        "queues": args.queues,
        "contacts": args.contacts,
        "decisions": args.decisions,
        "pending_offers": args.pending,
        "reserved": reserved,
        "decision_ms": _percentiles(decisions),
        "transaction_ms": _percentiles(transactions),
        "mean_decision_ms": statistics.fmean(decisions) * 1000,
        "load_average": [load_before, os.getloadavg()[0]],  # other work on the machine
    }
    return result


def _report(result: dict[str, Any]) -> None:
    d, t = result["decision_ms"], result["transaction_ms"]
    print(f"decisions (reserved)                  {result['decisions']} ({result['reserved']})")
    print(f"decision ms p50/p90/p99/max           {d['p50']:.2f} / {d['p90']:.2f} / "
          f"{d['p99']:.2f} / {d['max']:.2f}")  # fmt: skip
    print(f"transaction ms p50/p90/p99/max        {t['p50']:.2f} / {t['p90']:.2f} / "
          f"{t['p99']:.2f} / {t['max']:.2f}")  # fmt: skip
    print(f"target p99 decision < 2 ms            {'MET' if d['p99'] < 2 else 'MISSED'}")
    print("load average before/after             {:.2f} / {:.2f}".format(*result["load_average"]))


if __name__ == "__main__":
    outcome = asyncio.run(main(_parser().parse_args()))
    _report(outcome)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "routing.json").write_text(json.dumps(outcome, indent=2), encoding="utf-8")
