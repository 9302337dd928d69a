"""Identity normalisation (DESIGN.md, "Identity").

The same person must be found whatever form a PBX, carrier, mail client or agent writes the
sender id in: phones become E.164 (default region configurable), e-mails become the lower-cased
address part with an IDNA (ASCII) domain, telegram/webchat ids lose their `kind:` prefix, and
values that identify nobody (withheld numbers, garbage) become None.
"""

from __future__ import annotations

import pytest

from routing.identity import (
    EMAIL,
    PHONE,
    TELEGRAM,
    WEBCHAT,
    IdentityKey,
    normalise,
    normalise_email,
    normalise_phone,
    parse_raw,
)

# The two reference numbers every phone case below must collapse to.
BERLIN = "+493055571600"  # Berlin landline: country 49, area 30, subscriber 5557 1600
MOUNTAIN_VIEW = "+16502530000"  # US: country 1, area 650, subscriber 253-0000


def case(raw: str, region: str, expected: str | None, id: str) -> object:
    return pytest.param(raw, region, expected, id=id)


# --------------------------------------------------------------------------------------------
# Phone numbers → E.164
# --------------------------------------------------------------------------------------------

PHONE_CASES = [
    # Already international: the region does not matter.
    case("+493055571600", "DE", BERLIN, "e164-unchanged"),
    case("+493055571600", "US", BERLIN, "e164-ignores-region"),
    case("  +493055571600  ", "DE", BERLIN, "surrounding-whitespace"),
    # Visual separators are dropped.
    case("+49 30 5557 1600", "DE", BERLIN, "spaces"),
    case("+49-30-5557-1600", "DE", BERLIN, "dashes"),
    case("+49.30.5557.1600", "DE", BERLIN, "dots"),
    case("+49 30 5557-1600", "US", BERLIN, "spaces-and-dashes"),
    case("030/5557 1600", "DE", BERLIN, "german-slash-after-area-code"),
    case("+1 (650) 253-0000", "DE", MOUNTAIN_VIEW, "parenthesised-area-code-international"),
    # National numbers are read in the configured region.
    case("030 5557 1600", "DE", BERLIN, "de-national-spaced"),
    case("03055571600", "DE", BERLIN, "de-national-compact"),
    case("030 5557-1600", "DE", BERLIN, "de-national-dash"),
    case("03055571600", "de", BERLIN, "region-is-case-insensitive"),
    case("(650) 253-0000", "US", MOUNTAIN_VIEW, "us-national-parenthesised"),
    case("650-253-0000", "US", MOUNTAIN_VIEW, "us-national-dashes"),
    case("650.253.0000", "US", MOUNTAIN_VIEW, "us-national-dots"),
    case("1 650 253 0000", "US", MOUNTAIN_VIEW, "us-national-with-trunk-1"),
    # `00` is the international prefix in most of the world and becomes `+`.
    case("0049 30 5557 1600", "DE", BERLIN, "00-prefix-in-de"),
    case("00493055571600", "DE", BERLIN, "00-prefix-compact"),
    case("0049 30 5557 1600", "US", BERLIN, "00-prefix-even-in-us"),
    case("001 650 253 0000", "DE", MOUNTAIN_VIEW, "00-prefix-to-us"),
    # The region's own international prefix works too (011 in North America).
    case("011 49 30 5557 1600", "US", BERLIN, "us-011-prefix"),
    # tel: URIs (RFC 3966) lose their scheme and parameters.
    case("tel:+49-30-5557-1600", "US", BERLIN, "tel-uri"),
    case("tel:+49-30-5557-1600;ext=12", "US", BERLIN, "tel-uri-with-ext-param"),
    case("TEL:+1-650-253-0000", "DE", MOUNTAIN_VIEW, "tel-uri-upper-case-scheme"),
    # A `(0)` trunk digit written beside the country code is dropped.
    case("+49 (0)30 5557-1600", "US", BERLIN, "trunk-zero-in-parentheses"),
    case("+49 ( 0 ) 30 5557 1600", "US", BERLIN, "trunk-zero-spaced"),
    case("+49(0)3055571600", "US", BERLIN, "trunk-zero-compact"),
    case("0049 (0)30 5557 1600", "US", BERLIN, "trunk-zero-after-00"),
    # International without `+`, as many PBXs send it.
    case("493055571600", "DE", BERLIN, "international-without-plus-in-de"),
    case("493055571600", "US", BERLIN, "international-without-plus-in-us"),
    case("16502530000", "DE", MOUNTAIN_VIEW, "us-international-without-plus-in-de"),
    # Extensions are dropped: the identity is the line, not the desk.
    case("+1 650 253 0000 ext. 123", "DE", MOUNTAIN_VIEW, "ext-dot"),
    case("+1 650 253 0000 ext 123", "DE", MOUNTAIN_VIEW, "ext-no-dot"),
    case("+1 650 253 0000 EXT.123", "DE", MOUNTAIN_VIEW, "ext-upper-case"),
    case("+1 650 253 0000 extension 5", "DE", MOUNTAIN_VIEW, "extension-word"),
    case("+1 650 253 0000 x 21", "DE", MOUNTAIN_VIEW, "x-spaced"),
    case("+1 650 253 0000 x21", "DE", MOUNTAIN_VIEW, "x-compact"),
    case("+1 650 253 0000 #21", "DE", MOUNTAIN_VIEW, "hash"),
    case("+49 30 5557 1600;ext=12", "US", BERLIN, "semicolon-ext-without-tel"),
    case("030 5557 1600 Ext. 12", "DE", BERLIN, "national-with-ext"),
]


