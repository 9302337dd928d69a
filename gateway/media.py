"""`GET /api/v1/events/{id}/media/{n}`: a file a customer sent, fetched from the provider now.

SMS/MMS media and Telegram files stay with the provider until an agent opens one; then it is
fetched with our credentials (Twilio's account, the bot's token) and handed over as a download
only (`application/octet-stream`, `nosniff`, `attachment`), never rendered as a page of ours.
"""

from __future__ import annotations

from aiohttp import web
from telegram.error import TelegramError

from channels import telegram
from channels.twilio_common import MediaError, fetch_media
from gateway.api import authenticate, path_id
from gateway.errors import ApiError, not_found
from gateway.keys import DATABASE, SETTINGS, TELEGRAM_BOT
from timeline.models import TimelineEvent

# A customer's file is passed through memory once; providers cap theirs lower (MMS: 5 MB,
# Telegram bots: 20 MB).
MAX_MEDIA_BYTES = 25 * 1024 * 1024


routes = web.RouteTableDef()


@routes.get("/api/v1/events/{id}/media/{n}")
async def event_media(request: web.Request) -> web.Response:
    await authenticate(request)
    async with request.app[DATABASE].reading() as session:
        event = await session.get(TimelineEvent, path_id(request))
    if event is None:
        raise not_found("event")
    attachments = list(event.attachments)
    n = path_id(request, "n")
    if not 0 <= n < len(attachments):
        raise ApiError(404, "not_found", "The event has no attachment with that number.")
    attachment = attachments[n]
    data = await _fetch(request, event.channel, attachment.get("url"))
    filename = str(attachment.get("filename") or f"media-{n}").replace('"', "")
    return web.Response(
        body=data,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _fetch(request: web.Request, channel: str, url: str | None) -> bytes:
    settings = request.app[SETTINGS]
    file_id = telegram.file_id_of(url)
    if file_id is not None:
        bot = request.app.get(TELEGRAM_BOT)
        if bot is None:
            raise ApiError(409, "telegram_disabled", "Telegram is not configured.")
        try:
            return await bot.fetch_file(file_id, MAX_MEDIA_BYTES)
        except (TelegramError, ValueError) as error:  # a refused file id, a dead link, too big
            raise ApiError(502, "provider_error", f"Telegram: {type(error).__name__}") from None
    if url and channel in ("sms", "whatsapp"):
        if not (settings.twilio_account_sid and settings.twilio_auth_token):
            raise ApiError(409, "twilio_disabled", "The Twilio account is not configured.")
        try:
            _type, data = await fetch_media(
                settings.twilio_account_sid,
                settings.twilio_auth_token,
                settings.twilio_api_url,
                url,
                MAX_MEDIA_BYTES,
            )
        except MediaError as error:
            raise ApiError(error.status, "provider_error", error.detail) from None
        return data
    raise ApiError(404, "not_found", "This attachment is not kept by a provider we can ask.")
