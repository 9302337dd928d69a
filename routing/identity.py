"""Identity normalisation: every channel's raw sender id becomes one comparable value.

The same person must be found whether a PBX sends `+49 30 5557 1600`, `0049305557 1600` or
`030 5557-1600`, and whether a mail client writes `"Anna" <Anna@Example.DE>` or `anna@example.de`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email.utils import parseaddr

import idna
import phonenumbers

PHONE = "phone"
EMAIL = "email"
TELEGRAM = "telegram"
WEBCHAT = "webchat"

# What PBXs and carriers send when the caller withheld the number (CLIR) or it is unknown.
NOT_AN_IDENTITY = frozenset(
    {
        "",
        "anonymous",
        "unknown",
        "unavailable",
        "private",
        "restricted",
        "withheld",
        "clir",
        "blocked",
        "none",
        "null",
        "+",
    }
)

_PREFIXED_KINDS = (TELEGRAM, WEBCHAT)
# The longest identity value kept (the column's width); RFC 5321 caps mail addresses at 254.
MAX_IDENTITY_LENGTH = 320
MAX_KIND_LENGTH = 32
_KIND = re.compile(r"^[a-z][a-z0-9_-]*$")
_TRUNK_ZERO = re.compile(r"\(\s*0\s*\)")
_PHONE_CHARS = re.compile(r"^[+\d\s\-./()]+$")
# A lone '@' splits an e-mail address; anything with letters and no '@' is not a phone.
_HAS_LETTERS = re.compile(r"[A-Za-z]")


@dataclass(frozen=True, slots=True)
class IdentityKey:
    kind: str
    value: str


@functools.lru_cache(maxsize=65_536)  # pure, and parsing numbers is the costly part of ingest
def normalise(kind: str, raw: str, region: str) -> IdentityKey | None:
    """The identity for a raw value of a known kind, or None when it identifies nobody.

    Over-long values and malformed kinds identify nobody either: they cannot be stored as an
    identity, and no real address is that long.
    """
    if len(kind) > MAX_KIND_LENGTH or not _KIND.match(kind):
        return None
    raw = raw.strip()
    if kind in _PREFIXED_KINDS:
        raw = _strip_prefix(kind, raw)
    if raw.lower() in NOT_AN_IDENTITY:
        return None
    value: str | None
    if kind == PHONE:
        value = normalise_phone(raw, region)
    elif kind == EMAIL:
        value = normalise_email(raw)
    else:
        value = raw
    if not value or len(value) > MAX_IDENTITY_LENGTH:
        return None
    return IdentityKey(kind, value)


def parse_raw(raw: str, region: str) -> IdentityKey | None:
    """Guess the kind of a bare sender id (as an agent types it into a search box)."""
    raw = raw.strip()
    lowered = raw.lower()
    for kind in _PREFIXED_KINDS:
        if lowered.startswith(f"{kind}:"):
            return normalise(kind, raw, region)
    if "@" in raw:
        return normalise(EMAIL, raw, region)
    return normalise(PHONE, raw, region)


def normalise_phone(raw: str, region: str) -> str | None:
    """E.164 (`+4930…`), dropping any extension; None for anything that is not a number.

    Rules, in order: a `tel:` URI (RFC 3966) loses its scheme and parameters, a local number in
    it is completed by its global `phone-context`; `00` is the
    international prefix in most of the world and becomes `+`; a `(0)` trunk digit written
    beside a country code is dropped; a national number is read in `region`; a bare digit
    string that is not a valid national number but is a valid international one without its
    `+` (as many PBXs send it, e.g. `493055571600`) is read as international. What is too
    short or too long to be anybody's number (an internal extension like `201`) is none.
    """
    value = raw.strip()
    if value.lower().startswith("tel:"):
        value = _tel_uri_number(value[4:])
    value = _TRUNK_ZERO.sub("", value)
    value = _cut_extension(value)
    if not value or _HAS_LETTERS.search(value) or not _PHONE_CHARS.match(value):
        return None
    compact = re.sub(r"[\s\-./()]", "", value)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not compact.lstrip("+").isdigit():
        return None
    number = _parse(compact, region)
    if not compact.startswith(("+", "0")) and not _is_valid(number):
        international = _parse("+" + compact, region)
        if _is_valid(international):
            number = international
    if number is None or not _is_possible(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _tel_uri_number(uri: str) -> str:
    """The dialable number of a `tel:` URI body, e.g. `5557-1600;phone-context=+49-30`."""
    number, *parameters = uri.split(";")
    if number.strip().startswith("+"):
        return number
    for parameter in parameters:
        name, _, context = parameter.partition("=")
        if name.strip().lower() == "phone-context" and context.startswith("+"):
            return context + number
    return number


def _is_possible(number: phonenumbers.PhoneNumber) -> bool:
    """Long enough to dial from anywhere: a "local only" length is an extension, not a caller."""
    reason = phonenumbers.is_possible_number_with_reason(number)
    return bool(reason == phonenumbers.ValidationResult.IS_POSSIBLE)


def _is_valid(number: phonenumbers.PhoneNumber | None) -> bool:
    return number is not None and phonenumbers.is_valid_number(number)


def _parse(value: str, region: str) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(value, region.upper())
    except phonenumbers.NumberParseException:
        return None


_EXTENSION = re.compile(r"\s*(?:;?ext\.?|x|#|extension)\s*=?\s*\d+\s*$", re.IGNORECASE)


def _cut_extension(value: str) -> str:
    return _EXTENSION.sub("", value)


def normalise_email(raw: str) -> str | None:
    """The address part, lower-cased, with its domain in IDNA 2008 (ASCII) form.

    IDNA 2008 with UTS #46 mapping, as registries and browsers use it: `straße.de` stays a
    domain of its own (`xn--strae-oqa.de`) instead of becoming `strasse.de` (IDNA 2003).
    """
    raw = _MAILTO.sub("", raw.strip())
    _name, address = parseaddr(raw)
    address = address.strip()
    # RFC 6068: a mailto: URI may carry ?subject=… after the address.
    address = address.split("?", 1)[0]
    local, at, domain = address.rpartition("@")
    # parseaddr quietly joins words ("anna@exa mple.de"); such input is not one address.
    if not at or not local or not domain or address not in raw or " " in address:
        return None
    try:
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii")
    except idna.IDNAError:
        return None
    return f"{local.lower()}@{ascii_domain.lower()}"


_MAILTO = re.compile(r"(?i)(?<![\w.])mailto:")


def _strip_prefix(kind: str, raw: str) -> str:
    prefix = f"{kind}:"
    return raw[len(prefix) :].strip() if raw.lower().startswith(prefix) else raw
