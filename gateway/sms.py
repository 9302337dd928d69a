"""SMS/MMS over Twilio: the message webhook (keywords included) and the delivery receipts.

A keyword message (STOP, START, HELP, …) is stored like any message, on the timeline and in
the journal, without opening a ticket; then STOP and START change the sender's opt-out, and
HELP is answered at once in the TwiML reply. Twilio itself confirms STOP and START to the
phone (Advanced Opt-Out), so those get the empty answer.
"""

from __future__ import annotations

from aiohttp import web

from channels import InvalidPayload, twilio_sms
from channels.twilio_sms import Keyword, SmsMessage
from gateway.ingest import IngestResult
from gateway.keys import DATABASE, MESSAGE_STATUS, SETTINGS
from gateway.settings import SMS_STATUS_PATH
from gateway.twilio_webhooks import signed_form, twiml
from gateway.webhooks import ingest, reject
from routing.identity import PHONE, normalise
from timeline import messaging, outbox

routes = web.RouteTableDef()


@routes.post("/webhooks/twilio/sms")
async def sms_webhook(request: web.Request) -> web.Response:
    body, form = await signed_form(request)
    try:
        message = twilio_sms.parse_message(form)
    except InvalidPayload as error:
        await reject(request, twilio_sms.CHANNEL, body, error)
    result = await ingest(request, message.event, body)
    if message.keyword is Keyword.HELP:
        return twiml(twilio_sms.reply_twiml(request.app[SETTINGS].sms_help_text))
    if message.keyword is not None and not result.duplicate:
        await _change_consent(request, message, result)
    return twiml(twilio_sms.reply_twiml())


async def _change_consent(request: web.Request, message: SmsMessage, result: IngestResult) -> None:
    """STOP opts the sender's number out (with when and why), START opts it back in."""
    identity = normalise(PHONE, message.event.sender.raw, request.app[SETTINGS].default_region)
    if identity is None:
        return
    db = request.app[DATABASE]
    if message.keyword is Keyword.OPT_OUT:
        word = message.event.text.strip().upper()
        source = f"{message.event.channel} keyword {word} (event {result.event_id})"
        await db.run(
            messaging.set_opt_out, PHONE, identity.value, source, message.event.occurred_at
        )
    elif message.keyword is Keyword.OPT_IN:
        await db.run(messaging.clear_opt_out, PHONE, identity.value)


@routes.post(SMS_STATUS_PATH)
async def sms_status(request: web.Request) -> web.Response:
    """Twilio's Status Callback for a message we sent: onto its timeline event and to the agent."""
    body, form = await signed_form(request)
    try:
        report = twilio_sms.parse_status(form)
    except InvalidPayload as error:
        await reject(request, twilio_sms.CHANNEL, body, error)
    db = request.app[DATABASE]
    channel = twilio_sms.CHANNEL
    if await db.run(
        outbox.mark_delivery, channel, report.message_sid, report.status, report.detail
    ):
        event = await db.read(outbox.outbound_event, channel, report.message_sid)
        if event is not None:
            await request.app[MESSAGE_STATUS]([event.id])
    return twiml(twilio_sms.reply_twiml())
