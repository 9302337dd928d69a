"""Telegram (`POST /webhooks/telegram`, or long polling): a bot's private chats.

Inbound: Telegram sends `Update`s, as webhook POSTs carrying our secret in
`X-Telegram-Bot-Api-Secret-Token`, or answers to `getUpdates` (polling, for installations
without a public URL). `python-telegram-bot` parses them (`Update.de_json`). A message is keyed
by its chat and message id, so a resent update (the same `update_id`) is the same event; an
`edited_message` names the message it edits and is recorded as an edit of that event. Files
(photos, documents, voice notes) stay at Telegram: an attachment keeps the file id
(`telegram-file:<file_id>`), fetched through `getFile` only when an agent opens it.

Outbound: `TelegramSender`, the outbox's sender for `telegram`, with the library's `Bot`
(`base_url` points at a local stub in tests).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from telegram import Bot, Message, Update, User
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
)

from channels import InvalidPayload
from channels.sending import (
    Draft,
    PermanentSendError,
    Reply,
    SendResult,
    Thread,
    TransientSendError,
    draft_id,
)
from timeline.events import Address, Attachment, EventKind, InboundEvent, ThreadHints
from timeline.outbox import OutboxItem

log = logging.getLogger(__name__)
# httpx logs every request's URL at INFO, and a Bot API URL carries the bot's token.
logging.getLogger("httpx").setLevel(logging.WARNING)

CHANNEL = "telegram"
TELEGRAM = "telegram"  # the identity kind: a Telegram user id (routing.identity.TELEGRAM)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
FILE_PREFIX = "telegram-file:"
# What the bot asks Telegram for; other updates (joins, reactions, …) are not conversations.
UPDATE_KINDS = ("message", "edited_message")


def verify_secret(expected: str | None, supplied: str | None) -> bool:
    """The webhook's secret token (setWebhook `secret_token`), compared in constant time."""
    if not expected or not supplied:
        return False
    return hmac.compare_digest(expected.encode(), supplied.encode())


@dataclass(frozen=True, slots=True)
class TelegramInbound:
    """A message, or an edit (`edited_at` set) of the message `event.external_id` names."""

    update_id: int
    event: InboundEvent
    edited_at: datetime | None = None


