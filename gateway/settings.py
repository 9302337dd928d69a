"""All configuration, from `SWITCHBOARD_*` environment variables, in one typed object."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from channels.cti import NumberFormat
from channels.email.imap import Mailbox
from channels.email.outbound import SentFolder, SmtpAccount, SmtpTls
from channels.twilio_sms import SmsAccount
from channels.twilio_voice import TwilioAccount
from gateway.outbox import OutboxPolicy
from gateway.replies import AutoAck
from routing import identity

# Which identity kind a channel's sender ids are; custom channels add to this by setting.
BUILTIN_CHANNELS: Mapping[str, str] = {
    "sms": identity.PHONE,
    "mms": identity.PHONE,
    "voice": identity.PHONE,
    "whatsapp": identity.PHONE,
    "email": identity.EMAIL,
    "telegram": identity.TELEGRAM,
    "webchat": identity.WEBCHAT,
}


DEFAULT_SMS_HELP = "Reply to this message to reach our support team. Reply STOP to opt out."


SMS_STATUS_PATH = "/webhooks/twilio/sms/status"


class SettingsError(ValueError):
    """A SWITCHBOARD_* variable has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite+aiosqlite:///./switchboard.db"
    redis_url: str | None = None
    default_region: str = "DE"
    public_url: str | None = None
    twilio_auth_token: str | None = None
    cti_token: str | None = None
    telegram_secret: str | None = None
    reopen_window: timedelta = timedelta(days=7)
    max_body_bytes: int = 1024 * 1024
    channels: Mapping[str, str] = field(default_factory=lambda: dict(BUILTIN_CHANNELS))
    log_level: str = "INFO"
    # Callers refused on `newCall` (Zammad's caller-ID blocking): numbers or prefixes, E.164.
    cti_blocked: tuple[str, ...] = ()
    cti_number_format: NumberFormat = NumberFormat.AUTO
    twilio_voice_greeting: str | None = None
    twilio_voice_queue: str = "support"
    twilio_account_sid: str | None = None
    twilio_caller_id: str | None = None
    twilio_api_url: str = "https://api.twilio.com"
    # Asterisk's manager interface; the listener runs when a host is set.
    ami_host: str | None = None
    ami_port: int = 5038
    ami_username: str | None = None
    ami_secret: str | None = None
    # E-mail replies go out through this SMTP server; without it, e-mail cannot send.
    smtp: SmtpAccount | None = None
    outbox: OutboxPolicy = field(default_factory=OutboxPolicy)
    email_auto_ack: AutoAck | None = None
    # A copy of every e-mail reply is filed in this folder of this configured mailbox (IMAP).
    smtp_sent_mailbox: str | None = None
    smtp_sent_folder: str = "Sent"
    # IMAP mailboxes read by the intake workers (SWITCHBOARD_MAILBOXES).
    mailboxes: tuple[Mailbox, ...] = ()
    # Attachments live as files under here, named by their SHA-256.
    data_dir: Path = Path("switchboard-data")
    # Queues and routing rules loaded at start (JSON or TOML; see routing.config).
    routing_file: Path | None = None
    attachment_max_bytes: int = 25 * 1024 * 1024
    # SMS: replies from this number, or through a Twilio Messaging Service; HELP's answer.
    twilio_sms_from: str | None = None
    twilio_messaging_service_sid: str | None = None
    sms_help_text: str = DEFAULT_SMS_HELP
    # Telegram: the bot's token; webhook (SWITCHBOARD_TELEGRAM_SECRET) or long polling.
    telegram_token: str | None = None
    telegram_api_url: str = "https://api.telegram.org"
    telegram_polling: bool = False
    # Web chat: the pages allowed to open /ws/chat (their origins), and each visitor's pace.
    webchat_origins: tuple[str, ...] = ()
    webchat_messages_per_minute: float = 20.0
    # The company's time zone: campaigns' quiet hours for contacts of unknown zone.
    timezone: str = "UTC"
    loop_cpu: bool = True  # `serve` on SQLite: one CPU, the event loop first, the writer after

    @property
    def twilio_account(self) -> TwilioAccount | None:
        """Twilio's REST API, when account, token and our caller id are all configured."""
        if not (self.twilio_account_sid and self.twilio_auth_token and self.twilio_caller_id):
            return None
        return TwilioAccount(
            self.twilio_account_sid,
            self.twilio_auth_token,
            self.twilio_caller_id,
            self.twilio_api_url,
        )

    @property
    def sms_account(self) -> SmsAccount | None:
        """Twilio SMS, when the account, its token and a sender (number or service) are set."""
        sender = self.twilio_sms_from or self.twilio_caller_id
        if not (self.twilio_account_sid and self.twilio_auth_token):
            return None
        if not (sender or self.twilio_messaging_service_sid):
            return None
        callback = self.public_url.rstrip("/") + SMS_STATUS_PATH if self.public_url else None
        return SmsAccount(
            self.twilio_account_sid,
            self.twilio_auth_token,
            from_number=None if self.twilio_messaging_service_sid else sender,
            messaging_service_sid=self.twilio_messaging_service_sid,
            api_url=self.twilio_api_url,
            status_callback=callback,
        )

    @property
    def sent_folder(self) -> SentFolder | None:
        """Where replies are filed: the Sent folder of the mailbox SWITCHBOARD_SMTP_SENT_MAILBOX
        names (one of SWITCHBOARD_MAILBOXES), or nowhere."""
        if self.smtp_sent_mailbox is None:
            return None
        for mailbox in self.mailboxes:
            if mailbox.name == self.smtp_sent_mailbox:
                return SentFolder(mailbox, self.smtp_sent_folder)
        raise SettingsError(
            f"SWITCHBOARD_SMTP_SENT_MAILBOX names {self.smtp_sent_mailbox!r}, which is not one "
            "of SWITCHBOARD_MAILBOXES"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(f"SWITCHBOARD_{name}")
            return value.strip() if value and value.strip() else None

        defaults = cls()
        return cls(
            database_url=get("DATABASE_URL") or defaults.database_url,
            redis_url=get("REDIS_URL"),
            default_region=(get("DEFAULT_REGION") or defaults.default_region).upper(),
            public_url=get("PUBLIC_URL"),
            twilio_auth_token=get("TWILIO_AUTH_TOKEN"),
            cti_token=get("CTI_TOKEN"),
            telegram_secret=get("TELEGRAM_SECRET"),
            reopen_window=timedelta(
                days=_number("REOPEN_WINDOW_DAYS", get("REOPEN_WINDOW_DAYS"), 7.0)
            ),
            max_body_bytes=int(_number("MAX_BODY_BYTES", get("MAX_BODY_BYTES"), 1024 * 1024)),
            channels={**BUILTIN_CHANNELS, **_custom_channels(get("CUSTOM_CHANNELS"))},
            log_level=(get("LOG_LEVEL") or defaults.log_level).upper(),
            cti_blocked=tuple(
                n.strip() for n in (get("CTI_BLOCKED_NUMBERS") or "").split(",") if n.strip()
            ),
            cti_number_format=_number_format(get("CTI_NUMBER_FORMAT")),
            twilio_voice_greeting=get("TWILIO_VOICE_GREETING"),
            twilio_voice_queue=get("TWILIO_VOICE_QUEUE") or defaults.twilio_voice_queue,
            twilio_account_sid=get("TWILIO_ACCOUNT_SID"),
            twilio_caller_id=get("TWILIO_CALLER_ID"),
            twilio_api_url=get("TWILIO_API_URL") or defaults.twilio_api_url,
            ami_host=get("AMI_HOST"),
            ami_port=int(_number("AMI_PORT", get("AMI_PORT"), defaults.ami_port)),
            ami_username=get("AMI_USERNAME"),
            ami_secret=get("AMI_SECRET"),
            smtp=_smtp(get),
            outbox=_outbox(get),
            email_auto_ack=_auto_ack(get),
            smtp_sent_mailbox=get("SMTP_SENT_MAILBOX"),
            smtp_sent_folder=get("SMTP_SENT_FOLDER") or defaults.smtp_sent_folder,
            mailboxes=_mailboxes(get("MAILBOXES")),
            data_dir=Path(get("DATA_DIR") or defaults.data_dir),
            routing_file=Path(routing_file) if (routing_file := get("ROUTING_FILE")) else None,
            attachment_max_bytes=int(
                _number(
                    "ATTACHMENT_MAX_BYTES",
                    get("ATTACHMENT_MAX_BYTES"),
                    defaults.attachment_max_bytes,
                )
            ),
            twilio_sms_from=get("TWILIO_SMS_FROM"),
            twilio_messaging_service_sid=get("TWILIO_MESSAGING_SERVICE_SID"),
            sms_help_text=get("SMS_HELP_TEXT") or defaults.sms_help_text,
            telegram_token=get("TELEGRAM_TOKEN"),
            telegram_api_url=get("TELEGRAM_API_URL") or defaults.telegram_api_url,
            telegram_polling=_switch(get("TELEGRAM_POLLING")),
            webchat_origins=tuple(
                o.strip().rstrip("/")
                for o in (get("WEBCHAT_ORIGINS") or "").split(",")
                if o.strip()
            ),
            webchat_messages_per_minute=_number(
                "WEBCHAT_MESSAGES_PER_MINUTE",
                get("WEBCHAT_MESSAGES_PER_MINUTE"),
                defaults.webchat_messages_per_minute,
            ),
            timezone=_zone(get("TIMEZONE") or defaults.timezone),
            loop_cpu=_switch(get("LOOP_CPU") or "on"),
        )


def _number(name: str, raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"SWITCHBOARD_{name} must be a number, not {raw!r}") from None
    if value < 0:
        raise SettingsError(f"SWITCHBOARD_{name} must not be negative")
    return value


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"SWITCHBOARD_TIMEZONE: unknown time zone {name!r}") from None
    return name


