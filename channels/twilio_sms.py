"""Twilio Programmable Messaging (`POST /webhooks/twilio/sms`, `/webhooks/twilio/sms/status`).

Inbound: Twilio posts each SMS/MMS as signed form parameters (`MessageSid`, `From`, `To`,
`Body`, `NumMedia`, `MediaUrl0…`, `MediaContentType0…`); this module turns them into an
`InboundEvent` and recognises Twilio's standard keywords (opt-out, opt-in, help). Media stay at
Twilio: an attachment keeps its `MediaUrl`, fetched with the account's credentials only when an
agent opens it. A WhatsApp message through the same webhook (`whatsapp:+49…`) is the same shape.

Outbound: `TwilioSmsSender`, the outbox's sender for `sms`, through the `twilio` library's REST
client (Messages resource), from our number or a Messaging Service. Its Status Callback
(`MessageStatus`, `ErrorCode`) is read by `parse_status`.
"""

from __future__ import annotations

import enum
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse

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
from channels.twilio_common import rest_client
from timeline.events import Address, Attachment, EventKind, InboundEvent, ThreadHints
from timeline.outbox import OutboxItem

CHANNEL = "sms"
WHATSAPP = "whatsapp"
PHONE = "phone"  # the identity kind of a number (routing.identity.PHONE; not importable here)

# Twilio Messaging: at most 10 media per message.
MAX_MEDIA = 10


