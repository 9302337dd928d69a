"""The ring first (`gateway.ringing`): a new inbound call's card reaches the agents while the
call still waits for the writer, under the ids the writer then stores; what it does not store
is taken back. Both databases.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.bus import agent_topic
from gateway.calls import CallOutcome
from gateway.group_commit import IngestError
from gateway.keys import BUS, CALLS, DATABASE
from tests.gateway.test_call_batches import signal
from tests.gateway.test_cti import arrivals, console
from tests.helpers import Agents, bearer, inbound, receive
from timeline import store
from timeline.events import CallPhase
from timeline.models import Call, InboundJournal, ScreenPop, TimelineEvent, utcnow

Process = Callable[[list[Any]], Awaitable[None]]


class Gate:
    """Holds the call desk's writer until opened, as a long queue in front of it would."""

    def __init__(self, process: Process) -> None:
        self._process = process
        self.open = asyncio.Event()
        self.batches: list[int] = []

    async def __call__(self, batch: list[Any]) -> None:
        await self.open.wait()
        self.batches.append(len(batch))
        await self._process(batch)


@pytest.fixture
async def gate(client: TestClient) -> AsyncIterator[Gate]:
    batches = client.server.app[CALLS]._batches
    held = Gate(batches._process)
    batches._process = held
    yield held
    held.open.set()


@pytest.fixture
async def anna(agents: Agents) -> dict[str, Any]:
    return await agents.add("Anna", extension="201")


@pytest.fixture
async def socket(client: TestClient, anna: dict[str, Any]) -> Any:
    """Anna's console."""
    return await console(client, anna)


async def deliver(client: TestClient, call_signal: Any) -> CallOutcome:
    desk = client.server.app[CALLS]
    outcome: CallOutcome = await desk.receive(call_signal, payload=b"{}", content_type=None)
    return outcome


def ring(call_id: str, *agents: str, caller: str = "+493055571600") -> Any:
    return signal(call_id, CallPhase.RINGING, caller=caller, agents=agents)


async def test_the_card_arrives_before_the_writer_stores_the_call_and_under_its_ids(
    client: TestClient, anna: dict[str, Any], socket: Any, gate: Gate
) -> None:

    answered = asyncio.create_task(deliver(client, ring("c1", "201")))
    pop = await receive(socket, "screen_pop")
    assert not answered.done() and gate.batches == [], "the writer has not run yet"
    async with client.server.app[DATABASE].reading() as session:
        assert await session.run_sync(store.count, Call) == 0
    gate.open.set()
    outcome: CallOutcome = await answered

    assert outcome.call is not None
    assert pop["reason"] == "incoming_call" and pop["call"]["id"] == "c1"
    assert pop["call"]["record_id"] == outcome.call["id"]
    assert pop["contact"]["id"] is None, "a new caller: the writer makes the contact"
    assert pop["contact"]["identities"] == [{"kind": "phone", "value": "+493055571600"}]
    assert pop["contact"]["recent"][0]["id"] == outcome.call["event_id"]
    assert [p.message["id"] for p in outcome.pops] == [pop["id"]]
    async with client.server.app[DATABASE].reading() as session:
        stored = (await session.execute(select(ScreenPop.id, ScreenPop.agent_id))).all()
    assert stored == [(pop["id"], anna["id"])]
    assert await arrivals(socket) == [], "published once, not again after the commit"


async def test_ids_reserved_for_a_ring_are_not_taken_by_writes_in_between(
    client: TestClient, anna: dict[str, Any], socket: Any, gate: Gate
) -> None:
    database = client.server.app[DATABASE]

    first = asyncio.create_task(deliver(client, ring("c1", "201")))
    early = await receive(socket, "screen_pop")
    # Meanwhile the ingest path writes an event of its own (an SMS) and takes ids.
    response = await client.post("/api/v1/inbound", json=inbound("between"), headers=bearer(anna))
    assert response.status == 202
    sms_event = (await response.json())["event_id"]
    gate.open.set()
    outcome = await first

    assert outcome.call is not None
    assert early["contact"]["recent"][0]["id"] == outcome.call["event_id"] != sms_event
    async with database.reading() as session:
        events = (await session.execute(select(TimelineEvent.id))).scalars().all()
    assert sorted(events) == sorted([sms_event, outcome.call["event_id"]])


async def test_a_ring_twice_in_flight_keeps_one_pop_and_takes_the_other_back(
    client: TestClient, anna: dict[str, Any], socket: Any, gate: Gate
) -> None:
    duplicate = ring("c1", "201")

    first = asyncio.create_task(deliver(client, duplicate))
    pop = await receive(socket, "screen_pop")
    again = asyncio.create_task(deliver(client, duplicate))
    await asyncio.sleep(0.2)
    gate.open.set()
    await asyncio.gather(first, again)

    assert await arrivals(socket) == [], "the second ring waited for the writer"
    async with client.server.app[DATABASE].reading() as session:
        stored = (await session.execute(select(ScreenPop.id))).scalars().all()
        calls = await session.run_sync(store.count, Call)
    assert stored == [pop["id"]] and calls == 1


