"""A stand-in for Telegram's Bot API on loopback, driven by the real `python-telegram-bot`.

It speaks the documented wire format: `POST /bot<token>/<method>` with JSON, form or multipart
parameters, answered `{"ok": true, "result": …}` or `{"ok": false, "error_code",
"description"}`; files at `GET /file/bot<token>/<file_path>`. It records what the bot sent, can
be told to fail, and hands out queued updates through `getUpdates` (long polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_USER = {
    "id": 7000000001,
    "is_bot": True,
    "first_name": "Switchboard Support",
    "username": "switchboard_support_bot",
    "can_join_groups": False,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}


@dataclass
class TelegramApiStub:
    token: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    # Status codes to answer sendMessage with before succeeding, e.g. [502] for one outage.
    failures: list[int] = field(default_factory=list)
    send_attempts: int = 0
    # file_id → (file_path, bytes)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)
    webhook_deleted: bool = False
    confirmed_offset: int = 0
    _message_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(500))
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        return app

    def push(self, update: dict[str, Any]) -> None:
        """An update for the bot to fetch with getUpdates."""
        self.updates.append(update)
        self._arrived.set()

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        params = await _params(request)
        method = request.match_info["method"].lower()
        handler = {
            "getme": self._get_me,
            "sendmessage": self._send_message,
            "getfile": self._get_file,
            "deletewebhook": self._delete_webhook,
            "getupdates": self._get_updates,
        }.get(method)
        if handler is None:
            return _error(404, "Not Found")
        return await handler(params)

    async def _get_me(self, params: dict[str, Any]) -> web.Response:
        return _ok(BOT_USER)

    async def _send_message(self, params: dict[str, Any]) -> web.Response:
        self.send_attempts += 1
        if self.failures:
            status = self.failures.pop(0)
            if status == 400:
                return _error(400, "Bad Request: chat not found")
            if status == 403:
                return _error(403, "Forbidden: bot was blocked by the user")
            return _error(status, "Bad Gateway" if status == 502 else "Internal Server Error")
        self.sent.append(params)
        chat_id = int(params["chat_id"])
        return _ok(
            {
                "message_id": next(self._message_ids),
                "from": BOT_USER,
                "chat": {"id": chat_id, "type": "private"},
                "date": int(time.time()),
                "text": params.get("text", ""),
            }
        )

    async def _get_file(self, params: dict[str, Any]) -> web.Response:
        found = self.files.get(str(params.get("file_id")))
        if found is None:
            return _error(400, "Bad Request: invalid file_id")
        path, data = found
        return _ok(
            {
                "file_id": params["file_id"],
                "file_unique_id": "u" + str(params["file_id"])[-8:],
                "file_size": len(data),
                "file_path": path,
            }
        )

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        for path, data in self.files.values():
            if path == request.match_info["path"]:
                return web.Response(body=data, content_type="application/octet-stream")
        return _error(404, "Not Found")

    async def _delete_webhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook_deleted = True
        return _ok(True)

    async def _get_updates(self, params: dict[str, Any]) -> web.Response:
        offset = int(params.get("offset") or 0)
        self.confirmed_offset = max(self.confirmed_offset, offset)
        pending = [u for u in self.updates if u["update_id"] >= offset]
        if not pending:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                # Telegram may answer a long poll early with nothing; a short wait lets the
                # stub's server stop promptly when a test ends.
                wait = min(float(params.get("timeout") or 0), 0.5)
                await asyncio.wait_for(self._arrived.wait(), wait)
            pending = [u for u in self.updates if u["update_id"] >= offset]
        return _ok(pending)


async def _params(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        body = await request.read()
        return json.loads(body) if body else {}
    if request.method == "GET":
        return dict(request.query)
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str) -> web.Response:
    return web.json_response(
        {"ok": False, "error_code": status, "description": description}, status=status
    )
