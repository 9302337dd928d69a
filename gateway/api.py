"""HTTP API `/api/v1/*` and `/healthz` (DESIGN.md, "Stable contract")."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from channels import InvalidPayload, generic
from gateway import agents, sessions
from gateway.auth import Principal, token_from
from gateway.errors import ApiError, bad_request, ingest_failed, not_found
from gateway.ingest import IngestError
from gateway.keys import DATABASE, INGESTOR, SETTINGS, TOKENS
from gateway.serialize import agent_json, contact_json, event_json, ticket_json
from routing.capacity import Capacity
from routing.identity import normalise, parse_raw
from timeline import campaigns, store
from timeline.models import (
    Agent,
    Contact,
    InboundJournal,
    Role,
    Ticket,
    TicketStatus,
)

routes = web.RouteTableDef()

MAX_PAGE = 500
DEFAULT_PAGE = 50


async def authenticate(request: web.Request, *, allow_query: bool = False) -> Principal:
    """A bearer token (integrations), else the console's session cookie (browsers)."""
    token = token_from(request, allow_query=allow_query)
    from_cookie = token is None
    if token is None:
        token = sessions.session_cookie(request)
    if token is None:
        raise ApiError(401, "unauthorized", "Send an API token as 'Authorization: Bearer <token>'.")
    principal = await request.app[TOKENS].principal(token)
    if principal is None:
        raise ApiError(401, "unauthorized", "The API token is unknown or revoked.")
    if from_cookie:
        sessions.check_browser_request(request, token)
    return principal


