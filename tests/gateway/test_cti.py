"""Generic CTI through the real app: `POST /webhooks/cti` → calls, timeline, screen-pops.

A PBX scripted for Zammad posts `newCall`, `answer` and `hangup`; agents connected on
`/ws/agent` see the caller's card while the phone rings, lose it when a colleague answers,
and a call nobody answered becomes exactly one callback ticket. Every test runs on SQLite and
on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from channels.cti import NumberFormat
from gateway.app import create_app
from gateway.keys import DATABASE
from gateway.settings import Settings
from tests.helpers import Agents, bearer, go_available, inbound, nothing_more, receive
from timeline.models import Call, Contact, InboundJournal, Role, ScreenPop, Ticket

TOKEN = "cti-7f3a9c21e5b84d06"
# A blocked prefix (a whole Berlin range) and a single blocked number, as an admin writes them.
BLOCKED = ("+4930999", "+49 40 1234567")
COMPANY = "4930609854180"
CUSTOMER = "+493055571600"
FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "cti").glob("*.json"))
CASES = [json.loads(f.read_text(encoding="utf-8")) for f in FIXTURES]


@pytest.fixture
def settings(database_url: str) -> Settings:
    """The conftest app (so `client`, `agents` and `admin` follow), with CTI configured."""
    return Settings(
        database_url=database_url,
        default_region="DE",
        max_body_bytes=64 * 1024,
        cti_token=TOKEN,
        cti_blocked=BLOCKED,
    )


# --- Helpers --------------------------------------------------------------------------------


def form(fields: dict[str, str | list[str]]) -> list[tuple[str, str]]:
    """Form pairs as Zammad documents them: a list value becomes `name[]` repeated."""
    pairs: list[tuple[str, str]] = []
    for name, value in fields.items():
        if isinstance(value, list):
            pairs.extend((f"{name}[]", v) for v in value)
        else:
            pairs.append((name, value))
    return pairs


async def post_cti(client: TestClient, **fields: str | list[str]) -> ClientResponse:
    return await client.post(f"/webhooks/cti?token={TOKEN}", data=form(fields))


async def signal(client: TestClient, **fields: str | list[str]) -> dict[str, Any]:
    response = await post_cti(client, **fields)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def new_call(
    client: TestClient,
    call_id: str,
    caller: str = CUSTOMER,
    users: list[str] | None = None,
    **extra: str,
) -> dict[str, Any]:
    fields: dict[str, str | list[str]] = {
        "event": "newCall",
        "from": caller,
        "to": COMPANY,
        "direction": "in",
        "callId": call_id,
        **extra,
    }
    if users is not None:
        fields["user"] = users
    return await signal(client, **fields)


async def answer(client: TestClient, call_id: str, caller: str = CUSTOMER, **extra: str) -> None:
    reply = await signal(
        client,
        event="answer",
        callId=call_id,
        direction="in",
        to=COMPANY,
        **{"from": caller},
        **extra,
    )
    assert reply == {}


async def hangup(
    client: TestClient, call_id: str, cause: str = "normalClearing", caller: str = CUSTOMER
) -> None:
    reply = await signal(
        client,
        event="hangup",
        callId=call_id,
        direction="in",
        to=COMPANY,
        cause=cause,
        **{"from": caller},
    )
    assert reply == {}


async def console(client: TestClient, agent: dict[str, Any], *, available: bool = False) -> Any:
    """An agent's `/ws/agent` socket after its hello; the test client closes it at the end."""
    socket = await client.ws_connect(f"/ws/agent?token={agent['token']}")
    await receive(socket, "hello")
    if available:
        await go_available(socket)
    return socket


async def arrivals(socket: Any, quiet: float = 0.4) -> list[dict[str, Any]]:
    """Every pop and withdrawal that reaches the socket until it has been quiet for a while."""
    messages: list[dict[str, Any]] = []
    while True:
        try:
            async with asyncio.timeout(quiet):
                message = await socket.receive_json()
        except TimeoutError:
            return messages
        if message.get("type") not in ("hello", "presence", "pong"):
            messages.append(message)


async def calls(client: TestClient, agent: dict[str, Any], query: str = "") -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/calls{query}", headers=bearer(agent))
    assert response.status == 200, await response.text()
    result: list[dict[str, Any]] = (await response.json())["calls"]
    return result


async def the_call(client: TestClient, agent: dict[str, Any], call_id: str) -> dict[str, Any]:
    (found,) = [c for c in await calls(client, agent) if c["call_id"] == call_id]
    return found


