"""May we send to this identity? The opt-out rule every sender goes by.

An opt-out (an SMS `STOP`) blocks everything sent to that identity, with one exception: a
direct reply in a conversation the customer opened within the last 24 hours. "Opened" means
the customer wrote to us on that identity after opting out: someone who texts STOP and later
asks a question on the same number expects the answer, and their own message is the consent to
it. The `STOP` itself never counts, nor anything written before it. Opting back in (`START`)
lifts the block altogether.
"""

from __future__ import annotations

from datetime import datetime, timedelta

REPLY_WINDOW = timedelta(hours=24)


def may_send(
    opted_out_at: datetime | None,
    customer_wrote_at: datetime | None,
    now: datetime,
    *,
    is_reply: bool = True,
) -> bool:
    """`customer_wrote_at`: the customer's latest message in the conversation being answered."""
    if opted_out_at is None:
        return True
    if not is_reply or customer_wrote_at is None:
        return False
    return customer_wrote_at > opted_out_at and now - customer_wrote_at <= REPLY_WINDOW
