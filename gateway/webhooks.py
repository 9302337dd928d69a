"""What every inbound webhook route does once the provider is authenticated: ingest or reject.

A payload that is authentic but cannot be understood is journaled as rejected (with why) and
answered 400; one that was understood goes down the one ingest path.
"""

from __future__ import annotations

from typing import NoReturn

from aiohttp import web

from channels import InvalidPayload
from gateway.errors import bad_request, ingest_failed
from gateway.ingest import IngestError, IngestResult
from gateway.keys import INGESTOR
from timeline.events import InboundEvent


async def reject(
    request: web.Request, channel: str, body: bytes, error: InvalidPayload
) -> NoReturn:
    await request.app[INGESTOR].reject(
        channel=channel, payload=body, content_type=request.content_type, reason=error.detail
    )
    raise bad_request(error.code, error.detail)


async def ingest(request: web.Request, event: InboundEvent, body: bytes) -> IngestResult:
    try:
        return await request.app[INGESTOR].ingest(
            event, payload=body, content_type=request.content_type
        )
    except IngestError as error:
        raise ingest_failed(error.journal_id) from None
