"""Twilio Voice: webhook signature, voice webhook and Status Callback → `CallSignal`, TwiML.

The fixtures in tests/fixtures/twilio_voice/ are the form parameters Twilio POSTs, one JSON
object per request: `voice_*` to the voice webhook (`POST /webhooks/twilio/voice`), `status_*`
to the Status Callback (`POST /webhooks/twilio/voice/status`). Every fixture has one line in
`CASES` saying what it means for the call. Signatures are computed the way Twilio documents
("Webhooks Security"), once with the twilio library and once by hand, and the two must agree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator

from channels import InvalidPayload
from channels.twilio_voice import (
    answer_twiml,
    empty_twiml,
    parse_status,
    parse_voice,
    reject_twiml,
    verify,
)
from timeline.events import CallPhase, CallSignal, Direction, HangupCause

FIXTURES = Path(__file__).parent.parent / "fixtures" / "twilio_voice"

AUTH_TOKEN = "12345678901234567890123456789012"  # the shape of a Twilio Auth Token
URL = "https://switchboard.example.com/webhooks/twilio/voice?tenant=acme"

IN, OUT = Direction.INBOUND, Direction.OUTBOUND
RINGING, ANSWERED, ENDED = CallPhase.RINGING, CallPhase.ANSWERED, CallPhase.ENDED


def fixture(name: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def status_signal(form: Mapping[str, str]) -> CallSignal:
    """The one signal a status report carries (most carry exactly one)."""
    signals = parse_status(form)
    assert len(signals) == 1, signals
    return signals[0]


def params(name: str = "voice_inbound_ringing", /, **changes: str | None) -> dict[str, str]:
    """A fixture's parameters with some changed; a value of None removes the parameter."""
    data = fixture(name)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def twilio_signature(token: str, url: str, form: Mapping[str, str]) -> str:
    """Twilio's documented algorithm, written out: HMAC-SHA1 keyed with the Auth Token over the
    full URL followed by each POST parameter's name and value, sorted by name; Base64."""
    data = url + "".join(name + form[name] for name in sorted(form))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


# --------------------------------------------------------------------------------------------
# Every fixture → what it means for the call
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    fixture: str
    parse: Callable[[Mapping[str, str]], CallSignal]
    phase: CallPhase
    cause: HangupCause | None
    direction: Direction
    duration: int | None = None


CASES = [
    Case("voice_inbound_ringing", parse_voice, RINGING, None, IN),
    Case("voice_anonymous_caller", parse_voice, RINGING, None, IN),
    Case("voice_outbound_api", parse_voice, ANSWERED, None, OUT),
    Case("status_outbound_initiated", status_signal, RINGING, None, OUT),
    Case("status_in_progress", status_signal, ANSWERED, None, OUT),
    Case("status_completed", status_signal, ENDED, HangupCause.NORMAL_CLEARING, IN, 184),
    Case("status_busy", status_signal, ENDED, HangupCause.BUSY, OUT, 0),
    Case("status_no_answer", status_signal, ENDED, HangupCause.NO_ANSWER, OUT, 0),
    Case("status_canceled", status_signal, ENDED, HangupCause.CANCEL, IN, 0),
    Case("status_failed", status_signal, ENDED, HangupCause.FAILED, OUT, 0),
    Case("dial_action_no_answer", status_signal, ENDED, HangupCause.NO_ANSWER, IN, 0),
]


@pytest.mark.parametrize("case", CASES, ids=[case.fixture for case in CASES])
def test_fixture_becomes_the_expected_call_signal(case: Case) -> None:
    form = fixture(case.fixture)

    signal = case.parse(form)

    assert (signal.phase, signal.cause, signal.direction, signal.duration_seconds) == (
        case.phase,
        case.cause,
        case.direction,
        case.duration,
    )
    assert (signal.provider, signal.call_id) == ("twilio", form["CallSid"])
    assert signal.callee == form["To"]
    assert signal.caller.kind == "phone"


def test_every_fixture_has_a_case() -> None:
    # A completed <Dial> report carries two signals; it has a test of its own.
    cases = {c.fixture for c in CASES} | {"dial_action_completed"}
    assert sorted(f.stem for f in FIXTURES.glob("*.json")) == sorted(cases)


# --------------------------------------------------------------------------------------------
# The voice webhook: a call rings
# --------------------------------------------------------------------------------------------


def test_ringing_call_names_the_caller_and_the_number_called() -> None:
    signal = parse_voice(fixture("voice_inbound_ringing"))

    assert signal.caller.raw == "+4915123456789"
    assert signal.caller.name == "MUELLER ANNA"
    assert signal.callee == "+4930555716000"
    assert signal.recording_url is None


