"""HTTP routes of the outbox: replies on a ticket, and the dead-letter view for supervisors."""

from __future__ import annotations

from aiohttp import web

from gateway.api import DEFAULT_PAGE, MAX_PAGE, authenticate, path_id, query_int, read_json_object
from gateway.errors import ApiError, bad_request
from gateway.keys import DATABASE, OUTBOX, REPLIES
from gateway.replies import parse_reply
from gateway.serialize import event_json, iso
from timeline import outbox
from timeline.models import OutboxMessage, OutboxStatus, Role

routes = web.RouteTableDef()


@routes.post("/api/v1/tickets/{id}/messages")
async def send_message(request: web.Request) -> web.Response:
    """Reply on the ticket's channel: 202 once the message is on the timeline and queued."""
    await authenticate(request)
    reply = parse_reply(await read_json_object(request), path_id(request))
    enqueued = await request.app[REPLIES].reply(reply)
    assert enqueued.event is not None, "a reply always has its timeline event"
    return web.json_response(
        {
            "event_id": enqueued.event.id,
            "outbox_id": enqueued.message.id,
            "status": enqueued.message.status,
            "duplicate": enqueued.duplicate,
            "event": event_json(enqueued.event),
        },
        status=202,
    )


@routes.get("/api/v1/outbox")
async def list_outbox(request: web.Request) -> web.Response:
    """What did not go out: `?status=failed,dead` by default (any outbox status may be asked)."""
    principal = await authenticate(request)
    principal.require(Role.SUPERVISOR, Role.ADMIN)
    statuses = [s.strip() for s in request.query.get("status", "failed,dead").split(",")]
    if any(s not in OutboxStatus.__members__.values() for s in statuses):
        raise bad_request("invalid_query", f"Outbox statuses are {', '.join(OutboxStatus)}.")
    limit = query_int(request, "limit", DEFAULT_PAGE, MAX_PAGE) or DEFAULT_PAGE
    before = query_int(request, "before", None)
    rows = await request.app[DATABASE].read(outbox.listing, statuses, limit=limit, before_id=before)
    return web.json_response({"messages": [outbox_json(r) for r in rows]})


@routes.post("/api/v1/outbox/{id}/retry")
async def retry_message(request: web.Request) -> web.Response:
    """A person's retry of a failed or dead message: a fresh round of attempts."""
    principal = await authenticate(request)
    principal.require(Role.SUPERVISOR, Role.ADMIN)
    row = await request.app[DATABASE].run(outbox.requeue, path_id(request))
    if row is None:
        raise ApiError(409, "not_retryable", "No failed or dead outbox message has that id.")
    request.app[OUTBOX].wake()
    return web.json_response(outbox_json(row), status=202)


def outbox_json(row: OutboxMessage) -> dict[str, object]:
    """A row without its payload (the message's content is on the timeline event)."""
    return {
        "id": row.id,
        "channel": row.channel,
        "status": row.status,
        "recipient": row.recipient,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "provider_id": row.provider_id,
        "event_id": row.event_id,
        "ticket_id": row.ticket_id,
        "contact_id": row.contact_id,
        "next_attempt_at": iso(row.next_attempt_at),
        "created_at": iso(row.created_at),
        "sent_at": iso(row.sent_at),
    }
