"""The REST client every Twilio channel shares (`channels.twilio_common.rest_client`)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from channels.twilio_common import rest_client

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "secret-token"


@pytest.fixture
async def silent_twilio() -> AsyncIterator[str]:
    """A Twilio that takes the connection and the request and never answers."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for writer in connections:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_twilio_that_never_answers_times_out_instead_of_holding_the_send(
    silent_twilio: str,
) -> None:
    # The library asks aiohttp for "no timeout" when a call names none; ours must still apply.
    client, http = rest_client(ACCOUNT_SID, AUTH_TOKEN, silent_twilio, timeout=0.3)
    send = asyncio.create_task(
        client.api.v2010.account.messages.create_async(
            to="+4915112345678", from_="+4930123456", body="Hello"
        )
    )
    try:
        finished, _ = await asyncio.wait({send}, timeout=10)
        assert send in finished, "the send was still waiting for Twilio after 10 s"
        assert isinstance(send.exception(), TimeoutError)
    finally:
        send.cancel()
        await http.close()


async def test_a_message_reaches_twilio_as_a_form_with_the_accounts_basic_credentials() -> None:
    seen: list[tuple[str, str | None, dict[str, str]]] = []

    async def messages(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append((request.path, request.headers.get("Authorization"), dict(form)))  # type: ignore[arg-type]
        return web.json_response({"sid": "SM" + "1" * 32, "status": "queued"}, status=201)

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", messages)
    async with TestServer(app, host="127.0.0.1") as server:
        client, http = rest_client(ACCOUNT_SID, AUTH_TOKEN, str(server.make_url("")))
        try:
            for body in ("Hello", "Grüße & more"):
                message = await client.api.v2010.account.messages.create_async(
                    to="+4915112345678", from_="+4930123456", body=body
                )
                assert message.sid == "SM" + "1" * 32
        finally:
            await http.close()
    credentials = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert seen == [
        (
            f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
            credentials,
            {"To": "+4915112345678", "From": "+4930123456", "Body": body},
        )
        for body in ("Hello", "Grüße & more")
    ]
