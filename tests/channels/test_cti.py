"""Generic CTI (Zammad-compatible): request fields → `CallSignal`.

The fixtures in tests/fixtures/cti/ are requests as PBXs send them (Asterisk and FreePBX
dialplan scripts, the sipgate.io push API, JSON-posting scripts), one JSON object per request:
`{"description", "encoding": "form" | "json", "payload", "expect"}`. A form payload is a list
of `[name, value]` pairs, so `user[]` can repeat; `expect` names every field of the signal
that the request decides.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from channels import InvalidPayload
from channels.cti import (
    PROVIDER,
    NumberFormat,
    fields_from_form,
    fields_from_json,
    parse,
)
from routing.identity import normalise_phone
from timeline.events import Address, CallPhase, CallSignal, Direction, HangupCause

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "cti").glob("*.json"))
CASES = [json.loads(f.read_text(encoding="utf-8")) for f in FIXTURES]

ALL_CAUSES = [
    "normalClearing",
    "busy",
    "cancel",
    "noAnswer",
    "congestion",
    "notFound",
    "forwarded",
]


def fields_of(case: dict[str, Any]) -> dict[str, list[str]]:
    if case["encoding"] == "form":
        return fields_from_form([(name, value) for name, value in case["payload"]])
    assert case["encoding"] == "json"
    return fields_from_json(json.dumps(case["payload"]).encode())


def call(**fields: str | list[str]) -> dict[str, list[str]]:
    """Parsed fields of a request: each value a list, as the two readers produce them."""
    defaults: dict[str, str | list[str]] = {
        "event": "newCall",
        "from": "+493055571600",
        "to": "+4930609854180",
        "direction": "in",
        "callId": "c-1",
    }
    merged = {**defaults, **fields}
    return {k: v if isinstance(v, list) else [v] for k, v in merged.items()}


def without(name: str, **fields: str | list[str]) -> dict[str, list[str]]:
    result = call(**fields)
    del result[name]
    return result


def summary(signal: CallSignal) -> dict[str, Any]:
    return {
        "phase": signal.phase.value,
        "direction": signal.direction.value,
        "call_id": signal.call_id,
        "caller": signal.caller.raw,
        "callee": signal.callee,
        "agents": list(signal.agents),
        "answered_by": signal.answered_by,
        "cause": signal.cause.value if signal.cause else None,
        "queue": signal.queue,
    }


# --- Real-shaped requests -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[f.stem for f in FIXTURES])
def test_fixture_becomes_the_expected_signal(case: dict[str, Any]) -> None:
    signal = parse(fields_of(case))

    assert summary(signal) == case["expect"]
    assert signal.provider == "cti"
    assert signal.caller.kind == "phone"


def test_the_fixtures_cover_every_event_cause_direction_and_encoding() -> None:
    expectations = [case["expect"] for case in CASES]

    assert {e["phase"] for e in expectations} == {"ringing", "answered", "ended"}
    assert {e["cause"] for e in expectations} - {None} == set(ALL_CAUSES)
    assert {e["direction"] for e in expectations} == {"in", "out"}
    assert {case["encoding"] for case in CASES} == {"form", "json"}


# --- Reading the body -----------------------------------------------------------------------


def test_a_form_with_user_repeated_keeps_every_user_in_order() -> None:
    fields = fields_from_form(
        [
            ("event", "newCall"),
            ("user[]", "Anna Schmidt"),
            ("callId", "c-1"),
            ("user[]", "202"),
            ("user[]", "anna@example.com"),
        ]
    )

    assert fields == {
        "event": ["newCall"],
        "user": ["Anna Schmidt", "202", "anna@example.com"],
        "callId": ["c-1"],
    }


def test_a_form_may_write_user_without_brackets_too() -> None:
    fields = fields_from_form([("user", "Anna Schmidt"), ("user[]", "202")])

    assert fields == {"user": ["Anna Schmidt", "202"]}


def test_json_user_as_a_string_is_one_user() -> None:
    fields = fields_from_json(b'{"event": "answer", "callId": "c-1", "user": "Anna Schmidt"}')

    assert fields == {"event": ["answer"], "callId": ["c-1"], "user": ["Anna Schmidt"]}


def test_json_user_as_a_list_is_every_user() -> None:
    fields = fields_from_json(b'{"event": "newCall", "callId": "c-1", "user": ["Anna", "202"]}')

    assert fields == {"event": ["newCall"], "callId": ["c-1"], "user": ["Anna", "202"]}


def test_json_user_with_brackets_in_its_name_is_the_same_field() -> None:
    fields = fields_from_json(b'{"user[]": ["Anna", "202"]}')

    assert fields == {"user": ["Anna", "202"]}


def test_json_numbers_are_read_as_text() -> None:
    fields = fields_from_json(b'{"callId": 48151623, "from": 493055571600}')

    assert fields == {"callId": ["48151623"], "from": ["493055571600"]}


@pytest.mark.parametrize(
    "body",
    [b"{", b"", b"event=newCall&callId=c-1", b"\xff\xfe{}"],
    ids=["truncated", "empty", "a-form-body", "not-utf8"],
)
def test_a_body_that_is_not_json_is_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidPayload) as raised:
        fields_from_json(body)

    assert raised.value.code == "invalid_json"


@pytest.mark.parametrize("body", [b"[]", b'"newCall"', b"42", b"null"])
def test_json_that_is_not_an_object_is_invalid_payload(body: bytes) -> None:
    with pytest.raises(InvalidPayload) as raised:
        fields_from_json(body)

    assert raised.value.code == "invalid_payload"


@pytest.mark.parametrize(
    "body",
    [b'{"callId": {"id": "c-1"}}', b'{"user": [["Anna"]]}', b'{"from": 4.5}'],
    ids=["object", "nested-list", "float"],
)
def test_a_json_field_that_is_not_text_is_invalid_payload(body: bytes) -> None:
    with pytest.raises(InvalidPayload) as raised:
        fields_from_json(body)

    assert raised.value.code == "invalid_payload"


def test_a_json_null_field_counts_as_absent() -> None:
    fields = fields_from_json(b'{"event": "newCall", "callId": "c-1", "queue": null}')

    assert parse(fields).queue is None


# --- Events ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "phase"),
    [
        ("newCall", CallPhase.RINGING),
        ("answer", CallPhase.ANSWERED),
        ("hangup", CallPhase.ENDED),
    ],
)
def test_each_event_is_its_phase(event: str, phase: CallPhase) -> None:
    assert parse(call(event=event)).phase is phase


@pytest.mark.parametrize("event", ["ringing", "NewCall", "hangUp", "dtmf", "", " "])
def test_an_unknown_event_is_refused_as_unknown_event(event: str) -> None:
    with pytest.raises(InvalidPayload) as raised:
        parse(call(event=event))

    assert raised.value.code == "unknown_event"
    assert raised.value.detail == "'event' must be one of newCall, answer, hangup."


def test_a_request_without_event_is_unknown_event() -> None:
    with pytest.raises(InvalidPayload) as raised:
        parse(without("event"))

    assert raised.value.code == "unknown_event"


@pytest.mark.parametrize("call_id", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_a_call_without_call_id_is_invalid_payload(call_id: str | None) -> None:
    fields = without("callId") if call_id is None else call(callId=call_id)

    with pytest.raises(InvalidPayload) as raised:
        parse(fields)

    assert raised.value.code == "invalid_payload"
    assert raised.value.detail == "Field 'callId' is required."


def test_the_call_id_is_trimmed_and_cut_to_200_characters() -> None:
    assert parse(call(callId=" c-1 ")).call_id == "c-1"
    assert parse(call(callId="x" * 250)).call_id == "x" * 200


def test_the_signal_is_stamped_with_the_time_it_arrived() -> None:
    before = datetime.now(UTC)
    signal = parse(call())

    assert before <= signal.occurred_at <= before + timedelta(seconds=5)
    assert signal.occurred_at.tzinfo is not None
    assert signal.provider == PROVIDER == "cti"


# --- Direction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "expected"),
    [("in", Direction.INBOUND), ("out", Direction.OUTBOUND), ("", Direction.INBOUND)],
    ids=["in", "out", "empty-is-in"],
)
def test_direction(direction: str, expected: Direction) -> None:
    assert parse(call(direction=direction)).direction is expected


def test_a_call_without_direction_is_inbound() -> None:
    assert parse(without("direction")).direction is Direction.INBOUND


@pytest.mark.parametrize("direction", ["inbound", "IN", "both", "outgoing"])
def test_another_direction_is_invalid_payload(direction: str) -> None:
    with pytest.raises(InvalidPayload) as raised:
        parse(call(direction=direction))

    assert raised.value.code == "invalid_payload"
    assert raised.value.detail == "'direction' must be 'in' or 'out'."


def test_an_outbound_call_keeps_the_customer_as_callee() -> None:
    signal = parse(call(direction="out", to="03055571600", **{"from": "4930609854180"}))

    assert signal.direction is Direction.OUTBOUND
    assert signal.callee == "03055571600"
    assert signal.caller == Address("phone", "4930609854180")


# --- Who rings, who answered ----------------------------------------------------------------


def test_new_call_names_the_agents_to_ring_trimmed_without_blanks() -> None:
    signal = parse(call(user=[" Anna Schmidt ", "", "202", "  "]))

    assert signal.agents == ("Anna Schmidt", "202")
    assert signal.answered_by is None
    assert signal.cause is None


def test_new_call_without_user_names_nobody() -> None:
    assert parse(call()).agents == ()


@pytest.mark.parametrize("event", ["answer", "hangup"])
def test_only_new_call_names_agents_to_ring(event: str) -> None:
    assert parse(call(event=event, user=["Anna", "Bernd"])).agents == ()


def test_answer_takes_the_answering_agent_from_user() -> None:
    signal = parse(call(event="answer", user="Anna Schmidt", answeringNumber="201"))

    assert signal.answered_by == "Anna Schmidt"
    assert signal.agents == ()


def test_answer_takes_the_first_user_when_several_are_named() -> None:
    signal = parse(call(event="answer", user=["Anna Schmidt", "Bernd Meier"]))

    assert signal.answered_by == "Anna Schmidt"


def test_answer_without_user_takes_the_answering_number() -> None:
    signal = parse(call(event="answer", answeringNumber=" 201 "))

    assert signal.answered_by == "201"


def test_answer_with_a_blank_user_takes_the_answering_number() -> None:
    signal = parse(call(event="answer", user=["  "], answeringNumber="201"))

    assert signal.answered_by == "201"


def test_answer_with_neither_names_nobody() -> None:
    assert parse(call(event="answer")).answered_by is None


@pytest.mark.parametrize("event", ["newCall", "hangup"])
def test_only_answer_names_who_answered(event: str) -> None:
    signal = parse(call(event=event, user="Anna", answeringNumber="201", cause="normalClearing"))

    assert signal.answered_by is None


def test_the_queue_is_kept() -> None:
    assert parse(call(queue=" support ")).queue == "support"
    assert parse(call()).queue is None


# --- Causes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cause", ALL_CAUSES)
def test_hangup_keeps_each_cause(cause: str) -> None:
    signal = parse(call(event="hangup", cause=cause))

    assert signal.cause is HangupCause(cause)
    assert signal.cause.value == cause


def test_hangup_without_cause_has_none() -> None:
    assert parse(call(event="hangup")).cause is None
    assert parse(call(event="hangup", cause="")).cause is None


@pytest.mark.parametrize("cause", ["normal_clearing", "NoAnswer", "hungUp", "404"])
def test_hangup_with_another_cause_is_invalid_payload(cause: str) -> None:
    with pytest.raises(InvalidPayload) as raised:
        parse(call(event="hangup", cause=cause))

    assert raised.value.code == "invalid_payload"
    assert raised.value.detail.startswith("'cause' must be one of normalClearing, busy, cancel")


@pytest.mark.parametrize("event", ["newCall", "answer"])
def test_a_cause_outside_hangup_is_ignored(event: str) -> None:
    assert parse(call(event=event, cause="whatever")).cause is None


# --- Numbers as the PBX writes them ---------------------------------------------------------


@pytest.mark.parametrize(
    ("number_format", "raw", "expected"),
    [
        # International without `+`, as Zammad's documentation writes them.
        (NumberFormat.INTERNATIONAL, "493055571600", "+493055571600"),
        (NumberFormat.INTERNATIONAL, "49 30 5557 1600", "+493055571600"),
        # National numbers that lost their trunk prefix `0`.
        (NumberFormat.NATIONAL, "3055571600", "03055571600"),
        (NumberFormat.NATIONAL, "30 5557 1600", "03055571600"),
        # `auto` leaves bare digits to the identity rule.
        (NumberFormat.AUTO, "493055571600", "493055571600"),
        (NumberFormat.AUTO, "3055571600", "3055571600"),
    ],
)
def test_bare_digit_strings_follow_the_configured_format(
    number_format: NumberFormat, raw: str, expected: str
) -> None:
    signal = parse(call(to=raw, **{"from": raw}), number_format)

    assert signal.caller.raw == expected
    assert signal.callee == expected


@pytest.mark.parametrize("number_format", list(NumberFormat))
@pytest.mark.parametrize(
    "raw",
    [
        "+493055571600",
        "+49 30 5557 1600",
        "03055571600",
        "030 5557 1600",
        "00493055571600",
        "anonymous",
        "unknown",
        "",
    ],
)
def test_numbers_with_a_plus_or_a_leading_zero_or_no_digits_are_untouched(
    number_format: NumberFormat, raw: str
) -> None:
    signal = parse(call(to=raw, **{"from": raw}), number_format)

    assert signal.caller.raw == raw
    assert signal.callee == raw


@pytest.mark.parametrize(
    ("number_format", "raw"),
    [
        (NumberFormat.INTERNATIONAL, "493055571600"),
        (NumberFormat.NATIONAL, "3055571600"),
        (NumberFormat.AUTO, "493055571600"),
        (NumberFormat.AUTO, "03055571600"),
    ],
)
def test_each_format_reaches_the_same_customer(number_format: NumberFormat, raw: str) -> None:
    signal = parse(call(**{"from": raw}), number_format)

    assert normalise_phone(signal.caller.raw, "DE") == "+493055571600"


def test_a_missing_number_is_empty() -> None:
    signal = parse(without("from", **{"to": "  "}))

    assert signal.caller == Address("phone", "")
    assert signal.callee == ""


def test_the_number_format_setting_names_its_values() -> None:
    assert [f.value for f in NumberFormat] == ["auto", "international", "national"]
