"""Contact resolution: known identity → its contact; unknown → a new contact."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from routing.identity import IdentityKey, normalise
from timeline import store
from timeline.events import Address


def identity_of(address: Address, region: str) -> IdentityKey | None:
    return normalise(address.kind, address.raw, region)


@dataclass(frozen=True, slots=True)
class Resolved:
    """The contact of each identity, and which of them are new (and so have no history)."""

    contacts: dict[IdentityKey, int]
    created: frozenset[int]


def resolve_contacts(
    session: Session, senders: Sequence[tuple[IdentityKey, str | None]]
) -> Resolved:
    """The contact of each sender identity, creating (and naming) those nobody owns yet.

    A sender seen twice in one batch becomes one contact. Two processes creating the same new
    contact at once collide on the unique identity; the loser's transaction fails and the
    ingest path retries it, finding the winner's contact.
    """
    known = store.contact_ids_by_identity(session, {(i.kind, i.value) for i, _ in senders})
    contacts = {i: known[(i.kind, i.value)] for i, _ in senders if (i.kind, i.value) in known}
    missing: dict[IdentityKey, str] = {}
    for identity, name in senders:
        if identity not in contacts and identity not in missing:
            missing[identity] = ((name or "").strip() or identity.value)[:200]
    created = store.create_contacts(
        session, [(name, [(i.kind, i.value)]) for i, name in missing.items()]
    )
    contacts.update(zip(missing, created, strict=True))
    return Resolved(contacts, frozenset(created))
