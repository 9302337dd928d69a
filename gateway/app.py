"""The aiohttp application factory: every resource with a lifetime lives in `cleanup_ctx`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractAccessLogger

from channels.asterisk import AmiListener
from channels.email.outbound import EmailSender
from channels.sending import Sender
from channels.telegram import BotAccount, TelegramBot, TelegramSender, poll
from channels.twilio_sms import TwilioSmsSender
from channels.webchat import WebchatSender
from gateway import (
    api,
    campaign_routes,
    desk,
    email_routes,
    media,
    outbox_routes,
    pages,
    routing_api,
    search,
    sms,
    telegram,
    telephony,
    wallboard,
    webchat,
    ws,
)
from gateway.auth import TokenCache
from gateway.bus import open_bus
from gateway.calls import CallDesk, signal_json
from gateway.campaigns import dispatching
from gateway.dispatch import Dispatcher
from gateway.email_intake import EmailIntake, attachment_store
from gateway.email_parsers import EmailParsers
from gateway.errors import error_middleware
from gateway.ingest import IngestError, Ingestor
from gateway.keys import (
    AGENT_SOCKETS,
    ATTACHMENTS,
    BUS,
    CALLS,
    DATABASE,
    DISPATCHER,
    EMAIL,
    INGESTOR,
    MESSAGE_STATUS,
    OPEN_SOCKETS,
    OUTBOX,
    REPLIES,
    SETTINGS,
    TELEGRAM_BOT,
    TOKENS,
    WRITER_YIELDS,
)
from gateway.mailboxes import MailboxWorker
from gateway.message_status import StatusAnnouncer
from gateway.outbox import OutboxWorker
from gateway.replies import Replies
from gateway.settings import Settings
from timeline.db import Database
from timeline.events import CallSignal

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[AGENT_SOCKETS] = Counter()
    app[OPEN_SOCKETS] = set()
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_bus_and_services)
    app.cleanup_ctx.append(_asterisk)
    app.cleanup_ctx.append(_telegram)
    app.cleanup_ctx.append(_outbox)
    app.cleanup_ctx.append(dispatching)
    app.cleanup_ctx.append(_email)
    app.cleanup_ctx.append(wallboard.sampling)
    app.on_shutdown.append(_close_sockets)
    app.add_routes(api.routes)
    app.add_routes(outbox_routes.routes)
    app.add_routes(email_routes.routes)
    app.add_routes(telephony.routes)
    app.add_routes(sms.routes)
    app.add_routes(telegram.routes)
    app.add_routes(media.routes)
    app.add_routes(webchat.routes)
    app.add_routes(search.routes)
    app.add_routes(desk.routes)
    app.add_routes(wallboard.routes)
    pages.setup(app)
    app.add_routes(ws.routes)
    app.add_routes(routing_api.routes)
    app.add_routes(campaign_routes.routes)
    app.router.add_get("/", _landing_page)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    database = Database(app[SETTINGS].database_url, writer_yields=app.get(WRITER_YIELDS, False))
    await database.upgrade()
    app[DATABASE] = database
    app[TOKENS] = TokenCache(database.sessions)
    yield
    await database.dispose()


async def _bus_and_services(app: web.Application) -> AsyncIterator[None]:
    bus = await open_bus(app[SETTINGS].redis_url)
    app[BUS] = bus
    dispatcher = Dispatcher(app[DATABASE], bus, app[SETTINGS].routing_file)
    await dispatcher.start()
    app[DISPATCHER] = dispatcher
    ingestor = Ingestor(app[DATABASE], bus, app[SETTINGS], dispatcher.config)
    await ingestor.start()
    app[INGESTOR] = ingestor
    calls = CallDesk(app[DATABASE], bus, app[SETTINGS], dispatcher.config)
    await calls.start()
    app[CALLS] = calls
    yield
    await calls.stop()
    await ingestor.stop()
    await dispatcher.stop()
    await bus.close()


async def _asterisk(app: web.Application) -> AsyncIterator[None]:
    """Follow an Asterisk PBX over AMI when one is configured (SWITCHBOARD_AMI_*)."""
    settings = app[SETTINGS]
    if not settings.ami_host:
        yield
        return
    desk = app[CALLS]

    async def on_signal(signal: CallSignal) -> None:
        # AMI has no single raw payload per call event; the journal keeps the signal itself.
        # A failure is journaled and logged by the desk; the listener carries on.
        with contextlib.suppress(IngestError):
            await desk.receive(signal, payload=signal_json(signal), content_type="application/json")

    listener = AmiListener(
        settings.ami_host,
        settings.ami_port,
        settings.ami_username or "",
        settings.ami_secret or "",
        on_signal,
    )
    running = asyncio.create_task(listener.run(), name="asterisk-ami")
    yield
    listener.stop()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


async def _outbox(app: web.Application) -> AsyncIterator[None]:
    """The outbox sender, with a sender for each channel configured to send."""
    settings = app[SETTINGS]
    senders = senders_for(settings, app.get(TELEGRAM_BOT))
    senders["webchat"] = WebchatSender(app[BUS].publish)
    announcer = StatusAnnouncer(app[DATABASE], app[BUS])
    app[MESSAGE_STATUS] = announcer
    worker = OutboxWorker(app[DATABASE], senders, settings.outbox, on_status=announcer)
    app[OUTBOX] = worker
    app[REPLIES] = Replies(
        app[DATABASE],
        senders,
        worker,
        settings.channels,
        settings.default_region,
        settings.email_auto_ack,
    )
    app[DISPATCHER].replies = app[REPLIES]  # closed queues' automatic replies
    await worker.start()
    yield
    await worker.stop()
    for sender in senders.values():
        if isinstance(sender, TwilioSmsSender):
            await sender.close()


def senders_for(settings: Settings, telegram_bot: TelegramBot | None = None) -> dict[str, Sender]:
    """The channels this process can send on: each configured provider's sender."""
    senders: dict[str, Sender] = {}
    if settings.smtp is not None:
        senders["email"] = EmailSender(settings.smtp, settings.sent_folder)
    if settings.sms_account is not None:
        senders["sms"] = TwilioSmsSender(settings.sms_account)
    if telegram_bot is not None:
        senders["telegram"] = TelegramSender(telegram_bot)
    return senders


