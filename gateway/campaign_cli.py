"""`switchboard campaign list | show | create | edit | start | pause | resume | cancel`.

Straight on the database, like `switchboard agent add`: a running gateway's dispatcher sees a
started or resumed campaign at its next poll. `create` reads the API's JSON body
(`POST /api/v1/campaigns`) from a file or stdin, `edit` the changes to a draft
(`PATCH /api/v1/campaigns/{id}`); `show --follow` draws a progress bar until the
campaign is completed or cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.orm import Session

from gateway.campaign_routes import (
    campaign_fields,
    create_unit,
    edit_unit,
    edited_fields,
    with_counts,
)
from gateway.errors import ApiError
from gateway.serialize import JSON
from routing.templates import InvalidTemplate
from timeline import campaigns
from timeline.db import Database
from timeline.models import Campaign

FINAL = ("completed", "cancelled")
BAR = 30


def add_parser(commands: Any) -> None:
    campaign = commands.add_parser("campaign", help="outbound campaigns")
    actions = campaign.add_subparsers(dest="campaign_command")
    actions.add_parser("list", help="the newest campaigns with their progress")
    show = actions.add_parser("show", help="one campaign as JSON, or its progress (--follow)")
    show.add_argument("id", type=int)
    show.add_argument("--follow", action="store_true", help="a progress bar until it is done")
    create = actions.add_parser(
        "create", help="a draft campaign from the API's JSON body (file, or - for stdin)"
    )
    create.add_argument("body", nargs="?", default="-")
    edit = actions.add_parser(
        "edit", help="change a draft or scheduled campaign: the API's JSON changes (file or -)"
    )
    edit.add_argument("id", type=int)
    edit.add_argument("body", nargs="?", default="-")
    for action in campaigns.TRANSITIONS:
        actions.add_parser(action, help=f"{action} a campaign").add_argument("id", type=int)


async def run(database_url: str, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    database = Database(database_url)
    try:
        await database.upgrade()
        return await _command(database, args, out)
    except ApiError as error:
        print(f"switchboard: {error.detail}", file=sys.stderr)
        return 1
    except InvalidTemplate as error:
        print(f"switchboard: template error: {error}", file=sys.stderr)
        return 1
    finally:
        await database.dispose()


async def _command(database: Database, args: argparse.Namespace, out: TextIO) -> int:
    command = args.campaign_command
    if command == "list":
        for campaign in await database.read(_listing):
            print(_line(campaign), file=out)
        return 0
    if command == "create":
        body = _read_body(args.body)
        fields = campaign_fields(body)
        created = await database.run(create_unit, fields, body.get("segment_id"))
        print(json.dumps(created), file=out)
        return 0
    if command == "edit":
        stored = await database.read(_campaign, args.id)
        if stored is None:
            raise ApiError(404, "not_found", f"No campaign has the id {args.id}.")
        fields, segment_id = edited_fields(stored, _read_body(args.body))
        print(json.dumps(await database.run(edit_unit, args.id, fields, segment_id)), file=out)
        return 0
    if command == "show":
        return await _show(database, args.id, args.follow, out)
    row, changed = await database.run(campaigns.transition, args.id, command)
    if row is None:
        raise ApiError(404, "not_found", f"No campaign has the id {args.id}.")
    if not changed:
        raise ApiError(409, "invalid_transition", f"The campaign is {row.status}.")
    print(json.dumps(await database.read(with_counts, args.id)), file=out)
    return 0


def _read_body(source: str) -> dict[str, Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    try:
        body = json.loads(text)
    except ValueError:
        raise ApiError(400, "invalid_json", "The campaign body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_payload", "The campaign body must be a JSON object.")
    return body


def _campaign(session: Session, campaign_id: int) -> Campaign | None:
    return session.get(Campaign, campaign_id)


def _listing(session: Any) -> list[JSON]:
    return [with_counts(session, c.id) or {} for c in campaigns.campaigns(session, limit=50)]


def _line(campaign: JSON) -> str:
    counts = campaign["counts"]
    return (
        f"{campaign['id']:>5}  {campaign['status']:<10} {campaign['channel']:<9} "
        f"{counts['sent']:>7}/{counts['targeted']:<7} {campaign['name']}"
    )


async def _show(database: Database, campaign_id: int, follow: bool, out: TextIO) -> int:
    campaign = await database.read(with_counts, campaign_id)
    if campaign is None:
        raise ApiError(404, "not_found", f"No campaign has the id {campaign_id}.")
    if not follow:
        print(json.dumps(campaign), file=out)
        return 0
    while True:
        end = "\n" if campaign["status"] in FINAL or not out.isatty() else "\r"
        print(progress_bar(campaign), end=end, file=out, flush=True)
        if campaign["status"] in FINAL:
            return 0
        await asyncio.sleep(1.0)
        campaign = await database.read(with_counts, campaign_id) or campaign


def progress_bar(campaign: JSON) -> str:
    """`[#########.....]  512/1500 sent, 900 queued, 2 failed, 3 skipped  running`."""
    counts = campaign["counts"]
    targeted = counts["targeted"]
    skipped = sum(counts["skipped"].values())
    done = counts["sent"] + counts["failed"] + skipped
    filled = min(BAR, BAR * done // targeted) if targeted else 0
    return (
        f"[{'#' * filled}{'.' * (BAR - filled)}] {counts['sent']}/{targeted} sent, "
        f"{counts['queued']} queued, {counts['failed']} failed, {skipped} skipped  "
        f"{campaign['status']}"
    )
