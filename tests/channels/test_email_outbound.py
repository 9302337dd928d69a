"""E-mail replies as they arrive at a real SMTP server (aiosmtpd), parsed back."""

from __future__ import annotations

from pathlib import Path

import pytest

from channels.email.imap import Mailbox
from channels.email.outbound import (
    MAX_REFERENCES,
    EmailSender,
    SentFolder,
    SmtpAccount,
    SmtpTls,
    references,
    reply_subject,
    tagged_subject,
)
from channels.sending import (
    Draft,
    OutgoingAttachment,
    PermanentSendError,
    Reply,
    Thread,
    TransientSendError,
)
from tests.dovecot import Dovecot
from tests.smtp_peer import SmtpPeer, account_for, free_port, self_signed_certificate
from timeline.outbox import OutboxItem

# How the customer's mail and our earlier answer are named on the ticket's timeline.
CUSTOMER_FIRST = "CAF=3Dq8x1@mail.gmail.com"
OUR_ANSWER = "170000000001.1.1@support.example.com"
CUSTOMER_REPLY = "9C1E2A3B-44F5@me.com"
THREAD = Thread(
    ticket_number=10042,
    subject="AW: Printer on floor 3 [#10042]",
    message_ids=(CUSTOMER_FIRST, OUR_ANSWER, CUSTOMER_REPLY),
    in_reply_to=CUSTOMER_REPLY,
)


def sender_for(peer: SmtpPeer, **account: object) -> EmailSender:
    options = {"tls": SmtpTls.NONE, **account}
    return EmailSender(
        SmtpAccount("127.0.0.1", peer.port, "Example Support <support@example.com>", **options)  # type: ignore[arg-type]
    )


def item(draft: Draft) -> OutboxItem:
    return OutboxItem(
        id=1,
        channel="email",
        recipient=draft.payload["to"],
        payload=draft.payload,
        attempt=1,
        provider_id=draft.external_id,
        idempotency_key="ticket:1:test",
    )


async def test_a_reply_arrives_threaded_under_our_message_id_with_the_ticket_tag(
    smtp_peer: SmtpPeer,
) -> None:
    sender = sender_for(smtp_peer)
    draft = sender.draft(Reply("anna@example.de", "It is fixed."), THREAD)

    result = await sender.send(item(draft))

    [message] = await smtp_peer.wait_for(1)
    assert result.provider_id == draft.external_id
    assert message["Message-ID"] == f"<{draft.external_id}>"
    assert draft.external_id.endswith("@example.com") and "<" not in draft.external_id
    assert message["In-Reply-To"] == f"<{CUSTOMER_REPLY}>"
    assert message["References"].split() == [
        f"<{CUSTOMER_FIRST}>",
        f"<{OUR_ANSWER}>",
        f"<{CUSTOMER_REPLY}>",
    ]
    assert message["Subject"] == "Re: Printer on floor 3 [#10042]"
    assert message["From"] == "Example Support <support@example.com>"
    assert message["To"] == "anna@example.de"
    assert message["Auto-Submitted"] is None
    assert message.get_content().strip() == "It is fixed."
    assert smtp_peer.envelopes == [("support@example.com", ["anna@example.de"])]


async def test_html_goes_as_a_sanitised_alternative_and_attachments_arrive_intact(
    smtp_peer: SmtpPeer,
) -> None:
    sender = sender_for(smtp_peer)
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40
    reply = Reply(
        "anna@example.de",
        "See the attached invoice.",
        html='<p onclick="steal()">See the <b>attached</b> invoice.<script>steal()</script></p>',
        attachments=(
            OutgoingAttachment("Rechnung März.pdf", "application/pdf", pdf),
            OutgoingAttachment("notes.txt", "text/plain", "Grüße\n".encode()),
        ),
    )

    await sender.send(item(sender.draft(reply, THREAD)))

    [message] = await smtp_peer.wait_for(1)
    assert message.get_content_type() == "multipart/mixed"
    body = message.get_body(("related", "html", "plain"))
    assert body is not None and body.get_content_type() == "text/html"
    html = body.get_content()
    assert "<b>attached</b>" in html
    assert "script" not in html and "onclick" not in html
    plain = message.get_body(("plain",))
    assert plain is not None and plain.get_content().strip() == "See the attached invoice."
    attached = {a.get_filename(): a.get_payload(decode=True) for a in message.iter_attachments()}
    assert attached == {"Rechnung März.pdf": pdf, "notes.txt": "Grüße\n".encode()}


async def test_machine_written_mail_says_so_so_that_robots_do_not_answer_it(
    smtp_peer: SmtpPeer,
) -> None:
    sender = sender_for(smtp_peer)

    await sender.send(item(sender.draft(Reply("a@example.de", "Got it.", auto=True), THREAD)))

    [message] = await smtp_peer.wait_for(1)
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Auto-Response-Suppress"] == "All"


async def test_an_agents_own_subject_is_kept_and_tagged(smtp_peer: SmtpPeer) -> None:
    sender = sender_for(smtp_peer)
    draft = sender.draft(Reply("a@example.de", "Hi", subject="Your new printer"), THREAD)

    await sender.send(item(draft))

    [message] = await smtp_peer.wait_for(1)
    assert message["Subject"] == "Your new printer [#10042]"


async def test_a_first_message_without_a_thread_has_no_reply_headers(smtp_peer: SmtpPeer) -> None:
    sender = sender_for(smtp_peer)
    draft = sender.draft(Reply("a@example.de", "Hello"), Thread(10001, "Order 4711"))

    await sender.send(item(draft))

    [message] = await smtp_peer.wait_for(1)
    assert message["In-Reply-To"] is None and message["References"] is None
    assert message["Subject"] == "Re: Order 4711 [#10001]"


