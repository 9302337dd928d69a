"""What every Twilio channel shares: webhook signatures and the REST client.

Voice (`channels.twilio_voice`) and messaging (`channels.twilio_sms`) are signed the same way and
talk to the same REST API with the same account, so both use these two helpers.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

# The library logs ten lines at INFO for every request it makes; one per message is ours to log.
logging.getLogger("twilio").setLevel(logging.WARNING)

# Long enough for Twilio's slowest answers; a send that takes longer is retried by the outbox.
REST_TIMEOUT_SECONDS = 30.0


def verify(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    """Whether `signature` (`X-Twilio-Signature`) is Twilio's signature of this request.

    `url` must be the URL Twilio requested, exactly as configured in the Twilio console:
    scheme, host, path and query string all enter the signature. Behind a TLS terminator or a
    reverse proxy that URL is not the one the gateway sees (`http://127.0.0.1:8080/…` instead of
    `https://switchboard.example.com/…`), so the gateway computes it from
    `SWITCHBOARD_PUBLIC_URL` + request path + query string, never from the request's Host.
    `params` are the POSTed form fields (an aiohttp `MultiDictProxy` works, repeated keys too).
    An empty `auth_token` verifies nothing: an HMAC with an empty key anyone can compute.
    """
    if not auth_token or not signature:
        return False
    # The library follows Twilio's "Webhooks Security" algorithm (HMAC-SHA1 over the URL and the
    # sorted key/value pairs), compares in constant time, and accepts the URL with or without
    # its port, since Twilio signs either depending on how the URL was configured.
    return bool(RequestValidator(auth_token).validate(url, params, signature))


def rest_client(
    account_sid: str, auth_token: str, api_url: str
) -> tuple[Client, AsyncTwilioHttpClient]:
    """The `twilio` library's REST client on its asyncio transport, aimed at `api_url`.

    Call inside a running loop; the caller closes the returned HTTP client when done. Its
    connections are pooled, so one client serves many requests.
    """
    http = _FormEncodedHttpClient(pool_connections=False)
    # The library's own pooled session has no timeout of its own (aiohttp's 5 minutes).
    http.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT_SECONDS))
    client = Client(account_sid, auth_token, http_client=http)
    client.api.base_url = api_url.rstrip("/")
    return client, http


class _FormEncodedHttpClient(AsyncTwilioHttpClient):
    """Sends the form body already encoded: handed a dict, aiohttp builds a multipart writer
    (and draws a random boundary from the OS) for every request only to urlencode it, which
    is most of what a campaign's send costs the event loop. The credentials go as a header,
    as aiohttp now wants them."""

    # The library formats a dozen log lines per request (the response's headers among them)
    # before the logger drops them; only format them when someone will read them.
    def log_request(self, kwargs: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_request(kwargs)

    def log_response(self, status_code: int, response: Any) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_response(status_code, response)

    async def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Response:
        headers = dict(headers or {})
        auth = kwargs.pop("auth", None)
        if auth is not None:
            login = f"{auth[0]}:{auth[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(login).decode("ascii")
        body: Any = data
        if isinstance(data, dict):
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = urlencode(data, doseq=True).encode()
        return await super().request(method, url, params, body, headers, **kwargs)


class MediaError(Exception):
    """The provider would not hand over a media file; `status` is what to answer the agent."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def fetch_media(
    account_sid: str, auth_token: str, api_url: str, url: str, max_bytes: int
) -> tuple[str, bytes]:
    """A message's media file (content type, bytes), fetched with the account's credentials.

    Only from the configured API's own address: the URL came in a webhook, and the account's
    credentials must never be sent anywhere else. Twilio answers with a redirect to its media
    store, which aiohttp follows without the Authorization header (never sent to another host).
    """
    if not url.startswith(api_url.rstrip("/") + "/"):
        raise MediaError(404, "The media file is not at the configured Twilio API.")
    timeout = aiohttp.ClientTimeout(total=REST_TIMEOUT_SECONDS)
    auth = {"Authorization": aiohttp.encode_basic_auth(account_sid, auth_token)}
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, headers=auth) as response,
        ):
            if response.status == 404:
                raise MediaError(404, "Twilio no longer has this media file.")
            if response.status >= 400:
                raise MediaError(502, f"Twilio answered {response.status} for the media file.")
            data = await response.content.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise MediaError(502, "The media file is larger than this server accepts.")
            return response.content_type, data
    except (aiohttp.ClientError, TimeoutError) as error:
        raise MediaError(502, f"Twilio could not be reached: {type(error).__name__}") from None
