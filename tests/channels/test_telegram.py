"""Telegram updates as events: what each real-shaped update means."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from channels import InvalidPayload
from channels.sending import OutgoingAttachment, Reply, Thread
from channels.telegram import (
    BotAccount,
    TelegramBot,
    TelegramSender,
    file_id_of,
    parse_update,
    verify_secret,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "telegram"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_a_text_message_names_its_contact_from_first_last_and_user_name() -> None:
    inbound = parse_update(raw("text.json"))

    assert inbound is not None and inbound.edited_at is None
    event = inbound.event
    assert (event.channel, event.sender.kind, event.sender.raw) == (
        "telegram",
        "telegram",
        "123456789",
    )
    assert event.sender.name == "Anna Schmidt (@anna_s)"
    assert event.external_id == "123456789:101"
    assert event.text == "Guten Tag, meine Bestellung 4711 ist nicht angekommen."
    assert event.occurred_at == datetime.fromtimestamp(1795608000, UTC)


@pytest.mark.parametrize(
    ("name", "text", "files"),
    [
        ("photo.json", "So sieht das Paket aus",
         [("photo.jpg", "image/jpeg", 81234, "AgACAgIAAxkBAAIBZmVlarge")]),
        ("document.json", "",
         [("Rechnung-4711.pdf", "application/pdf", 53211, "BQACAgIAAxkBAAIBZ2Vdoc")]),
        ("voice.json", "", [("voice.ogg", "audio/ogg", 18842, "AwACAgIAAxkBAAIBaGVvoice")]),
    ],
)  # fmt: skip
def test_files_are_kept_as_telegram_file_ids_the_largest_photo_size_only(
    name: str, text: str, files: list[tuple[str, str, int, str]]
) -> None:
    inbound = parse_update(raw(name))

    assert inbound is not None
    assert inbound.event.text == text
    assert [
        (a.filename, a.content_type, a.size, file_id_of(a.url)) for a in inbound.event.attachments
    ] == files


def test_an_edited_message_names_the_message_it_edits_and_when() -> None:
    inbound = parse_update(raw("edited.json"))

    assert inbound is not None
    assert inbound.event.external_id == "123456789:101"
    assert inbound.edited_at == datetime.fromtimestamp(1795608300, UTC)
    assert "4712" in inbound.event.text


def test_a_reply_threads_into_the_message_it_answers() -> None:
    inbound = parse_update(raw("reply.json"))

    assert inbound is not None
    assert inbound.event.thread.references == ("123456789:101",)


def test_a_user_without_names_is_called_by_id() -> None:
    inbound = parse_update(raw("no_names.json"))

    assert inbound is not None and inbound.event.sender.name == "555000111"


def test_updates_that_carry_no_customer_message_are_ignored() -> None:
    assert parse_update(raw("my_chat_member.json")) is None


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"message": {}}', b'{"update_id": "1"}',
     b'{"update_id": 1, "message": {"message_id": 1}}'],
)  # fmt: skip
def test_a_malformed_update_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidPayload):
        parse_update(body)


def test_the_secret_token_must_match_exactly() -> None:
    assert verify_secret("s3cret-token", "s3cret-token")
    assert not verify_secret("s3cret-token", "s3cret-tokeN")
    assert not verify_secret("s3cret-token", None)
    assert not verify_secret(None, "anything")
    assert not verify_secret("", "")


def test_a_reply_goes_to_the_users_private_chat_as_text_only() -> None:
    sender = TelegramSender(TelegramBot(BotAccount("1:abc")))

    draft = sender.draft(Reply("123456789", "Ihr Paket ist unterwegs."), Thread(10001))

    assert draft.payload == {"chat_id": "123456789", "text": "Ihr Paket ist unterwegs."}
    with pytest.raises(InvalidPayload):
        sender.draft(Reply("1", "x", attachments=(OutgoingAttachment("a", "b/c", b""),)), Thread(1))


def test_fixtures_are_real_updates() -> None:
    for path in FIXTURES.glob("*.json"):
        assert isinstance(json.loads(path.read_text())["update_id"], int)
