"""A stand-in for Twilio's REST API on loopback, driven by the real `twilio` client.

It speaks the documented wire format: HTTP Basic auth with the Account SID and Auth Token,
form-encoded parameters, and JSON resources (`POST /2010-04-01/Accounts/{Sid}/Calls.json`).
It records what it received and can be told to fail, so tests assert what Twilio would see.
"""

from __future__ import annotations

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
    # Status codes to answer with before succeeding, e.g. [500] for one outage.
    failures: list[int] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Calls.json", self._create_call)
        return app

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


def _error(status: int, code: int, message: str) -> web.Response:
    body = {"code": code, "message": message, "more_info": "", "status": status}
    return web.json_response(body, status=status)
