"""Merging two contacts that turned out to be one person (DESIGN.md: identity).

Data arrive dirty: the same customer writes from a new address and becomes a second contact.
An agent merges them; the loser keeps a pointer to the winner (`merged_into_id`), and every
row that belonged to the loser (identities, timeline, tickets, calls, outbox, opt-outs, and
whatever table gains a `contact_id` later) now belongs to the winner.
"""

from __future__ import annotations

from sqlalchemy import Table, update
from sqlalchemy.orm import Session

from timeline.models import Base, Contact


class MergeRefused(ValueError):
    pass


def merge_contacts(session: Session, loser_id: int, winner_id: int) -> Contact:
    """Move everything of `loser_id` to `winner_id`; the winner, with both contacts' tags."""
    if loser_id == winner_id:
        raise MergeRefused("A contact cannot be merged into itself.")
    loser, winner = session.get(Contact, loser_id), session.get(Contact, winner_id)
    if loser is None or winner is None:
        raise MergeRefused("Both contacts must exist.")
    if loser.merged_into_id is not None or winner.merged_into_id is not None:
        raise MergeRefused("A contact that was merged away cannot be merged again.")
    for table in _owned_by_contacts():
        session.execute(
            update(table).where(table.c.contact_id == loser_id).values(contact_id=winner_id)
        )
    winner.tags = sorted({*winner.tags, *loser.tags})
    winner.attributes = {**loser.attributes, **winner.attributes}
    loser.merged_into_id = winner_id
    session.flush()
    return winner


def _owned_by_contacts() -> list[Table]:
    tables = []
    for table in Base.metadata.sorted_tables:
        column = table.c.get("contact_id")
        if column is not None and any(
            fk.column.table.name == "contacts" for fk in column.foreign_keys
        ):
            tables.append(table)
    return tables
