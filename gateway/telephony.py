"""Telephony routes: the Zammad-compatible CTI webhook and the caller log."""

from __future__ import annotations

import hmac
import json
from datetime import datetime
from typing import NoReturn

import aiohttp
from aiohttp import web
from sqlalchemy import select
from twilio.base.exceptions import TwilioException

from channels import InvalidPayload, cti, twilio_voice
from gateway.api import authenticate, query_int, read_json_object
from gateway.calls import CallOutcome, call_json, link_call_to_ticket
from gateway.errors import ApiError, bad_request, ingest_failed
from gateway.ingest import IngestError
from gateway.keys import CALLS, DATABASE, INGESTOR, SETTINGS
from gateway.twilio_webhooks import public_url as _public
from gateway.twilio_webhooks import signed_form as _twilio_form
from gateway.twilio_webhooks import twiml as _twiml
from routing.identity import PHONE, normalise_phone
from timeline import store
from timeline.events import Address, CallPhase, CallSignal, Direction
from timeline.models import Agent, Call, CallState, Ticket

routes = web.RouteTableDef()

TOKEN_HEADER = "X-Switchboard-Token"
VOICE_STATUS_PATH = "/webhooks/twilio/voice/status"


@routes.post("/webhooks/cti")
async def cti_webhook(request: web.Request) -> web.Response:
    supplied = request.query.get("token") or request.headers.get(TOKEN_HEADER)
    return await _cti(request, supplied)


@routes.post("/api/v1/cti/{token}")
async def cti_webhook_with_token(request: web.Request) -> web.Response:
    return await _cti(request, request.match_info["token"])


async def _cti(request: web.Request, supplied: str | None) -> web.Response:
    """Zammad answers `{}`, or `{"action": "reject", "reason": "busy"}` for a blocked caller."""
    _check_cti_token(request, supplied)
    body = await request.read()
    try:
        signal = cti.parse(
            await _cti_fields(request, body), request.app[SETTINGS].cti_number_format
        )
    except InvalidPayload as error:
        await _reject(request, body, error)
    outcome = await _receive(request, signal, body)
    if outcome.blocked:
        return web.json_response({"action": "reject", "reason": "busy"})
    return web.json_response({})


async def _receive(request: web.Request, signal: CallSignal, body: bytes) -> CallOutcome:
    try:
        return await request.app[CALLS].receive(
            signal, payload=body, content_type=request.content_type
        )
    except IngestError as error:
        raise ingest_failed(error.journal_id) from None


@routes.post("/webhooks/twilio/voice")
async def twilio_voice_webhook(request: web.Request) -> web.Response:
    """Ring the agents the card popped to (`<Dial>` their Voice SDK clients), else queue."""
    body, form = await _twilio_form(request)
    try:
        signal = twilio_voice.parse_voice(form)
    except InvalidPayload as error:
        await _reject(request, body, error)
    outcome = await _receive(request, signal, body)
    if outcome.blocked:
        return _twiml(twilio_voice.reject_twiml("busy"))
    settings = request.app[SETTINGS]
    ringing = outcome.call is not None and outcome.call["state"] == CallState.RINGING
    agents = outcome.call["rung_agent_ids"] if ringing and outcome.call else []
    return _twiml(
        twilio_voice.answer_twiml(
            greeting=settings.twilio_voice_greeting,
            dial_clients=[voice_client(agent_id) for agent_id in agents],
            queue=settings.twilio_voice_queue,
            dial_action=_public(request, VOICE_STATUS_PATH),
        )
    )


@routes.post(VOICE_STATUS_PATH)
async def twilio_voice_status(request: web.Request) -> web.Response:
    body, form = await _twilio_form(request)
    try:
        signals = twilio_voice.parse_status(form)
    except InvalidPayload as error:
        await _reject(request, body, error)
    for signal in signals:
        await _receive(request, signal, body)
    return _twiml(twilio_voice.empty_twiml())


def voice_client(agent_id: int) -> str:
    """The Voice SDK identity an agent's console registers with Twilio."""
    return f"agent-{agent_id}"


async def _reject(request: web.Request, body: bytes, error: InvalidPayload) -> NoReturn:
    await request.app[INGESTOR].reject(
        channel="voice", payload=body, content_type=request.content_type, reason=error.detail
    )
    raise bad_request(error.code, error.detail)


def _check_cti_token(request: web.Request, supplied: str | None) -> None:
    expected = request.app[SETTINGS].cti_token
    if not expected:
        raise ApiError(403, "cti_disabled", "CTI is not configured (SWITCHBOARD_CTI_TOKEN).")
    if not supplied or not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "The CTI token is missing or wrong.")