async def test_a_4xx_answer_is_transient_with_the_servers_reason(smtp_peer: SmtpPeer) -> None:
    smtp_peer.refuse_next("451 4.3.0 Greylisted, try again later")
    sender = sender_for(smtp_peer)

    with pytest.raises(TransientSendError, match=r"451 4\.3\.0 Greylisted"):
        await sender.send(item(sender.draft(Reply("a@example.de", "Hi"), THREAD)))


async def test_a_5xx_answer_is_permanent_with_the_servers_reason(smtp_peer: SmtpPeer) -> None:
    smtp_peer.refuse_next("550 5.1.1 <a@example.de>: Recipient address rejected")
    sender = sender_for(smtp_peer)

    with pytest.raises(PermanentSendError, match=r"550 5\.1\.1"):
        await sender.send(item(sender.draft(Reply("a@example.de", "Hi"), THREAD)))


async def test_no_server_listening_is_transient() -> None:
    sender = EmailSender(
        SmtpAccount("127.0.0.1", free_port(), "support@example.com", tls=SmtpTls.NONE, timeout=5)
    )

    with pytest.raises(TransientSendError):
        await sender.send(item(sender.draft(Reply("a@example.de", "Hi"), THREAD)))


async def test_the_account_logs_in_when_it_has_credentials() -> None:
    peer = SmtpPeer(credentials=("support", "s3cret"))
    peer.start()
    try:
        good = sender_for(peer, username="support", password="s3cret")
        await good.send(item(good.draft(Reply("a@example.de", "Hi"), THREAD)))
        bad = sender_for(peer, username="support", password="wrong")
        with pytest.raises(TransientSendError, match="authentication"):
            await bad.send(item(bad.draft(Reply("a@example.de", "Hi"), THREAD)))
    finally:
        peer.stop()

    assert len(peer.messages) == 1


@pytest.mark.parametrize("tls", [SmtpTls.STARTTLS, SmtpTls.TLS])
async def test_replies_go_over_tls_and_log_in_inside_it(tls: SmtpTls, tmp_path: Path) -> None:
    certificate = self_signed_certificate(tmp_path)
    peer = SmtpPeer(credentials=("support", "s3cret"), tls=tls, certificate=certificate)
    peer.start()
    try:
        sender = sender_for(
            peer, tls=tls, username="support", password="s3cret", ca_file=str(certificate[0])
        )
        await sender.send(item(sender.draft(Reply("a@example.de", "Over TLS"), THREAD)))
    finally:
        peer.stop()

    assert [m.get_content().strip() for m in peer.messages] == ["Over TLS"]


async def test_a_server_whose_certificate_we_do_not_trust_gets_nothing(tmp_path: Path) -> None:
    peer = SmtpPeer(tls="tls", certificate=self_signed_certificate(tmp_path))
    peer.start()
    try:
        sender = sender_for(peer, tls=SmtpTls.TLS)
        with pytest.raises(TransientSendError):
            await sender.send(item(sender.draft(Reply("a@example.de", "Secret"), THREAD)))
    finally:
        peer.stop()

    assert peer.messages == []


async def test_a_copy_of_each_reply_is_filed_seen_in_the_sent_folder(
    smtp_peer: SmtpPeer, dovecot: Dovecot
) -> None:
    sender = EmailSender(account_for(smtp_peer), SentFolder(dovecot.mailbox(), "Sent"))
    draft = sender.draft(Reply("a@example.de", "Filed"), THREAD)

    await sender.send(item(draft))

    # The folder did not exist: it was created on the server's TRYCREATE.
    assert len(await dovecot.uids("Sent")) == 1
    assert len(await dovecot.uids("Sent", f'HEADER Message-ID "{draft.external_id}" SEEN')) == 1
    assert len(smtp_peer.messages) == 1


async def test_a_sent_folder_out_of_reach_does_not_fail_the_reply(smtp_peer: SmtpPeer) -> None:
    unreachable = Mailbox("support", "127.0.0.1", "u", "p", port=free_port(), tls=False)
    sender = EmailSender(account_for(smtp_peer), SentFolder(unreachable))

    await sender.send(item(sender.draft(Reply("a@example.de", "Hi"), THREAD)))

    assert len(smtp_peer.messages) == 1


def test_the_account_never_shows_its_password() -> None:
    account = SmtpAccount("smtp.example.com", 587, "s@example.com", password="s3cret")

    assert "s3cret" not in repr(account)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Printer broken", "Re: Printer broken [#7]"),
        ("Re: Printer broken", "Re: Printer broken [#7]"),
        ("RE: AW: WG: Printer broken", "Re: Printer broken [#7]"),
        ("Re[2]: Printer broken", "Re: Printer broken [#7]"),
        ("Re: Printer broken [#7]", "Re: Printer broken [#7]"),
        ("[#7] Re: Printer broken", "Re: Printer broken [#7]"),
        ("Fwd: SV: Printer broken", "Re: Printer broken [#7]"),
        ("", "Re: [#7]"),
        (None, "Re: [#7]"),
    ],
)
def test_reply_subjects_carry_one_re_and_one_tag(subject: str | None, expected: str) -> None:
    assert reply_subject(subject, 7) == expected


def test_an_agents_subject_that_has_the_tag_is_left_alone() -> None:
    assert tagged_subject("About [#7]", 7) == "About [#7]"


def test_long_threads_keep_the_first_and_the_newest_references() -> None:
    ids = tuple(f"m{i}@example.com" for i in range(50))

    kept = references(ids)

    assert len(kept) == MAX_REFERENCES
    assert kept[0] == "m0@example.com" and kept[-1] == "m49@example.com"
    assert kept[1] == f"m{50 - MAX_REFERENCES + 1}@example.com"