def test_ringing_call_happens_now() -> None:
    before = datetime.now(UTC)
    signal = parse_voice(fixture("voice_inbound_ringing"))
    after = datetime.now(UTC)

    assert before <= signal.occurred_at <= after


def test_blank_caller_name_is_no_name() -> None:
    assert parse_voice(params(CallerName="")).caller.name is None
    assert parse_voice(params(CallerName=None)).caller.name is None


def test_voice_webhook_without_call_status_is_ringing() -> None:
    assert parse_voice(params(CallStatus=None)).phase == RINGING


def test_voice_webhook_without_direction_is_an_incoming_call() -> None:
    assert parse_voice(params(Direction=None)).direction == IN


def test_dialled_leg_is_outbound() -> None:
    assert parse_voice(params(Direction="outbound-dial")).direction == OUT


@pytest.mark.parametrize(
    "caller_id",
    [
        "+266696687",  # A-N-O-N-Y-M-O-U-S on a keypad
        "+7378742833",  # RESTRICTED
        "+2562533",  # CLOAKED
        "+8656696",  # UNKNOWN
        "+86282452253",  # UNAVAILABLE
        "anonymous",
        "Anonymous",
        "restricted",
        "unknown",
    ],
)
def test_withheld_caller_id_is_anonymous_so_no_contact_is_made(caller_id: str) -> None:
    signal = parse_voice(params(From=caller_id, Caller=caller_id))

    assert signal.caller.raw == "anonymous"


def test_real_number_resembling_a_placeholder_is_kept() -> None:
    assert parse_voice(params(From="+2666966870")).caller.raw == "+2666966870"


# --------------------------------------------------------------------------------------------
# Status Callback: the call moves on
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "phase", "cause"),
    [
        ("queued", RINGING, None),
        ("initiated", RINGING, None),
        ("ringing", RINGING, None),
        ("in-progress", ANSWERED, None),
        ("completed", ENDED, HangupCause.NORMAL_CLEARING),
        ("busy", ENDED, HangupCause.BUSY),
        ("no-answer", ENDED, HangupCause.NO_ANSWER),
        ("failed", ENDED, HangupCause.FAILED),
        ("canceled", ENDED, HangupCause.CANCEL),
    ],
)
def test_call_status_maps_to_phase_and_cause(
    status: str, phase: CallPhase, cause: HangupCause | None
) -> None:
    signal = status_signal(params("status_in_progress", CallStatus=status))

    assert (signal.phase, signal.cause) == (phase, cause)


def test_completed_call_carries_duration_and_recording() -> None:
    form = fixture("status_completed")

    signal = status_signal(form)

    assert signal.duration_seconds == 184  # CallDuration (seconds), not Duration (minutes)
    assert signal.recording_url == form["RecordingUrl"]


def test_status_time_is_twilios_timestamp() -> None:
    signal = status_signal(fixture("status_completed"))

    assert signal.occurred_at == datetime(2026, 11, 25, 12, 2, 44, tzinfo=UTC)


def test_timestamp_in_another_zone_is_stored_as_utc() -> None:
    signal = status_signal(params("status_completed", Timestamp="Wed, 25 Nov 2026 13:02:44 +0100"))

    assert signal.occurred_at == datetime(2026, 11, 25, 12, 2, 44, tzinfo=UTC)
    assert signal.occurred_at.utcoffset() == timedelta(0)


def test_timestamp_in_an_unknown_zone_is_read_as_utc() -> None:
    # RFC 2822 writes "-0000" for "UTC, but the sender does not know the local zone".
    signal = status_signal(params("status_completed", Timestamp="Wed, 25 Nov 2026 12:02:44 -0000"))

    assert signal.occurred_at == datetime(2026, 11, 25, 12, 2, 44, tzinfo=UTC)


def test_status_without_timestamp_happens_now() -> None:
    before = datetime.now(UTC)
    signal = status_signal(params("status_in_progress", Timestamp=None))

    assert before <= signal.occurred_at <= datetime.now(UTC)


def test_answered_call_has_no_duration_yet() -> None:
    signal = status_signal(fixture("status_in_progress"))

    assert (signal.duration_seconds, signal.recording_url) == (None, None)


def test_anonymous_caller_stays_anonymous_in_status_callbacks() -> None:
    signal = status_signal(params("status_canceled", From="+266696687"))

    assert signal.caller.raw == "anonymous"