@pytest.mark.parametrize(("raw", "region", "expected"), PHONE_CASES)
def test_phone_numbers_become_e164(raw: str, region: str, expected: str) -> None:
    assert normalise_phone(raw, region) == expected


@pytest.mark.parametrize(("raw", "region", "expected"), PHONE_CASES)
def test_normalise_phone_kind_wraps_the_e164_value(raw: str, region: str, expected: str) -> None:
    assert normalise(PHONE, raw, region) == IdentityKey(PHONE, expected)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="whitespace"),
        pytest.param("+", id="lone-plus"),
        pytest.param("0", id="lone-zero"),
        pytest.param("00", id="bare-international-prefix"),
        pytest.param("+49", id="country-code-only"),
        pytest.param("abc", id="letters"),
        pytest.param("+49 30 5557 1600 call me", id="number-followed-by-words"),
        pytest.param("1-800-FLOWERS", id="vanity-letters"),
        pytest.param("anonymous", id="anonymous-word"),
        pytest.param("+49 30 5557 1600 x", id="x-without-extension-digits"),
        pytest.param("+49*30*5557*1600", id="star-is-not-a-separator"),
        pytest.param("12", id="too-short-for-any-number"),
        pytest.param("+49 30 5557 1600 1234 5678 9", id="too-long-for-any-number"),
    ],
)
def test_phone_values_that_are_no_number_identify_nobody(raw: str) -> None:
    assert normalise_phone(raw, "DE") is None
    assert normalise(PHONE, raw, "DE") is None


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("anonymous", id="anonymous"),
        pytest.param("Anonymous", id="anonymous-capitalised"),
        pytest.param("  anonymous  ", id="anonymous-padded"),
        pytest.param("unknown", id="unknown"),
        pytest.param("UNKNOWN", id="unknown-upper"),
        pytest.param("restricted", id="restricted"),
        pytest.param("Restricted", id="restricted-capitalised"),
        pytest.param("CLIR", id="clir-upper"),
        pytest.param("clir", id="clir-lower"),
        pytest.param("private", id="private"),
        pytest.param("withheld", id="withheld"),
        pytest.param("unavailable", id="unavailable"),
        pytest.param("", id="empty"),
        pytest.param(" \t ", id="whitespace"),
    ],
)
@pytest.mark.parametrize("kind", [PHONE, EMAIL, TELEGRAM, WEBCHAT])
def test_withheld_or_unknown_senders_identify_nobody(kind: str, raw: str) -> None:
    assert normalise(kind, raw, "DE") is None