async def _cti_fields(request: web.Request, body: bytes) -> dict[str, list[str]]:
    if request.content_type == "application/json":
        return cti.fields_from_json(body)
    try:
        form = await request.post()
    except ValueError:  # also UnicodeDecodeError: not a form this server can read
        raise InvalidPayload("invalid_payload", "The body is not a readable form.") from None
    return cti.fields_from_form([(k, v) for k, v in form.items() if isinstance(v, str)])


@routes.post("/api/v1/calls")
async def click_to_call(request: web.Request) -> web.Response:
    """Call a customer: through Twilio when configured, else the dial instruction for the PBX.

    A PBX places the call itself and reports it over the CTI webhook, which puts it on the
    timeline; a Twilio call is put there at once and followed by its status callbacks.
    """
    principal = await authenticate(request)
    data = await read_json_object(request)
    number = await _number_to_call(request, data)
    ticket_id = data.get("ticket_id")
    if ticket_id is not None:
        await _require_ticket(request, ticket_id)
    account = request.app[SETTINGS].twilio_account
    if account is None:
        async with request.app[DATABASE].reading() as session:
            agent = await session.get(Agent, principal.agent_id)
        extension = agent.extension if agent else None
        return web.json_response({"dial": {"to": number, "extension": extension}, "call": None})
    try:
        call_sid = await twilio_voice.place_call(
            account,
            to=number,
            agent_client=voice_client(principal.agent_id),
            status_callback=_public(request, VOICE_STATUS_PATH),
        )
    except (TwilioException, aiohttp.ClientError) as error:
        raise ApiError(502, "provider_error", f"Twilio refused the call: {error}") from None
    signal = CallSignal(
        provider=twilio_voice.PROVIDER,
        call_id=call_sid,
        phase=CallPhase.RINGING,
        direction=Direction.OUTBOUND,
        caller=Address("phone", account.caller_id),
        callee=number,
    )
    outcome = await _receive(request, signal, json.dumps(data).encode())
    if ticket_id is not None and outcome.call is not None:
        await request.app[DATABASE].run(link_call_to_ticket, outcome.call["id"], ticket_id)
        outcome.call["ticket_id"] = ticket_id
    return web.json_response({"call": outcome.call, "dial": None}, status=201)


async def _require_ticket(request: web.Request, ticket_id: object) -> None:
    if not isinstance(ticket_id, int) or isinstance(ticket_id, bool):
        raise bad_request("invalid_payload", "ticket_id must be a ticket id.")
    async with request.app[DATABASE].reading() as session:
        if await session.get(Ticket, ticket_id) is None:
            raise bad_request("invalid_ticket", f"There is no ticket {ticket_id}.")


async def _number_to_call(request: web.Request, data: dict[str, object]) -> str:
    region = request.app[SETTINGS].default_region
    if isinstance(data.get("to"), str):
        number = normalise_phone(str(data["to"]), region)
        if number is None:
            raise bad_request("invalid_number", f"{data['to']!r} is not a phone number.")
        return number
    contact_id = data.get("contact_id")
    if not isinstance(contact_id, int) or isinstance(contact_id, bool):
        raise bad_request("invalid_payload", "Give 'to' (a number) or 'contact_id'.")
    async with request.app[DATABASE].reading() as session:
        identities = await session.run_sync(store.identities_of, [contact_id])
    phones = [i.value for i in identities if i.kind == PHONE]
    if not phones:
        raise bad_request("no_phone", f"Contact {contact_id} has no phone number.")
    return phones[0]


@routes.get("/api/v1/calls")
async def caller_log(request: web.Request) -> web.Response:
    """The caller log, newest first; `state=missed` gives the callbacks still to make."""
    await authenticate(request)
    limit = query_int(request, "limit", 50, 500) or 50
    query = select(Call).order_by(Call.started_at.desc(), Call.id.desc()).limit(limit)
    if state := request.query.get("state"):
        states = state.split(",")
        if any(s not in CallState.__members__.values() for s in states):
            raise bad_request("invalid_query", f"Unknown call state in {state!r}.")
        query = query.where(Call.state.in_(states))
    if direction := request.query.get("direction"):
        if direction not in ("in", "out"):
            raise bad_request("invalid_query", "direction must be 'in' or 'out'.")
        query = query.where(Call.direction == direction)
    if since := request.query.get("since"):
        query = query.where(Call.started_at >= _moment(since))
    async with request.app[DATABASE].reading() as session:
        calls = list((await session.execute(query)).scalars())
    return web.json_response({"calls": [call_json(c) for c in calls]})


def _moment(raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise bad_request("invalid_query", "since must be an ISO 8601 time.") from None
    if moment.tzinfo is None:
        raise bad_request("invalid_query", "since needs a time zone, e.g. 2026-11-25T10:00:00Z.")
    return moment
