"""Segments: an audience filter over contacts, as SQL, read in keyset pages.

A filter is a JSON object; every key it names must hold (AND). Keys:

- `tags_any`, `tags_all`: lists of tags; `vip`: true/false, the `VIP` tag (as routing uses it)
- `attributes`: `{"key": ["v1", "v2"]}`, the contact attribute is one of the values
- `abc_class`: list, the `abc_class` attribute
- `channel`: `sms` | `telegram` | `email`, has an identity usable on it (e-mail: not bouncing)
- `consent`: `not_opted_out` (no opt-out on the channel's identities, or on any without a
  channel), `opted_in` (that, and the attribute `consent` is `opted_in`)
- `last_contact_before`, `last_contact_after`: ISO 8601; the contact's newest timeline event
  (a contact never in touch counts as "before" any date)
- `tickets_min`, `tickets_max`: how many tickets the contact has
- `countries`: ISO 3166 alpha-2 of a phone identity (`["DE", "US"]`); `regions`: the number's
  region code or `phonenumbers`' geocoder description (`"Berlin"`)

Everything but countries and regions is SQL. Those two are narrowed in SQL (the calling code)
and decided per number in Python, which is why reading a segment goes page by page over
contact ids (`page`): the audience is never held in memory, whatever its size. Merged contacts
(`merged_into_id`) are never in an audience: their winner is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import phonenumbers
from phonenumbers import geocoder
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    exists,
    false,
    func,
    not_,
    or_,
    select,
)
from sqlalchemy.orm import Session

from routing.identity import EMAIL, PHONE, TELEGRAM
from timeline.models import Contact, Identity, OptOut, Ticket, TimelineEvent

# The channels campaigns send on, and the identity kind each sends to.
CHANNEL_KINDS: Mapping[str, str] = {"sms": PHONE, "telegram": TELEGRAM, "email": EMAIL}
KEYS = frozenset(
    {
        "tags_any",
        "tags_all",
        "attributes",
        "abc_class",
        "vip",
        "channel",
        "consent",
        "last_contact_before",
        "last_contact_after",
        "tickets_min",
        "tickets_max",
        "countries",
        "regions",
    }
)
VIP_TAG = "VIP"
CONSENT_STATES = ("opted_in", "not_opted_out")


class InvalidFilter(ValueError):
    """A filter that cannot be used, with a sentence saying why."""


@dataclass(frozen=True, slots=True)
class Audience:
    """A checked filter."""

    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    vip: bool | None = None
    channel: str | None = None
    consent: str | None = None
    last_contact_before: datetime | None = None
    last_contact_after: datetime | None = None
    tickets_min: int | None = None
    tickets_max: int | None = None
    countries: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()

    @property
    def by_number(self) -> bool:
        """Whether membership is decided per phone number, in Python."""
        return bool(self.countries or self.regions)


def parse_filter(data: object) -> Audience:
    if not isinstance(data, Mapping):
        raise InvalidFilter("The filter must be an object.")
    unknown = set(data) - KEYS
    if unknown:
        raise InvalidFilter(f"Unknown filter keys: {', '.join(sorted(unknown))}.")
    attributes = dict(_attributes(data.get("attributes", {})))
    if "abc_class" in data:
        attributes["abc_class"] = _strings(data, "abc_class")
    channel = data.get("channel")
    if channel is not None and channel not in CHANNEL_KINDS:
        raise InvalidFilter(f"'channel' is one of {', '.join(CHANNEL_KINDS)}.")
    consent = data.get("consent")
    if consent is not None and consent not in CONSENT_STATES:
        raise InvalidFilter(f"'consent' is one of {', '.join(CONSENT_STATES)}.")
    vip = data.get("vip")
    if vip is not None and not isinstance(vip, bool):
        raise InvalidFilter("'vip' is true or false.")
    return Audience(
        tags_any=_strings(data, "tags_any"),
        tags_all=_strings(data, "tags_all"),
        attributes=attributes,
        vip=vip,
        channel=channel,
        consent=consent,
        last_contact_before=_moment(data, "last_contact_before"),
        last_contact_after=_moment(data, "last_contact_after"),
        tickets_min=_count(data, "tickets_min"),
        tickets_max=_count(data, "tickets_max"),
        countries=frozenset(c.upper() for c in _strings(data, "countries")),
        regions=frozenset(r.casefold() for r in _strings(data, "regions")),
    )


def _strings(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidFilter(f"'{key}' must be a list of strings.")
    return tuple(value)


def _attributes(value: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise InvalidFilter("'attributes' must be an object of lists.")
    return {str(k): _strings(value, k) for k in value}


def _moment(data: Mapping[str, Any], key: str) -> datetime | None:
    raw = data.get(key)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidFilter(f"'{key}' must be an ISO 8601 date or time.") from None
    if moment.tzinfo is None:
        raise InvalidFilter(f"'{key}' needs a time zone offset, e.g. 2026-01-31T00:00:00Z.")
    return moment


def _count(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InvalidFilter(f"'{key}' must be a whole number from 0.")
    return value


# --- SQL ------------------------------------------------------------------------------------


def contact_query(audience: Audience, dialect: str) -> Select[Any]:
    """The ids of the contacts that pass the SQL part of the filter, in id order."""
    conditions: list[ColumnElement[bool]] = [Contact.merged_into_id.is_(None)]
    if audience.tags_any:
        conditions.append(_has_tag(audience.tags_any, dialect))
    conditions.extend(_has_tag((tag,), dialect) for tag in audience.tags_all)
    if audience.vip is not None:
        vip = _has_tag((VIP_TAG, VIP_TAG.lower()), dialect)
        conditions.append(vip if audience.vip else not_(vip))
    for key, values in audience.attributes.items():
        conditions.append(Contact.attributes[key].as_string().in_(values))
    kind = CHANNEL_KINDS[audience.channel] if audience.channel else None
    if kind is not None:
        conditions.append(exists(_usable(kind)))
    if audience.consent is not None:
        conditions.append(not_(exists(_opted_out(kind))))
        if audience.consent == "opted_in":
            conditions.append(Contact.attributes["consent"].as_string() == "opted_in")
    conditions.extend(_last_contact(audience))
    conditions.extend(_tickets(audience))
    if audience.countries:
        conditions.append(_calling_codes(audience.countries))
    elif audience.regions:
        conditions.append(exists(_usable(PHONE)))
    return select(Contact.id).where(and_(*conditions)).order_by(Contact.id)


def _has_tag(tags: tuple[str, ...], dialect: str) -> ColumnElement[bool]:
    elements = (
        func.json_each(Contact.tags)
        if dialect == "sqlite"
        else func.json_array_elements_text(Contact.tags)
    ).table_valued("value")
    return exists(select(1).select_from(elements).where(elements.c.value.in_(tags)))


def _usable(kind: str) -> Select[Any]:
    query = select(Identity.id).where(Identity.contact_id == Contact.id, Identity.kind == kind)
    if kind == EMAIL:
        query = query.where(Identity.bouncing_since.is_(None))
    return query


def _opted_out(kind: str | None) -> Select[Any]:
    query = select(OptOut.identity_id).where(OptOut.contact_id == Contact.id)
    if kind is not None:
        query = query.join(Identity, Identity.id == OptOut.identity_id).where(Identity.kind == kind)
    return query


def _last_contact(audience: Audience) -> list[ColumnElement[bool]]:
    latest = (
        select(func.max(TimelineEvent.occurred_at))
        .where(TimelineEvent.contact_id == Contact.id)
        .scalar_subquery()
    )
    conditions = []
    if audience.last_contact_before is not None:
        conditions.append(or_(latest.is_(None), latest < audience.last_contact_before))
    if audience.last_contact_after is not None:
        conditions.append(latest > audience.last_contact_after)
    return conditions


def _tickets(audience: Audience) -> list[ColumnElement[bool]]:
    tickets = select(func.count(Ticket.id)).where(Ticket.contact_id == Contact.id).scalar_subquery()
    conditions = []
    if audience.tickets_min is not None:
        conditions.append(tickets >= audience.tickets_min)
    if audience.tickets_max is not None:
        conditions.append(tickets <= audience.tickets_max)
    return conditions


def _calling_codes(countries: frozenset[str]) -> ColumnElement[bool]:
    """Narrows `countries` to phone numbers with their calling codes (+1 is many countries)."""
    codes = {phonenumbers.country_code_for_region(c) for c in countries} - {0}
    if not codes:
        return false()
    prefixes = [Identity.value.startswith(f"+{code}") for code in sorted(codes)]
    return exists(_usable(PHONE).where(or_(*prefixes)))


# --- in Python --------------------------------------------------------------------------------


def number_matches(audience: Audience, phone: str) -> bool:
    """Whether one E.164 number passes `countries` and `regions`."""
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return False
    region = phonenumbers.region_code_for_number(number) or ""
    if audience.countries and region not in audience.countries:
        return False
    if audience.regions:
        place = geocoder.description_for_number(number, "en").casefold()
        return region.casefold() in audience.regions or place in audience.regions
    return True


@dataclass(frozen=True, slots=True)
class Member:
    contact_id: int
    name: str
    tags: list[str]
    attributes: dict[str, Any]
    identities: list[tuple[str, str]]

    def addresses(self, kind: str) -> list[str]:
        return [value for k, value in self.identities if k == kind]


def page(
    session: Session, audience: Audience, after_id: int, limit: int
) -> tuple[list[Member], int | None]:
    """The members among the next `limit` candidate contacts after `after_id`, and the id to
    continue after (None when the audience is exhausted)."""
    ids = _candidates(session, audience, after_id, limit)
    if not ids:
        return [], None
    members = members_of(session, ids)
    if audience.by_number:
        members = [
            m for m in members if any(number_matches(audience, p) for p in m.addresses(PHONE))
        ]
    return members, ids[-1]


def page_ids(
    session: Session, audience: Audience, after_id: int, limit: int
) -> tuple[list[int], int | None]:
    """`page`, as contact ids: what materialising an audience needs. Unless phone numbers
    decide, the members' details are not even read."""
    if audience.by_number:
        members, cursor = page(session, audience, after_id, limit)
        return [m.contact_id for m in members], cursor
    ids = _candidates(session, audience, after_id, limit)
    return ids, (ids[-1] if ids else None)


