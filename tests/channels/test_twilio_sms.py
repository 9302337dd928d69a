"""Twilio SMS/MMS: what each real-shaped webhook means, keywords, delivery receipts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from channels import InvalidPayload
from channels.sending import OutgoingAttachment, Reply, Thread
from channels.twilio_sms import (
    Keyword,
    SmsAccount,
    TwilioSmsSender,
    keyword_of,
    parse_message,
    parse_status,
    reply_twiml,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "twilio_sms"
API = "https://api.twilio.com"


def fixture(name: str, **changes: str) -> dict[str, str]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return {k: str(v).replace("{api}", API) for k, v in {**data, **changes}.items()}


@pytest.mark.parametrize(
    ("name", "channel", "sender", "text", "keyword", "opens_ticket"),
    [
        ("text.json", "sms", "+4915123456789", "Hallo, mein Router blinkt rot. Können Sie helfen?",
         None, True),
        ("mms_two_images.json", "sms", "+4915123456789", "Here are photos of the damage", None,
         True),
        ("stop.json", "sms", "+4915123456789", "Stop ", Keyword.OPT_OUT, False),
        ("start.json", "sms", "+4915123456789", "START", Keyword.OPT_IN, False),
        ("help.json", "sms", "+4915123456789", "help", Keyword.HELP, False),
        ("whatsapp.json", "whatsapp", "+4915123456789", "Hi from WhatsApp", None, True),
    ],
)  # fmt: skip
def test_each_fixture_becomes_the_event_it_describes(
    name: str, channel: str, sender: str, text: str, keyword: Keyword | None, opens_ticket: bool
) -> None:
    params = fixture(name)

    message = parse_message(params)

    event = message.event
    assert (event.channel, event.sender.kind, event.sender.raw) == (channel, "phone", sender)
    assert event.external_id == params["MessageSid"]
    assert event.recipient == "+4930555716000"
    assert event.text == text
    assert message.keyword is keyword
    assert event.thread.opens_ticket is opens_ticket


def test_mms_media_become_attachments_that_keep_twilios_url_and_type() -> None:
    params = fixture("mms_two_images.json")

    attachments = parse_message(params).event.attachments

    assert [(a.filename, a.content_type, a.url) for a in attachments] == [
        ("media-1.jpg", "image/jpeg", params["MediaUrl0"]),
        ("media-2.png", "image/png", params["MediaUrl1"]),
    ]


@pytest.mark.parametrize(
    ("body", "keyword"),
    [
        ("STOP", Keyword.OPT_OUT), ("stopall", Keyword.OPT_OUT),
        (" Unsubscribe\n", Keyword.OPT_OUT),
        ("cancel", Keyword.OPT_OUT), ("END", Keyword.OPT_OUT), ("quit", Keyword.OPT_OUT),
        ("start", Keyword.OPT_IN), ("YES", Keyword.OPT_IN), ("unstop", Keyword.OPT_IN),
        ("Help", Keyword.HELP),
        ("Please stop calling me", None), ("STOP!", None), ("", None), ("yes please", None),
    ],
)  # fmt: skip
def test_only_a_message_that_is_exactly_one_keyword_is_a_keyword(
    body: str, keyword: Keyword | None
) -> None:
    assert keyword_of(body) is keyword


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"MessageSid": "", "SmsSid": "", "SmsMessageSid": ""}, "MessageSid"),
        ({"MessageSid": "not-a-sid", "SmsSid": ""}, "not a Twilio SID"),
        ({"From": ""}, "From"),
        ({"NumMedia": "eleven"}, "NumMedia"),
        ({"NumMedia": "11"}, "NumMedia"),
        ({"NumMedia": "1"}, "MediaUrl0"),
        ({"NumMedia": "1", "MediaUrl0": "javascript:alert(1)"}, "MediaUrl0"),
    ],
)
def test_a_message_twilio_would_never_send_is_refused_with_the_reason(
    changes: dict[str, str], problem: str
) -> None:
    with pytest.raises(InvalidPayload) as refused:
        parse_message(fixture("text.json", **changes))
    assert problem in refused.value.detail


@pytest.mark.parametrize(
    ("name", "status", "detail"),
    [
        ("status_sent.json", "sent", None),
        ("status_delivered.json", "delivered", None),
        ("status_undelivered_30003.json", "undelivered",
         "Twilio error 30003: unreachable destination handset"),
        ("status_failed_30007.json", "failed",
         "Twilio error 30007: filtered as spam by the carrier"),
    ],
)  # fmt: skip
def test_a_status_callback_says_what_became_of_the_message(
    name: str, status: str, detail: str | None
) -> None:
    report = parse_status(fixture(name, MessageSid="SMabc", SmsSid="SMabc"))

    assert (report.message_sid, report.status, report.detail) == ("SMabc", status, detail)


@pytest.mark.parametrize("twilio_status", ["queued", "sending", "accepted"])
def test_twilios_own_queue_counts_as_sent(twilio_status: str) -> None:
    report = parse_status(fixture("status_sent.json", MessageStatus=twilio_status))
    assert report.status == "sent"


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(InvalidPayload):
        parse_status(fixture("status_sent.json", MessageStatus="teleported"))


def test_the_answer_is_empty_twiml_or_one_message() -> None:
    assert reply_twiml() == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    assert "<Message>Call us on 030 123</Message>" in reply_twiml("Call us on 030 123")


def test_a_reply_is_drafted_from_our_number_with_its_own_id() -> None:
    sender = TwilioSmsSender(SmsAccount("AC1", "token", from_number="+4930555716000"))

    first = sender.draft(Reply("+4915123456789", "Your router is fixed."), Thread(10001))
    second = sender.draft(Reply("+4915123456789", "Again."), Thread(10001))

    assert first.payload == {"to": "+4915123456789", "body": "Your router is fixed."}
    assert first.sender == "+4930555716000"
    assert first.external_id != second.external_id


def test_a_reply_with_files_cannot_go_by_sms() -> None:
    sender = TwilioSmsSender(SmsAccount("AC1", "token", messaging_service_sid="MG1"))
    reply = Reply("+4915123456789", "See file", attachments=(OutgoingAttachment("a", "b/c", b""),))

    with pytest.raises(InvalidPayload) as refused:
        sender.draft(reply, Thread(10001))
    assert refused.value.code == "attachments_unsupported"
