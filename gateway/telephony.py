"""Telephony routes: the Zammad-compatible CTI webhook and the caller log."""

from __future__ import annotations

import hmac
from datetime import datetime

from aiohttp import web
from sqlalchemy import select

from channels import InvalidPayload, cti
from gateway.api import authenticate, query_int
from gateway.calls import call_json
from gateway.errors import ApiError, bad_request
from gateway.ingest import IngestError
from gateway.keys import CALLS, DATABASE, INGESTOR, SETTINGS
from timeline.models import Call, CallState

routes = web.RouteTableDef()

TOKEN_HEADER = "X-Switchboard-Token"


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
        await request.app[INGESTOR].reject(
            channel="voice", payload=body, content_type=request.content_type, reason=error.detail
        )
        raise bad_request(error.code, error.detail) from None
    try:
        outcome = await request.app[CALLS].receive(
            signal, payload=body, content_type=request.content_type
        )
    except IngestError as error:
        raise ApiError(
            500,
            "ingest_failed",
            f"The payload is kept as journal entry {error.journal_id} but could not be stored.",
        ) from None
    if outcome.blocked:
        return web.json_response({"action": "reject", "reason": "busy"})
    return web.json_response({})


def _check_cti_token(request: web.Request, supplied: str | None) -> None:
    expected = request.app[SETTINGS].cti_token
    if not expected:
        raise ApiError(403, "cti_disabled", "CTI is not configured (SWITCHBOARD_CTI_TOKEN).")
    if not supplied or not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "The CTI token is missing or wrong.")


async def _cti_fields(request: web.Request, body: bytes) -> dict[str, list[str]]:
    if request.content_type == "application/json":
        return cti.fields_from_json(body)
    form = await request.post()
    return cti.fields_from_form([(k, v) for k, v in form.items() if isinstance(v, str)])


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
