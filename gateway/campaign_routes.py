"""HTTP API of outbound campaigns: segments, campaigns, preview and the life-cycle actions.

Supervisors and admins only. The contract is README's "Campaigns" section; the dispatcher that
sends is `gateway.campaigns`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from gateway.api import DEFAULT_PAGE, MAX_PAGE, authenticate, path_id, query_int, read_json_object
from gateway.campaigns import DISPATCHER_KEY, RunningCounts
from gateway.errors import ApiError, bad_request, not_found
from gateway.keys import DATABASE
from gateway.serialize import JSON, iso
from routing import segments
from routing.pacing import FrequencyCap, InvalidPacing, QuietHours, parse_pacing
from routing.segments import InvalidFilter
from routing.templates import (
    CHANNEL_PARTS,
    CampaignTemplate,
    InvalidTemplate,
    compile_template,
    contact_context,
    sms_cost,
    try_render,
)
from timeline import campaigns
from timeline.db import Database
from timeline.models import Campaign, CampaignStatus, Role, Segment

routes = web.RouteTableDef()
SUPERVISING = (Role.SUPERVISOR, Role.ADMIN)
MAX_SAMPLE = 50
# How an action's refusal reads: "A completed campaign cannot be paused."
_DONE = {"start": "started", "pause": "paused", "resume": "resumed", "cancel": "cancelled"}


async def _supervisor(request: web.Request) -> None:
    (await authenticate(request)).require(*SUPERVISING)


def _database(request: web.Request) -> Database:
    return request.app[DATABASE]


# --- segments -------------------------------------------------------------------------------


def segment_json(segment: Segment) -> JSON:
    return {
        "id": segment.id,
        "name": segment.name,
        "filter": dict(segment.filter),
        "created_at": iso(segment.created_at),
    }


def _audience(raw: object) -> segments.Audience:
    try:
        return segments.parse_filter(raw)
    except InvalidFilter as error:
        raise bad_request("invalid_filter", str(error)) from None


def _name(data: dict[str, Any]) -> str:
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad_request("invalid_payload", "Field 'name' must be a non-empty string.")
    return name.strip()[:200]


def _sample_size(data: dict[str, Any]) -> int:
    size = data.get("sample", 5)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SAMPLE:
        raise bad_request("invalid_payload", f"'sample' must be a whole number 0-{MAX_SAMPLE}.")
    return size


@routes.post("/api/v1/segments")
async def create_segment(request: web.Request) -> web.Response:
    await _supervisor(request)
    data = await read_json_object(request)
    name = _name(data)
    raw = data.get("filter", {})
    _audience(raw)
    segment = await _database(request).run(campaigns.add_segment, name, raw)
    return web.json_response(segment_json(segment), status=201)


@routes.get("/api/v1/segments")
async def list_segments(request: web.Request) -> web.Response:
    await _supervisor(request)
    found = await _database(request).read(campaigns.segments)
    return web.json_response({"segments": [segment_json(s) for s in found]})


@routes.get("/api/v1/segments/{id}")
async def get_segment(request: web.Request) -> web.Response:
    await _supervisor(request)
    segment = await _database(request).read(_get, Segment, path_id(request))
    if segment is None:
        raise not_found("segment")
    return web.json_response(segment_json(segment))


@routes.post("/api/v1/segments/preview")
async def preview_segment(request: web.Request) -> web.Response:
    await _supervisor(request)
    data = await read_json_object(request)
    audience = _audience(data.get("filter", {}))
    size = _sample_size(data)
    return web.json_response(await _database(request).read(_segment_preview, audience, size))


def _segment_preview(session: Session, audience: segments.Audience, size: int) -> JSON:
    return {
        "count": segments.count(session, audience),
        "sample": [
            {
                "contact_id": m.contact_id,
                "name": m.name,
                "identities": [{"kind": k, "value": v} for k, v in m.identities],
                "tags": m.tags,
            }
            for m in segments.sample(session, audience, size)
        ],
    }


def _get(session: Session, model: type[Segment] | type[Campaign], row_id: int) -> Any:
    return session.get(model, row_id)


# --- campaigns ------------------------------------------------------------------------------


def campaign_json(campaign: Campaign, counts: JSON) -> JSON:
    return {
        "id": campaign.id,
        "name": campaign.name,
        "channel": campaign.channel,
        "status": campaign.status,
        "segment_id": campaign.segment_id,
        "filter": dict(campaign.filter),
        "template": dict(campaign.template),
        "sender": campaign.sender,
        "pacing": campaign.pacing,
        "quiet_hours": campaign.quiet_hours,
        "frequency_cap": campaign.frequency_cap,
        "scheduled_at": iso(campaign.scheduled_at),
        "created_at": iso(campaign.created_at),
        "started_at": iso(campaign.started_at),
        "finished_at": iso(campaign.finished_at),
        "counts": counts,
    }


def with_counts(
    session: Session, campaign_id: int, cache: RunningCounts | None = None
) -> JSON | None:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        return None
    if cache is not None and campaign.status == CampaignStatus.RUNNING:
        return campaign_json(campaign, cache.get(session, campaign.id))
    return campaign_json(campaign, campaigns.counts(session, campaign.id))


def template_error(error: InvalidTemplate) -> web.Response:
    return web.json_response(
        {"error": "template_error", "detail": str(error), "part": error.part, "line": error.line},
        status=400,
    )


@routes.post("/api/v1/campaigns")
async def create_campaign(request: web.Request) -> web.Response:
    await _supervisor(request)
    data = await read_json_object(request)
    try:
        fields = campaign_fields(data)
    except InvalidTemplate as error:
        return template_error(error)
    body = await _database(request).run(create_unit, fields, data.get("segment_id"))
    return web.json_response(body, status=201)


_CAMPAIGN_KEYS = frozenset(
    {
        "name",
        "channel",
        "segment_id",
        "filter",
        "template",
        "sender",
        "scheduled_at",
        "pacing",
        "quiet_hours",
        "frequency_cap",
    }
)


def campaign_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The checked fields of a new campaign (the audience is resolved in `create_unit`)."""
    unknown = set(data) - _CAMPAIGN_KEYS
    if unknown:
        raise bad_request("invalid_payload", f"Unknown fields: {', '.join(sorted(unknown))}.")
    channel = data.get("channel")
    if not isinstance(channel, str) or channel not in CHANNEL_PARTS:
        raise bad_request("invalid_payload", f"'channel' is one of {', '.join(CHANNEL_PARTS)}.")
    if ("segment_id" in data) == ("filter" in data):
        raise bad_request("invalid_payload", "Give either 'segment_id' or 'filter'.")
    if "segment_id" in data and not isinstance(data["segment_id"], int):
        raise bad_request("invalid_payload", "'segment_id' must be a segment's id.")
    if "filter" in data:
        _audience(data["filter"])
    compile_template(channel, data.get("template"))
    sender = data.get("sender")
    if sender is not None and (not isinstance(sender, str) or not sender.strip()):
        raise bad_request("invalid_payload", "'sender' must be a non-empty string or absent.")
    try:
        parse_pacing(data.get("pacing"))
        quiet = data.get("quiet_hours")
        cap = data.get("frequency_cap")
        quiet_json = QuietHours.parse(quiet).to_json() if quiet is not None else None
        cap_json = FrequencyCap.parse(cap).to_json() if cap is not None else None
    except InvalidPacing as error:
        raise bad_request("invalid_pacing", str(error)) from None
    return {
        "name": _name(data),
        "channel": channel,
        "filter": data.get("filter"),
        "template": dict(data["template"]),
        "sender": sender.strip() if sender else None,
        "pacing": data.get("pacing"),
        "quiet_hours": quiet_json,
        "frequency_cap": cap_json,
        "scheduled_at": _moment(data.get("scheduled_at")),
    }