async def timeline(client: TestClient, agent: dict[str, Any], contact_id: int) -> list[Any]:
    response = await client.get(f"/api/v1/contacts/{contact_id}/timeline", headers=bearer(agent))
    assert response.status == 200, await response.text()
    events: list[Any] = (await response.json())["events"]
    return events


async def tickets(client: TestClient, agent: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/tickets", headers=bearer(agent))
    assert response.status == 200, await response.text()
    result: list[dict[str, Any]] = (await response.json())["tickets"]
    return result


async def journal(client: TestClient, admin: dict[str, Any], status: str) -> list[Any]:
    response = await client.get(f"/api/v1/journal?status={status}", headers=bearer(admin))
    assert response.status == 200, await response.text()
    entries: list[Any] = (await response.json())["entries"]
    return entries


async def rows(client: TestClient, model: type[Any]) -> int:
    async with client.server.app[DATABASE].reading() as session:
        counted: int = (await session.execute(select(func.count()).select_from(model))).scalar_one()
    return counted


async def create_contact(
    client: TestClient, agent: dict[str, Any], name: str, phone: str
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/contacts",
        json={"name": name, "identities": [{"kind": "phone", "value": phone}]},
        headers=bearer(agent),
    )
    assert response.status == 201, await response.text()
    contact: dict[str, Any] = await response.json()
    return contact


async def open_ticket_by_sms(
    client: TestClient, agent: dict[str, Any], sender: str
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/inbound", json=inbound("sms-1", sender=sender), headers=bearer(agent)
    )
    assert response.status == 202, await response.text()
    result: dict[str, Any] = await response.json()
    return result


def clock(seconds: int) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{minutes}:{rest:02d}"


# --- Authentication -------------------------------------------------------------------------

NEW_CALL = {
    "event": "newCall",
    "from": CUSTOMER,
    "to": COMPANY,
    "direction": "in",
    "callId": "auth-1",
}


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/webhooks/cti", {}),
        ("/webhooks/cti?token=", {}),
        ("/webhooks/cti?token=wrong-token", {}),
        ("/webhooks/cti", {"X-Switchboard-Token": "wrong-token"}),
        ("/webhooks/cti", {"Authorization": f"Bearer {TOKEN}"}),
        ("/api/v1/cti/wrong-token", {}),
        (f"/webhooks/cti?token={TOKEN[:-1]}", {}),
    ],
    ids=[
        "no-token",
        "empty-token",
        "wrong-query",
        "wrong-header",
        "bearer-is-not-the-cti-token",
        "wrong-path",
        "prefix-of-the-token",
    ],
)
async def test_a_missing_or_wrong_token_is_401_and_stores_nothing(
    client: TestClient, agents: Agents, path: str, headers: dict[str, str]
) -> None:
    agent = await agents.add("Anna")
    socket = await console(client, agent, available=True)

    response = await client.post(path, data=NEW_CALL, headers=headers)

    assert response.status == 401
    assert response.content_type == "application/json"
    assert await response.json() == {
        "error": "unauthorized",
        "detail": "The CTI token is missing or wrong.",
    }
    assert await rows(client, InboundJournal) == 0
    assert await rows(client, Call) == 0
    assert await rows(client, Contact) == 0
    await nothing_more(socket, "screen_pop")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"/webhooks/cti?token={TOKEN}", {}),
        ("/webhooks/cti", {"X-Switchboard-Token": TOKEN}),
        (f"/api/v1/cti/{TOKEN}", {}),
    ],
    ids=["query", "header", "path-alias"],
)
async def test_the_token_is_accepted_in_the_query_the_header_or_the_path(
    client: TestClient, agents: Agents, path: str, headers: dict[str, str]
) -> None:
    agent = await agents.add("Anna")

    response = await client.post(path, data=NEW_CALL, headers=headers)

    assert response.status == 200
    assert await response.json() == {}
    (stored,) = await calls(client, agent)
    assert stored["call_id"] == "auth-1"
    assert stored["state"] == "ringing"


async def test_without_a_configured_token_cti_is_403_and_stores_nothing(
    aiohttp_client: Any, database_url: str
) -> None:
    client = await aiohttp_client(create_app(Settings(database_url=database_url)))

    for path in ("/webhooks/cti", f"/webhooks/cti?token={TOKEN}", f"/api/v1/cti/{TOKEN}"):
        response = await client.post(path, data=NEW_CALL)
        assert response.status == 403
        assert await response.json() == {
            "error": "cti_disabled",
            "detail": "CTI is not configured (SWITCHBOARD_CTI_TOKEN).",
        }
    assert await rows(client, InboundJournal) == 0
    assert await rows(client, Call) == 0


