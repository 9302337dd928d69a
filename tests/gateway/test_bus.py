"""The in-process bus (`gateway.bus`): a listener that takes messages directly gets them in the
publisher's own turn of the event loop; anything it declines is queued, and nothing overtakes
what is queued.
"""

from __future__ import annotations

from typing import Any

from gateway.bus import InProcessBus, Message, Subscription


class Taker:
    """Takes what it is offered while `accepting`, and keeps it."""

    def __init__(self) -> None:
        self.accepting = True
        self.taken: list[Message] = []

    async def __call__(self, message: Message) -> bool:
        if self.accepting:
            self.taken.append(message)
        return self.accepting


async def listening(bus: InProcessBus, topic: str = "agent.1") -> tuple[Subscription, Taker]:
    subscription = await bus.subscribe(topic)
    taker = Taker()
    subscription.take_directly(taker)
    return subscription, taker


def pop(n: int) -> dict[str, Any]:
    return {"type": "screen_pop", "id": n}


async def test_a_direct_taker_has_the_message_when_publish_returns() -> None:
    bus = InProcessBus()
    subscription, taker = await listening(bus)

    await bus.publish("agent.1", pop(1))

    assert taker.taken == [pop(1)]
    assert subscription.drain() == []


async def test_what_the_taker_declines_is_queued_and_nothing_overtakes_it() -> None:
    bus = InProcessBus()
    subscription, taker = await listening(bus)

    taker.accepting = False
    await bus.publish("agent.1", pop(1))
    taker.accepting = True
    await bus.publish("agent.1", pop(2))  # behind the first, though the taker would take it

    assert taker.taken == []
    assert subscription.drain() == [pop(1), pop(2)]
    await bus.publish("agent.1", pop(3))  # the queue is empty again
    assert taker.taken == [pop(3)]


async def test_a_listener_without_a_taker_gets_its_messages_queued() -> None:
    bus = InProcessBus()
    plain = await bus.subscribe("agent.1")
    _, taker = await listening(bus)

    await bus.publish("agent.1", pop(1))

    assert plain.drain() == [pop(1)]
    assert taker.taken == [pop(1)]


async def test_other_topics_get_nothing() -> None:
    bus = InProcessBus()
    subscription, taker = await listening(bus, "agent.2")

    await bus.publish("agent.1", pop(1))

    assert taker.taken == [] and subscription.drain() == []
