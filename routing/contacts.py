"""Contact resolution: known identity → its contact; unknown → a new contact."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from routing.identity import IdentityKey, normalise
from timeline import store
from timeline.events import Address
from timeline.models import Contact


def identity_of(address: Address, region: str) -> IdentityKey | None:
    return normalise(address.kind, address.raw, region)


async def resolve_contact(
    session: AsyncSession, identity: IdentityKey, display_name: str | None
) -> Contact:
    """The contact owning `identity`, created (named from the channel) if nobody does yet.

    Two first messages from one new sender can race; the unique identity constraint makes the
    loser's transaction fail, and the ingest path retries it, finding the winner's contact.
    """
    contact = await store.contact_by_identity(session, identity.kind, identity.value)
    if contact is not None:
        return contact
    name = (display_name or "").strip() or identity.value
    return await store.create_contact(
        session, name=name[:200], identities=[(identity.kind, identity.value)]
    )
