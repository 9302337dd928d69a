"""Ticket policy: which ticket an inbound event belongs to.

Order: an explicit thread hint wins; else the contact's open ticket; else a ticket resolved within
the reopen window is reopened; else a new ticket. A hinted ticket resolved too long ago is not
reopened: a new ticket links to it instead. The window is inclusive.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from routing.tickets import TicketAction, TicketChoice, TicketState, choose_ticket

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=7)

HINTED_ID = 10
OPEN_ID = 20
LAST_RESOLVED_ID = 30


def open_ticket(ticket_id: int, status: str = "open") -> TicketState:
    return TicketState(ticket_id, status, resolved_at=None)


def resolved(ticket_id: int, ago: timedelta) -> TicketState:
    return TicketState(ticket_id, "resolved", resolved_at=NOW - ago)


WITHIN = timedelta(days=2)
EXACTLY = WINDOW
BEYOND = WINDOW + timedelta(microseconds=1)
LONG_AGO = timedelta(days=90)


@pytest.mark.parametrize(
    ("hinted", "open_", "last_resolved", "expected"),
    [
        # Nothing known about the contact's tickets.
        pytest.param(None, None, None, TicketChoice(TicketAction.NEW), id="nothing-new"),
        # A thread hint names the ticket.
        pytest.param(
            open_ticket(HINTED_ID),
            None,
            None,
            TicketChoice(TicketAction.APPEND, HINTED_ID),
            id="hinted-open-append",
        ),
        pytest.param(
            open_ticket(HINTED_ID, "new"),
            None,
            None,
            TicketChoice(TicketAction.APPEND, HINTED_ID),
            id="hinted-new-append",
        ),
        pytest.param(
            open_ticket(HINTED_ID, "pending"),
            None,
            None,
            TicketChoice(TicketAction.APPEND, HINTED_ID),
            id="hinted-pending-append",
        ),
        pytest.param(
            resolved(HINTED_ID, WITHIN),
            None,
            None,
            TicketChoice(TicketAction.REOPEN, HINTED_ID),
            id="hinted-resolved-within-window-reopen",
        ),
        pytest.param(
            resolved(HINTED_ID, EXACTLY),
            None,
            None,
            TicketChoice(TicketAction.REOPEN, HINTED_ID),
            id="hinted-resolved-exactly-at-window-reopen",
        ),
        pytest.param(
            resolved(HINTED_ID, BEYOND),
            None,
            None,
            TicketChoice(TicketAction.NEW, linked_ticket_id=HINTED_ID),
            id="hinted-resolved-just-beyond-window-new-linked",
        ),
        pytest.param(
            resolved(HINTED_ID, LONG_AGO),
            None,
            None,
            TicketChoice(TicketAction.NEW, linked_ticket_id=HINTED_ID),
            id="hinted-resolved-long-ago-new-linked",
        ),
        # The hint wins over the contact's other tickets.
        pytest.param(
            open_ticket(HINTED_ID),
            open_ticket(OPEN_ID),
            None,
            TicketChoice(TicketAction.APPEND, HINTED_ID),
            id="hinted-open-wins-over-other-open-ticket",
        ),
        pytest.param(
            resolved(HINTED_ID, WITHIN),
            open_ticket(OPEN_ID),
            None,
            TicketChoice(TicketAction.REOPEN, HINTED_ID),
            id="hinted-resolved-wins-over-other-open-ticket",
        ),
        pytest.param(
            resolved(HINTED_ID, WITHIN),
            None,
            resolved(LAST_RESOLVED_ID, timedelta(hours=1)),
            TicketChoice(TicketAction.REOPEN, HINTED_ID),
            id="hinted-wins-over-more-recently-resolved-ticket",
        ),
        # No hint: the contact's open ticket.
        pytest.param(
            None,
            open_ticket(OPEN_ID),
            None,
            TicketChoice(TicketAction.APPEND, OPEN_ID),
            id="open-ticket-append",
        ),
        pytest.param(
            None,
            open_ticket(OPEN_ID),
            resolved(LAST_RESOLVED_ID, WITHIN),
            TicketChoice(TicketAction.APPEND, OPEN_ID),
            id="open-ticket-wins-over-reopen",
        ),
        # No hint, nothing open: the reopen window decides.
        pytest.param(
            None,
            None,
            resolved(LAST_RESOLVED_ID, WITHIN),
            TicketChoice(TicketAction.REOPEN, LAST_RESOLVED_ID),
            id="last-resolved-within-window-reopen",
        ),
        pytest.param(
            None,
            None,
            resolved(LAST_RESOLVED_ID, EXACTLY),
            TicketChoice(TicketAction.REOPEN, LAST_RESOLVED_ID),
            id="last-resolved-exactly-at-window-reopen",
        ),
        pytest.param(
            None,
            None,
            resolved(LAST_RESOLVED_ID, BEYOND),
            TicketChoice(TicketAction.NEW),
            id="last-resolved-just-beyond-window-new-unlinked",
        ),
        pytest.param(
            None,
            None,
            resolved(LAST_RESOLVED_ID, LONG_AGO),
            TicketChoice(TicketAction.NEW),
            id="last-resolved-long-ago-new-unlinked",
        ),
    ],
)
def test_choose_ticket(
    hinted: TicketState | None,
    open_: TicketState | None,
    last_resolved: TicketState | None,
    expected: TicketChoice,
) -> None:
    choice = choose_ticket(
        hinted=hinted,
        open_ticket=open_,
        last_resolved=last_resolved,
        now=NOW,
        reopen_window=WINDOW,
    )
    assert choice == expected


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        pytest.param(timedelta(0), TicketChoice(TicketAction.NEW), id="zero-window-never-reopens"),
        pytest.param(
            timedelta(hours=1),
            TicketChoice(TicketAction.NEW),
            id="window-shorter-than-gap-new",
        ),
        pytest.param(
            timedelta(days=3),
            TicketChoice(TicketAction.REOPEN, LAST_RESOLVED_ID),
            id="window-longer-than-gap-reopen",
        ),
    ],
)
def test_the_reopen_window_is_configurable(window: timedelta, expected: TicketChoice) -> None:
    last = resolved(LAST_RESOLVED_ID, timedelta(days=2))
    choice = choose_ticket(
        hinted=None, open_ticket=None, last_resolved=last, now=NOW, reopen_window=window
    )
    assert choice == expected


def test_a_new_ticket_carries_no_ticket_id() -> None:
    choice = choose_ticket(
        hinted=resolved(HINTED_ID, LONG_AGO),
        open_ticket=None,
        last_resolved=None,
        now=NOW,
        reopen_window=WINDOW,
    )
    assert choice.action is TicketAction.NEW
    assert choice.ticket_id is None
    assert choice.linked_ticket_id == HINTED_ID


@pytest.mark.parametrize(
    ("hinted", "open_", "last_resolved", "expected"),
    [
        pytest.param(
            open_ticket(HINTED_ID),
            open_ticket(OPEN_ID),
            None,
            TicketChoice(TicketAction.APPEND, HINTED_ID),
            id="joins-the-open-ticket-it-answers",
        ),
        pytest.param(
            resolved(HINTED_ID, WITHIN),
            None,
            None,
            TicketChoice(TicketAction.NONE),
            id="never-reopens",
        ),
        pytest.param(
            None,
            open_ticket(OPEN_ID),
            None,
            TicketChoice(TicketAction.NONE),
            id="not-the-contacts-open-ticket",
        ),
        pytest.param(
            None,
            None,
            resolved(LAST_RESOLVED_ID, WITHIN),
            TicketChoice(TicketAction.NONE),
            id="not-the-recently-resolved-one",
        ),
        pytest.param(None, None, None, TicketChoice(TicketAction.NONE), id="never-opens"),
    ],
)
def test_an_event_that_may_not_open_a_ticket(
    hinted: TicketState | None,
    open_: TicketState | None,
    last_resolved: TicketState | None,
    expected: TicketChoice,
) -> None:
    """Auto-generated mail (out-of-office, bulk, bounces): never a new or reopened ticket."""
    choice = choose_ticket(
        hinted=hinted,
        open_ticket=open_,
        last_resolved=last_resolved,
        now=NOW,
        reopen_window=WINDOW,
        opens_ticket=False,
    )
    assert choice == expected
