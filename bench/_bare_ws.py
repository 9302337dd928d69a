"""The baseline for `bench.screenpop`: a bare aiohttp app that forwards a POST to a WebSocket.

`python -m bench._bare_ws --host 127.0.0.1 --port P` — no middleware, no database, no access log:

- `GET /ws?agent=N`: an agent's WebSocket. `{"type": "presence", "state": S}` is answered with
  `{"type": "presence", "state": S}` (as the gateway does), anything else is ignored.
- `POST /ring`: the CTI form (`event`, `from`, `to`, `callId`, `user[]`) parsed as the gateway
  parses it (`request.post()`). `newCall` sends a small `screen_pop` with the `call` to each named
  agent's socket, `hangup` a `pop_withdrawn`; then 200 `{}`.

What aiohttp costs on this machine for "webhook in, WebSocket message out".
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from aiohttp import WSMsgType, web

SOCKETS = web.AppKey("sockets", dict[str, set[web.WebSocketResponse]])


async def agent_socket(request: web.Request) -> web.WebSocketResponse:
    agent = request.query.get("agent", "")
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    sockets = request.app[SOCKETS]
    sockets[agent].add(socket)
    try:
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("type") == "presence":
                await socket.send_json({"type": "presence", "state": data.get("state")})
    finally:
        sockets[agent].discard(socket)
    return socket


async def ring(request: web.Request) -> web.Response:
    form = await request.post()
    event = form.get("event")
    call_id = form.get("callId")
    if event == "newCall":
        message = {
            "type": "screen_pop",
            "reason": "incoming_call",
            "call": {"id": call_id, "from": form.get("from"), "to": form.get("to")},
        }
    elif event == "hangup":
        message = {"type": "pop_withdrawn", "id": call_id}
    else:
        return web.json_response({})
    text = json.dumps(message)
    sockets = request.app[SOCKETS]
    for agent in form.getall("user[]", []):
        for socket in list(sockets.get(str(agent), ())):
            if not socket.closed:
                await socket.send_str(text)
    return web.json_response({})


def create_app() -> web.Application:
    app = web.Application()
    app[SOCKETS] = defaultdict(set)
    app.router.add_get("/ws", agent_socket)
    app.router.add_post("/ring", ring)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
