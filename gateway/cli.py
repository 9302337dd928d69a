"""`switchboard serve | migrate | agent add | ingest-email | campaign …` (DESIGN.md, "Stable
contract")."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
from collections.abc import Sequence

from aiohttp import web
from sqlalchemy.engine import make_url

from channels import InvalidPayload
from gateway import campaign_cli
from gateway.agents import NewAgent, create_agent
from gateway.app import AccessLogger, create_app
from gateway.bus import open_bus
from gateway.email_intake import EmailIntake, attachment_store
from gateway.errors import ApiError
from gateway.ingest import IngestError, Ingestor
from gateway.keys import WRITER_YIELDS
from gateway.serialize import agent_json
from gateway.settings import Settings, SettingsError
from routing.capacity import DEFAULT_CAPACITY, Capacity
from timeline.db import Database, confine_to_one_cpu
from timeline.models import Role

# sysexits.h: what an MTA piping mail to us understands (bounce it, or retry it later).
EX_DATAERR = 65
EX_TEMPFAIL = 75
GIL_SWITCH_SECONDS = 0.0005
# Net new objects between young collections, once started (the interpreter's default: 700).
YOUNG_COLLECTION_EVERY = 10_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"switchboard: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return _serve(settings, args.host, args.port)
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
        print(f"switchboard: database at head ({_safe_url(settings.database_url)})")
        return 0
    if args.command == "agent" and args.agent_command == "add":
        return asyncio.run(_agent_add(settings, args))
    if args.command == "campaign" and args.campaign_command:
        return asyncio.run(campaign_cli.run(settings.database_url, args))
    if args.command == "ingest-email":
        return asyncio.run(_ingest_email(settings, sys.stdin.buffer.read()))
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)

    commands.add_parser("migrate", help="upgrade the database schema to the newest version")

    commands.add_parser(
        "ingest-email",
        help="take one raw RFC 5322 message from stdin (MTA piping); exit 65: unreadable "
        "(journaled as rejected), 75: try again later",
    )

    campaign_cli.add_parser(commands)

    agent = commands.add_parser("agent", help="manage agents")
    agent_commands = agent.add_subparsers(dest="agent_command")
    add = agent_commands.add_parser("add", help="create an agent; prints it with a new API token")
    add.add_argument("--name", required=True)
    add.add_argument("--email", required=True)
    add.add_argument("--password", required=True)
    add.add_argument("--role", choices=[r.value for r in Role], default=Role.AGENT.value)
    add.add_argument("--skills", default="", help="comma-separated, e.g. billing,german")
    add.add_argument("--extension", default=None, help="phone extension, e.g. 201")
    add.add_argument(
        "--capacity",
        default=None,
        type=_capacity,
        help="open tickets at once: 3, or per channel: sms=3,voice=1,email=5",
    )
    return parser


def _capacity(text: str) -> Capacity:
    try:
        return Capacity.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _serve(settings: Settings, host: str, port: int) -> int:
    database = _safe_url(settings.database_url)

    def announce(_aiohttp_banner: str) -> None:
        # run_app calls this once the socket is listening, so the address is already usable.
        print(
            f"Switchboard is listening on http://{host}:{port}/ (database: {database})", flush=True
        )

    # The SQLite writer thread runs long stretches of Python; at the default 5 ms a request
    # waiting for the GIL waits that long at every hand-off (each database call releases it).
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    app = create_app(settings)
    if settings.loop_cpu and make_url(settings.database_url).get_backend_name() == "sqlite":
        # This thread runs the event loop and starts the others: all on one core, loop first.
        app[WRITER_YIELDS] = confine_to_one_cpu() is not None
    app.on_startup.append(_freeze_startup_objects)
    web.run_app(app, host=host, port=port, access_log_class=AccessLogger, print=announce)
    return 0


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Once everything has started: what startup made (modules, mappers, the app and its
    services) lives as long as the process, so the garbage collector stops walking it. Each
    full collection then looks only at what came after (in bench.email the walks had taken
    a third of the gateway's CPU).

    And from then on it collects less often: a served request's garbage is nearly all freed
    by reference counting (a campaign of 30,000 messages left some 5,000 objects in cycles),
    yet a young collection every 700 objects, and a full one every hundred of those (20 ms
    or more with the loop stopped), took 1.0-1.5 s of the gateway's CPU in that campaign,
    0.24 s at `YOUNG_COLLECTION_EVERY`, with the same peak memory."""
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)


async def _migrate(settings: Settings) -> None:
    database = Database(settings.database_url)
    try:
        await database.upgrade()
    finally:
        await database.dispose()


async def _agent_add(settings: Settings, args: argparse.Namespace) -> int:
    new = NewAgent(
        name=args.name,
        email=args.email,
        password=args.password,
        role=Role(args.role),
        skills=args.skills.split(","),
        extension=args.extension,
        capacity=args.capacity or DEFAULT_CAPACITY,
    )
    database = Database(settings.database_url)
    try:
        await database.upgrade()
        async with database.transaction() as session:
            agent, token = await session.run_sync(create_agent, new)
    except ApiError as error:
        print(f"switchboard: {error.detail}", file=sys.stderr)
        return 1
    finally:
        await database.dispose()
    print(json.dumps({**agent_json(agent), "token": token}))
    return 0


async def _ingest_email(settings: Settings, raw: bytes) -> int:
    """The same path as `POST /api/v1/inbound/email` and IMAP intake; prints the ids."""
    database = Database(settings.database_url)
    bus = await open_bus(settings.redis_url)
    ingestor = Ingestor(database, bus, settings)
    try:
        await database.upgrade()
        await ingestor.start()
        intake = EmailIntake(ingestor, database, attachment_store(settings))
        result = await intake.receive(raw)
    except InvalidPayload as error:
        print(f"switchboard: message rejected: {error.detail}", file=sys.stderr)
        return EX_DATAERR
    except IngestError as error:
        print(f"switchboard: not stored (journal entry {error.journal_id})", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        await ingestor.stop()
        await bus.close()
        await database.dispose()
    print(json.dumps(result.to_json()))
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    raise SystemExit(main())