def _switch(raw: str | None) -> bool:
    return (raw or "off").lower() in ("1", "true", "on", "yes")


def _custom_channels(raw: str | None) -> dict[str, str]:
    """`SWITCHBOARD_CUSTOM_CHANNELS=line=line,viber=phone`: channel name = identity kind."""
    channels: dict[str, str] = {}
    for part in (raw or "").split(","):
        if not part.strip():
            continue
        name, sep, kind = part.partition("=")
        if not sep or not name.strip() or not kind.strip():
            raise SettingsError(f"SWITCHBOARD_CUSTOM_CHANNELS: expected name=kind, got {part!r}")
        channels[name.strip().lower()] = kind.strip().lower()
    return channels


def _number_format(raw: str | None) -> NumberFormat:
    try:
        return NumberFormat((raw or NumberFormat.AUTO).lower())
    except ValueError:
        formats = ", ".join(NumberFormat)
        raise SettingsError(f"SWITCHBOARD_CTI_NUMBER_FORMAT must be one of {formats}") from None


Getter = Callable[[str], str | None]


def _smtp(get: Getter) -> SmtpAccount | None:
    """SWITCHBOARD_SMTP_*: the host turns e-mail sending on; the From address must come with it."""
    host = get("SMTP_HOST")
    if host is None:
        return None
    sender = get("SMTP_FROM")
    if sender is None or "@" not in sender:
        raise SettingsError("SWITCHBOARD_SMTP_FROM must be our address, e.g. support@example.com")
    try:
        tls = SmtpTls((get("SMTP_TLS") or SmtpTls.STARTTLS).lower())
    except ValueError:
        raise SettingsError(f"SWITCHBOARD_SMTP_TLS must be one of {', '.join(SmtpTls)}") from None
    default_port = {SmtpTls.STARTTLS: 587, SmtpTls.TLS: 465, SmtpTls.NONE: 25}[tls]
    return SmtpAccount(
        host=host,
        port=int(_number("SMTP_PORT", get("SMTP_PORT"), default_port)),
        sender=sender,
        tls=tls,
        username=get("SMTP_USER"),
        password=get("SMTP_PASSWORD"),
        ca_file=get("SMTP_CA_FILE"),
    )


