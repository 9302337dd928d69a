"""Generic CTI, compatible with Zammad's (`POST /webhooks/cti`), so a PBX already scripted for
Zammad only changes its URL.

A PBX sends one request per call event: `event` = `newCall` | `answer` | `hangup`, with `from`,
`to`, `direction` (`in` | `out`), `callId`, `user[]` (the agents to ring, or on `answer` the
agent who answered), `queue`, `answeringNumber` and, on hangup, `cause`. Form-encoded (as
Zammad's documentation shows, `user[]` repeated) or JSON (`user` a string or a list).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from channels import InvalidPayload
from timeline.events import Address, CallPhase, CallSignal, Direction, HangupCause

PROVIDER = "cti"
PHASES = {"newCall": CallPhase.RINGING, "answer": CallPhase.ANSWERED, "hangup": CallPhase.ENDED}
DIRECTIONS = {"in": Direction.INBOUND, "out": Direction.OUTBOUND}
CAUSES = {cause.value: cause for cause in HangupCause}

Fields = Mapping[str, Sequence[str]]


class NumberFormat(enum.StrEnum):
    """How the PBX writes bare digit strings (`493055571600` or `3055571600`).

    `auto` leaves them to the identity rule (a valid national number first, else international
    without its `+`); `international` always reads them as international without the `+`, as
    Zammad's documentation writes them; `national` always as national numbers that lost their
    trunk prefix `0` (as most of Europe dials them).
    """

    AUTO = "auto"
    INTERNATIONAL = "international"
    NATIONAL = "national"


def fields_from_form(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for key, value in pairs:
        fields.setdefault(key.removesuffix("[]"), []).append(value)
    return fields


def fields_from_json(body: bytes) -> dict[str, list[str]]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidPayload("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidPayload("invalid_payload", "The body must be a JSON object.")
    fields: dict[str, list[str]] = {}
    for key, value in data.items():
        values = [v for v in (value if isinstance(value, list) else [value]) if v is not None]
        if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            raise InvalidPayload("invalid_payload", f"Field {key!r} must be text.")
        fields[key.removesuffix("[]")] = [str(v) for v in values]
    return fields


def parse(fields: Fields, number_format: NumberFormat = NumberFormat.AUTO) -> CallSignal:
    phase = PHASES.get(_one(fields, "event") or "")
    if phase is None:
        known = ", ".join(PHASES)
        raise InvalidPayload("unknown_event", f"'event' must be one of {known}.")
    call_id = _one(fields, "callId")
    if not call_id:
        raise InvalidPayload("invalid_payload", "Field 'callId' is required.")
    direction = DIRECTIONS.get(_one(fields, "direction") or "in")
    if direction is None:
        raise InvalidPayload("invalid_payload", "'direction' must be 'in' or 'out'.")
    users = tuple(u.strip() for u in fields.get("user", ()) if u.strip())
    answering = _one(fields, "answeringNumber")
    return CallSignal(
        provider=PROVIDER,
        call_id=call_id[:200],
        phase=phase,
        direction=direction,
        caller=Address("phone", _number(_one(fields, "from"), number_format)),
        callee=_number(_one(fields, "to"), number_format),
        occurred_at=datetime.now(UTC),
        agents=users if phase is CallPhase.RINGING else (),
        answered_by=(users[0] if users else answering) if phase is CallPhase.ANSWERED else None,
        cause=_cause(fields) if phase is CallPhase.ENDED else None,
        queue=_one(fields, "queue"),
    )


def _one(fields: Fields, name: str) -> str | None:
    values = fields.get(name) or ()
    return values[0].strip() if values and values[0].strip() else None


def _cause(fields: Fields) -> HangupCause | None:
    raw = _one(fields, "cause")
    if raw is None:
        return None
    if raw not in CAUSES:
        known = ", ".join(CAUSES)
        raise InvalidPayload("invalid_payload", f"'cause' must be one of {known}.")
    return CAUSES[raw]


def _number(raw: str | None, number_format: NumberFormat) -> str:
    """The number as sent, made explicit where the PBX's format is configured."""
    value = (raw or "").strip()
    bare = value.replace(" ", "")
    if number_format is NumberFormat.INTERNATIONAL and bare.isdigit() and not bare.startswith("0"):
        return "+" + bare
    if number_format is NumberFormat.NATIONAL and bare.isdigit() and not bare.startswith("0"):
        # Marks it national for the identity rule: a trunk prefix is what national means there.
        return "0" + bare
    return value