# --------------------------------------------------------------------------------------------
# Payloads that cannot be understood
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "changes"),
    [
        (parse_voice, {"CallSid": None}),
        (parse_voice, {"CallSid": "  "}),
        (parse_voice, {"From": None}),
        (parse_voice, {"From": ""}),
        (parse_voice, {"CallStatus": "exploded"}),
        (parse_voice, {"Direction": "sideways"}),
        (parse_status, {"CallSid": None}),
        (parse_status, {"From": None}),
        (parse_status, {"CallStatus": None}),
        (parse_status, {"CallStatus": ""}),
        (parse_status, {"CallStatus": "answered"}),
        (parse_status, {"CallDuration": "three minutes"}),
        (parse_status, {"CallDuration": "-5"}),
        (parse_status, {"CallDuration": "1.5"}),
        (parse_status, {"CallDuration": "99999999999999999999"}),
        (parse_status, {"Timestamp": "yesterday"}),
        (parse_status, {"Timestamp": "Wed, 32 Nov 2026 12:00:00 +0000"}),
    ],
    ids=lambda value: getattr(value, "__name__", None) or json.dumps(value),
)
def test_malformed_payload_is_invalid(
    parse: Callable[[Mapping[str, str]], CallSignal], changes: dict[str, str | None]
) -> None:
    with pytest.raises(InvalidPayload) as raised:
        parse(params("status_completed", **changes))

    assert raised.value.code == "invalid_payload"
    assert raised.value.detail


def test_missing_call_sid_is_named_in_the_detail() -> None:
    with pytest.raises(InvalidPayload, match="CallSid"):
        parse_voice(params(CallSid=None))


# --------------------------------------------------------------------------------------------
# X-Twilio-Signature
# --------------------------------------------------------------------------------------------


def test_library_and_documented_algorithm_agree() -> None:
    form = fixture("voice_inbound_ringing")

    by_library = RequestValidator(AUTH_TOKEN).compute_signature(URL, form)

    assert by_library == twilio_signature(AUTH_TOKEN, URL, form)


def test_signature_of_the_signed_url_and_parameters_is_valid() -> None:
    form = fixture("voice_inbound_ringing")

    assert verify(AUTH_TOKEN, URL, form, twilio_signature(AUTH_TOKEN, URL, form)) is True


def test_status_callback_signature_is_valid() -> None:
    url = "https://switchboard.example.com/webhooks/twilio/voice/status"
    form = fixture("status_completed")

    assert verify(AUTH_TOKEN, url, form, twilio_signature(AUTH_TOKEN, url, form)) is True


def test_signature_made_with_another_token_is_forged() -> None:
    form = fixture("voice_inbound_ringing")
    forged = twilio_signature("00000000000000000000000000000000", URL, form)

    assert verify(AUTH_TOKEN, URL, form, forged) is False


@pytest.mark.parametrize(
    "seen_url",
    [
        "http://switchboard.example.com/webhooks/twilio/voice?tenant=acme",
        "https://switchboard.internal/webhooks/twilio/voice?tenant=acme",
        "https://switchboard.example.com/webhooks/twilio/voice",
        "https://switchboard.example.com/webhooks/twilio/voice?tenant=other",
        "https://switchboard.example.com/webhooks/twilio/voice/status?tenant=acme",
    ],
    ids=["http", "other host", "no query", "other query", "other path"],
)
def test_right_signature_for_another_url_is_invalid(seen_url: str) -> None:
    form = fixture("voice_inbound_ringing")

    assert verify(AUTH_TOKEN, seen_url, form, twilio_signature(AUTH_TOKEN, URL, form)) is False


@pytest.mark.parametrize("port", [":443", ":8443"])
def test_port_is_not_compared(port: str) -> None:
    # Twilio signs a URL with or without its port, depending on how it was configured, so the
    # library accepts both; scheme, host, path and query still have to match.
    form = fixture("voice_inbound_ringing")
    with_port = URL.replace("example.com/", f"example.com{port}/")

    assert verify(AUTH_TOKEN, with_port, form, twilio_signature(AUTH_TOKEN, URL, form)) is True


@pytest.mark.parametrize(
    "changes",
    [{"From": "+4915199999999"}, {"CallStatus": "completed"}, {"Extra": "1"}, {"CallerName": None}],
    ids=["changed caller", "changed status", "added parameter", "removed parameter"],
)
def test_tampered_parameters_are_invalid(changes: dict[str, str | None]) -> None:
    signature = twilio_signature(AUTH_TOKEN, URL, fixture("voice_inbound_ringing"))

    assert verify(AUTH_TOKEN, URL, params(**changes), signature) is False


@pytest.mark.parametrize("signature", [None, ""])
def test_missing_signature_is_invalid(signature: str | None) -> None:
    assert verify(AUTH_TOKEN, URL, fixture("voice_inbound_ringing"), signature) is False


def test_unconfigured_token_verifies_nothing() -> None:
    # An HMAC keyed with the empty string is one anybody can compute.
    form = fixture("voice_inbound_ringing")

    assert verify("", URL, form, twilio_signature("", URL, form)) is False