def parse_update(body: bytes) -> TelegramInbound | None:
    """An `Update` as an event; None for an update that carries no customer message."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidPayload("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        raise InvalidPayload("invalid_payload", "A Telegram Update needs an integer 'update_id'.")
    try:
        update = Update.de_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InvalidPayload(
            "invalid_payload", f"Not a Telegram Update: {type(error).__name__}."
        ) from None
    message = update.message or update.edited_message
    if message is None or message.from_user is None or message.from_user.is_bot:
        return None
    edited_at = None
    if update.edited_message is not None:
        edited_at = _utc(message.edit_date or message.date)
    return TelegramInbound(update.update_id, _event(message, message.from_user), edited_at)


def _event(message: Message, user: User) -> InboundEvent:
    reply_to = message.reply_to_message
    references = (message_key(reply_to.chat_id, reply_to.message_id),) if reply_to else ()
    return InboundEvent(
        channel=CHANNEL,
        kind=EventKind.MESSAGE,
        sender=Address(TELEGRAM, str(user.id), contact_name(user)),
        recipient=str(message.chat_id),
        external_id=message_key(message.chat_id, message.message_id),
        text=message.text or message.caption or "",
        attachments=_files(message),
        occurred_at=_utc(message.date),
        thread=ThreadHints(references=references),
    )


def message_key(chat_id: int, message_id: int) -> str:
    """Message ids count per chat: the chat and the id together name one message."""
    return f"{chat_id}:{message_id}"


def contact_name(user: User) -> str:
    """`Anna Schmidt (@anna_s)`: the name the customer gave Telegram, and their handle."""
    name = " ".join(part for part in (user.first_name, user.last_name) if part).strip()
    if user.username:
        return f"{name} (@{user.username})" if name else f"@{user.username}"
    return name or str(user.id)


def _files(message: Message) -> tuple[Attachment, ...]:
    files = []
    if message.photo:
        largest = message.photo[-1]  # Telegram lists the sizes of one photo, smallest first
        files.append(_file("photo.jpg", "image/jpeg", largest.file_id, largest.file_size))
    if message.document:
        document = message.document
        files.append(
            _file(
                document.file_name or "document",
                document.mime_type or "application/octet-stream",
                document.file_id,
                document.file_size,
            )
        )
    if message.voice:
        voice = message.voice
        mime = voice.mime_type or "audio/ogg"
        files.append(_file("voice.ogg", mime, voice.file_id, voice.file_size))
    return tuple(files)


def _file(name: str, content_type: str, file_id: str, size: int | None) -> Attachment:
    return Attachment(name, content_type, size=size, url=FILE_PREFIX + file_id)


def file_id_of(attachment_url: str | None) -> str | None:
    if attachment_url and attachment_url.startswith(FILE_PREFIX):
        return attachment_url[len(FILE_PREFIX) :]
    return None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class BotAccount:
    token: str
    api_url: str = "https://api.telegram.org"

    def bot(self) -> Bot:
        base = self.api_url.rstrip("/")
        return Bot(self.token, base_url=f"{base}/bot", base_file_url=f"{base}/file/bot")


class TelegramBot:
    """The bot, started once and kept: its HTTP connections serve every call."""

    def __init__(self, account: BotAccount) -> None:
        self.account = account
        self._bot: Bot | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Bot:
        async with self._lock:
            if self._bot is None:
                bot = self.account.bot()
                await bot.initialize()  # getMe: checks the token once
                self._bot = bot
            return self._bot

    async def close(self) -> None:
        if self._bot is not None:
            await self._bot.shutdown()
            self._bot = None

    async def fetch_file(self, file_id: str, max_bytes: int) -> bytes:
        """A file a customer sent (getFile, then the download), for an agent who opens it."""
        bot = await self.get()
        file = await bot.get_file(file_id)
        if file.file_size is not None and file.file_size > max_bytes:
            raise ValueError("The file is larger than this server accepts.")
        return bytes(await file.download_as_bytearray())


class TelegramSender:
    """The Telegram channel's outbound side (`channels.sending.Sender`).

    Not resendable: a message cut off by a crash may have reached the chat already.
    """

    channel = CHANNEL
    resendable = False

    def __init__(self, bot: TelegramBot) -> None:
        self.bot = bot

    def draft(self, reply: Reply, thread: Thread) -> Draft:
        if reply.attachments:
            raise InvalidPayload("attachments_unsupported", "Telegram replies carry text only.")
        return Draft(
            external_id=draft_id("sb"),
            sender="bot",
            subject=None,
            text=reply.text,
            html=None,
            # In a private chat, the chat id is the user id: the recipient identity.
            payload={"chat_id": reply.recipient, "text": reply.text},
        )

    async def send(self, item: OutboxItem) -> SendResult:
        chat_id = item.payload["chat_id"]
        try:
            bot = await self.bot.get()
            sent = await bot.send_message(chat_id=chat_id, text=item.payload["text"])
        except (BadRequest, Forbidden, ChatMigrated) as error:
            # The chat is gone, the user blocked the bot, the text was refused: for good.
            raise PermanentSendError(f"Telegram: {error.message}") from None
        except InvalidToken:
            # Our configuration, not this message (and the library's message names the token).
            raise TransientSendError("Telegram refused the bot token") from None
        except RetryAfter as error:
            raise TransientSendError(
                f"Telegram: flood control, retry after {error.retry_after}"
            ) from None
        except TelegramError as error:
            raise TransientSendError(f"Telegram: {type(error).__name__}: {error.message}") from None
        return SendResult(provider_id=message_key(sent.chat_id, sent.message_id))


UpdateHandler = Callable[[bytes], Awaitable[Any]]


async def poll(bot: TelegramBot, handle: UpdateHandler, *, wait_seconds: int = 25) -> None:
    """Long polling (`getUpdates`): each update to `handle` as its JSON, until cancelled.

    Telegram keeps an update until a later `getUpdates` confirms it with a higher `offset`, so
    one cut off by a crash comes again after the restart (the ingest path's dedupe makes that
    harmless). A failing handler does not confirm its update: it is fetched again.
    """
    offset: int | None = None
    pause = 1.0
    webhook_deleted = False
    while True:
        try:
            client = await bot.get()
            if not webhook_deleted:
                await client.delete_webhook()  # Telegram refuses getUpdates beside a webhook
                webhook_deleted = True
            updates = await client.get_updates(
                offset=offset, timeout=wait_seconds, allowed_updates=list(UPDATE_KINDS)
            )
            for update in updates:
                await handle(json.dumps(update.to_dict()).encode())
                offset = update.update_id + 1
            pause = 1.0
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # By type only: InvalidToken's message quotes the token, others may quote the URL.
            log.error(
                "telegram polling failed (%s); trying again in %.0fs", type(error).__name__, pause
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 60.0)
