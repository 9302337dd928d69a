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
    account_sid: str, auth_token: str, api_url: str, timeout: float = REST_TIMEOUT_SECONDS
) -> tuple[Client, AsyncTwilioHttpClient]:
    """The `twilio` library's REST client on its asyncio transport, aimed at `api_url`.

    Call inside a running loop; the caller closes the returned HTTP client when done. Its
    connections are pooled, so one client serves many requests.
    """
    http = _FormEncodedHttpClient(pool_connections=False)
    http.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    client = Client(account_sid, auth_token, http_client=http)
    client.api.base_url = api_url.rstrip("/")
    return client, http


class _FormEncodedHttpClient(AsyncTwilioHttpClient):
    """The library's asyncio transport, made to honour its timeout and to cost less per request.

    The library's own `request` hands aiohttp `timeout=None` whenever a call names none (every
    call the REST resources make), which aiohttp reads as "no timeout at all": a Twilio that
    accepts the connection and never answers would hold a send's slot for ever. Here a call
    without a timeout of its own gets the session's (`rest_client`'s `timeout`).

    The rest is cost, which a campaign pays once per message on the event loop: the form body
    goes already encoded (handed a dict, aiohttp builds a multipart writer and draws a random
    boundary from the OS only to urlencode it); the credentials go as a header encoded once;
    the library's dozen log lines per request (the response's headers among them) are only
    formatted when someone will read them; and no copy of each request is kept for the
    library's own tests.
    """

    _authorization: tuple[tuple[str, str], str] | None = None

    async def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the library calls it so)
        allow_redirects: bool = False,
    ) -> Response:
        assert self.session is not None, "rest_client() gives the client its session"
        headers = dict(headers or {})
        if auth is not None:
            headers["Authorization"] = self._basic(auth)
        body: Any = data
        if isinstance(data, dict):
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = urlencode(data, doseq=True).encode()
        request = {"method": method.upper(), "url": url, "params": params, "data": body}
        if self.logger.isEnabledFor(logging.INFO):
            self.log_request({**request, "headers": headers})
        if timeout is not None:
            request["timeout"] = aiohttp.ClientTimeout(total=timeout)
        async with self.session.request(
            **request,  # type: ignore[arg-type]
            headers=headers,
            allow_redirects=allow_redirects,
        ) as answer:
            response = Response(answer.status, await answer.text(), answer.headers)
        if self.logger.isEnabledFor(logging.INFO):
            self.log_response(answer.status, response)
        return response

    def _basic(self, auth: tuple[str, str]) -> str:
        """The Basic credentials header, encoded once for the client's one account."""
        if self._authorization is None or self._authorization[0] != auth:
            login = f"{auth[0]}:{auth[1]}".encode()
            self._authorization = (auth, "Basic " + base64.b64encode(login).decode("ascii"))
        return self._authorization[1]


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