class Keyword(enum.StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"


# Twilio's default opt-out, opt-in and help keywords (Advanced Opt-Out, "default keywords"): a
# message that is exactly one of these words, in any case, around any whitespace.
KEYWORDS: Mapping[str, Keyword] = {
    **dict.fromkeys(("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"), Keyword.OPT_OUT),
    **dict.fromkeys(("START", "YES", "UNSTOP"), Keyword.OPT_IN),
    "HELP": Keyword.HELP,
}

# Status Callback `MessageStatus` in the timeline's delivery words. Twilio's own queue is past
# our outbox (the message is `sent` once Twilio took it); `read` is WhatsApp's.
_STATUS = {
    "accepted": "sent",
    "scheduled": "sent",
    "queued": "sent",
    "sending": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",
}

# The error codes agents meet most, in words (Twilio's error dictionary); others by number.
_ERRORS = {
    "21211": "invalid 'To' number",
    "21610": "the recipient replied STOP to this number",
    "21614": "'To' is not a mobile number",
    "30003": "unreachable destination handset",
    "30004": "message blocked",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "filtered as spam by the carrier",
    "30008": "unknown error",
}

_SID = re.compile(r"^[A-Z]{2}[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class SmsMessage:
    event: InboundEvent
    keyword: Keyword | None = None


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A Status Callback: which message (`message_sid`), and what became of it."""

    message_sid: str
    status: str
    detail: str | None


def parse_message(params: Mapping[str, str]) -> SmsMessage:
    """An incoming message webhook as an event; keywords never open a ticket of their own."""
    sid = _required(params, "MessageSid", "SmsSid")
    if not _SID.match(sid):
        raise InvalidPayload("invalid_payload", f"MessageSid {sid!r} is not a Twilio SID.")
    sender = _required(params, "From")
    channel = CHANNEL
    if sender.lower().startswith(f"{WHATSAPP}:"):
        channel, sender = WHATSAPP, sender.split(":", 1)[1]
    body = params.get("Body") or ""
    keyword = keyword_of(body)
    event = InboundEvent(
        channel=channel,
        kind=EventKind.MESSAGE,
        sender=Address(PHONE, sender),
        recipient=(params.get("To") or "").removeprefix(f"{WHATSAPP}:"),
        external_id=sid,
        text=body,
        attachments=_media(params),
        thread=ThreadHints(opens_ticket=keyword is None),
    )
    return SmsMessage(event, keyword)


def keyword_of(body: str) -> Keyword | None:
    return KEYWORDS.get(body.strip().upper())


def _media(params: Mapping[str, str]) -> tuple[Attachment, ...]:
    raw = params.get("NumMedia") or "0"
    if not raw.isdigit() or int(raw) > MAX_MEDIA:
        raise InvalidPayload("invalid_payload", f"NumMedia must be 0 to {MAX_MEDIA}, not {raw!r}.")
    attachments = []
    for n in range(int(raw)):
        url = _required(params, f"MediaUrl{n}")
        if not url.startswith("https://") and not url.startswith("http://"):
            raise InvalidPayload("invalid_payload", f"MediaUrl{n} is not a URL.")
        content_type = params.get(f"MediaContentType{n}") or "application/octet-stream"
        extension = mimetypes.guess_extension(content_type) or ""
        attachments.append(Attachment(f"media-{n + 1}{extension}", content_type, url=url))
    return tuple(attachments)


def parse_status(params: Mapping[str, str]) -> DeliveryReport:
    sid = _required(params, "MessageSid", "SmsSid")
    raw = _required(params, "MessageStatus", "SmsStatus").lower()
    if raw not in _STATUS:
        raise InvalidPayload(
            "invalid_payload", f"MessageStatus {raw!r}: Twilio sends {', '.join(_STATUS)}."
        )
    code = params.get("ErrorCode") or None
    detail = None
    if code is not None:
        detail = f"Twilio error {code}: {_ERRORS.get(code, 'see the Twilio error dictionary')}"
    return DeliveryReport(sid, _STATUS[raw], detail)


def reply_twiml(text: str | None = None) -> str:
    """TwiML Messaging: empty (we answer later, through the outbox), or one immediate answer."""
    response = MessagingResponse()
    if text:
        response.message(text)
    return str(response)


def _required(params: Mapping[str, str], *names: str) -> str:
    """The first of `names` that is present (Twilio still sends the older `Sms*` names)."""
    for name in names:
        value = (params.get(name) or "").strip()
        if value:
            return value
    raise InvalidPayload("invalid_payload", f"Twilio parameter {names[0]!r} is missing.")


@dataclass(frozen=True, slots=True)
class SmsAccount:
    """Who sends: our number (`from_number`) or a Messaging Service (`messaging_service_sid`)."""

    account_sid: str
    auth_token: str
    from_number: str | None = None
    messaging_service_sid: str | None = None
    api_url: str = "https://api.twilio.com"
    # Where Twilio reports what became of each message (our /webhooks/twilio/sms/status).
    status_callback: str | None = None


class TwilioSmsSender:
    """The SMS channel's outbound side (`channels.sending.Sender`).

    Not resendable: an attempt cut off by a crash may have reached the phone already, and a
    second copy would too (see `timeline.outbox`, crash recovery).
    """

    channel = CHANNEL
    resendable = False

    def __init__(self, account: SmsAccount) -> None:
        self.account = account
        self._client: tuple[Client, AsyncTwilioHttpClient] | None = None

    def draft(self, reply: Reply, thread: Thread) -> Draft:
        if reply.attachments:
            # Twilio fetches MMS media from a public URL, which an agent's upload does not have.
            raise InvalidPayload("attachments_unsupported", "SMS replies cannot carry files.")
        sender = self.account.from_number or self.account.messaging_service_sid or ""
        return Draft(
            external_id=draft_id("sms"),
            sender=sender,
            subject=None,
            text=reply.text,
            html=None,
            payload={"to": reply.recipient, "body": reply.text},
        )

    async def send(self, item: OutboxItem) -> SendResult:
        """POST the message to Twilio's Messages resource; its sid is the provider id.

        Through the library's `Version` (its credentials, base URL and errors as
        `TwilioRestException`) with the form in Twilio's own parameter names, rather than
        through `messages.create_async`: that one packs thirty optional parameters and parses
        the answer into a `MessageInstance` (three RFC 2822 dates among its fields), a third
        of the library's cost per message in a campaign, for a sid.
        """
        client, _http = self._rest()
        account = self.account
        form = {"To": item.payload["to"], "Body": item.payload["body"]}
        if account.from_number:
            form["From"] = account.from_number
        else:
            form["MessagingServiceSid"] = account.messaging_service_sid or ""
        if account.status_callback:
            form["StatusCallback"] = account.status_callback
        try:
            message = await client.api.v2010.create_async(
                method="POST", uri=f"/Accounts/{account.account_sid}/Messages.json", data=form
            )
        except TwilioRestException as error:
            raise _classified(error) from None
        except (TwilioException, aiohttp.ClientError, OSError, TimeoutError) as error:
            raise TransientSendError(f"Twilio: {type(error).__name__}: {error}") from None
        return SendResult(provider_id=str(message["sid"]))

    def _rest(self) -> tuple[Client, AsyncTwilioHttpClient]:
        """One REST client for every message: its connections are kept and reused."""
        if self._client is None:
            account = self.account
            self._client = rest_client(account.account_sid, account.auth_token, account.api_url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client[1].close()
            self._client = None


def _classified(error: TwilioRestException) -> TransientSendError | PermanentSendError:
    """A 4xx from Twilio refuses this message for good, except 429 (too many requests)."""
    reason = f"Twilio {error.status} error {error.code}: {error.msg}"
    if error.status == 429 or error.status >= 500:
        return TransientSendError(reason)
    return PermanentSendError(reason)
