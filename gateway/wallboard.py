"""The wallboard's history: each queue sampled once a minute, for the charts of the last hours.

The live figures come from the routing engine's counters (`GET /api/v1/queues`); a chart of
the last hours needs what they were then, which counters alone do not keep. A sampler in
every gateway process writes one row per queue and minute; rows are keyed by (queue,
minute), so with several processes the first one's sample stands and the others' are
dropped. Samples older than `KEEP` are deleted as new ones come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway.api import authenticate, query_int
from gateway.keys import DATABASE
from gateway.routing_api import SUPERVISING, queue_figures
from gateway.serialize import iso
from timeline.models import QueueSample, utcnow

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

SAMPLE_EVERY = timedelta(minutes=1)
KEEP = timedelta(days=2)
DEFAULT_HOURS = 8


@routes.get("/api/v1/queue-history")
async def queue_history(request: web.Request) -> web.Response:
    """`?hours=8`: per queue, the samples since then, oldest first."""
    (await authenticate(request)).require(*SUPERVISING)
    hours = query_int(request, "hours", DEFAULT_HOURS, int(KEEP.total_seconds() // 3600))
    since = utcnow() - timedelta(hours=hours or DEFAULT_HOURS)
    history = await request.app[DATABASE].read(samples_since, since)
    return web.json_response({"queues": history})


def samples_since(session: Session, since: datetime) -> dict[str, list[dict[str, Any]]]:
    rows = session.execute(
        select(QueueSample).where(QueueSample.at >= since).order_by(QueueSample.at)
    ).scalars()
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        history[row.queue].append(
            {
                "at": iso(row.at),
                "waiting": row.waiting,
                "longest_wait_seconds": row.longest_wait_seconds,
                "service_level": row.service_level,
            }
        )
    return history


def take_sample(session: Session, now: datetime) -> int:
    """One row per queue for the minute of `now`; how many were new."""
    minute = now.replace(second=0, microsecond=0)
    rows = [
        {
            "queue": queue["name"],
            "at": minute,
            "waiting": queue["now"]["waiting"],
            "longest_wait_seconds": queue["now"]["longest_wait_seconds"],
            "service_level": queue["today"]["service_level"],
        }
        for queue in queue_figures(session)
    ]
    session.execute(delete(QueueSample).where(QueueSample.at < minute - KEEP))
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    result = session.execute(insert(QueueSample).values(rows).on_conflict_do_nothing())
    return int(getattr(result, "rowcount", 0) or 0)


async def sampling(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: sample every queue once a minute while the gateway runs."""
    task = asyncio.create_task(_sample_forever(app), name="queue-sampler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sample_forever(app: web.Application) -> None:
    while True:
        try:
            await app[DATABASE].run(take_sample, utcnow())
        except Exception:  # a missed sample leaves a gap in a chart, nothing worse
            log.exception("sampling the queues failed")
        await asyncio.sleep(SAMPLE_EVERY.total_seconds())
