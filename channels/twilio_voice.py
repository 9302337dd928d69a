"""Twilio Voice (`POST /webhooks/twilio/voice`, `/webhooks/twilio/voice/status`): calls in.

Twilio asks the voice webhook what to do with a call (it answers with TwiML) and then reports
each change of the call to the status callback. Both arrive as form parameters signed with the
account's Auth Token (`X-Twilio-Signature`). This module checks that signature, turns either
request into the one `CallSignal` shape every telephony channel produces, and writes the TwiML
that rings the chosen agents or puts the caller into a queue. Twilio's field names (`CallSid`,
`CallStatus`, …) end here; the gateway owns HTTP, the ingest path owns storage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from twilio.twiml.voice_response import Dial, VoiceResponse

from channels import InvalidPayload
from channels.twilio_common import rest_client
from channels.twilio_common import verify as verify  # the voice webhooks' signature check
from timeline.events import Address, CallPhase, CallSignal, Direction, HangupCause

PROVIDER = "twilio"
PHONE = "phone"  # the identity kind of a caller id (routing.identity.PHONE; not importable here)
ANONYMOUS = "anonymous"  # a sender id the identity layer never turns into a contact
DEFAULT_QUEUE = "support"

# TwiML Voice: <Dial> — `timeout` is a positive number of seconds, at most 600; and one <Dial>
# rings at most ten nouns at once (the first to answer wins, the rest stop ringing).
MAX_DIAL_TIMEOUT = 600
MAX_DIAL_TARGETS = 10

# TwiML Voice: <Reject> — the only two tones Twilio plays to a refused caller.
REJECT_REASONS = frozenset({"busy", "rejected"})

# Twilio's caller id for a withheld or unknown number: the words, or the words spelled on a phone
# keypad as a fake E.164 number (ANONYMOUS, RESTRICTED, CLOAKED, UNKNOWN, UNAVAILABLE). The
# numbers look valid, so left alone every anonymous caller would become one shared contact.
_ANONYMOUS_CALLER_IDS = frozenset(
    {
        "+266696687",
        "+7378742833",
        "+2562533",
        "+8656696",
        "+86282452253",
        "anonymous",
        "restricted",
        "unknown",
        "unavailable",
    }
)

# Status Callback: `CallStatus` values and what they mean for the call.
_CALL_STATUS: dict[str, tuple[CallPhase, HangupCause | None]] = {
    "queued": (CallPhase.RINGING, None),
    "initiated": (CallPhase.RINGING, None),
    "ringing": (CallPhase.RINGING, None),
    "in-progress": (CallPhase.ANSWERED, None),
    "completed": (CallPhase.ENDED, HangupCause.NORMAL_CLEARING),
    "busy": (CallPhase.ENDED, HangupCause.BUSY),
    "no-answer": (CallPhase.ENDED, HangupCause.NO_ANSWER),
    "failed": (CallPhase.ENDED, HangupCause.FAILED),
    "canceled": (CallPhase.ENDED, HangupCause.CANCEL),
}

# Voice webhook `Direction`: `inbound` is a customer calling us; `outbound-api` a call we started
# through the REST API; `outbound-dial` a leg that a <Dial> started.
_DIRECTIONS = {
    "inbound": Direction.INBOUND,
    "outbound-api": Direction.OUTBOUND,
    "outbound-dial": Direction.OUTBOUND,
}

_SECONDS = re.compile(r"[0-9]{1,9}")


def parse_voice(params: Mapping[str, str]) -> CallSignal:
    """The incoming-call webhook: a call that wants TwiML, normally ringing.

    Without `CallStatus` the call is ringing; an outbound-api call fetches its TwiML only once
    the called party answered, and then says `in-progress` (answered).
    """
    phase, cause = _phase(params) if params.get("CallStatus") else (CallPhase.RINGING, None)
    return _signal(params, phase, cause)


def parse_status(params: Mapping[str, str]) -> list[CallSignal]:
    """A Status Callback or a `<Dial action>` report: what it means for the caller's call.

    Twilio answers an inbound call itself to play our TwiML, so the caller's own `in-progress`
    and `completed` say nothing about an agent. What an agent did comes with the `<Dial>`
    action (`DialCallStatus`, `DialCallDuration`): `completed` means an agent talked to the
    caller, anything else that nobody did (a missed call). Outbound calls report directly.
    """
    dial_status = _optional(params, "DialCallStatus")
    if dial_status is not None:
        return _dial_outcome(params, dial_status.lower())
    phase, cause = _phase(params)
    if _direction(params) is Direction.INBOUND and phase is CallPhase.ANSWERED:
        return []
    return [
        _signal(
            params,
            phase,
            cause,
            duration_seconds=_duration(params),
            recording_url=_optional(params, "RecordingUrl"),
        )
    ]


def _dial_outcome(params: Mapping[str, str], status: str) -> list[CallSignal]:
    if status not in _CALL_STATUS:
        known = ", ".join(_CALL_STATUS)
        raise InvalidPayload("invalid_payload", f"DialCallStatus {status!r}: Twilio sends {known}.")
    phase, cause = _CALL_STATUS[status]
    ended = _signal(
        params,
        CallPhase.ENDED,
        cause,
        duration_seconds=_duration(params, "DialCallDuration"),
        recording_url=_optional(params, "RecordingUrl"),
    )
    if phase is not CallPhase.ENDED or cause is not HangupCause.NORMAL_CLEARING:
        return [ended]
    return [_signal(params, CallPhase.ANSWERED, None), ended]


def answer_twiml(
    *,
    greeting: str | None,
    dial_clients: Sequence[str] = (),
    dial_numbers: Sequence[str] = (),
    queue: str | None = None,
    timeout_seconds: int = 20,
    dial_action: str | None = None,
) -> str:
    """TwiML that greets the caller, then rings the chosen agents or queues the call.

    Agents ring at once: `dial_clients` are Voice SDK identities (browser or softphone agents),
    `dial_numbers` phones in E.164. With no agent to ring the caller waits in `queue`
    (`support` by default); `queue` is not used when agents are dialled. `dial_action` is where
    Twilio reports how the dialled call went (`DialCallStatus`), see `parse_status`.
    """
    response = VoiceResponse()
    if greeting:
        response.say(greeting)
    if dial_clients or dial_numbers:
        # Nothing follows the <Dial>: without an `action` URL Twilio carries on with the next
        # verb when the dialled call ends, answered or not, so an <Enqueue> here would put a
        # caller whose conversation just finished back into the queue.
        response.append(_dial(dial_clients, dial_numbers, timeout_seconds, dial_action))
    else:
        response.enqueue(queue or DEFAULT_QUEUE)
    return str(response)


def empty_twiml() -> str:
    """An empty `<Response/>`: Twilio does nothing more (the answer to a Status Callback)."""
    return str(VoiceResponse())


def reject_twiml(reason: str = "busy") -> str:
    """TwiML Voice: <Reject> for a blocked caller; the call is never answered, nor billed."""
    if reason not in REJECT_REASONS:
        raise ValueError(f"Reject reason must be one of {sorted(REJECT_REASONS)}, not {reason!r}.")
    response = VoiceResponse()
    response.reject(reason=reason)
    return str(response)


def _dial(
    clients: Sequence[str], numbers: Sequence[str], timeout_seconds: int, action: str | None
) -> Dial:
    if not 0 < timeout_seconds <= MAX_DIAL_TIMEOUT:
        raise ValueError(f"Dial timeout must be 1 to {MAX_DIAL_TIMEOUT} seconds.")
    if len(clients) + len(numbers) > MAX_DIAL_TARGETS:
        raise ValueError(f"One <Dial> rings at most {MAX_DIAL_TARGETS} agents at once.")
    dial = Dial(timeout=timeout_seconds, action=action) if action else Dial(timeout=timeout_seconds)
    for identity in clients:
        dial.client(identity)
    for number in numbers:
        dial.number(number)
    return dial


def _signal(
    params: Mapping[str, str],
    phase: CallPhase,
    cause: HangupCause | None,
    *,
    duration_seconds: int | None = None,
    recording_url: str | None = None,
) -> CallSignal:
    return CallSignal(
        provider=PROVIDER,
        call_id=_required(params, "CallSid"),
        phase=phase,
        direction=_direction(params),
        caller=_caller(params),
        callee=_optional(params, "To") or "",
        occurred_at=_occurred_at(params),
        cause=cause,
        duration_seconds=duration_seconds,
        recording_url=recording_url,
    )


def _phase(params: Mapping[str, str]) -> tuple[CallPhase, HangupCause | None]:
    status = _required(params, "CallStatus").lower()
    if status not in _CALL_STATUS:
        known = ", ".join(_CALL_STATUS)
        raise InvalidPayload(
            "invalid_payload", f"CallStatus {status!r} is not known; Twilio sends one of {known}."
        )
    return _CALL_STATUS[status]


def _direction(params: Mapping[str, str]) -> Direction:
    # Twilio always sends `Direction`; a request without it can only be the incoming-call case.
    value = (_optional(params, "Direction") or "inbound").lower()
    if value not in _DIRECTIONS:
        raise InvalidPayload("invalid_payload", f"Direction {value!r} is not a Twilio direction.")
    return _DIRECTIONS[value]


def _caller(params: Mapping[str, str]) -> Address:
    # `CallerName` is set only when CNAM lookup is enabled on the number.
    number = _required(params, "From")
    if number.lower() in _ANONYMOUS_CALLER_IDS:
        number = ANONYMOUS
    return Address(PHONE, number, _optional(params, "CallerName"))


def _duration(params: Mapping[str, str], field: str = "CallDuration") -> int | None:
    # `CallDuration` (seconds) comes with `completed`; `Duration` is billed minutes, not wanted.
    value = _optional(params, field)
    if value is None:
        return None
    if not _SECONDS.fullmatch(value):
        raise InvalidPayload(
            "invalid_payload", f"{field} must be a whole number of seconds, not {value!r}."
        )
    return int(value)


def _occurred_at(params: Mapping[str, str]) -> datetime:
    # Status Callback `Timestamp` is RFC 2822 ("Wed, 25 Nov 2026 12:00:00 +0000"); the voice
    # webhook has none, and then the call is happening now.
    value = _optional(params, "Timestamp")
    if value is None:
        return datetime.now(UTC)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        raise InvalidPayload(
            "invalid_payload", f"Timestamp {value!r} is not an RFC 2822 date."
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _required(params: Mapping[str, str], name: str) -> str:
    value = _optional(params, name)
    if value is None:
        raise InvalidPayload("invalid_payload", f"Twilio parameter {name!r} is missing.")
    return value


def _optional(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if not isinstance(value, str):
        return None
    return value.strip() or None


@dataclass(frozen=True, slots=True)
class TwilioAccount:
    """Where and as whom to call Twilio's REST API (`api_url` is Twilio's unless testing)."""

    account_sid: str
    auth_token: str
    caller_id: str
    api_url: str = "https://api.twilio.com"


async def place_call(
    account: TwilioAccount, *, to: str, agent_client: str, status_callback: str
) -> str:
    """Click-to-call: Twilio calls the customer and connects them to the agent's client.

    Uses the `twilio` library's own REST client (Calls resource, `POST /2010-04-01/Accounts/
    {AccountSid}/Calls.json`); returns the new call's `CallSid`. Its progress comes back to
    `status_callback` like any other call's.
    """
    response = VoiceResponse()
    dial = Dial()
    dial.client(agent_client)
    response.append(dial)
    client, http = rest_client(account.account_sid, account.auth_token, account.api_url)
    try:
        call = await client.api.v2010.account.calls.create_async(
            to=to,
            from_=account.caller_id,
            twiml=str(response),
            status_callback=status_callback,
            status_callback_event=["initiated", "ringing", "answered", "completed"],
        )
    finally:
        await http.close()
    return str(call.sid)