async def read_json_object(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise bad_request("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise bad_request("invalid_payload", "The body must be a JSON object.")
    return data


def path_id(request: web.Request, name: str = "id") -> int:
    try:
        return int(request.match_info[name])
    except ValueError:
        raise ApiError(404, "not_found", f"{request.match_info[name]!r} is not an id.") from None


def query_int(
    request: web.Request, name: str, default: int | None, maximum: int | None = None
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(
            "invalid_query", f"Query parameter {name!r} must be a whole number."
        ) from None
    if value < 1 and name == "limit":
        raise bad_request("invalid_query", "Query parameter 'limit' must be at least 1.")
    return min(value, maximum) if maximum else value


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.post("/api/v1/inbound")
async def inbound(request: web.Request) -> web.Response:
    await authenticate(request)
    body = await request.read()
    settings = request.app[SETTINGS]
    ingestor = request.app[INGESTOR]
    try:
        event = generic.parse(body, settings.channels)
    except InvalidPayload as error:
        await ingestor.reject(
            channel=_channel_hint(body),
            payload=body,
            content_type=request.content_type,
            reason=error.detail,
        )
        raise bad_request(error.code, error.detail) from None
    try:
        result = await ingestor.ingest(event, payload=body, content_type=request.content_type)
    except IngestError as error:
        raise ingest_failed(error.journal_id) from None
    return web.json_response(result.to_json(), status=202)


def _channel_hint(body: bytes) -> str:
    """The channel a rejected payload claimed, for the journal; 'unknown' if it said none."""
    try:
        value = json.loads(body).get("channel")
    except (ValueError, RecursionError, AttributeError):
        return "unknown"
    return value[:32] if isinstance(value, str) and value else "unknown"


@routes.post("/api/v1/contacts")
async def create_contact(request: web.Request) -> web.Response:
    await authenticate(request)
    data = await read_json_object(request)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad_request("invalid_payload", "Field 'name' must be a non-empty string.")
    identities = _identities(data.get("identities", []), request.app[SETTINGS].default_region)
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise bad_request("invalid_payload", "Field 'tags' must be a list of strings.")
    attributes = data.get("attributes", {})
    if not isinstance(attributes, dict):
        raise bad_request("invalid_payload", "Field 'attributes' must be an object.")
    try:
        async with request.app[DATABASE].transaction() as session:
            contact = await session.run_sync(
                store.create_contact,
                name=name.strip()[:200],
                identities=identities,
                tags=tags,
                attributes=attributes,
            )
            stored = await session.run_sync(store.identities_of, [contact.id])
    except IntegrityError:
        raise ApiError(
            409, "identity_taken", "One of the identities already belongs to another contact."
        ) from None
    return web.json_response(contact_json(contact, stored), status=201)


def _identities(raw: object, region: str) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        raise bad_request("invalid_payload", "Field 'identities' must be a list.")
    result: list[tuple[str, str]] = []
    for item in raw:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("kind"), str)
            or not isinstance(item.get("value"), str)
        ):
            raise bad_request(
                "invalid_identity", "Each identity needs a string 'kind' and 'value'."
            )
        key = normalise(item["kind"].strip().lower(), item["value"], region)
        if key is None:
            raise bad_request(
                "invalid_identity", f"{item['value']!r} is not a usable {item['kind']} identity."
            )
        if (key.kind, key.value) not in result:
            result.append((key.kind, key.value))
    return result


@routes.get("/api/v1/contacts")
async def find_contacts(request: web.Request) -> web.Response:
    await authenticate(request)
    raw = request.query.get("identity")
    if raw is None:
        raise bad_request("missing_query", "Give ?identity=<sender id> to look a contact up.")
    key = parse_raw(raw, request.app[SETTINGS].default_region)
    if key is None:
        return web.json_response({"contacts": []})
    async with request.app[DATABASE].reading() as session:
        contact = await session.run_sync(store.contact_by_identity, key.kind, key.value)
        if contact is None:
            return web.json_response({"contacts": []})
        identities = await session.run_sync(store.identities_of, [contact.id])
    return web.json_response({"contacts": [contact_json(contact, identities)]})


@routes.get("/api/v1/contacts/{id}")
async def get_contact(request: web.Request) -> web.Response:
    await authenticate(request)
    async with request.app[DATABASE].reading() as session:
        contact = await session.get(Contact, path_id(request))
        if contact is None:
            raise not_found("contact")
        identities = await session.run_sync(store.identities_of, [contact.id])
        open_tickets = await session.run_sync(store.open_tickets_of, [contact.id])
    body = contact_json(contact, identities)
    body["open_tickets"] = [ticket_json(t) for t in open_tickets.get(contact.id, [])]
    return web.json_response(body)


@routes.get("/api/v1/contacts/{id}/timeline")
async def contact_timeline(request: web.Request) -> web.Response:
    await authenticate(request)
    limit = query_int(request, "limit", DEFAULT_PAGE, MAX_PAGE) or DEFAULT_PAGE
    before = query_int(request, "before", None)
    async with request.app[DATABASE].reading() as session:
        contact = await session.get(Contact, path_id(request))
        if contact is None:
            raise not_found("contact")
        events = await session.run_sync(
            store.recent_events, contact.id, limit=limit + 1, before_id=before
        )
        more = len(events) > limit
        events = events[:limit]
        linked = await session.run_sync(campaigns.links, [e.id for e in events])
    return web.json_response(
        {
            # A campaign's message, or a reply to one, names the campaign.
            "events": [
                {**event_json(e), **({"campaign_id": linked[e.id]} if e.id in linked else {})}
                for e in events
            ],
            "next_before": events[-1].id if more else None,
        }
    )


@routes.get("/api/v1/tickets")
async def list_tickets(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    limit = query_int(request, "limit", DEFAULT_PAGE, MAX_PAGE) or DEFAULT_PAGE
    before = query_int(request, "before", None)
    query = select(Ticket).order_by(Ticket.id.desc()).limit(limit)
    status = request.query.get("status")
    if status:
        statuses = [s.strip() for s in status.split(",")]
        if any(s not in TicketStatus.__members__.values() for s in statuses):
            raise bad_request("invalid_query", f"Unknown ticket status in {status!r}.")
        query = query.where(Ticket.status.in_(statuses))
    assignee = request.query.get("assignee")
    if assignee:
        query = query.where(_assignee_filter(assignee, principal))
    if before is not None:
        query = query.where(Ticket.id < before)
    async with request.app[DATABASE].reading() as session:
        tickets = list((await session.execute(query)).scalars())
    return web.json_response({"tickets": [ticket_json(t) for t in tickets]})


def _assignee_filter(assignee: str, principal: Principal) -> Any:
    if assignee == "me":
        return Ticket.assignee_id == principal.agent_id
    if assignee == "none":
        return Ticket.assignee_id.is_(None)
    if not assignee.isdigit():
        raise bad_request("invalid_query", "assignee must be an agent id, 'me' or 'none'.")
    return Ticket.assignee_id == int(assignee)


@routes.get("/api/v1/tickets/{id}")
async def get_ticket(request: web.Request) -> web.Response:
    await authenticate(request)
    async with request.app[DATABASE].reading() as session:
        ticket = await session.get(Ticket, path_id(request))
    if ticket is None:
        raise not_found("ticket")
    return web.json_response(ticket_json(ticket))


@routes.post("/api/v1/agents")
async def create_agent(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    principal.require(Role.ADMIN)
    data = await read_json_object(request)
    new = _new_agent(data)
    async with request.app[DATABASE].transaction() as session:
        agent, token = await session.run_sync(agents.create_agent, new)
    return web.json_response({**agent_json(agent), "token": token}, status=201)


def _new_agent(data: dict[str, Any]) -> agents.NewAgent:
    for field in ("name", "email", "password"):
        if not isinstance(data.get(field), str):
            raise bad_request("invalid_payload", f"Field {field!r} must be a string.")
    try:
        role = Role(data.get("role", Role.AGENT))
        capacity = Capacity.parse(str(data["capacity"])) if "capacity" in data else None
    except ValueError as error:
        raise bad_request("invalid_payload", str(error)) from None
    skills = data.get("skills", [])
    if not isinstance(skills, list) or not all(isinstance(s, str) for s in skills):
        raise bad_request("invalid_payload", "Field 'skills' must be a list of strings.")
    extension = data.get("extension")
    return agents.NewAgent(
        name=data["name"],
        email=data["email"],
        password=data["password"],
        role=role,
        skills=skills,
        extension=str(extension) if extension is not None else None,
        **({"capacity": capacity} if capacity else {}),
    )


@routes.get("/api/v1/agents/me")
async def who_am_i(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    async with request.app[DATABASE].reading() as session:
        agent = await session.get(Agent, principal.agent_id)
    assert agent is not None
    return web.json_response(agent_json(agent))


@routes.get("/api/v1/journal")
async def list_journal(request: web.Request) -> web.Response:
    """Journal entries without their payloads (personal data): what was refused or failed, why."""
    principal = await authenticate(request)
    principal.require(Role.ADMIN)
    limit = query_int(request, "limit", DEFAULT_PAGE, MAX_PAGE) or DEFAULT_PAGE
    query = select(InboundJournal).order_by(InboundJournal.id.desc()).limit(limit)
    if status := request.query.get("status"):
        query = query.where(InboundJournal.status == status)
    async with request.app[DATABASE].reading() as session:
        entries = list((await session.execute(query)).scalars())
    return web.json_response(
        {
            "entries": [
                {
                    "id": e.id,
                    "channel": e.channel,
                    "status": e.status,
                    "reason": e.reason,
                    "content_type": e.content_type,
                    "size": len(e.payload),
                    "event_id": e.event_id,
                    "received_at": e.received_at.isoformat(),
                }
                for e in entries
            ]
        }
    )
