"""Twilio's webhooks, whatever the product: the signed form, the public URL, the TwiML answer."""

from __future__ import annotations

from aiohttp import web

from channels import twilio_common
from gateway.errors import ApiError
from gateway.keys import SETTINGS

TWILIO_SIGNATURE = "X-Twilio-Signature"


async def signed_form(request: web.Request) -> tuple[bytes, dict[str, str]]:
    """The form, if Twilio signed it: forged or unsigned requests are refused, nothing stored.

    Twilio signs the URL it called, which behind a proxy is not the one we see: it is rebuilt
    from SWITCHBOARD_PUBLIC_URL and the path and query of this request.
    """
    settings = request.app[SETTINGS]
    if not settings.twilio_auth_token or not settings.public_url:
        raise ApiError(
            403,
            "twilio_disabled",
            "Twilio is not configured (SWITCHBOARD_TWILIO_AUTH_TOKEN, SWITCHBOARD_PUBLIC_URL).",
        )
    body = await request.read()
    try:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    except ValueError:  # an unreadable body cannot carry a valid signature; nothing is kept
        raise ApiError(400, "invalid_payload", "The body is not a readable form.") from None
    url = public_url(request, request.path_qs)
    if not twilio_common.verify(
        settings.twilio_auth_token, url, form, request.headers.get(TWILIO_SIGNATURE)
    ):
        raise ApiError(403, "invalid_signature", "The X-Twilio-Signature does not match.")
    return body, form


def public_url(request: web.Request, path_qs: str) -> str:
    """Our address as providers call it (SWITCHBOARD_PUBLIC_URL) for a path of ours."""
    return (request.app[SETTINGS].public_url or "").rstrip("/") + path_qs


def twiml(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/xml")