def _outbox(get: Getter) -> OutboxPolicy:
    default = OutboxPolicy()
    attempts = int(_number("OUTBOX_MAX_ATTEMPTS", get("OUTBOX_MAX_ATTEMPTS"), default.max_attempts))
    return OutboxPolicy(
        max_attempts=max(1, attempts),
        backoff_base=_number("OUTBOX_BACKOFF_SECONDS", get("OUTBOX_BACKOFF_SECONDS"), 30.0),
        backoff_max=_number("OUTBOX_BACKOFF_MAX_SECONDS", get("OUTBOX_BACKOFF_MAX_SECONDS"), 3600),
        poll_interval=_number("OUTBOX_POLL_SECONDS", get("OUTBOX_POLL_SECONDS"), 5.0),
        lease=_number("OUTBOX_LEASE_SECONDS", get("OUTBOX_LEASE_SECONDS"), default.lease),
        concurrency=max(1, int(_number("OUTBOX_CONCURRENCY", get("OUTBOX_CONCURRENCY"), 8))),
        rate_limits=_rate_limits(get("OUTBOX_RATE_LIMITS")),
    )


def _rate_limits(raw: str | None) -> dict[str, float]:
    """`SWITCHBOARD_OUTBOX_RATE_LIMITS=email=5,sms=1`: messages per second per channel."""
    limits: dict[str, float] = {}
    for part in (raw or "").split(","):
        if not part.strip():
            continue
        channel, _, rate = part.partition("=")
        limits[channel.strip().lower()] = _number("OUTBOX_RATE_LIMITS", rate.strip(), 0.0)
    return limits


def _auto_ack(get: Getter) -> AutoAck | None:
    if (get("EMAIL_AUTO_ACK") or "off").lower() not in ("1", "true", "on", "yes"):
        return None
    default = AutoAck()
    return AutoAck(
        text=get("EMAIL_AUTO_ACK_TEXT") or default.text,
        per_sender=int(
            _number("EMAIL_AUTO_ACK_PER_HOUR", get("EMAIL_AUTO_ACK_PER_HOUR"), default.per_sender)
        ),
    )


def _mailboxes(raw: str | None) -> tuple[Mailbox, ...]:
    """SWITCHBOARD_MAILBOXES: a JSON list of mailbox objects (see README, "E-mail")."""
    if raw is None:
        return ()
    try:
        data = json.loads(raw)
        if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
            raise ValueError("expected a JSON list of objects")
        mailboxes = tuple(Mailbox.from_json(m) for m in data)
    except (ValueError, TypeError) as error:
        raise SettingsError(f"SWITCHBOARD_MAILBOXES: {error}") from None
    names = [m.name for m in mailboxes]
    if len(set(names)) != len(names):
        raise SettingsError("SWITCHBOARD_MAILBOXES: each mailbox needs its own name")
    return mailboxes