def _moment(raw: object) -> datetime | None:
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise bad_request("invalid_payload", "'scheduled_at' is ISO 8601 with an offset.")
    return moment


def create_unit(session: Session, fields: dict[str, Any], segment_id: int | None) -> JSON:
    campaign = campaigns.add_campaign(session, **_audience_of(session, fields, segment_id))
    return campaign_json(campaign, campaigns.counts(session, campaign.id))


def _audience_of(session: Session, fields: dict[str, Any], segment_id: int | None) -> JSON:
    """`fields` with the audience resolved: a saved segment's filter is copied onto the
    campaign, which sends to what it names then."""
    if segment_id is None:
        return {**fields, "segment_id": None}
    segment = session.get(Segment, segment_id)
    if segment is None:
        raise ApiError(422, "unknown_segment", "No segment has that id.")
    return {**fields, "filter": dict(segment.filter), "segment_id": segment.id}


@routes.patch("/api/v1/campaigns/{id}")
async def edit_campaign(request: web.Request) -> web.Response:
    """Change a draft or scheduled campaign: the fields given replace the stored ones, and the
    whole is checked as a new campaign would be (template compiled, audience, pacing)."""
    await _supervisor(request)
    changes = await read_json_object(request)
    db = _database(request)
    campaign = await db.read(_get, Campaign, path_id(request))
    if campaign is None:
        raise not_found("campaign")
    try:
        fields, segment_id = edited_fields(campaign, changes)
    except InvalidTemplate as error:
        return template_error(error)
    return web.json_response(await db.run(edit_unit, campaign.id, fields, segment_id))