# --------------------------------------------------------------------------------------------
# TwiML
# --------------------------------------------------------------------------------------------


def twiml(xml: str) -> ET.Element:
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    return root


def test_greeting_then_agents_ring_together() -> None:
    root = twiml(
        answer_twiml(
            greeting="Willkommen bei Beispiel & Söhne.",
            dial_clients=["anna", "ben"],
            dial_numbers=["+4915100000001"],
            timeout_seconds=25,
        )
    )

    say, dial = root
    assert (say.tag, say.text) == ("Say", "Willkommen bei Beispiel & Söhne.")
    assert (dial.tag, dial.get("timeout")) == ("Dial", "25")
    assert [(noun.tag, noun.text) for noun in dial] == [
        ("Client", "anna"),
        ("Client", "ben"),
        ("Number", "+4915100000001"),
    ]
    assert len(root) == 2  # no fallback after <Dial>: it would requeue finished calls


def test_dial_rings_twenty_seconds_by_default() -> None:
    (dial,) = twiml(answer_twiml(greeting=None, dial_numbers=["+4915100000001"]))

    assert dial.get("timeout") == "20"


def test_dialling_agents_does_not_queue() -> None:
    root = twiml(answer_twiml(greeting=None, dial_clients=["anna"], queue="billing"))

    assert [child.tag for child in root] == ["Dial"]


def test_no_agent_queues_the_caller_in_support() -> None:
    say, enqueue = twiml(answer_twiml(greeting="Bitte warten Sie."))

    assert (say.tag, say.text) == ("Say", "Bitte warten Sie.")
    assert (enqueue.tag, enqueue.text) == ("Enqueue", "support")


def test_no_agent_queues_the_caller_in_the_named_queue() -> None:
    (enqueue,) = twiml(answer_twiml(greeting=None, queue="billing"))

    assert (enqueue.tag, enqueue.text) == ("Enqueue", "billing")


def test_empty_greeting_says_nothing() -> None:
    root = twiml(answer_twiml(greeting=""))

    assert [child.tag for child in root] == ["Enqueue"]


@pytest.mark.parametrize("timeout", [0, -1, 601])
def test_dial_timeout_outside_twilios_range_is_refused(timeout: int) -> None:
    with pytest.raises(ValueError, match="timeout"):
        answer_twiml(greeting=None, dial_clients=["anna"], timeout_seconds=timeout)


def test_more_agents_than_one_dial_can_ring_is_refused() -> None:
    clients = [f"agent{n}" for n in range(6)]
    numbers = [f"+49151000000{n:02}" for n in range(5)]

    with pytest.raises(ValueError, match="at most 10"):
        answer_twiml(greeting=None, dial_clients=clients, dial_numbers=numbers)


def test_empty_twiml_does_nothing() -> None:
    assert len(twiml(empty_twiml())) == 0


def test_blocked_caller_hears_busy() -> None:
    (reject,) = twiml(reject_twiml())

    assert (reject.tag, reject.get("reason")) == ("Reject", "busy")


def test_blocked_caller_can_be_rejected_outright() -> None:
    (reject,) = twiml(reject_twiml("rejected"))

    assert reject.get("reason") == "rejected"


def test_reject_reason_twilio_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="busy"):
        reject_twiml("go away")


def test_twilio_answering_an_inbound_call_itself_is_no_agent_answering() -> None:
    # Twilio answers the caller to play our TwiML; only the <Dial> report says an agent spoke.
    assert parse_status(params("status_in_progress", Direction="inbound")) == []


def test_a_completed_dial_means_an_agent_answered_and_the_call_then_ended() -> None:
    answered, ended = parse_status(fixture("dial_action_completed"))

    assert (answered.phase, ended.phase) == (ANSWERED, ENDED)
    assert answered.call_id == ended.call_id == "CA5d0c6b2e9f1a4738b6c2d9e0f1a2b3c4"
    assert ended.cause is HangupCause.NORMAL_CLEARING
    assert ended.duration_seconds == 143


def test_a_dial_report_with_an_unknown_status_is_invalid() -> None:
    with pytest.raises(InvalidPayload):
        parse_status(params("dial_action_completed", DialCallStatus="maybe"))


def test_the_dial_reports_to_its_action_url() -> None:
    twiml = answer_twiml(
        greeting=None,
        dial_clients=["agent-7"],
        dial_action="https://switchboard.example.com/webhooks/twilio/voice/status",
    )

    dial = ET.fromstring(twiml).find("Dial")
    assert dial is not None
    assert dial.get("action") == "https://switchboard.example.com/webhooks/twilio/voice/status"
