"""Normalised inbound events: the ticket tag in subjects, and HTML sanitised on construction.

Customer HTML is shown to agents, so scripts, event-handler attributes and `javascript:` URLs
never survive into an `InboundEvent`; harmless markup and text do.
"""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC

import pytest

from timeline.events import (
    Address,
    Attachment,
    Direction,
    EventKind,
    InboundEvent,
    ThreadHints,
    pickled_by_position,
    sanitise_html,
    ticket_tag,
)

# --------------------------------------------------------------------------------------------
# ticket_tag: `[#<number>]` in a subject
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        pytest.param("[#10042]", 10042, id="tag-alone"),
        pytest.param("Re: [#10042] Lieferung", 10042, id="reply-prefix"),
        pytest.param("AW: WG: Lieferung [#7]", 7, id="tag-at-end"),
        pytest.param("Lieferung[#42]verspätet", 42, id="tag-without-spaces-around"),
        pytest.param("[#0042]", 42, id="leading-zeros"),
        pytest.param("[#1] then [#2]", 1, id="first-tag-wins"),
        pytest.param("[#" + "9" * 18 + "]", int("9" * 18), id="eighteen-digits"),
        pytest.param(None, None, id="no-subject"),
        pytest.param("", None, id="empty-subject"),
        pytest.param("Lieferung", None, id="no-tag"),
        pytest.param("#10042", None, id="no-brackets"),
        pytest.param("[10042]", None, id="no-hash"),
        pytest.param("[#]", None, id="no-number"),
        pytest.param("[# 42]", None, id="space-inside"),
        pytest.param("[#42 ]", None, id="space-before-bracket"),
        pytest.param("[#-42]", None, id="negative"),
        pytest.param("[#abc]", None, id="letters"),
        pytest.param("[#4a2]", None, id="digits-and-letters"),
        pytest.param("[#" + "9" * 19 + "]", None, id="nineteen-digits-too-long"),
        pytest.param("(#42)", None, id="round-brackets"),
    ],
)
def test_ticket_tag(subject: str | None, expected: int | None) -> None:
    assert ticket_tag(subject) == expected


# --------------------------------------------------------------------------------------------
# InboundEvent: HTML sanitised on construction
# --------------------------------------------------------------------------------------------


def event(**overrides: object) -> InboundEvent:
    fields: dict[str, object] = {
        "channel": "email",
        "kind": EventKind.MESSAGE,
        "sender": Address("email", "anna@example.de", "Anna"),
        "recipient": "support@example.com",
        "external_id": "<m1@example.de>",
    }
    fields.update(overrides)
    return InboundEvent(**fields)  # type: ignore[arg-type]


LINK_REL = 'rel="noopener noreferrer"'  # nh3 marks every kept link so it cannot reach back


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        pytest.param(
            "<p>Hallo</p><script>alert(1)</script>", "<p>Hallo</p>", id="script-element-and-text"
        ),
        pytest.param("<SCRIPT>alert(1)</SCRIPT>ok", "ok", id="script-upper-case"),
        pytest.param(
            '<script src="https://evil.example/x.js"></script>ok', "ok", id="external-script"
        ),
        pytest.param('<img src="x.png" onerror="alert(1)">', '<img src="x.png">', id="onerror"),
        pytest.param('<p onclick="steal()">Hi</p>', "<p>Hi</p>", id="onclick"),
        pytest.param('<b onmouseover="x()">b</b>', "<b>b</b>", id="onmouseover"),
        pytest.param(
            '<a href="javascript:alert(1)">klick</a>', f"<a {LINK_REL}>klick</a>", id="javascript"
        ),
        pytest.param(
            '<a href="JaVaScRiPt:alert(1)">klick</a>',
            f"<a {LINK_REL}>klick</a>",
            id="javascript-mixed-case",
        ),
        pytest.param(
            '<a href="jav&#x09;ascript:alert(1)">klick</a>',
            f"<a {LINK_REL}>klick</a>",
            id="javascript-entity-obfuscated",
        ),
        pytest.param("<style>p{display:none}</style><b>b</b>", "<b>b</b>", id="style-element"),
        pytest.param('<iframe src="https://evil.example/"></iframe>ok', "ok", id="iframe"),
        pytest.param("<svg onload=alert(1)></svg>ok", "ok", id="svg-onload"),
    ],
)
def test_dangerous_html_is_removed(html: str, expected: str) -> None:
    assert event(html=html).html == expected


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        pytest.param("<p>Hallo <b>Welt</b></p>", "<p>Hallo <b>Welt</b></p>", id="formatting"),
        pytest.param(
            '<a href="https://example.de/faq">FAQ</a>',
            f'<a href="https://example.de/faq" {LINK_REL}>FAQ</a>',
            id="https-link-kept",
        ),
        pytest.param(
            '<a href="mailto:anna@example.de">Anna</a>',
            f'<a href="mailto:anna@example.de" {LINK_REL}>Anna</a>',
            id="mailto-link-kept",
        ),
        pytest.param("a < b & c", "a &lt; b &amp; c", id="bare-text-escaped"),
        pytest.param("", "", id="empty"),
    ],
)
def test_harmless_html_is_kept(html: str, expected: str) -> None:
    assert event(html=html).html == expected