async def test_a_ring_the_writer_cannot_store_is_withdrawn(
    client: TestClient,
    anna: dict[str, Any],
    socket: Any,
    gate: Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr("gateway.calls.apply_signals", broken)
    failing = asyncio.create_task(deliver(client, ring("c1", "201")))
    pop = await receive(socket, "screen_pop")
    gate.open.set()
    with pytest.raises(IngestError):
        await failing

    withdrawn = await receive(socket, "pop_withdrawn")
    assert withdrawn["id"] == pop["id"]


async def test_a_reserved_id_taken_meanwhile_rings_again_under_new_ids(
    client: TestClient, anna: dict[str, Any], socket: Any, gate: Gate
) -> None:
    """As when `switchboard ingest-email`, another process on the SQLite file, takes it."""
    database = client.server.app[DATABASE]

    ringing = asyncio.create_task(deliver(client, ring("c1", "201")))
    early = await receive(socket, "screen_pop")
    reserved_event = early["contact"]["recent"][0]["id"]
    await database.run(store.add_events, [elsewhere_event(reserved_event)])
    gate.open.set()
    outcome = await ringing

    withdrawn = await receive(socket, "pop_withdrawn")
    again = await receive(socket, "screen_pop")
    assert withdrawn["id"] == early["id"] != again["id"]
    assert outcome.call is not None and outcome.call["event_id"] != reserved_event
    assert again["call"]["record_id"] == outcome.call["id"]
    async with database.reading() as session:
        stored = (await session.execute(select(ScreenPop.id))).scalars().all()
    assert stored == [again["id"]]


def elsewhere_event(event_id: int) -> store.Row:
    return {
        "id": event_id,
        "channel": "email",
        "external_id": "<piped@example.com>",
        "kind": "message",
        "direction": "in",
        "contact_id": None,
        "ticket_id": None,
        "sender": "someone@example.com",
        "recipient": "support@example.com",
        "body": "piped in by the MTA",
        "occurred_at": utcnow(),
        "journal_id": None,
    }


async def test_the_writer_makes_way_only_until_the_card_is_out(
    client: TestClient, anna: dict[str, Any], socket: Any, gate: Gate
) -> None:
    """The database's foreground (the writer thread waits) ends with the pop, not the write."""
    database = client.server.app[DATABASE]

    ringing = asyncio.create_task(deliver(client, ring("c1", "201")))
    await receive(socket, "screen_pop")
    await asyncio.sleep(0)
    assert not database.foreground.held and gate.batches == []
    gate.open.set()
    await ringing


async def test_the_card_is_published_by_the_webhook_s_own_task(
    client: TestClient, anna: dict[str, Any], gate: Gate
) -> None:
    """No task of its own for the read-ahead (it would start a turn of the loop later), and
    the bus hands the pop to a listener that takes it directly in that same task."""
    subscription = await client.server.app[BUS].subscribe(agent_topic(anna["id"]))
    published: list[tuple[str, asyncio.Task[Any] | None]] = []
    popped = asyncio.Event()

    async def take(message: dict[str, Any]) -> bool:
        published.append((message["type"], asyncio.current_task()))
        popped.set()
        return True

    subscription.take_directly(take)
    ringing = asyncio.create_task(deliver(client, ring("c1", "201")))
    try:
        await asyncio.wait_for(popped.wait(), timeout=5)
        assert published == [("screen_pop", ringing)]
    finally:
        gate.open.set()
        await ringing
        await subscription.close()


async def test_a_batch_is_journaled_and_applied_in_one_transaction(
    client: TestClient,
    anna: dict[str, Any],
    socket: Any,
    gate: Gate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = client.server.app[DATABASE]
    units: list[str] = []
    run = database.run

    async def counted(work: Any, *args: Any, **kwargs: Any) -> Any:
        units.append(work.__name__)
        return await run(work, *args, **kwargs)

    monkeypatch.setattr(database, "run", counted)
    ringing = asyncio.create_task(deliver(client, ring("c1", "201")))
    await receive(socket, "screen_pop")
    gate.open.set()
    outcome = await ringing

    desk = [unit for unit in units if unit in ("journal", "apply_signals", "journal_and_apply")]
    assert desk == ["journal_and_apply"], "the desk's, beside the other work going on"
    assert outcome.call is not None
    async with database.reading() as session:
        entries = await session.run_sync(store.count, InboundJournal)
    assert entries == 1


async def test_a_ring_reaches_every_agent_named_however_many_and_however_named(
    client: TestClient, agents: Agents, anna: dict[str, Any], socket: Any
) -> None:
    bernd = await agents.add("Bernd", extension="202")
    carla = await agents.add("Carla", extension="203")
    consoles = [socket, await console(client, bernd), await console(client, carla)]

    # Three names (padded to four places in the statement), one twice, in any case.
    outcome = await deliver(client, ring("c1", "201", "BERND", carla["email"], "bernd"))

    pops = [await receive(each, "screen_pop") for each in consoles]
    assert outcome.call is not None
    assert outcome.call["rung_agent_ids"] == sorted([anna["id"], bernd["id"], carla["id"]])
    assert {pop["call"]["id"] for pop in pops} == {"c1"}
