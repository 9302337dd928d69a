"""Generic JSON inbound (`POST /api/v1/inbound`): custom channels and integration tests.

`{"channel", "from", "to", "external_id", "body", "subject"?, "name"?, "html"?,
"occurred_at"?, "references"?}`; authenticated by the gateway's bearer token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from channels import InvalidPayload
from timeline.events import Address, EventKind, InboundEvent, ThreadHints, ticket_tag

MAX_EXTERNAL_ID = 500
MAX_SUBJECT = 500


def parse(body: bytes, identity_kinds: Mapping[str, str]) -> InboundEvent:
    """The event in `body`; `identity_kinds` maps each known channel to its sender id kind."""
    data = _json_object(body)
    channel = _text(data, "channel").lower()
    if channel not in identity_kinds:
        known = ", ".join(sorted(identity_kinds))
        raise InvalidPayload(
            "unknown_channel", f"Channel {channel!r} is not known; use one of {known}."
        )
    subject = _optional_text(data, "subject")
    return InboundEvent(
        channel=channel,
        kind=EventKind.MESSAGE,
        sender=Address(identity_kinds[channel], _text(data, "from"), _optional_text(data, "name")),
        recipient=_optional_text(data, "to") or "",
        external_id=_external_id(data),
        text=_optional_text(data, "body") or "",
        subject=subject[:MAX_SUBJECT] if subject else None,
        html=_optional_text(data, "html"),
        thread=ThreadHints(ticket_number=ticket_tag(subject), references=_references(data)),
        occurred_at=_occurred_at(data),
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:
        # ValueError covers bad UTF-8, bad syntax and integers too long to read.
        raise InvalidPayload("invalid_json", f"The body is not valid JSON: {error}.") from None
    if not isinstance(data, dict):
        raise InvalidPayload("invalid_payload", "The body must be a JSON object.")
    return data


def _text(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidPayload("invalid_payload", f"Field {field!r} must be a non-empty string.")
    return value.strip()


def _optional_text(data: Mapping[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidPayload("invalid_payload", f"Field {field!r} must be a string.")
    return value


def _external_id(data: Mapping[str, Any]) -> str:
    value = data.get("external_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidPayload("invalid_payload", "Field 'external_id' must be a non-empty string.")
    value = value.strip()
    if len(value) > MAX_EXTERNAL_ID:
        raise InvalidPayload(
            "invalid_payload", f"Field 'external_id' exceeds {MAX_EXTERNAL_ID} characters."
        )
    return value


def _references(data: Mapping[str, Any]) -> tuple[str, ...]:
    value = data.get("references") or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidPayload("invalid_payload", "Field 'references' must be a list of strings.")
    return tuple(value)


def _occurred_at(data: Mapping[str, Any]) -> datetime:
    value = data.get("occurred_at")
    if value is None:
        return datetime.now(UTC)
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidPayload(
            "invalid_payload", "Field 'occurred_at' must be an ISO 8601 time."
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