def test_all_written_forms_of_one_number_give_one_identity() -> None:
    forms = [
        ("+49 30 5557 1600", "DE"),
        ("0049305557 1600", "DE"),
        ("030 5557-1600", "DE"),
        ("493055571600", "DE"),
        ("+49 (0)30 5557-1600", "DE"),
        ("tel:+49-30-5557-1600;ext=12", "DE"),
        ("+49 30 5557 1600 x 21", "DE"),
    ]
    assert {normalise(PHONE, raw, region) for raw, region in forms} == {IdentityKey(PHONE, BERLIN)}


def test_tel_uri_local_number_is_completed_by_its_phone_context() -> None:
    # RFC 3966 §5.1.5: a local number is only meaningful with its phone-context, which
    # here supplies country 49 and area 30. Actual result: "+4955571600".
    assert normalise_phone("tel:5557-1600;phone-context=+49-30", "DE") == BERLIN


# --------------------------------------------------------------------------------------------
# E-mail addresses → lower-cased address part, IDNA domain
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("anna@example.de", "anna@example.de", id="plain"),
        pytest.param("Anna.Schmidt@Example.COM", "anna.schmidt@example.com", id="case-folded"),
        pytest.param(
            '"Anna Schmidt" <Anna.Schmidt@Example.COM>',
            "anna.schmidt@example.com",
            id="quoted-display-name-dropped",
        ),
        pytest.param(
            "Anna Schmidt <anna@example.de>", "anna@example.de", id="bare-display-name-dropped"
        ),
        pytest.param("<anna@example.de>", "anna@example.de", id="angle-brackets-only"),
        pytest.param(
            "anna@example.de (Anna Schmidt)", "anna@example.de", id="comment-name-dropped"
        ),
        pytest.param("  anna@example.de  ", "anna@example.de", id="surrounding-whitespace"),
        pytest.param("mailto:Anna@Example.de", "anna@example.de", id="mailto-scheme"),
        pytest.param("MAILTO:anna@example.de", "anna@example.de", id="mailto-upper-case"),
        pytest.param("info@bücher.de", "info@xn--bcher-kva.de", id="idna-domain"),
        pytest.param("info@BÜCHER.DE", "info@xn--bcher-kva.de", id="idna-domain-upper-case"),
        pytest.param(
            "Bücher Info <Info@Bücher.de>", "info@xn--bcher-kva.de", id="idna-with-display-name"
        ),
        pytest.param("info@xn--bcher-kva.de", "info@xn--bcher-kva.de", id="already-punycode"),
        pytest.param("anna@example.de.", "anna@example.de", id="trailing-root-dot"),
    ],
)
def test_email_addresses_are_normalised(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected
    assert normalise(EMAIL, raw, "DE") == IdentityKey(EMAIL, expected)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("", id="empty"),
        pytest.param("anna", id="no-at-sign"),
        pytest.param("@", id="lone-at-sign"),
        pytest.param("anna@", id="no-domain"),
        pytest.param("@example.de", id="no-local-part"),
        pytest.param("anna schmidt@example.de", id="space-in-local-part"),
        pytest.param("a@b@example.de", id="two-at-signs"),
        pytest.param("Anna <>", id="empty-angle-address"),
        pytest.param("anna@example..de", id="empty-domain-label"),
        pytest.param("anna@" + "a" * 64 + ".de", id="domain-label-over-63-chars"),
    ],
)
def test_invalid_email_addresses_identify_nobody(raw: str) -> None:
    assert normalise_email(raw) is None
    assert normalise(EMAIL, raw, "DE") is None


def test_mailto_uri_query_is_not_part_of_the_address() -> None:
    # Actual result: "anna@example.de?subject=hello" (an address that can never match).
    assert normalise_email("mailto:anna@example.de?subject=Hello") == "anna@example.de"


def test_idna_domain_keeps_sharp_s_as_registries_do() -> None:
    # straße.de and strasse.de are distinct domains under IDNA 2008 (DENIC, browsers);
    # actual result: "info@strasse.de".
    assert normalise_email("info@straße.de") == "info@xn--strae-oqa.de"


