"""Generic JSON inbound (`POST /api/v1/inbound`): payload → normalised `InboundEvent`.

Contract (DESIGN.md): `{"channel", "from", "to", "external_id", "body", "subject"?}` plus the
optional `name`, `html`, `occurred_at`, `references`. A ticket tag `[#<number>]` in the subject
becomes the thread hint. Anything the parser cannot understand is `InvalidPayload` with a
machine-readable `code` (`invalid_json`, `invalid_payload`, `unknown_channel`), which the API
answers with 400 and journals as rejected.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from channels import InvalidPayload
from channels.generic import parse
from timeline.events import Address, Direction, EventKind, InboundEvent, ThreadHints

# `events.external_id` and `subject` are VARCHAR(500) columns: longer ids are refused, longer
# subjects are cut.
MAX_EXTERNAL_ID = 500
MAX_SUBJECT = 500

# Channel → identity kind of its sender ids, as the gateway configures it.
KINDS = {"sms": "phone", "email": "email", "webchat": "webchat", "shop": "email"}


def payload(**overrides: Any) -> dict[str, Any]:
    """A minimal valid payload; a value of `...` removes the field."""
    data: dict[str, Any] = {
        "channel": "sms",
        "from": "+49 30 5557 1600",
        "to": "+49 30 1234 5678",
        "external_id": "SM-0001",
        "body": "Wo bleibt meine Bestellung?",
    }
    for key, value in overrides.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def encode(data: Any) -> bytes:
    return json.dumps(data).encode()


def parse_payload(**overrides: Any) -> InboundEvent:
    return parse(encode(payload(**overrides)), KINDS)


# --------------------------------------------------------------------------------------------
# Valid payloads
# --------------------------------------------------------------------------------------------


def test_a_full_payload_becomes_an_inbound_message() -> None:
    event = parse_payload(
        channel="email",
        **{"from": "anna@example.de"},
        to="support@example.com",
        external_id="<m1@example.de>",
        name="Anna Schmidt",
        subject="Re: [#10042] Lieferung",
        body="Noch nichts angekommen.",
        html="<p>Noch nichts</p><script>alert(1)</script>",
        occurred_at="2024-05-01T10:15:00+02:00",
        references=["<m0@example.com>"],
    )
    assert event.channel == "email"
    assert event.kind is EventKind.MESSAGE
    assert event.direction is Direction.INBOUND
    assert event.sender == Address("email", "anna@example.de", "Anna Schmidt")
    assert event.recipient == "support@example.com"
    assert event.external_id == "<m1@example.de>"
    assert event.subject == "Re: [#10042] Lieferung"
    assert event.text == "Noch nichts angekommen."
    assert event.html == "<p>Noch nichts</p>"
    assert event.thread == ThreadHints(ticket_number=10042, references=("<m0@example.com>",))
    assert event.occurred_at == datetime(2024, 5, 1, 8, 15, tzinfo=UTC)
    assert event.attachments == ()


def test_a_minimal_payload_gets_defaults() -> None:
    before = datetime.now(UTC)
    event = parse(encode(payload(to=..., body=...)), KINDS)
    after = datetime.now(UTC)
    assert event.sender == Address("phone", "+49 30 5557 1600", None)
    assert event.recipient == ""
    assert event.text == ""
    assert event.subject is None
    assert event.html is None
    assert event.thread == ThreadHints()
    assert before <= event.occurred_at <= after
    assert event.occurred_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("channel", "kind"),
    [
        pytest.param("sms", "phone", id="sms-phone"),
        pytest.param("email", "email", id="email-email"),
        pytest.param("webchat", "webchat", id="webchat-webchat"),
        pytest.param("shop", "email", id="custom-channel-kind-from-mapping"),
    ],
)
def test_the_sender_kind_comes_from_the_channel(channel: str, kind: str) -> None:
    event = parse_payload(channel=channel)
    assert event.channel == channel
    assert event.sender.kind == kind


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("SMS", "sms", id="upper-case"),
        pytest.param("  Sms  ", "sms", id="padded-mixed-case"),
    ],
)
def test_the_channel_name_is_case_insensitive(raw: str, expected: str) -> None:
    assert parse_payload(channel=raw).channel == expected


def test_sender_and_external_id_are_stripped() -> None:
    event = parse_payload(**{"from": "  +49 30 5557 1600 "}, external_id="  SM-1  ")
    assert event.sender.raw == "+49 30 5557 1600"
    assert event.external_id == "SM-1"


def test_a_numeric_external_id_is_taken_as_its_decimal_text() -> None:
    assert parse_payload(external_id=12345).external_id == "12345"


@pytest.mark.parametrize(
    ("subject", "ticket_number"),
    [
        pytest.param("[#10042]", 10042, id="tag-only"),
        pytest.param("Re: [#10042] Lieferung", 10042, id="reply-with-tag"),
        pytest.param("AW: Lieferung [#7]", 7, id="tag-at-end"),
        pytest.param("Lieferung", None, id="no-tag"),
        pytest.param("Re: #10042 Lieferung", None, id="tag-without-brackets"),
    ],
)
def test_ticket_tag_in_the_subject_becomes_the_thread_hint(
    subject: str, ticket_number: int | None
) -> None:
    event = parse_payload(subject=subject)
    assert event.subject == subject
    assert event.thread.ticket_number == ticket_number


def test_a_ticket_tag_in_the_body_is_no_thread_hint() -> None:
    assert parse_payload(body="Zu [#10042]: immer noch nichts").thread.ticket_number is None


def test_an_empty_subject_is_no_subject() -> None:
    assert parse_payload(subject="").subject is None


def test_an_over_long_subject_is_cut_but_keeps_its_tag() -> None:
    subject = "[#42] " + "x" * (MAX_SUBJECT + 100)
    event = parse_payload(subject=subject)
    assert event.subject == subject[:MAX_SUBJECT]
    assert event.thread.ticket_number == 42


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        pytest.param(
            "2024-05-01T10:15:00+02:00",
            datetime(2024, 5, 1, 8, 15, tzinfo=UTC),
            id="offset-converted-to-utc",
        ),
        pytest.param("2024-05-01T10:15:00Z", datetime(2024, 5, 1, 10, 15, tzinfo=UTC), id="zulu"),
        pytest.param(
            "2024-05-01T10:15:00",
            datetime(2024, 5, 1, 10, 15, tzinfo=UTC),
            id="naive-is-taken-as-utc",
        ),
        pytest.param(
            "2024-12-31T23:30:00-05:00",
            datetime(2025, 1, 1, 4, 30, tzinfo=UTC),
            id="negative-offset-crosses-new-year",
        ),
    ],
)
def test_occurred_at_is_utc(occurred_at: str, expected: datetime) -> None:
    moment = parse_payload(occurred_at=occurred_at).occurred_at
    assert moment == expected
    assert moment.utcoffset() is not None
    assert moment.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_html_is_sanitised() -> None:
    html = '<p onclick="x()">Hi</p><a href="javascript:alert(1)">klick</a><script>1</script>'
    assert parse_payload(html=html).html == '<p>Hi</p><a rel="noopener noreferrer">klick</a>'


def test_external_id_at_the_limit_is_accepted() -> None:
    external_id = "x" * MAX_EXTERNAL_ID
    assert parse_payload(external_id=external_id).external_id == external_id


# --------------------------------------------------------------------------------------------
# Invalid payloads → InvalidPayload(code)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty-body"),
        pytest.param(b"not json", id="text"),
        pytest.param(b'{"channel": "sms",', id="truncated"),
        pytest.param(b"{'channel': 'sms'}", id="single-quotes"),
        pytest.param(b"\xc3\x28", id="invalid-utf8"),
    ],
)
def test_a_body_that_is_not_json_is_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidPayload) as raised:
        parse(body, KINDS)
    assert raised.value.code == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[]", id="array"),
        pytest.param(b'[{"channel": "sms"}]', id="array-of-object"),
        pytest.param(b'"sms"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="boolean"),
    ],
)
def test_json_that_is_not_an_object_is_invalid_payload(body: bytes) -> None:
    with pytest.raises(InvalidPayload) as raised:
        parse(body, KINDS)
    assert raised.value.code == "invalid_payload"
    assert "object" in raised.value.detail


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"channel": ...}, "channel", id="channel-missing"),
        pytest.param({"channel": ""}, "channel", id="channel-empty"),
        pytest.param({"channel": 7}, "channel", id="channel-number"),
        pytest.param({"from": ...}, "from", id="from-missing"),
        pytest.param({"from": ""}, "from", id="from-empty"),
        pytest.param({"from": "   "}, "from", id="from-blank"),
        pytest.param({"from": None}, "from", id="from-null"),
        pytest.param({"from": 4930555716}, "from", id="from-number"),
        pytest.param({"external_id": ...}, "external_id", id="external-id-missing"),
        pytest.param({"external_id": ""}, "external_id", id="external-id-empty"),
        pytest.param({"external_id": "  "}, "external_id", id="external-id-blank"),
        pytest.param({"external_id": None}, "external_id", id="external-id-null"),
        pytest.param({"external_id": True}, "external_id", id="external-id-boolean"),
        pytest.param({"external_id": 1.5}, "external_id", id="external-id-float"),
        pytest.param({"external_id": ["a"]}, "external_id", id="external-id-list"),
        pytest.param(
            {"external_id": "x" * (MAX_EXTERNAL_ID + 1)}, "external_id", id="external-id-too-long"
        ),
        pytest.param(
            {"external_id": int("9" * (MAX_EXTERNAL_ID + 1))},
            "external_id",
            id="numeric-external-id-too-long",
        ),
        pytest.param({"to": 123}, "to", id="to-number"),
        pytest.param({"body": {"text": "hi"}}, "body", id="body-object"),
        pytest.param({"subject": 42}, "subject", id="subject-number"),
        pytest.param({"name": ["Anna"]}, "name", id="name-list"),
        pytest.param({"html": 1}, "html", id="html-number"),
        pytest.param({"references": "<m0@x>"}, "references", id="references-string"),
        pytest.param({"references": [1, 2]}, "references", id="references-numbers"),
        pytest.param({"references": {"a": "b"}}, "references", id="references-object"),
        pytest.param({"occurred_at": "yesterday"}, "occurred_at", id="occurred-at-words"),
        pytest.param({"occurred_at": ""}, "occurred_at", id="occurred-at-empty"),
        pytest.param({"occurred_at": "2024-13-01"}, "occurred_at", id="occurred-at-month-13"),
        pytest.param(
            {"occurred_at": "2024-02-30T10:00:00"}, "occurred_at", id="occurred-at-feb-30"
        ),
        pytest.param({"occurred_at": "01.05.2024"}, "occurred_at", id="occurred-at-german-date"),
        pytest.param({"occurred_at": 1714550400}, "occurred_at", id="occurred-at-epoch"),
        pytest.param({"occurred_at": 20240501}, "occurred_at", id="occurred-at-digits-as-number"),
    ],
)
def test_missing_or_malformed_fields_are_invalid_payload(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidPayload) as raised:
        parse_payload(**overrides)
    assert raised.value.code == "invalid_payload"
    assert f"'{field}'" in raised.value.detail


@pytest.mark.parametrize(
    "channel",
    [
        pytest.param("fax", id="unknown-name"),
        pytest.param("smss", id="typo"),
        pytest.param("SMS-2", id="suffix"),
    ],
)
def test_an_unknown_channel_is_unknown_channel(channel: str) -> None:
    with pytest.raises(InvalidPayload) as raised:
        parse_payload(channel=channel)
    assert raised.value.code == "unknown_channel"
    # The detail tells the integrator which channels exist.
    for known in KINDS:
        assert known in raised.value.detail


def test_invalid_payload_is_a_value_error_with_code_and_detail() -> None:
    error = InvalidPayload("invalid_payload", "Field 'from' must be a non-empty string.")
    assert isinstance(error, ValueError)
    assert error.code == "invalid_payload"
    assert error.detail == str(error) == "Field 'from' must be a non-empty string."


def test_an_integer_python_refuses_to_read_is_invalid_payload() -> None:
    # Syntactically valid JSON that Python's int limit rejects; must still be a 400, journaled.
    body = b'{"channel": "sms", "external_id": ' + b"1" * 5000 + b"}"
    with pytest.raises(InvalidPayload) as raised:
        parse(body, KINDS)
    assert raised.value.code in {"invalid_json", "invalid_payload"}


def test_deeply_nested_json_is_invalid_json() -> None:
    with pytest.raises(InvalidPayload) as raised:
        parse(b"[" * 100_000, KINDS)
    assert raised.value.code == "invalid_json"
