"""The call desk's group commit: signals that arrive together are written together, yet each
call goes through its life in the order its signals came, and one bad signal fails alone."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.agents import set_presence
from gateway.calls import CallOutcome
from gateway.group_commit import IngestError
from gateway.keys import CALLS, DATABASE
from gateway.routing_api import queue_figures
from tests.helpers import Agents
from timeline import store
from timeline.events import Address, CallPhase, CallSignal, Direction, HangupCause
from timeline.models import (
    Call,
    CallState,
    InboundJournal,
    Presence,
    ScreenPop,
    Ticket,
    TimelineEvent,
    utcnow,
)


def signal(
    call_id: str, phase: CallPhase, caller: str = "+493055571600", **extra: Any
) -> CallSignal:
    return CallSignal(
        provider="cti",
        call_id=call_id,
        phase=phase,
        direction=Direction.INBOUND,
        caller=Address("phone", caller),
        callee="+4930609854180",
        **extra,
    )


async def receive_together(client: TestClient, signals: list[CallSignal]) -> list[Any]:
    """Hand every signal to the desk in the same tick, so they queue up as one batch."""
    desk = client.server.app[CALLS]
    return await asyncio.gather(
        *(desk.receive(s, payload=b"{}", content_type="application/json") for s in signals),
        return_exceptions=True,
    )


async def available(client: TestClient, *agents: dict[str, Any]) -> None:
    async with client.server.app[DATABASE].transaction() as session:
        for agent in agents:
            await session.run_sync(set_presence, agent["id"], Presence.AVAILABLE)


async def test_ring_answer_and_hangup_of_one_call_arriving_together_apply_in_order(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna", extension="201")
    bert = await agents.add("Bert", extension="202")

    outcomes = await receive_together(
        client,
        [
            signal("c1", CallPhase.RINGING, agents=("201", "202")),
            signal("c1", CallPhase.ANSWERED, answered_by="201"),
            signal("c1", CallPhase.ENDED, cause=HangupCause.NORMAL_CLEARING),
        ],
    )

    ring, answer, hangup = outcomes
    assert {pop.agent_id for pop in ring.pops} == {anna["id"], bert["id"]}
    bert_pop = next(pop.message["id"] for pop in ring.pops if pop.agent_id == bert["id"])
    assert answer.withdrawn == [(bert["id"], bert_pop)]
    assert hangup.call["state"] == CallState.COMPLETED
    assert hangup.call["answered_by_id"] == anna["id"]
    assert hangup.callback_ticket_id is None
    async with client.server.app[DATABASE].reading() as session:
        assert await session.run_sync(store.count, TimelineEvent) == 1
        assert await session.run_sync(store.count, Ticket) == 0
        withdrawn = (
            await session.execute(select(ScreenPop.agent_id, ScreenPop.withdrawn_at))
        ).all()
    assert {agent for agent, at in withdrawn if at is not None} == {bert["id"]}


async def test_many_calls_ringing_together_each_pop_their_own_agent(
    client: TestClient, agents: Agents
) -> None:
    staff = [await agents.add(f"Agent {n}", extension=str(200 + n)) for n in range(1, 6)]
    rings = [
        signal(f"c{n}", CallPhase.RINGING, caller=f"+49305557{n:04d}", agents=(str(201 + n % 5),))
        for n in range(40)
    ]

    outcomes = await receive_together(client, rings)

    for n, outcome in enumerate(outcomes):
        assert isinstance(outcome, CallOutcome)
        assert [pop.agent_id for pop in outcome.pops] == [staff[n % 5]["id"]]
        assert outcome.pops[0].message["call"]["id"] == f"c{n}"
        assert outcome.pops[0].message["contact"]["identities"][0]["value"] == f"+49305557{n:04d}"
    async with client.server.app[DATABASE].reading() as session:
        assert await session.run_sync(store.count, Call) == 40
        assert await session.run_sync(store.count, TimelineEvent) == 40


async def test_missed_calls_ending_together_get_one_callback_ticket_each_within_capacity(
    client: TestClient, agents: Agents
) -> None:
    staff = [await agents.add(f"Agent {n}", capacity="3") for n in range(1, 3)]
    await available(client, *staff)
    callers = [f"+49305558{n:04d}" for n in range(12)]
    await receive_together(
        client,
        [
            signal(f"m{n}", CallPhase.RINGING, caller=c, ring_available=False)
            for n, c in enumerate(callers)
        ],
    )

    hangups = await receive_together(
        client,
        [
            signal(f"m{n}", CallPhase.ENDED, caller=c, cause=HangupCause.CANCEL)
            for n, c in enumerate(callers)
        ],
    )

    tickets = [outcome.callback_ticket_id for outcome in hangups]
    assert None not in tickets and len(set(tickets)) == 12
    assert {outcome.call["state"] for outcome in hangups} == {CallState.MISSED}
    async with client.server.app[DATABASE].reading() as session:
        rows = (await session.execute(select(Ticket.id, Ticket.assignee_id))).all()
    assert len(rows) == 12
    load = [sum(1 for _, assignee in rows if assignee == agent["id"]) for agent in staff]
    assert load == [3, 3]
    assigned_pops = [pop for outcome in hangups for pop in outcome.pops]
    assert len(assigned_pops) == 6
    assert {pop.message["reason"] for pop in assigned_pops} == {"assigned"}


async def test_one_signal_that_cannot_be_applied_fails_alone(
    client: TestClient, agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    await agents.add("Anna", extension="201")
    add_events = store.add_events

    def refuse_poison(session: Any, rows: list[dict[str, Any]]) -> list[int]:
        if any(row["external_id"] == "cti:poison" for row in rows):
            raise RuntimeError("this call cannot be stored")
        return add_events(session, rows)

    monkeypatch.setattr(store, "add_events", refuse_poison)
    ids = [f"good-{n}" for n in range(6)]
    ids.insert(3, "poison")

    outcomes = await receive_together(
        client,
        [
            signal(i, CallPhase.RINGING, caller=f"+49305559{n:04d}", agents=("201",))
            for n, i in enumerate(ids)
        ],
    )

    failed = dict(zip(ids, outcomes, strict=True))
    assert isinstance(failed.pop("poison"), IngestError)
    assert all(isinstance(o, CallOutcome) and len(o.pops) == 1 for o in failed.values())
    async with client.server.app[DATABASE].reading() as session:
        journal = list((await session.execute(select(InboundJournal))).scalars())
        assert await session.run_sync(store.count, Call) == 6
    assert sorted(entry.status for entry in journal) == ["accepted"] * 6 + ["failed"]
    assert next(e.reason for e in journal if e.status == "failed").startswith("RuntimeError")


async def test_inbound_calls_count_in_their_queue_figures(
    client: TestClient, agents: Agents
) -> None:
    """One call answered after 12 s and held 60 s, one missed: its callback ticket is offered
    to the queue as well, and waits (nobody is available)."""
    await agents.add("Anna", extension="201")
    start = utcnow() - timedelta(minutes=5)

    def at(seconds: int) -> dict[str, Any]:
        return {"queue": "hotline", "occurred_at": start + timedelta(seconds=seconds)}

    desk = client.server.app[CALLS]
    for call_signal in [
        signal("c1", CallPhase.RINGING, **at(0)),
        signal("c1", CallPhase.ANSWERED, answered_by="201", **at(12)),
        signal("c1", CallPhase.ENDED, cause=HangupCause.NORMAL_CLEARING, **at(72)),
        signal("c2", CallPhase.RINGING, caller="+493055571601", **at(0)),
        signal(
            "c2", CallPhase.ENDED, caller="+493055571601", cause=HangupCause.NO_ANSWER, **at(30)
        ),
    ]:
        await desk.receive(call_signal, payload=b"{}", content_type="application/json")

    (hotline,) = await client.server.app[DATABASE].read(queue_figures, ["hotline"])
    assert hotline["now"]["waiting"] == 1
    assert hotline["today"] == {
        "day": hotline["today"]["day"],
        "offered": 3,
        "answered": 1,
        "answered_in_sla": 1,
        "abandoned": 1,
        "handled": 1,
        "service_level": 0.5,
        "asa_seconds": 12.0,
        "aht_seconds": 60.0,
        "abandonment_rate": 0.3333,
    }
