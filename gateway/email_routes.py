"""E-mail over HTTP: raw messages from an MTA (`POST /api/v1/inbound/email`) and attachments.

The inbound route is the same path as IMAP intake, for MTA piping (e.g. Postfix `pipe` or a
`curl --data-binary @-` in an alias). Attachments are served as downloads only
(`application/octet-stream`, `nosniff`, `attachment`): a customer's file is never rendered as
a page of ours.
"""

from __future__ import annotations

from aiohttp import web

from channels import InvalidPayload
from gateway.api import authenticate
from gateway.errors import ApiError, bad_request, ingest_failed
from gateway.ingest import IngestError
from gateway.keys import ATTACHMENTS, EMAIL

routes = web.RouteTableDef()


@routes.post("/api/v1/inbound/email")
async def inbound_email(request: web.Request) -> web.Response:
    await authenticate(request)
    raw = await request.read()
    try:
        result = await request.app[EMAIL].receive(raw)
    except InvalidPayload as error:
        raise bad_request(error.code, error.detail) from None
    except IngestError as error:
        raise ingest_failed(error.journal_id) from None
    return web.json_response(result.to_json(), status=202)


@routes.get("/api/v1/attachments/{digest}")
async def attachment(request: web.Request) -> web.FileResponse:
    await authenticate(request)
    path = request.app[ATTACHMENTS].path(request.match_info["digest"])
    if path is None:
        raise ApiError(404, "not_found", "No such attachment.")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": "attachment",
            "X-Content-Type-Options": "nosniff",
        },
    )