def _candidates(session: Session, audience: Audience, after_id: int, limit: int) -> list[int]:
    query = contact_query(audience, session.get_bind().dialect.name)
    return list(session.execute(query.where(Contact.id > after_id).limit(limit)).scalars())


def members_of(session: Session, contact_ids: list[int]) -> list[Member]:
    identities: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for contact_id, kind, value in session.execute(_IDENTITIES, {"ids": contact_ids}):
        identities[contact_id].append((kind, value))
    rows = session.execute(_DETAILS, {"ids": contact_ids})
    return [
        Member(cid, name, list(tags or []), dict(attributes or {}), identities[cid])
        for cid, name, tags, attributes in rows
    ]


# `members_of`'s statements, built once: a campaign reads a page of members per batch.
_IDENTITIES = (
    select(Identity.contact_id, Identity.kind, Identity.value)
    .where(Identity.contact_id.in_(bindparam("ids", expanding=True)))
    .order_by(Identity.id)
)
_DETAILS = (
    select(Contact.id, Contact.name, Contact.tags, Contact.attributes)
    .where(Contact.id.in_(bindparam("ids", expanding=True)))
    .order_by(Contact.id)
)


def count(session: Session, audience: Audience, page_size: int = 5000) -> int:
    """How many contacts the audience has now: one SQL count, or pages when numbers decide."""
    if not audience.by_number:
        query = contact_query(audience, session.get_bind().dialect.name)
        return int(session.execute(select(func.count()).select_from(query.subquery())).scalar_one())
    total, after = 0, 0
    while True:
        members, cursor = page(session, audience, after, page_size)
        if cursor is None:
            return total
        total, after = total + len(members), cursor


def sample(session: Session, audience: Audience, size: int) -> list[Member]:
    """The first `size` members (by contact id)."""
    found: list[Member] = []
    after: int | None = 0
    while len(found) < size and after is not None:
        members, after = page(session, audience, after, max(size, 100))
        found.extend(members)
    return found[:size]
