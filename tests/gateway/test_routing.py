"""Routing through the real app: queues and rules by API and settings file, offers over
`/ws/agent` (accept, reject, timeout), CTI presence, supervisors moving tickets and watching
the queues on `/ws/supervisor`, a closed queue's automatic reply."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.dispatch import Dispatcher
from gateway.keys import BUS, DATABASE
from gateway.settings import Settings
from tests.helpers import Agents, bearer, go_available, inbound, nothing_more, receive
from tests.smtp_peer import SmtpPeer, account_for
from timeline.models import OutboxMessage, Role

CTI_TOKEN = "cti-routing-4d1e"
SALES = {
    "name": "sales",
    "channels": ["sms"],
    "offer_timeout_seconds": 30,
    "strategy": "longest_idle",
    "sla_seconds": 20,
}


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    routing = tmp_path / "routing.toml"
    routing.write_text(
        '[[queues]]\nname = "vip"\nsla_seconds = 10\npriority = 5\n\n'
        '[[rules]]\nname = "VIPs first"\nqueue = "vip"\nwhen = { tags_any = ["VIP"] }\n',
        encoding="utf-8",
    )
    return Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        cti_token=CTI_TOKEN,
        routing_file=routing,
    )


@pytest.fixture
async def supervisor(agents: Agents) -> dict[str, Any]:
    return await agents.add("Sam Supervisor", role=Role.SUPERVISOR)


async def api(
    client: TestClient, who: dict[str, Any], method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    response = await client.request(method, path, json=body, headers=bearer(who))
    return response.status, (await response.json() if response.status != 204 else None)


async def sales_queue(client: TestClient, supervisor: dict[str, Any], **fields: Any) -> None:
    status, _ = await api(client, supervisor, "POST", "/api/v1/queues", {**SALES, **fields})
    assert status == 201
    rule = {"name": "texts", "queue": "sales", "when": {"channel": "sms"}}
    status, _ = await api(client, supervisor, "POST", "/api/v1/routing-rules", rule)
    assert status == 201


async def console(client: TestClient, agent: dict[str, Any]) -> Any:
    socket = await client.ws_connect(f"/ws/agent?token={agent['token']}")
    await go_available(socket)
    return socket


async def send(client: TestClient, who: dict[str, Any], external_id: str, **fields: Any) -> Any:
    response = await client.post(
        "/api/v1/inbound", json=inbound(external_id, **fields), headers=bearer(who)
    )
    assert response.status == 202
    return await response.json()


async def ticket(client: TestClient, who: dict[str, Any], ticket_id: int) -> dict[str, Any]:
    return (await api(client, who, "GET", f"/api/v1/tickets/{ticket_id}"))[1]


async def presence_becomes(socket: Any, state: str) -> None:
    """Wait for the console to be told its presence is now `state` (earlier changes pass)."""
    while (await receive(socket, "presence"))["state"] != state:
        pass


async def test_an_offer_accepted_becomes_an_assignment_with_its_pop(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    await sales_queue(client, supervisor)
    anna = await agents.add("Anna")
    socket = await console(client, anna)
    sent = await send(client, anna, "m1")
    assert sent["assignee_id"] is None, "offered, not yet taken"

    offer = await receive(socket, "offer")
    assert offer["ticket"]["id"] == sent["ticket_id"]
    assert offer["queue"] == "sales" and offer["channel"] == "sms"
    assert offer["contact"]["identities"] == [{"kind": "phone", "value": "+4930555716000"}]
    assert offer["expires_at"]
    await socket.send_json({"type": "accept", "id": offer["id"]})
    accepted = await receive(socket, "offer_accepted")
    pop = await receive(socket, "screen_pop")

    assert accepted["ticket_id"] == sent["ticket_id"]
    assert pop["reason"] == "assigned" and pop["ticket"]["id"] == sent["ticket_id"]
    assert (await ticket(client, anna, sent["ticket_id"]))["assignee_id"] == anna["id"]
    await socket.close()


async def test_a_rejected_offer_goes_to_the_next_agent(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    await sales_queue(client, supervisor)
    anna, bernd = await agents.add("Anna"), await agents.add("Bernd")
    anna_socket = await console(client, anna)
    bernd_socket = await console(client, bernd)
    sent = await send(client, anna, "m1")

    first = await receive(anna_socket, "offer")  # anna idle longest
    await anna_socket.send_json({"type": "reject", "id": first["id"]})
    second = await receive(bernd_socket, "offer")

    assert second["ticket"]["id"] == sent["ticket_id"] and second["id"] != first["id"]
    await anna_socket.send_json({"type": "accept", "id": first["id"]})
    assert (await receive(anna_socket, "error"))["error"] == "offer_gone"
    await anna_socket.close()
    await bernd_socket.close()


async def test_an_offer_nobody_answers_times_out_to_the_next_agent_and_the_first_goes_away(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    await sales_queue(client, supervisor, offer_timeout_seconds=1, misses_before_away=1)
    anna, bernd = await agents.add("Anna"), await agents.add("Bernd")
    anna_socket = await console(client, anna)
    bernd_socket = await console(client, bernd)
    await send(client, anna, "m1")
    await receive(anna_socket, "offer")

    moved_on = await receive(bernd_socket, "offer")
    await presence_becomes(anna_socket, "away")

    assert moved_on["queue"] == "sales"
    await anna_socket.close()
    await bernd_socket.close()


async def test_a_reconnecting_agent_receives_its_open_offers(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    await sales_queue(client, supervisor)
    anna, bernd = await agents.add("Anna"), await agents.add("Bernd")
    second_console = await client.ws_connect(f"/ws/agent?token={anna['token']}")
    socket = await console(client, anna)
    await send(client, bernd, "m1")
    live = await receive(socket, "offer")
    await socket.close()  # her other console keeps her available

    async with client.ws_connect(f"/ws/agent?token={anna['token']}") as again:
        replayed = await receive(again, "offer")

    assert replayed["id"] == live["id"] and replayed["replayed"] is True
    await second_console.close()


async def test_an_offer_whose_publish_was_lost_still_reaches_the_console_once(
    client: TestClient, agents: Agents, supervisor: dict[str, Any], monkeypatch: Any
) -> None:
    """As when the process that made the offer dies between its commit and its publish."""
    await sales_queue(client, supervisor)
    anna = await agents.add("Anna")
    socket = await console(client, anna)
    bus = client.app[BUS]
    publish, lost = bus.publish, []

    async def losing_offers(topic: str, message: dict[str, Any]) -> None:
        if message.get("type") == "offer":
            lost.append(message)
        else:
            await publish(topic, message)

    monkeypatch.setattr(bus, "publish", losing_offers)
    sent = await send(client, anna, "m1")
    monkeypatch.setattr(bus, "publish", publish)
    offer = await receive(socket, "offer")
    another_process = Dispatcher(client.app[DATABASE], bus)
    published_again = await another_process.reannounce()

    assert [m["id"] for m in lost] == [offer["id"]]
    assert offer["ticket"]["id"] == sent["ticket_id"]
    assert published_again == 1
    await nothing_more(socket, "offer", wait=0.5)
    await socket.close()


async def test_the_routing_file_and_contact_tags_pick_the_vip_queue(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    status, _ = await api(
        client, supervisor, "POST", "/api/v1/contacts",
        {"name": "Vera VIP", "identities": [{"kind": "phone", "value": "+4930555716099"}],
         "tags": ["VIP"]},
    )  # fmt: skip
    assert status == 201
    vip = await send(client, supervisor, "v1", sender="+4930555716099")
    other = await send(client, supervisor, "o1")

    assert (await ticket(client, supervisor, vip["ticket_id"]))["queue"] == "vip"
    assert (await ticket(client, supervisor, other["ticket_id"]))["queue"] == "default"
    _, rules = await api(client, supervisor, "GET", "/api/v1/routing-rules")
    assert [r["name"] for r in rules["rules"]] == ["VIPs first"]


async def test_queues_show_live_and_daily_figures(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    await sales_queue(client, supervisor)
    anna = await agents.add("Anna")
    await send(client, anna, "m1")
    await send(client, anna, "m2", sender="+4930555716001")

    status, body = await api(client, anna, "GET", "/api/v1/queues/sales")

    assert status == 200
    assert body["now"]["waiting"] == 2 and body["now"]["longest_wait_seconds"] >= 0
    assert body["now"]["agents"] == {"offline": 2}  # anna and the supervisor
    assert body["today"]["offered"] == 2 and body["today"]["answered"] == 0
    assert body["today"]["abandonment_rate"] == 0 and body["today"]["asa_seconds"] is None
    _, listing = await api(client, anna, "GET", "/api/v1/queues")
    assert {"sales", "vip"} <= {q["name"] for q in listing["queues"]}


async def test_only_supervisors_configure_queues_and_refusals_say_why(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    anna = await agents.add("Anna")
    assert (await api(client, anna, "POST", "/api/v1/queues", SALES))[0] == 403
    status, body = await api(
        client, supervisor, "POST", "/api/v1/queues", {**SALES, "timezone": "Mars/Olympus"}
    )
    assert status == 400 and body["error"] == "invalid_queue"
    await sales_queue(client, supervisor)
    status, body = await api(
        client, supervisor, "PATCH", "/api/v1/queues/sales", {"strategy": "round_robin"}
    )
    assert status == 200 and body["strategy"] == "round_robin" and body["sla_seconds"] == 20


async def test_agents_list_presence_load_and_capacity(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    anna = await agents.add("Anna", capacity="sms=2,voice=1")
    socket = await console(client, anna)
    await send(client, anna, "m1")
    await receive(socket, "screen_pop")  # the default queue assigns directly

    _, body = await api(client, supervisor, "GET", "/api/v1/agents")
    (listed,) = [a for a in body["agents"] if a["id"] == anna["id"]]

    assert listed["presence"] == "available"
    assert listed["load"] == {"sms": 1} and listed["open_tickets"] == 1
    assert listed["capacity"] == {"total": None, "channels": {"sms": 2, "voice": 1}}
    await socket.close()


async def test_a_supervisor_moves_a_ticket_and_force_assigns_it(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    await sales_queue(client, supervisor)
    anna = await agents.add("Anna")
    sent = await send(client, anna, "m1")
    path = f"/api/v1/tickets/{sent['ticket_id']}"

    assert (await api(client, anna, "PATCH", path, {"queue": "vip"}))[0] == 403
    status, moved = await api(client, supervisor, "PATCH", path, {"queue": "vip"})
    assert status == 200 and moved["queue"] == "vip"
    status, assigned = await api(client, supervisor, "PATCH", path, {"assignee_id": anna["id"]})

    assert status == 200 and assigned["assignee_id"] == anna["id"]
    _, vip = await api(client, supervisor, "GET", "/api/v1/queues/vip")
    assert vip["today"]["offered"] == 1 and vip["today"]["answered"] == 1
    assert vip["now"]["waiting"] == 0


async def test_cti_makes_the_answering_agent_busy_then_wrapping_up(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    await api(client, supervisor, "POST", "/api/v1/queues",
              {"name": "hotline", "after_call_work_seconds": 1})  # fmt: skip
    anna = await agents.add("Anna", extension="201")
    socket = await console(client, anna)
    call = {"from": "+4930555716000", "to": "+4930123456", "direction": "in", "callId": "c1",
            "queue": "hotline"}  # fmt: skip
    for fields in (
        {"event": "newCall", "user[]": "Anna"},
        {"event": "answer", "user": "Anna", "answeringNumber": "201"},
    ):
        response = await client.post(f"/webhooks/cti?token={CTI_TOKEN}", data={**call, **fields})
        assert response.status == 200
    await presence_becomes(socket, "busy")

    hangup = {**call, "event": "hangup", "cause": "normalClearing"}
    response = await client.post(f"/webhooks/cti?token={CTI_TOKEN}", data=hangup)
    assert response.status == 200

    await presence_becomes(socket, "after_call_work")
    await presence_becomes(socket, "available")
    await socket.close()


async def test_supervisors_watch_queue_figures_change(
    client: TestClient, agents: Agents, supervisor: dict[str, Any]
) -> None:
    await sales_queue(client, supervisor)
    anna = await agents.add("Anna")
    refused = await client.get(f"/ws/supervisor?token={anna['token']}")
    assert refused.status == 403

    async with client.ws_connect(f"/ws/supervisor?token={supervisor['token']}") as socket:
        shown = {}
        while not {"sales", "vip"} <= set(shown):
            figures = (await receive(socket, "queue_stats"))["queue"]
            shown[figures["name"]] = figures
        await send(client, anna, "m1")
        update = (await receive(socket, "queue_stats"))["queue"]

    assert shown["sales"]["today"]["offered"] == 0
    assert update["name"] == "sales" and update["today"]["offered"] == 1
    assert update["now"]["waiting"] == 1


def test_the_routing_file_may_be_json(tmp_path: Path) -> None:
    from routing.config import read_file

    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"queues": [SALES], "rules": []}), encoding="utf-8")

    queues, rules = read_file(path)

    assert [q.name for q in queues] == ["sales"] and rules == []


def _closed_all_around_today() -> list[str]:
    today = datetime.now(UTC).date()
    return [(today + timedelta(days=d)).isoformat() for d in (-1, 0, 1)]


async def test_a_closed_queue_answers_each_new_ticket_once_and_never_a_robot(
    settings: Settings, smtp_peer: SmtpPeer, aiohttp_client: Any
) -> None:
    mailing = Settings(**{**settings.__dict__, "smtp": account_for(smtp_peer)})
    client = await aiohttp_client(create_app(mailing))
    supervisor = await Agents(client.server.app).add("Sam", role=Role.SUPERVISOR)
    queue = {
        "name": "support",
        "channels": ["email"],
        "holidays": _closed_all_around_today(),
        "after_hours": "auto_reply",
        "auto_reply_text": "We are closed. Ticket #{ticket}.",
    }
    assert (await api(client, supervisor, "POST", "/api/v1/queues", queue))[0] == 201
    rule = {"name": "mail", "queue": "support", "when": {"channel": "email"}}
    assert (await api(client, supervisor, "POST", "/api/v1/routing-rules", rule))[0] == 201

    mail = {"channel": "email", "to": "support@example.com", "subject": "Printer"}
    first = await send(client, supervisor, "m1@example.de", sender="carla@example.de", **mail)
    await send(client, supervisor, "m2@example.de", sender="carla@example.de", **mail)
    robot = await client.post(
        "/api/v1/inbound/email", data=OUT_OF_OFFICE, headers=bearer(supervisor)
    )
    assert robot.status == 202
    dave = await send(client, supervisor, "m3@example.de", sender="dave@example.de", **mail)

    sent = await smtp_peer.wait_for(2)
    assert sorted((m["To"], m["Auto-Submitted"], m.get_content().strip()) for m in sent) == [
        ("carla@example.de", "auto-replied", f"We are closed. Ticket #{first['ticket_number']}."),
        ("dave@example.de", "auto-replied", f"We are closed. Ticket #{dave['ticket_number']}."),
    ], "one reply per ticket; none to the out-of-office robot"
    queued = await client.server.app[DATABASE].read(
        lambda session: (
            session.execute(
                select(OutboxMessage.recipient).where(
                    OutboxMessage.idempotency_key.like("after-hours:%")
                )
            )
            .scalars()
            .all()
        )
    )
    assert sorted(queued) == ["carla@example.de", "dave@example.de"], "nothing else queued"
    status, held = await api(client, supervisor, "GET", f"/api/v1/tickets/{first['ticket_id']}")
    assert status == 200 and held["assignee_id"] is None, "the ticket waits for the opening"


OUT_OF_OFFICE = (
    b"From: Robot <robot@example.org>\r\nTo: support@example.com\r\n"
    b"Subject: Out of office\r\nMessage-ID: <ooo-1@example.org>\r\n"
    b"Auto-Submitted: auto-replied\r\nContent-Type: text/plain\r\n\r\nI am away.\r\n"
)
