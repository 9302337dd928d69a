"""`GET /api/v1/search?q=`: what an agent types into the console's search box.

Contacts by name or by any identity in any format (the query is normalised as on ingest, so
`030 5557 1600` finds `+493055571600`); tickets by number (`10042`, `#10042`), subject or the
text of their messages.
"""

from __future__ import annotations

from collections import defaultdict

from aiohttp import web
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from gateway.api import authenticate, bad_request
from gateway.keys import DATABASE, SETTINGS
from gateway.serialize import JSON, contact_json, ticket_json
from routing.identity import IdentityKey, parse_raw
from timeline import store
from timeline.models import Contact, Identity, Ticket, TimelineEvent

routes = web.RouteTableDef()

RESULTS = 20
MIN_QUERY = 2


@routes.get("/api/v1/search")
async def search(request: web.Request) -> web.Response:
    await authenticate(request)
    query = request.query.get("q", "").strip()
    if len(query) < MIN_QUERY:
        raise bad_request("invalid_query", f"Search for at least {MIN_QUERY} characters.")
    identity = parse_raw(query, request.app[SETTINGS].default_region)
    async with request.app[DATABASE].reading() as session:
        found = await session.run_sync(_search, query, identity)
    return web.json_response(found)


def _search(session: Session, query: str, identity: IdentityKey | None) -> JSON:
    return {"contacts": _contacts(session, query, identity), "tickets": _tickets(session, query)}


def _contacts(session: Session, query: str, identity: IdentityKey | None) -> list[JSON]:
    matches = [func.lower(Contact.name).contains(query.lower(), autoescape=True)]
    if identity is not None:
        owners = select(Identity.contact_id).where(
            Identity.kind == identity.kind, Identity.value == identity.value
        )
        matches.append(Contact.id.in_(owners))
    contacts = list(
        session.execute(
            select(Contact).where(or_(*matches)).order_by(Contact.id).limit(RESULTS)
        ).scalars()
    )
    identities: dict[int, list[Identity]] = defaultdict(list)
    for found in store.identities_of(session, [c.id for c in contacts]):
        identities[found.contact_id].append(found)
    return [contact_json(contact, identities[contact.id]) for contact in contacts]


def _tickets(session: Session, query: str) -> list[JSON]:
    text = query.lower()
    matches = [
        func.lower(Ticket.subject).contains(text, autoescape=True),
        Ticket.id.in_(
            select(TimelineEvent.ticket_id).where(
                func.lower(TimelineEvent.body).contains(text, autoescape=True)
            )
        ),
    ]
    number = query.removeprefix("#")
    if number.isdigit() and len(number) <= 18:
        matches.append(Ticket.number == int(number))
    statement = select(Ticket).where(or_(*matches)).order_by(Ticket.id.desc()).limit(RESULTS)
    return [ticket_json(ticket) for ticket in session.execute(statement).scalars()]