async def _telegram(app: web.Application) -> AsyncIterator[None]:
    """The Telegram bot (SWITCHBOARD_TELEGRAM_TOKEN), and long polling when configured."""
    settings = app[SETTINGS]
    if not settings.telegram_token:
        yield
        return
    bot = TelegramBot(BotAccount(settings.telegram_token, settings.telegram_api_url))
    app[TELEGRAM_BOT] = bot
    polling = None
    if settings.telegram_polling:
        intake = telegram.TelegramIntake(app[INGESTOR], app[DATABASE], app[BUS])
        polling = asyncio.create_task(poll(bot, intake.receive_raw), name="telegram-polling")
    yield
    if polling is not None:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
    await bot.close()


async def _email(app: web.Application) -> AsyncIterator[None]:
    """E-mail intake, and one IMAP worker per configured mailbox (SWITCHBOARD_MAILBOXES)."""
    settings = app[SETTINGS]
    attachments = attachment_store(settings)
    app[ATTACHMENTS] = attachments
    # Mailboxes read their batches in parser processes; without mailboxes none are started.
    parsers = EmailParsers(attachments) if settings.mailboxes else None
    if parsers is not None:
        await parsers.start()
    intake = EmailIntake(
        app[INGESTOR], app[DATABASE], attachments, app[REPLIES].acknowledge, parsers
    )
    app[EMAIL] = intake
    workers = [
        asyncio.create_task(MailboxWorker(m, intake, app[DATABASE]).run(), name=f"imap-{m.name}")
        for m in settings.mailboxes
    ]
    yield
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    if parsers is not None:
        await parsers.stop()


async def _close_sockets(app: web.Application) -> None:
    sockets: set[web.WebSocketResponse[bool]] = app[OPEN_SOCKETS]
    for socket in list(sockets):
        await socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


async def _landing_page(request: web.Request) -> web.Response:
    page = resources.files("agent_ui").joinpath("static/index.html").read_text(encoding="utf-8")
    return web.Response(text=page, content_type="text/html")


class AccessLogger(AbstractAccessLogger):
    """Method, path, status and time only: query strings can carry tokens (`/ws/agent?token=`)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %.1fms", request.method, request.path, response.status, time * 1000
        )
