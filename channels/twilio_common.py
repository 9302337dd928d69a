"""What every Twilio channel shares: webhook signatures and the REST client.

Voice (`channels.twilio_voice`) and messaging (`channels.twilio_sms`) are signed the same way and
talk to the same REST API with the same account, so both use these two helpers.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

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
    http = AsyncTwilioHttpClient(pool_connections=False)
    # The library's own pooled session has no timeout of its own (aiohttp's 5 minutes).
    http.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REST_TIMEOUT_SECONDS))
    client = Client(account_sid, auth_token, http_client=http)
    client.api.base_url = api_url.rstrip("/")
    return client, http
