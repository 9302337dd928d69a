"""A stand-in for Twilio's REST API on loopback, driven by the real `twilio` client.

It speaks the documented wire format: HTTP Basic auth with the Account SID and Auth Token,
form-encoded parameters, and JSON resources (`POST /2010-04-01/Accounts/{Sid}/Calls.json`,
`…/Messages.json`), and media behind the same auth (`GET …/Messages/{Sid}/Media/{Sid}`).
It records what it received and can be told to fail, so tests assert what Twilio would see.
`python -m tests.stubs.twilio_api --port N` runs it on its own (the outbox benchmark).
"""

from __future__ import annotations

import argparse
import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class TwilioApiStub:
    account_sid: str
    auth_token: str
    calls: list[dict[str, str]] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    # Media the stub serves: path below the account (`Messages/MM…/Media/ME…`) → (type, bytes).
    media: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    # Every request to Messages.json, answered or failed, in order (for "how many tries").
    message_attempts: int = 0
    # Status codes to answer with before succeeding, e.g. [500] for one outage.
    failures: list[int] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Calls.json", self._create_call)
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create_message)
        app.router.add_get("/2010-04-01/Accounts/{sid}/{media:Messages/.+/Media/.+}", self._media)
        app.router.add_get("/_count", self._count)  # not Twilio's: for the benchmark
        return app

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": len(self.messages), "calls": len(self.calls)})

    def media_url(self, base_url: str, message_sid: str, media_sid: str) -> str:
        account = f"{base_url}/2010-04-01/Accounts/{self.account_sid}"
        return f"{account}/Messages/{message_sid}/Media/{media_sid}"

    async def _create_message(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        self.message_attempts += 1
        if self.failures:
            status = self.failures.pop(0)
            return _error(status, 20500 if status >= 500 else 21211, "Stubbed failure")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if not form.get("To") or not (form.get("From") or form.get("MessagingServiceSid")):
            return _error(400, 21604, "A 'To' and a 'From' or 'MessagingServiceSid' are required")
        self.messages.append(form)
        sid = "SM" + secrets.token_hex(16)
        return web.json_response(_message_resource(self.account_sid, sid, form), status=201)

    async def _media(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        found = self.media.get(request.match_info["media"])
        if found is None:
            return _error(404, 20404, "The requested resource was not found")
        content_type, data = found
        return web.Response(body=data, content_type=content_type)

    async def _create_call(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        if self.failures:
            status = self.failures.pop(0)
            return _error(status, 20500 if status >= 500 else 21211, "Stubbed failure")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.calls.append(form)
        sid = "CA" + secrets.token_hex(16)
        return web.json_response(_call_resource(self.account_sid, sid, form), status=201)

    def _authorised(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return request.headers.get("Authorization") == f"Basic {expected}"


def _call_resource(account_sid: str, sid: str, form: dict[str, str]) -> dict[str, Any]:
    return {
        "sid": sid,
        "account_sid": account_sid,
        "to": form.get("To"),
        "from": form.get("From"),
        "status": "queued",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "uri": f"/2010-04-01/Accounts/{account_sid}/Calls/{sid}.json",
    }


def _message_resource(account_sid: str, sid: str, form: dict[str, str]) -> dict[str, Any]:
    return {
        "sid": sid,
        "account_sid": account_sid,
        "to": form.get("To"),
        "from": form.get("From"),
        "messaging_service_sid": form.get("MessagingServiceSid"),
        "body": form.get("Body"),
        "status": "accepted" if form.get("MessagingServiceSid") else "queued",
        "direction": "outbound-api",
        "num_segments": "1",
        "num_media": "0",
        "api_version": "2010-04-01",
        "error_code": None,
        "error_message": None,
        "uri": f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json",
    }


def _error(status: int, code: int, message: str) -> web.Response:
    body = {"code": code, "message": message, "more_info": "", "status": status}
    return web.json_response(body, status=status)


def main() -> None:
    parser = argparse.ArgumentParser(description="Twilio REST API stub on loopback")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--account-sid", default="AC" + "0" * 32)
    parser.add_argument("--auth-token", default="0" * 32)
    args = parser.parse_args()
    stub = TwilioApiStub(args.account_sid, args.auth_token)
    web.run_app(stub.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