def edited_fields(campaign: Campaign, changes: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The campaign's fields with `changes` applied, checked as a new campaign's; and the
    saved segment it is then made from, if any."""
    given = _as_given(campaign)
    if "filter" in changes or "segment_id" in changes:
        given.pop("filter", None)
        given.pop("segment_id", None)
    merged = {**given, **changes}
    return campaign_fields(merged), merged.get("segment_id")


def _as_given(campaign: Campaign) -> dict[str, Any]:
    """The campaign's fields as the API takes them: its audience by its saved segment, if it
    was made from one, else by its filter."""
    shown = campaign_json(campaign, {})
    given = {key: shown[key] for key in _CAMPAIGN_KEYS}
    given.pop("filter" if campaign.segment_id is not None else "segment_id")
    return given


def edit_unit(
    session: Session, campaign_id: int, fields: dict[str, Any], segment_id: int | None
) -> JSON:
    campaign, changed = campaigns.edit(
        session, campaign_id, _audience_of(session, fields, segment_id)
    )
    if campaign is None:
        raise not_found("campaign")
    if not changed:
        raise ApiError(
            409,
            "not_editable",
            f"A {campaign.status} campaign cannot be changed; a draft or a scheduled one can.",
        )
    return campaign_json(campaign, campaigns.counts(session, campaign.id))


@routes.get("/api/v1/campaigns")
async def list_campaigns(request: web.Request) -> web.Response:
    await _supervisor(request)
    limit = query_int(request, "limit", DEFAULT_PAGE, MAX_PAGE) or DEFAULT_PAGE
    before = query_int(request, "before", None)
    found = await _database(request).read(_listing, limit, before)
    return web.json_response({"campaigns": found})


def _listing(session: Session, limit: int, before: int | None) -> list[JSON]:
    return [
        campaign_json(c, campaigns.counts(session, c.id))
        for c in campaigns.campaigns(session, limit, before)
    ]


@routes.get("/api/v1/campaigns/{id}")
async def get_campaign(request: web.Request) -> web.Response:
    await _supervisor(request)
    counts = request.app[DISPATCHER_KEY].running_counts
    body = await _database(request).read(with_counts, path_id(request), counts)
    if body is None:
        raise not_found("campaign")
    return web.json_response(body)


@routes.post("/api/v1/campaigns/{id}/preview")
async def preview_campaign(request: web.Request) -> web.Response:
    await _supervisor(request)
    data = await read_json_object(request)
    size = _sample_size(data)
    campaign = await _database(request).read(_get, Campaign, path_id(request))
    if campaign is None:
        raise not_found("campaign")
    try:
        template = compile_template(campaign.channel, campaign.template)
    except InvalidTemplate as error:
        return template_error(error)
    body = await _database(request).read(_campaign_preview, campaign, template, size)
    return web.json_response(body)


def _campaign_preview(
    session: Session, campaign: Campaign, template: CampaignTemplate, size: int
) -> JSON:
    """The audience's size, the first members' messages, and what the SMS costs (the
    longest of the samples rendered)."""
    audience = segments.parse_filter(campaign.filter)
    samples: list[JSON] = []
    errors: list[JSON] = []
    rendered_bodies: list[str] = []
    for member in segments.sample(session, audience, size):
        context = contact_context(member.name, member.attributes, member.tags, campaign.name)
        rendered, error = try_render(template, context)
        if rendered is None:
            errors.append({"contact_id": member.contact_id, "error": error})
        else:
            rendered_bodies.append(rendered.get("body", ""))
            samples.append(
                {"contact_id": member.contact_id, "name": member.name, "rendered": rendered}
            )
    sms = None
    if campaign.channel == "sms" and rendered_bodies:
        sms = sms_cost(max(rendered_bodies, key=len)).to_json()
    return {
        "count": segments.count(session, audience),
        "samples": samples,
        "sms": sms,
        "errors": errors,
    }


async def _act(request: web.Request, action: str) -> web.Response:
    await _supervisor(request)
    campaign_id = path_id(request)
    db = _database(request)
    campaign, changed = await db.run(campaigns.transition, campaign_id, action)
    if campaign is None:
        raise not_found("campaign")
    if not changed:
        raise ApiError(
            409, "invalid_transition", f"A {campaign.status} campaign cannot be {_DONE[action]}."
        )
    if action in ("start", "resume"):
        request.app[DISPATCHER_KEY].wake()
    return web.json_response(await db.read(with_counts, campaign_id))


@routes.post("/api/v1/campaigns/{id}/{action:start|pause|resume|cancel}")
async def change_campaign(request: web.Request) -> web.Response:
    return await _act(request, request.match_info["action"])
