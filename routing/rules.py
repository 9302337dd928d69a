"""Routing rules: data, evaluated in order, that pick the queue a new ticket waits in.

A rule is `{"name", "queue", "when": {...}}`; every condition it names must hold, the first
rule that holds wins, and nothing matching leaves the event's own queue (an e-mail mailbox
has one) or `default`. Conditions:

- `channel`, `recipient`, `language`: one value or a list (case does not matter)
- `tags_any`, `tags_all`: the contact's tags (VIP, …)
- `attributes`: `{"abc_class": "A"}` or `{"abc_class": ["A", "B"]}` on the contact
- `keywords`: any of these words in the subject or body
- `business_hours`: `"open"` or `"closed"`, of the rule's queue or of `"hours_of"`
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from routing.queues import DEFAULT_QUEUE, QueueConfig, implicit_queue

CONDITIONS = frozenset(
    {
        "channel",
        "recipient",
        "language",
        "tags_any",
        "tags_all",
        "attributes",
        "keywords",
        "business_hours",
        "hours_of",
    }
)


class InvalidRule(ValueError):
    """A rule that cannot be used, with a sentence saying why."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What rules may look at: the inbound and its contact."""

    channel: str
    recipient: str = ""
    subject: str = ""
    body: str = ""
    tags: frozenset[str] = frozenset()
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def language(self) -> str:
        return str(self.attributes.get("language", "")).lower()


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    queue: str
    when: Mapping[str, Any]

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Rule:
        queue, when = data.get("queue"), data.get("when", {})
        if not isinstance(queue, str) or not queue.strip():
            raise InvalidRule("A rule needs the 'queue' it sends to.")
        if not isinstance(when, Mapping):
            raise InvalidRule("'when' must be an object of conditions.")
        unknown = set(when) - CONDITIONS
        if unknown:
            raise InvalidRule(f"Unknown rule conditions: {', '.join(sorted(unknown))}.")
        if when.get("business_hours") not in (None, "open", "closed"):
            raise InvalidRule("'business_hours' is 'open' or 'closed'.")
        if not isinstance(when.get("attributes", {}), Mapping):
            raise InvalidRule("'attributes' must be an object.")
        return cls(str(data.get("name") or queue), queue.strip(), dict(when))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "queue": self.queue, "when": dict(self.when)}


def choose_queue(
    rules: Sequence[Rule],
    facts: Facts,
    queues: Mapping[str, QueueConfig],
    now: datetime,
    fallback: str | None = None,
) -> str:
    """The queue of the first rule whose conditions all hold."""
    for rule in rules:
        if matches(rule, facts, queues, now):
            return rule.queue
    return fallback or DEFAULT_QUEUE


def matches(rule: Rule, facts: Facts, queues: Mapping[str, QueueConfig], now: datetime) -> bool:
    for name, wanted in rule.when.items():
        check = _CHECKS.get(name)
        if check is not None and not check(wanted, facts):
            return False
    hours = rule.when.get("business_hours")
    if hours is not None:
        owner = str(rule.when.get("hours_of") or rule.queue)
        is_open = queues.get(owner, implicit_queue(owner)).is_open(now)
        if is_open != (hours == "open"):
            return False
    return True


def _one_of(wanted: object, value: str) -> bool:
    values = wanted if isinstance(wanted, list | tuple) else [wanted]
    return value.lower() in {str(v).lower() for v in values}


def _lowered(values: object) -> set[str]:
    return {str(v).lower() for v in (values if isinstance(values, list | tuple) else [values])}


def _attributes(wanted: Mapping[str, Any], facts: Facts) -> bool:
    return all(
        key in facts.attributes and _one_of(value, str(facts.attributes[key]))
        for key, value in wanted.items()
    )


def _keywords(wanted: object, facts: Facts) -> bool:
    text = f"{facts.subject}\n{facts.body}".lower()
    return any(word in text for word in _lowered(wanted))


_CHECKS: dict[str, Callable[[Any, Facts], bool]] = {
    "channel": lambda wanted, f: _one_of(wanted, f.channel),
    "recipient": lambda wanted, f: _one_of(wanted, f.recipient),
    "language": lambda wanted, f: _one_of(wanted, f.language),
    "tags_any": lambda wanted, f: bool(_lowered(wanted) & {t.lower() for t in f.tags}),
    "tags_all": lambda wanted, f: _lowered(wanted) <= {t.lower() for t in f.tags},
    "attributes": _attributes,
    "keywords": _keywords,
}
