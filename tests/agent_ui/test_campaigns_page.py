"""The campaign page in a real browser: a supervisor builds a segment from hand-made contacts
and sees it counted, writes an SMS (a broken template is refused with its error, the preview
shows sample renderings and the GSM-7/UCS-2 encoding), starts the campaign against the Twilio
stub and watches every recipient reach "sent" and the opted-out one skipped; a scheduled
campaign is paused, resumed and cancelled; an agent is refused the page."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.agent_ui.test_console import sign_in
from tests.browser import screenshot
from tests.helpers import Agents, bearer
from tests.stubs.twilio_api import TwilioApiStub
from tests.twilio_sms import CUSTOMER, form, post_signed, sms_settings
from timeline.models import Role

# Three German customers tagged for the reminder (one with markup in the name, which must stay
# text); one more who texted STOP (CUSTOMER, in the audience only when consent is not asked);
# and two who must not get it: one abroad, one without the tag.
AUDIENCE = {
    "+4915111111101": "Erika Mustermann",
    "+4915111111102": "Jürgen Groß",
    "+4915111111103": "<b>Bold</b> Björn",
}
OTHERS = [
    (CUSTOMER, "Otto Optout", ["reminder"]),
    ("+12025550123", "Abby Abroad", ["reminder"]),
    ("+4915111111104", "Nora Newsletter", ["newsletter"]),
]
FINE = "Hallo {{ contact.name }}, Ihr Termin ist morgen um 10 Uhr."
WIDE = "Hallo {{ contact.name }} 😀"  # the emoji is outside GSM-7: UCS-2
BROKEN = "Hallo {{ contact.name "


@pytest.fixture
async def client(
    aiohttp_client: Any, tmp_path: Any, twilio: tuple[TwilioApiStub, str]
) -> TestClient:
    """SQLite only: the page is the same on either database; the API tests cover both."""
    base = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'campaigns.db'}", default_region="DE"
    )
    return await aiohttp_client(create_app(sms_settings(base, twilio[1])))


async def add_contacts(client: TestClient, agent: dict[str, Any]) -> None:
    people = [(number, name, ["reminder"]) for number, name in AUDIENCE.items()] + OTHERS
    for number, name, tags in people:
        identities = [{"kind": "phone", "value": number}]
        created = await client.post(
            "/api/v1/contacts",
            json={"name": name, "identities": identities, "tags": tags},
            headers=bearer(agent),
        )
        assert created.status == 201, await created.text()
    stop = await post_signed(client, "/webhooks/twilio/sms", form("stop.json"))
    assert stop.status == 200


async def preview(page: Any, body: str) -> None:
    await page.fill("#sms-body", body)
    await page.click("#preview")


async def test_a_supervisor_builds_a_segment_previews_starts_and_watches_an_sms_campaign(
    client: TestClient, agents: Agents, browser: Any, twilio: tuple[TwilioApiStub, str]
) -> None:
    boss = await agents.add("Sam Supervisor", role=Role.SUPERVISOR)
    await add_contacts(client, boss)
    page = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
    await sign_in(page, client, boss["email"])
    await page.wait_for_url("**/console")
    await page.click("a[href='/campaigns']")
    await page.wait_for_url("**/campaigns")

    await page.fill("#campaign-name", "Appointment reminder")
    await page.fill("#f-tags-any", "reminder")
    await page.fill("#f-countries", "de")
    await page.locator("#audience-count", has_text="3").wait_for(timeout=5000)
    sample = page.locator("#audience-sample")
    assert await sample.locator("li").count() == 3
    assert "<b>Bold</b> Björn" in await sample.inner_text()
    assert await sample.locator("b").count() == 0
    await page.select_option("#f-consent", "")  # the opt-out is then skipped at send time
    await page.locator("#audience-count", has_text="4").wait_for(timeout=5000)

    await preview(page, BROKEN)
    problem = page.locator("#template-error")
    await problem.wait_for(state="visible", timeout=5000)
    assert (await problem.inner_text()).startswith("Template error: body, line 1:")
    assert await page.locator("#sms-body[aria-invalid=true]").count() == 1
    assert await page.locator("#start-draft").is_disabled()

    await preview(page, WIDE)
    await page.locator("#sms-info", has_text="UCS-2").wait_for(timeout=5000)
    assert await problem.is_hidden()
    assert await page.locator("#sms-body[aria-invalid]").count() == 0
    await preview(page, FINE)
    await page.locator("#sms-info", has_text="GSM-7").wait_for(timeout=5000)
    assert "1 SMS segment" in await page.locator("#sms-info").inner_text()
    erika = page.locator("#samples .sample-render", has_text="Hallo Erika Mustermann, Ihr")
    await erika.wait_for()
    assert await page.locator("#render-errors li").count() == 0
    await screenshot(page, "campaign-preview")

    await page.click("#start-draft")
    panel = page.locator("#campaign")
    await panel.locator("[data-figure=sent]", has_text="3").wait_for(timeout=20000)
    await panel.locator("[data-figure=status]", has_text="completed").wait_for(timeout=20000)
    assert await panel.locator("[data-figure=targeted]").inner_text() == "4"
    assert await panel.locator("#campaign-skipped [data-reason=opted_out]").inner_text() == (
        "opted out: 1"
    )
    assert await page.locator("#campaign-progress").evaluate("bar => bar.value / bar.max") == 1
    await screenshot(page, "campaign-progress")

    api = twilio[0]
    assert sorted(message["To"] for message in api.messages) == sorted(AUDIENCE)
    bodies = {message["To"]: message["Body"] for message in api.messages}
    assert bodies["+4915111111102"] == "Hallo Jürgen Groß, Ihr Termin ist morgen um 10 Uhr."
    listed = page.locator("#campaign-rows tr", has_text="Appointment reminder")
    await listed.locator("td", has_text="completed").wait_for(timeout=10000)
    assert await listed.count() == 1  # each preview changed the one draft in place


async def test_a_scheduled_campaign_is_paused_resumed_and_cancelled_from_the_page(
    client: TestClient, agents: Agents, browser: Any, twilio: tuple[TwilioApiStub, str]
) -> None:
    boss = await agents.add("Sam Supervisor", role=Role.SUPERVISOR)
    await add_contacts(client, boss)
    page = await browser.new_page()
    await sign_in(page, client, boss["email"])
    await page.wait_for_url("**/console")
    await page.goto(str(client.make_url("/campaigns")))

    await page.fill("#campaign-name", "Tomorrow's notice")
    await page.fill("#f-tags-any", "reminder")
    await page.locator("#audience-count", has_text="4").wait_for(timeout=5000)
    await page.click(".rules summary")
    tomorrow = datetime.now() + timedelta(days=1)  # the browser's local time, as the field's
    await page.fill("#scheduled-at", tomorrow.strftime("%Y-%m-%dT%H:%M"))
    await preview(page, FINE)
    await page.locator("#start-draft:enabled").click()
    status = page.locator("#campaign [data-figure=status]")
    await status.filter(has_text="scheduled").wait_for(timeout=5000)

    for action, after in (("pause", "paused"), ("resume", "scheduled")):
        await page.click(f"#campaign [data-action={action}]")
        await status.filter(has_text=after).wait_for(timeout=5000)
    cancel = page.locator("#campaign [data-action=cancel]")
    await cancel.click()
    assert await status.inner_text() == "scheduled"  # the first click only asks
    await cancel.click()
    await status.filter(has_text="cancelled").wait_for(timeout=5000)
    assert await page.locator("#campaign [data-action]:visible").count() == 0
    assert twilio[0].messages == []
