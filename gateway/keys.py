"""Typed application state (aiohttp `web.AppKey`s)."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from channels.telegram import TelegramBot
from gateway.auth import TokenCache
from gateway.bus import Bus
from gateway.calls import CallDesk
from gateway.dispatch import Dispatcher
from gateway.email_intake import EmailIntake
from gateway.ingest import Ingestor
from gateway.message_status import StatusAnnouncer
from gateway.outbox import OutboxWorker
from gateway.replies import Replies
from gateway.settings import Settings
from timeline.attachments import AttachmentStore
from timeline.db import Database

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
# `serve` runs on one CPU, the event loop first: the SQLite writer thread yields to it.
WRITER_YIELDS = web.AppKey("writer_yields", bool)
BUS = web.AppKey("bus", Bus)
INGESTOR = web.AppKey("ingestor", Ingestor)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
TOKENS = web.AppKey("tokens", TokenCache)
CALLS = web.AppKey("calls", CallDesk)
EMAIL = web.AppKey("email", EmailIntake)
ATTACHMENTS = web.AppKey("attachments", AttachmentStore)
OUTBOX = web.AppKey("outbox", OutboxWorker)
REPLIES = web.AppKey("replies", Replies)
MESSAGE_STATUS = web.AppKey("message_status", StatusAnnouncer)
# The Telegram bot, when SWITCHBOARD_TELEGRAM_TOKEN is set (outbound, files, polling).
TELEGRAM_BOT = web.AppKey("telegram_bot", TelegramBot)
# How many WebSockets each agent holds on this process; the last to close takes it offline.
AGENT_SOCKETS = web.AppKey("agent_sockets", Counter[int])
# Every open WebSocket of this process, closed with "going away" on shutdown.
OPEN_SOCKETS = web.AppKey("open_sockets", set[web.WebSocketResponse[bool]])
