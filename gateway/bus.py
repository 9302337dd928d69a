"""The bus: pops and queue updates reach whichever process holds the agent's WebSocket.

In-process by default; with `SWITCHBOARD_REDIS_URL`, Redis pub/sub carries every message, so
several gateway processes behind one load balancer see each other's publications.

In process, a publisher hands a message straight to a listener that takes it at once
(`Subscription.take_directly`): an agent's socket with nothing waiting to go out gets a ring's
pop written in the webhook's own turn of the event loop, not a turn later by the task that
forwards its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as redis

log = logging.getLogger(__name__)

Message = dict[str, Any]
# Takes a message at once and says so, or says False and leaves it to the queue.
DirectTaker = Callable[[Message], Awaitable[bool]]


def agent_topic(agent_id: int) -> str:
    return f"agent.{agent_id}"


SUPERVISORS_TOPIC = "supervisors"


class Subscription:
    """Messages of one topic for one local listener, in publication order."""

    def __init__(self, fanout: _Fanout, topic: str) -> None:
        self.topic = topic
        self._fanout = fanout
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._direct: DirectTaker | None = None

    def take_directly(self, taker: DirectTaker) -> None:
        """From now on a publisher in this process offers each message to `taker` first, as
        long as nothing is queued (so that nothing overtakes what is)."""
        self._direct = taker

    def deliver(self, message: Message) -> None:
        self._queue.put_nowait(message)

    async def offer(self, message: Message) -> None:
        """`deliver`, but to the direct taker in the caller's own turn where it will."""
        if self._direct is None or not self._queue.empty() or not await self._direct(message):
            self._queue.put_nowait(message)

    async def get(self) -> Message:
        return await self._queue.get()

    def drain(self) -> list[Message]:
        """Whatever has arrived, without waiting."""
        messages = []
        while not self._queue.empty():
            messages.append(self._queue.get_nowait())
        return messages

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            yield await self._queue.get()

    async def close(self) -> None:
        await self._fanout.remove(self)


class Bus(Protocol):
    async def publish(self, topic: str, message: Message) -> None: ...

    async def subscribe(self, topic: str) -> Subscription: ...

    async def close(self) -> None: ...


class _Fanout:
    """Local listeners by topic; calls hooks when a topic gains its first or loses its last."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[Subscription]] = defaultdict(set)

    async def add(self, topic: str) -> Subscription:
        subscription = Subscription(self, topic)
        first = not self._listeners[topic]
        self._listeners[topic].add(subscription)
        if first:
            await self.first_listener(topic)
        return subscription

    async def remove(self, subscription: Subscription) -> None:
        listeners = self._listeners.get(subscription.topic)
        if not listeners or subscription not in listeners:
            return
        listeners.discard(subscription)
        if not listeners:
            del self._listeners[subscription.topic]
            await self.last_listener_gone(subscription.topic)

    def dispatch(self, topic: str, message: Message) -> None:
        for subscription in self._listeners.get(topic, ()):
            subscription.deliver(message)

    async def first_listener(self, topic: str) -> None:
        """Hook for transports that must subscribe upstream."""

    async def last_listener_gone(self, topic: str) -> None:
        """Hook for transports that must unsubscribe upstream."""


class InProcessBus(_Fanout):
    async def publish(self, topic: str, message: Message) -> None:
        for subscription in list(self._listeners.get(topic, ())):
            await subscription.offer(message)

    async def subscribe(self, topic: str) -> Subscription:
        return await self.add(topic)

    async def close(self) -> None:
        self._listeners.clear()


class RedisBus(_Fanout):
    """Redis pub/sub; this process subscribes upstream only to topics it has listeners for."""

    PREFIX = "switchboard:"
    # Keeps the pub/sub connection open (redis-py refuses to read with no subscription).
    _KEEPALIVE = PREFIX + "bus"

    def __init__(self, url: str) -> None:
        super().__init__()
        self._redis = redis.Redis.from_url(url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._redis.ping()
        await self._pubsub.subscribe(self._KEEPALIVE)
        self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")

    async def publish(self, topic: str, message: Message) -> None:
        await self._redis.publish(self.PREFIX + topic, json.dumps(message))

    async def subscribe(self, topic: str) -> Subscription:
        return await self.add(topic)

    async def first_listener(self, topic: str) -> None:
        await self._pubsub.subscribe(self.PREFIX + topic)

    async def last_listener_gone(self, topic: str) -> None:
        await self._pubsub.unsubscribe(self.PREFIX + topic)

    async def _read(self) -> None:
        while True:
            try:
                raw = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("redis bus: read failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if raw is None or raw.get("type") != "message":
                continue
            topic = raw["channel"].decode()[len(self.PREFIX) :]
            self.dispatch(topic, json.loads(raw["data"]))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._pubsub.aclose()
        await self._redis.aclose()


async def open_bus(redis_url: str | None) -> Bus:
    if not redis_url:
        return InProcessBus()
    bus = RedisBus(redis_url)
    await bus.start()
    return bus
