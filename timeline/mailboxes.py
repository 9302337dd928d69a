"""How far IMAP intake has read each mailbox: its UIDVALIDITY and the last UID taken.

RFC 3501 §2.3.1.1: UIDs are only comparable under one UIDVALIDITY. When the server changes
it (a mailbox recreated, a migration), the position starts over at 0; reading everything
again is safe because the ingest path dedupes on Message-ID.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from timeline.models import MailboxState, utcnow


def position(session: Session, name: str, uidvalidity: int) -> int:
    """The last UID taken from mailbox `name` under `uidvalidity` (0: start from the top)."""
    state = session.get(MailboxState, name)
    if state is None:
        session.add(MailboxState(name=name, uidvalidity=uidvalidity, last_uid=0))
        return 0
    if state.uidvalidity != uidvalidity:
        state.uidvalidity, state.last_uid, state.updated_at = uidvalidity, 0, utcnow()
    return state.last_uid


def advance(session: Session, name: str, uidvalidity: int, last_uid: int) -> None:
    """Remember `last_uid` as taken, unless the mailbox changed its UIDVALIDITY meanwhile."""
    state = session.get(MailboxState, name)
    if state is None:
        session.add(MailboxState(name=name, uidvalidity=uidvalidity, last_uid=last_uid))
    elif state.uidvalidity == uidvalidity and last_uid > state.last_uid:
        state.last_uid, state.updated_at = last_uid, utcnow()