# --------------------------------------------------------------------------------------------
# Prefixed kinds and other kinds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        pytest.param(TELEGRAM, "12345", "12345", id="telegram-unprefixed"),
        pytest.param(TELEGRAM, "telegram:12345", "12345", id="telegram-prefixed"),
        pytest.param(TELEGRAM, "Telegram:12345", "12345", id="telegram-prefix-any-case"),
        pytest.param(TELEGRAM, "  telegram: 12345 ", "12345", id="telegram-padded"),
        pytest.param(WEBCHAT, "v-AbC123", "v-AbC123", id="webchat-unprefixed-keeps-case"),
        pytest.param(WEBCHAT, "webchat:v-AbC123", "v-AbC123", id="webchat-prefixed-keeps-case"),
        pytest.param(WEBCHAT, "WEBCHAT:v-1", "v-1", id="webchat-prefix-any-case"),
        pytest.param("whatsapp", "  wa-42  ", "wa-42", id="other-kind-kept-stripped"),
    ],
)
def test_prefixed_kinds_lose_their_prefix(kind: str, raw: str, expected: str) -> None:
    assert normalise(kind, raw, "DE") == IdentityKey(kind, expected)


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        pytest.param(TELEGRAM, "telegram:", id="telegram-prefix-only"),
        pytest.param(TELEGRAM, "telegram:   ", id="telegram-prefix-and-spaces"),
        pytest.param(WEBCHAT, "webchat:", id="webchat-prefix-only"),
        pytest.param(TELEGRAM, "telegram:anonymous", id="telegram-prefix-anonymous"),
        pytest.param(WEBCHAT, "webchat:unknown", id="webchat-prefix-unknown"),
    ],
)
def test_a_prefix_without_an_id_identifies_nobody(kind: str, raw: str) -> None:
    assert normalise(kind, raw, "DE") is None


def test_a_prefix_of_another_kind_is_not_stripped() -> None:
    assert normalise(TELEGRAM, "webchat:abc", "DE") == IdentityKey(TELEGRAM, "webchat:abc")


# --------------------------------------------------------------------------------------------
# parse_raw: guessing the kind of a bare sender id (agent search box)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        pytest.param("telegram:12345", "DE", IdentityKey(TELEGRAM, "12345"), id="telegram"),
        pytest.param("TELEGRAM:12345", "DE", IdentityKey(TELEGRAM, "12345"), id="telegram-upper"),
        pytest.param("webchat:v-AbC", "DE", IdentityKey(WEBCHAT, "v-AbC"), id="webchat"),
        pytest.param("  webchat:v-AbC  ", "DE", IdentityKey(WEBCHAT, "v-AbC"), id="webchat-padded"),
        pytest.param("anna@example.de", "DE", IdentityKey(EMAIL, "anna@example.de"), id="email"),
        pytest.param(
            '"Anna" <Anna@Example.DE>', "DE", IdentityKey(EMAIL, "anna@example.de"), id="email-name"
        ),
        pytest.param(
            "mailto:anna@example.de", "DE", IdentityKey(EMAIL, "anna@example.de"), id="mailto"
        ),
        pytest.param("+49 30 5557 1600", "DE", IdentityKey(PHONE, BERLIN), id="phone-e164"),
        pytest.param("030 5557 1600", "DE", IdentityKey(PHONE, BERLIN), id="phone-national-de"),
        pytest.param(
            "(650) 253-0000", "US", IdentityKey(PHONE, MOUNTAIN_VIEW), id="phone-national-us"
        ),
        pytest.param(
            "tel:+49-30-5557-1600;ext=12", "US", IdentityKey(PHONE, BERLIN), id="phone-tel-uri"
        ),
        pytest.param("anonymous", "DE", None, id="anonymous"),
        pytest.param("", "DE", None, id="empty"),
        pytest.param("Anna Schmidt", "DE", None, id="name-is-not-a-phone"),
        pytest.param("telegram:", "DE", None, id="telegram-prefix-only"),
        pytest.param("anna@", "DE", None, id="broken-email"),
    ],
)
def test_parse_raw_guesses_the_kind(raw: str, region: str, expected: IdentityKey | None) -> None:
    assert parse_raw(raw, region) == expected