@pytest.mark.parametrize(
    "html",
    [
        '<p onclick="x()">a</p><script>alert(1)</script>',
        '<a href="javascript:alert(1)">x</a><img src="y" onerror="z()">',
    ],
    ids=["handler-and-script", "javascript-and-onerror"],
)
def test_sanitising_leaves_no_trace_of_the_attack(html: str) -> None:
    cleaned = event(html=html).html
    assert cleaned is not None
    for marker in ("<script", "alert", "onclick", "onerror", "javascript:"):
        assert marker not in cleaned.lower()


@pytest.mark.parametrize(
    "html",
    ["<p>Hallo</p><script>alert(1)</script>", '<a href="https://x.de" onclick="y()">x</a>'],
    ids=["script", "link-with-handler"],
)
def test_sanitising_is_idempotent(html: str) -> None:
    once = sanitise_html(html)
    assert sanitise_html(once) == once
    assert event(html=once).html == once


def test_no_html_stays_none() -> None:
    assert event().html is None
    assert event(html=None).html is None


def test_plain_text_is_not_treated_as_html() -> None:
    text = "if a < b then <script> is just words"
    assert event(text=text).text == text


def test_replacing_the_html_sanitises_again() -> None:
    replaced = dataclasses.replace(event(html="<p>ok</p>"), html="<script>x()</script><i>i</i>")
    assert replaced.html == "<i>i</i>"


def test_html_cannot_be_swapped_after_construction() -> None:
    sanitised = event(html="<p>ok</p>")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sanitised.html = "<script>alert(1)</script>"  # type: ignore[misc]
    assert sanitised.html == "<p>ok</p>"


def test_defaults_describe_an_inbound_event_without_thread_hints() -> None:
    plain = event()
    assert plain.direction is Direction.INBOUND
    assert plain.thread == ThreadHints(ticket_number=None, references=())
    assert plain.attachments == ()
    assert plain.text == ""
    assert plain.subject is None
    assert plain.occurred_at.tzinfo is UTC


# --------------------------------------------------------------------------------------------
# Pickling (parsed e-mail crosses from the parser processes to the gateway)
# --------------------------------------------------------------------------------------------


def test_an_event_pickles_back_equal_with_everything_it_carries() -> None:
    full = dataclasses.replace(
        event(html="<p>ok</p>"),
        thread=ThreadHints(ticket_number=10042, references=("<a@x>",), opens_ticket=False),
        attachments=(Attachment("scan.pdf", "application/pdf", 3, "/attachments/ab", "c1"),),
        journal_id=7,
        queue="billing",
        preview="ok",
    )
    restored = pickle.loads(pickle.dumps(full))
    assert restored == full
    assert type(restored.sender) is Address and type(restored.thread) is ThreadHints


def test_unpickling_does_not_sanitise_again(monkeypatch: pytest.MonkeyPatch) -> None:
    pickled = pickle.dumps(event(html="<p>ok</p>"))

    def refuse(_html: str) -> str:
        raise AssertionError("sanitised again on unpickling")

    monkeypatch.setattr("timeline.events.sanitise_html", refuse)
    assert pickle.loads(pickled).html == "<p>ok</p>"


def test_pickling_by_position_refuses_a_class_of_one_field() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Single:
        only: int

    with pytest.raises(TypeError):
        pickled_by_position(Single)
