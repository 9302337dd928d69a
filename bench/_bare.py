"""The baseline for `bench.ingest`: a bare aiohttp app that parses the JSON body and answers 200.

`python -m bench._bare --host 127.0.0.1 --port P` — one POST route at the gateway's inbound path,
no middleware, no database, no access log: what aiohttp plus `json.loads` cost on this machine.
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

PATH = "/api/v1/inbound"


async def inbound(request: web.Request) -> web.Response:
    data = json.loads(await request.read())
    return web.json_response({"ok": True, "external_id": data.get("external_id")})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post(PATH, inbound)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
