"""What an agent does at the desk besides replying: internal notes, contact edits, merges.

- `POST /api/v1/tickets/{id}/notes` `{"body"}`: an internal note on the ticket's timeline
  (kind `note`, never sent to the customer).
- `PATCH /api/v1/contacts/{id}` `{"name"?, "tags"?, "attributes"?}`: correct a contact.
- `POST /api/v1/contacts/{id}/merge` `{"into": <id>}`: this contact is the same person as
  `into`; everything of it moves there (see `timeline.merging`).
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from gateway.api import authenticate, path_id, read_json_object
from gateway.errors import ApiError, bad_request, not_found
from gateway.keys import DATABASE
from gateway.serialize import JSON, contact_json, event_json
from timeline import store
from timeline.events import Direction, EventKind
from timeline.merging import MergeRefused, merge_contacts
from timeline.models import Contact, Ticket, TimelineEvent, utcnow

routes = web.RouteTableDef()

NOTE_CHANNEL = "note"
MAX_NOTE = 20_000
MAX_TAGS = 50
MAX_TAG = 64


@routes.post("/api/v1/tickets/{id}/notes")
async def add_note(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    body = (await read_json_object(request)).get("body")
    if not isinstance(body, str) or not body.strip():
        raise bad_request("invalid_payload", "A note needs a non-empty 'body'.")
    if len(body) > MAX_NOTE:
        raise bad_request("invalid_payload", f"A note is at most {MAX_NOTE} characters.")
    note = await request.app[DATABASE].run(_note, path_id(request), principal.name, body.strip())
    return web.json_response(note, status=201)


def _note(session: Session, ticket_id: int, author: str, body: str) -> JSON:
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        raise not_found("ticket")
    (event_id,) = store.add_events(
        session,
        [
            {
                "channel": NOTE_CHANNEL,
                "external_id": f"note:{uuid.uuid4()}",
                "kind": EventKind.NOTE,
                "direction": Direction.OUTBOUND,
                "contact_id": ticket.contact_id,
                "ticket_id": ticket.id,
                "sender": author,
                "recipient": "",
                "body": body,
                "occurred_at": utcnow(),
            }
        ],
    )
    event = session.get(TimelineEvent, event_id)
    assert event is not None
    return event_json(event)


@routes.patch("/api/v1/contacts/{id}")
async def edit_contact(request: web.Request) -> web.Response:
    await authenticate(request)
    changes = _contact_changes(await read_json_object(request))
    edited = await request.app[DATABASE].run(_edit_contact, path_id(request), changes)
    return web.json_response(edited)


def _contact_changes(data: dict[str, Any]) -> dict[str, Any]:
    unknown = set(data) - {"name", "tags", "attributes"}
    if unknown:
        raise bad_request("invalid_payload", f"Unknown fields: {', '.join(sorted(unknown))}.")
    if "name" in data and (not isinstance(data["name"], str) or not data["name"].strip()):
        raise bad_request("invalid_payload", "'name' must be a non-empty string.")
    if "tags" in data:
        tags = data["tags"]
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise bad_request("invalid_payload", f"'tags' is a list of at most {MAX_TAGS}.")
        if any(not isinstance(t, str) or not t.strip() or len(t) > MAX_TAG for t in tags):
            raise bad_request("invalid_payload", f"Each tag is a word of 1 to {MAX_TAG} chars.")
        data["tags"] = sorted({t.strip() for t in tags})
    if "attributes" in data and not isinstance(data["attributes"], dict):
        raise bad_request("invalid_payload", "'attributes' must be an object.")
    return data


def _edit_contact(session: Session, contact_id: int, changes: dict[str, Any]) -> JSON:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise not_found("contact")
    if "name" in changes:
        contact.name = changes["name"].strip()[:200]
    if "tags" in changes:
        contact.tags = changes["tags"]
    if "attributes" in changes:
        contact.attributes = {**contact.attributes, **changes["attributes"]}
    session.flush()
    return contact_json(contact, store.identities_of(session, [contact.id]))


@routes.post("/api/v1/contacts/{id}/merge")
async def merge(request: web.Request) -> web.Response:
    await authenticate(request)
    into = (await read_json_object(request)).get("into")
    if not isinstance(into, int) or isinstance(into, bool):
        raise bad_request("invalid_payload", "Give the id of the contact to merge into as 'into'.")
    merged = await request.app[DATABASE].run(_merge, path_id(request), into)
    return web.json_response(merged)


def _merge(session: Session, loser_id: int, winner_id: int) -> JSON:
    try:
        winner = merge_contacts(session, loser_id, winner_id)
    except MergeRefused as refused:
        raise ApiError(409, "merge_refused", str(refused)) from None
    return contact_json(winner, store.identities_of(session, [winner.id]))