def test_cti_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "SWITCHBOARD_CTI_TOKEN": " secret ",
            "SWITCHBOARD_CTI_BLOCKED_NUMBERS": "+4930999, +49 40 1234567,,",
            "SWITCHBOARD_CTI_NUMBER_FORMAT": "National",
        }
    )

    assert settings.cti_token == "secret"
    assert settings.cti_blocked == ("+4930999", "+49 40 1234567")
    assert settings.cti_number_format is NumberFormat.NATIONAL


# --- Ringing: who gets the caller's card ----------------------------------------------------


async def test_new_call_pops_the_customer_card_to_exactly_the_agents_the_pbx_names(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna Schmidt")
    bernd = await agents.add("Bernd Meier", extension="202")
    carla = await agents.add("Carla Wolf", extension="203")
    dieter = await agents.add("Dieter Krause", extension="204")  # available, but not named
    sockets = {
        a["id"]: await console(client, a, available=True) for a in (anna, bernd, carla, dieter)
    }
    customer = await create_contact(client, anna, "Erika Musterfrau", "+49 30 5557 1600")
    sms = await open_ticket_by_sms(client, anna, sender="030 5557 1600")
    assert sms["contact_id"] == customer["id"]
    for socket in sockets.values():  # the SMS ticket's `assigned` pop went to one of them
        await arrivals(socket)
    ticket = await client.get(f"/api/v1/tickets/{sms['ticket_id']}", headers=bearer(anna))
    ticket_body = await ticket.json()

    reply = await new_call(
        client,
        "1732540923.1234",
        caller="493055571600",
        users=["anna schmidt", "202", carla["email"].upper()],
    )

    assert reply == {}
    pops = {agent_id: await arrivals(socket) for agent_id, socket in sockets.items()}
    assert pops[dieter["id"]] == []
    for agent in (anna, bernd, carla):
        (pop,) = pops[agent["id"]]
        assert pop["type"] == "screen_pop"
        assert pop["reason"] == "incoming_call"
        assert pop["channel"] == "voice"
        assert pop["call"]["id"] == "1732540923.1234"
        assert pop["call"]["state"] == "ringing"
        assert pop["call"]["from"] == "493055571600"
        assert pop["call"]["to"] == COMPANY
        assert pop["ticket"] == {
            "id": sms["ticket_id"],
            "number": sms["ticket_number"],
            "status": ticket_body["status"],
            "subject": ticket_body["subject"],
        }
        contact = pop["contact"]
        assert contact["id"] == customer["id"]
        assert contact["name"] == "Erika Musterfrau"
        assert contact["identities"] == [{"kind": "phone", "value": CUSTOMER}]
        assert [t["id"] for t in contact["open_tickets"]] == [sms["ticket_id"]]
        assert [(e["channel"], e["kind"], e["body"]) for e in contact["recent"]] == [
            ("voice", "call", "Incoming call"),
            ("sms", "message", "message sms-1"),
        ]
    pop_ids = {pops[a["id"]][0]["id"] for a in (anna, bernd, carla)}
    assert len(pop_ids) == 3
    (stored,) = await calls(client, anna)
    assert stored["rung_agent_ids"] == sorted([anna["id"], bernd["id"], carla["id"]])
    assert stored["contact_id"] == customer["id"]
    assert await rows(client, Contact) == 1


async def test_new_call_without_user_pops_every_available_agent_and_no_one_else(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna")
    bernd = await agents.add("Bernd")
    away = await agents.add("Away Agent")
    offline = await agents.add("Offline Agent")
    anna_socket = await console(client, anna, available=True)
    bernd_socket = await console(client, bernd, available=True)
    away_socket = await console(client, away)
    await away_socket.send_json({"type": "presence", "state": "away"})
    assert (await receive(away_socket, "presence"))["state"] == "away"
    offline_socket = await console(client, offline)  # connected, never went available

    await new_call(client, "ring-all")

    for socket in (anna_socket, bernd_socket):
        (pop,) = await arrivals(socket)
        assert pop["reason"] == "incoming_call"
        assert pop["call"]["id"] == "ring-all"
        assert pop["contact"]["name"] == CUSTOMER  # a new caller is named by the number
    assert await arrivals(away_socket) == []
    assert await arrivals(offline_socket) == []
    assert (await the_call(client, anna, "ring-all"))["rung_agent_ids"] == [anna["id"], bernd["id"]]


async def test_a_call_into_a_queue_rings_only_available_agents_with_its_skills(
    client: TestClient, agents: Agents
) -> None:
    supervisor = await agents.add("Sam", role=Role.SUPERVISOR)
    billing = {"name": "billing", "channels": ["voice"], "skills": {"billing": 3}}
    response = await client.post("/api/v1/queues", json=billing, headers=bearer(supervisor))
    assert response.status == 201
    expert = await agents.add("Expert", skills=("billing:3",))
    novice = await agents.add("Novice", skills=("billing:1",))
    other = await agents.add("Other")
    sockets = [await console(client, a, available=True) for a in (expert, novice, other)]

    await new_call(client, "billing-call", queue="billing")

    (pop,) = await arrivals(sockets[0])
    assert pop["call"]["id"] == "billing-call"
    assert await arrivals(sockets[1]) == [] and await arrivals(sockets[2]) == []
    assert (await the_call(client, expert, "billing-call"))["rung_agent_ids"] == [expert["id"]]


async def test_named_agents_who_are_unknown_pop_nobody(client: TestClient, agents: Agents) -> None:
    anna = await agents.add("Anna", extension="201")
    socket = await console(client, anna, available=True)

    await new_call(client, "nobody-known", users=["Zoe", "299"])

    assert await arrivals(socket) == []
    assert (await the_call(client, anna, "nobody-known"))["rung_agent_ids"] == []


async def test_an_outbound_call_pops_nobody_and_files_under_the_callee(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna", extension="201")
    socket = await console(client, anna, available=True)

    reply = await signal(
        client,
        event="newCall",
        direction="out",
        callId="out-1",
        to="030 5557 1600",
        user=["Anna"],
        **{"from": COMPANY},
    )
    await signal(
        client,
        event="hangup",
        direction="out",
        callId="out-1",
        to="030 5557 1600",
        cause="noAnswer",
        **{"from": COMPANY},
    )

    assert reply == {}
    assert await arrivals(socket) == []
    call = await the_call(client, anna, "out-1")
    assert call["direction"] == "out"
    assert call["state"] == "unanswered"
    assert call["ticket_id"] is None
    events = await timeline(client, anna, call["contact_id"])
    assert [(e["kind"], e["direction"], e["body"]) for e in events] == [
        ("call", "out", "Call not answered (noAnswer)")
    ]
    assert await rows(client, Ticket) == 0


# --- Numbers as PBXs send them --------------------------------------------------------------


async def test_every_way_a_pbx_writes_the_number_finds_the_same_contact(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna")
    written = ["+493055571600", "493055571600", "00493055571600", "03055571600", "030 5557 1600"]

    for number, call_id in zip(written, ["n1", "n2", "n3", "n4", "n5"], strict=True):
        await new_call(client, call_id, caller=number)

    stored = {c["call_id"]: c for c in await calls(client, anna)}
    assert [stored[c]["from"] for c in ["n1", "n2", "n3", "n4", "n5"]] == written
    contact_ids = {c["contact_id"] for c in stored.values()}
    assert len(contact_ids) == 1
    assert None not in contact_ids
    assert await rows(client, Contact) == 1
    (contact_id,) = contact_ids
    contact = await (
        await client.get(f"/api/v1/contacts/{contact_id}", headers=bearer(anna))
    ).json()
    assert contact["identities"] == [{"kind": "phone", "value": CUSTOMER}]
    assert contact["name"] == CUSTOMER


@pytest.mark.parametrize(
    "caller", ["anonymous", "unknown", ""], ids=["anonymous", "unknown", "empty"]
)
async def test_a_withheld_number_pops_the_unknown_caller_card_and_creates_no_contact(
    client: TestClient, agents: Agents, caller: str
) -> None:
    anna = await agents.add("Anna")
    socket = await console(client, anna, available=True)

    await new_call(client, "withheld", caller=caller)

    (pop,) = await arrivals(socket)
    assert pop["reason"] == "incoming_call"
    assert pop["contact"] == {
        "id": None,
        "name": "Unknown caller",
        "identities": [],
        "tags": [],
        "open_tickets": [],
        "recent": [],
    }
    assert pop["ticket"] is None
    assert pop["call"]["from"] == caller
    assert await rows(client, Contact) == 0
    assert (await the_call(client, anna, "withheld"))["contact_id"] is None


async def test_the_pbx_number_format_setting_reads_bare_digits(
    aiohttp_client: Any, database_url: str
) -> None:
    client = await aiohttp_client(
        create_app(
            Settings(
                database_url=database_url,
                cti_token=TOKEN,
                cti_number_format=NumberFormat.NATIONAL,
            )
        )
    )
    anna = await Agents(client.server.app).add("Anna")
    customer = await create_contact(client, anna, "Erika Musterfrau", CUSTOMER)

    await new_call(client, "national", caller="3055571600")  # the trunk dropped the 0

    assert (await the_call(client, anna, "national"))["contact_id"] == customer["id"]
    assert await rows(client, Contact) == 1


# --- One call, one timeline event -----------------------------------------------------------


async def test_a_call_is_one_timeline_event_updated_through_its_life(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna", extension="201")
    bernd = await agents.add("Bernd", extension="202")
    customer = await create_contact(client, anna, "Erika Musterfrau", CUSTOMER)

    async def call_events() -> list[Any]:
        return [e for e in await timeline(client, anna, customer["id"]) if e["kind"] == "call"]

    await new_call(client, "life-1", users=["201", "202"], queue="support")
    (ringing,) = await call_events()
    assert ringing["body"] == "Incoming call"
    assert ringing["channel"] == "voice"
    assert ringing["direction"] == "in"

    await answer(client, "life-1", user="Anna")
    (answered,) = await call_events()
    assert answered["id"] == ringing["id"]
    assert answered["body"] == "Call answered by Anna"
    assert (await the_call(client, anna, "life-1"))["state"] == "answered"

    await hangup(client, "life-1", "normalClearing")
    (ended,) = await call_events()
    call = await the_call(client, anna, "life-1")

    assert ended["id"] == ringing["id"]
    assert call["state"] == "completed"
    assert call["answered_by_id"] == anna["id"]
    assert call["rung_agent_ids"] == [anna["id"], bernd["id"]]
    assert call["contact_id"] == customer["id"]
    assert call["event_id"] == ended["id"]
    assert call["cause"] == "normalClearing"
    assert call["queue"] == "support"
    assert call["ticket_id"] is None
    assert isinstance(call["duration_seconds"], int)
    assert call["duration_seconds"] >= 0
    assert ended["body"] == f"Call ended after {clock(call['duration_seconds'])}"
    assert call["answered_at"] is not None
    assert call["ended_at"] >= call["answered_at"] >= call["started_at"]
    assert await rows(client, Ticket) == 0
    assert (await calls(client, anna, "?state=completed"))[0]["call_id"] == "life-1"


async def test_answer_names_the_agent_by_answering_number_when_user_is_absent(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna", extension="201")
    bernd = await agents.add("Bernd", extension="202")

    await new_call(client, "by-number", users=["201", "202"])
    await answer(client, "by-number", answeringNumber="202")

    call = await the_call(client, anna, "by-number")
    assert call["answered_by_id"] == bernd["id"]
    assert call["state"] == "answered"


# --- Answer withdraws the other pops --------------------------------------------------------


async def test_an_answer_withdraws_the_other_agents_pops_and_they_are_not_replayed(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna", extension="201")
    bernd = await agents.add("Bernd", extension="202")
    anna_socket = await console(client, anna)
    bernd_socket = await console(client, bernd)
    await new_call(client, "two-ring", users=["Anna", "Bernd"])
    (anna_pop,) = await arrivals(anna_socket)
    (bernd_pop,) = await arrivals(bernd_socket)

    await answer(client, "two-ring", user="Anna", answeringNumber="201")

    assert await arrivals(bernd_socket) == [{"type": "pop_withdrawn", "id": bernd_pop["id"]}]
    assert await arrivals(anna_socket) == []
    await bernd_socket.close()
    bernd_again = await console(client, bernd)
    await nothing_more(bernd_again, "screen_pop")
    await anna_socket.close()
    anna_again = await console(client, anna)
    replayed = await receive(anna_again, "screen_pop")  # the answerer's card still stands
    assert replayed["id"] == anna_pop["id"]
    assert replayed["replayed"] is True


async def test_a_replayed_ringing_pop_is_withdrawn_live_too(
    client: TestClient, agents: Agents
) -> None:
    await agents.add("Anna", extension="201")
    bernd = await agents.add("Bernd", extension="202")
    await new_call(client, "replayed", users=["Anna", "Bernd"])
    bernd_socket = await console(client, bernd)  # connects while the phone rings
    (bernd_pop,) = await arrivals(bernd_socket)
    assert bernd_pop["replayed"] is True

    await answer(client, "replayed", user="Anna")

    assert await arrivals(bernd_socket) == [{"type": "pop_withdrawn", "id": bernd_pop["id"]}]


async def test_a_late_new_call_after_the_answer_pops_nobody(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna", extension="201")
    bernd = await agents.add("Bernd", extension="202")
    bernd_socket = await console(client, bernd)
    await new_call(client, "late-ring", users=["Anna"])
    await answer(client, "late-ring", user="Anna")

    await new_call(client, "late-ring", users=["Bernd"])

    assert await arrivals(bernd_socket) == []
    assert (await the_call(client, anna, "late-ring"))["rung_agent_ids"] == [anna["id"]]


# --- Missed calls ---------------------------------------------------------------------------


@pytest.mark.parametrize("cause", ["cancel", "noAnswer", "busy"])
async def test_an_unanswered_call_is_missed_with_exactly_one_callback_ticket(
    client: TestClient, agents: Agents, cause: str
) -> None:
    anna = await agents.add("Anna", extension="201")
    socket = await console(client, anna, available=True)
    customer = await create_contact(client, anna, "Erika Musterfrau", CUSTOMER)
    await new_call(client, f"missed-{cause}")
    (ringing_pop,) = await arrivals(socket)

    await hangup(client, f"missed-{cause}", cause)

    (ticket,) = await tickets(client, anna)
    assert ticket["contact_id"] == customer["id"]
    assert ticket["subject"] == f"Missed call from {CUSTOMER}"
    assert ticket["channel"] == "voice"
    assert ticket["assignee_id"] == anna["id"]
    call = await the_call(client, anna, f"missed-{cause}")
    assert call["state"] == "missed"
    assert call["cause"] == cause
    assert call["ticket_id"] == ticket["id"]
    assert call["answered_by_id"] is None
    assert call["duration_seconds"] is None
    assert [c["call_id"] for c in await calls(client, anna, "?state=missed")] == [f"missed-{cause}"]
    assigned, withdrawn = await arrivals(socket)
    assert assigned["type"] == "screen_pop"
    assert assigned["reason"] == "assigned"
    assert assigned["ticket"]["id"] == ticket["id"]
    assert assigned["contact"]["id"] == customer["id"]
    assert withdrawn == {"type": "pop_withdrawn", "id": ringing_pop["id"]}
    (event,) = await timeline(client, anna, customer["id"])
    assert event["body"] == f"Missed call ({cause})"
    assert event["ticket_id"] == ticket["id"]

    await hangup(client, f"missed-{cause}", cause)  # the PBX retries

    assert [t["id"] for t in await tickets(client, anna)] == [ticket["id"]]
    assert await arrivals(socket) == []
    assert (await the_call(client, anna, f"missed-{cause}"))["state"] == "missed"


async def test_a_missed_call_from_a_withheld_number_makes_no_ticket(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna")

    await new_call(client, "missed-anonymous", caller="anonymous")
    await hangup(client, "missed-anonymous", "cancel", caller="anonymous")

    call = await the_call(client, anna, "missed-anonymous")
    assert call["state"] == "missed"
    assert call["ticket_id"] is None
    assert await tickets(client, anna) == []


async def test_a_call_ended_by_congestion_failed_and_makes_no_ticket(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna")

    await new_call(client, "congested")
    await hangup(client, "congested", "congestion")

    assert (await the_call(client, anna, "congested"))["state"] == "failed"
    assert await tickets(client, anna) == []


# --- Caller-ID blocking ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "caller",
    ["+493099912345", "030 999 12345", "0049401234567", "+49 40 1234567"],
    ids=["prefix-e164", "prefix-national", "number-0049", "number-spaced"],
)
async def test_a_blocked_caller_is_rejected_busy_without_a_pop(
    client: TestClient, agents: Agents, caller: str
) -> None:
    anna = await agents.add("Anna", extension="201")
    socket = await console(client, anna, available=True)

    reply = await new_call(client, "blocked-1", caller=caller, users=["Anna"])
    ended = await signal(
        client, event="hangup", callId="blocked-1", cause="cancel", **{"from": caller}
    )

    assert reply == {"action": "reject", "reason": "busy"}
    assert ended == {"action": "reject", "reason": "busy"}  # still the blocked call
    assert await arrivals(socket) == []
    call = await the_call(client, anna, "blocked-1")
    assert call["state"] == "blocked"
    assert call["contact_id"] is None
    assert call["rung_agent_ids"] == []
    assert await rows(client, Contact) == 0
    assert await tickets(client, anna) == []


async def test_a_caller_outside_the_blocked_ranges_is_answered_with_an_empty_object(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna")
    socket = await console(client, anna, available=True)

    reply = await new_call(client, "normal-1", caller="+493098812345")  # +4930988… not +4930999…

    assert reply == {}
    (pop,) = await arrivals(socket)
    assert pop["reason"] == "incoming_call"
    assert (await the_call(client, anna, "normal-1"))["state"] == "ringing"


# --- Bad, late and repeated input -----------------------------------------------------------


async def test_an_unknown_event_is_400_and_kept_in_the_journal_as_rejected(
    client: TestClient, admin: dict[str, Any]
) -> None:
    response = await post_cti(client, event="dtmf", callId="bad-1", **{"from": CUSTOMER})

    assert response.status == 400
    assert await response.json() == {
        "error": "unknown_event",
        "detail": "'event' must be one of newCall, answer, hangup.",
    }
    (entry,) = await journal(client, admin, "rejected")
    assert entry["channel"] == "voice"
    assert entry["reason"] == "'event' must be one of newCall, answer, hangup."
    assert entry["content_type"] == "application/x-www-form-urlencoded"
    assert entry["event_id"] is None
    assert await rows(client, Call) == 0


async def test_a_call_without_call_id_is_400_and_kept_as_rejected(
    client: TestClient, admin: dict[str, Any]
) -> None:
    response = await post_cti(client, event="newCall", to=COMPANY, **{"from": CUSTOMER})

    assert response.status == 400
    assert await response.json() == {
        "error": "invalid_payload",
        "detail": "Field 'callId' is required.",
    }
    (entry,) = await journal(client, admin, "rejected")
    assert entry["reason"] == "Field 'callId' is required."
    assert await rows(client, Call) == 0
    assert await rows(client, Contact) == 0


@pytest.mark.parametrize(
    ("fields", "detail_start"),
    [
        ({"event": "hangup", "cause": "hungUp"}, "'cause' must be one of normalClearing"),
        ({"event": "newCall", "direction": "inbound"}, "'direction' must be 'in' or 'out'."),
    ],
    ids=["cause", "direction"],
)
async def test_a_bad_cause_or_direction_is_400_invalid_payload(
    client: TestClient, admin: dict[str, Any], fields: dict[str, str], detail_start: str
) -> None:
    response = await post_cti(client, callId="bad-2", **fields)

    assert response.status == 400
    body = await response.json()
    assert body["error"] == "invalid_payload"
    assert body["detail"].startswith(detail_start)
    assert len(await journal(client, admin, "rejected")) == 1
    assert await rows(client, Call) == 0


async def test_malformed_json_is_400_and_kept_as_rejected(
    client: TestClient, admin: dict[str, Any]
) -> None:
    response = await client.post(
        f"/webhooks/cti?token={TOKEN}",
        data=b'{"event": "newCall", "callId": ',
        headers={"Content-Type": "application/json"},
    )

    assert response.status == 400
    assert await response.json() == {
        "error": "invalid_json",
        "detail": "The body is not valid JSON.",
    }
    (entry,) = await journal(client, admin, "rejected")
    assert entry["content_type"] == "application/json"
    assert entry["size"] == len(b'{"event": "newCall", "callId": ')


async def test_json_bodies_work_like_forms(client: TestClient, agents: Agents) -> None:
    anna = await agents.add("Anna", extension="201")
    bernd = await agents.add("Bernd", extension="202")
    anna_socket = await console(client, anna)
    bernd_socket = await console(client, bernd)
    url = f"/webhooks/cti?token={TOKEN}"
    base = {"from": CUSTOMER, "to": COMPANY, "direction": "in", "callId": "json-1"}

    ring = await client.post(url, json={**base, "event": "newCall", "user": ["Anna", "202"]})
    picked = await client.post(url, json={**base, "event": "answer", "user": "Bernd"})
    ended = await client.post(url, json={**base, "event": "hangup", "cause": "normalClearing"})

    assert [ring.status, picked.status, ended.status] == [200, 200, 200]
    (anna_pop, withdrawn) = await arrivals(anna_socket)
    assert anna_pop["reason"] == "incoming_call"
    assert withdrawn == {"type": "pop_withdrawn", "id": anna_pop["id"]}
    assert [m["reason"] for m in await arrivals(bernd_socket)] == ["incoming_call"]
    call = await the_call(client, anna, "json-1")
    assert call["state"] == "completed"
    assert call["answered_by_id"] == bernd["id"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"event=newCall&callId=\xff\xfe&from=493055571600"),
        ("multipart/form-data; boundary=xyz", b"this is not multipart"),
    ],
    ids=["form-not-utf8", "broken-multipart"],
)
async def test_an_undecodable_form_body_is_400_and_kept_as_rejected(
    client: TestClient, admin: dict[str, Any], content_type: str, body: bytes
) -> None:
    response = await client.post(
        f"/webhooks/cti?token={TOKEN}", data=body, headers={"Content-Type": content_type}
    )

    assert response.status == 400
    assert len(await journal(client, admin, "rejected")) == 1


async def test_an_answer_for_an_unknown_call_is_accepted_and_journaled_with_a_reason(
    client: TestClient, agents: Agents, admin: dict[str, Any]
) -> None:
    anna = await agents.add("Anna", extension="201")
    socket = await console(client, anna, available=True)

    await answer(client, "never-rang", user="Anna")

    (entry,) = await journal(client, admin, "accepted")
    assert entry["reason"] == "answer for an unknown call"
    assert entry["event_id"] is not None
    assert await journal(client, admin, "rejected") == []
    assert await journal(client, admin, "failed") == []
    (call,) = await calls(client, anna)
    assert (call["call_id"], call["state"]) == ("never-rang", "answered")
    assert await arrivals(socket) == [], "a call that never rang here pops nobody"
    assert (await client.get("/healthz")).status == 200


async def test_an_answered_call_whose_ring_was_lost_is_not_a_missed_call(
    client: TestClient, agents: Agents
) -> None:
    anna = await agents.add("Anna", extension="201")

    await answer(client, "ring-lost", user="Anna")
    await hangup(client, "ring-lost", "normalClearing")

    assert (await the_call(client, anna, "ring-lost"))["state"] != "missed"
    assert await tickets(client, anna) == []


async def test_a_hangup_before_the_new_call_is_accepted_and_the_late_ring_pops_nobody(
    client: TestClient, agents: Agents, admin: dict[str, Any]
) -> None:
    anna = await agents.add("Anna", extension="201")
    socket = await console(client, anna)  # connected, not available: no callback offer

    await hangup(client, "early-hangup", "cancel")
    reply = await new_call(client, "early-hangup", users=["Anna"])

    assert reply == {}
    assert await arrivals(socket) == []
    call = await the_call(client, anna, "early-hangup")
    assert call["state"] == "missed"
    assert call["rung_agent_ids"] == []
    entries = await journal(client, admin, "accepted")
    assert [e["event_id"] for e in entries] == [call["event_id"], call["event_id"]]
    assert await rows(client, ScreenPop) == 0
    (ticket,) = await tickets(client, anna)
    assert call["ticket_id"] == ticket["id"]


async def test_a_repeated_new_call_pops_each_agent_once(client: TestClient, agents: Agents) -> None:
    anna = await agents.add("Anna", extension="201")
    bernd = await agents.add("Bernd", extension="202")
    carla = await agents.add("Carla", extension="203")
    named = [await console(client, a) for a in (anna, bernd)]
    everyone = await console(client, carla, available=True)

    await new_call(client, "twice", users=["Anna", "202"])
    await new_call(client, "twice", users=["Anna", "202"])
    await new_call(client, "twice")  # and once more without naming anyone

    for socket in named:
        (pop,) = [m for m in await arrivals(socket) if m["type"] == "screen_pop"]
        assert pop["call"]["id"] == "twice"
        await nothing_more(socket, "screen_pop")
    assert await arrivals(everyone) == []
    call = await the_call(client, anna, "twice")
    assert call["rung_agent_ids"] == [anna["id"], bernd["id"]]
    assert await rows(client, Call) == 1
    assert await rows(client, ScreenPop) == 2
    (event,) = await timeline(client, anna, call["contact_id"])
    assert event["body"] == "Incoming call"


# --- Real-shaped requests -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[f.stem for f in FIXTURES])
async def test_every_fixture_request_is_accepted(
    client: TestClient, agents: Agents, admin: dict[str, Any], case: dict[str, Any]
) -> None:
    await agents.add("Anna Schmidt", extension="201")
    url = f"/webhooks/cti?token={TOKEN}"
    if case["encoding"] == "form":
        response = await client.post(url, data=[tuple(pair) for pair in case["payload"]])
    else:
        response = await client.post(url, json=case["payload"])

    assert response.status == 200, await response.text()
    assert await response.json() == {}
    assert await journal(client, admin, "rejected") == []
    assert await journal(client, admin, "failed") == []
    assert await rows(client, Call) == 1, "even a call first heard at its answer is on record"
