"""The routing configuration: queues and ordered rules, from the database, the API or a file.

The settings file (`SWITCHBOARD_ROUTING_FILE`, JSON or TOML) is loaded at start:
`{"queues": [{...}, ...], "rules": [{"name", "queue", "when": {...}}, ...]}`. Queues are
created or updated by name; when the file lists rules, they replace the stored ones.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from routing.queues import QueueConfig, implicit_queue
from routing.rules import Rule
from timeline.models import RoutingQueue, RoutingRule

# PostgreSQL advisory lock (any fixed number) held while a routing file is applied.
_FILE_LOCK_KEY = 7_254_007
_FILE_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    queues: Mapping[str, QueueConfig] = field(default_factory=dict)
    rules: Sequence[Rule] = ()
    ids: Mapping[str, int] = field(default_factory=dict)  # stored queues' row ids, by name

    def queue(self, name: str) -> QueueConfig:
        return self.queues.get(name) or implicit_queue(name)

    def queue_named_by(self, queue_id: int) -> str | None:
        return next((name for name, i in self.ids.items() if i == queue_id), None)


def load_config(session: Session) -> RoutingConfig:
    rows = list(session.execute(select(RoutingQueue)).scalars())
    queues = {q.name: QueueConfig.parse({**q.config, "name": q.name}) for q in rows}
    rules = [
        Rule(r.name, r.queue, r.conditions)
        for r in session.execute(
            select(RoutingRule).order_by(RoutingRule.position, RoutingRule.id)
        ).scalars()
    ]
    return RoutingConfig(queues, rules, {q.name: q.id for q in rows})


def save_queue(session: Session, queue: QueueConfig, now: datetime) -> RoutingQueue:
    row = session.execute(
        select(RoutingQueue).where(RoutingQueue.name == queue.name).with_for_update()
    ).scalar_one_or_none()
    data = queue.to_json()
    if row is None:
        row = RoutingQueue(name=queue.name, config=data, created_at=now, updated_at=now)
        session.add(row)
    else:
        row.config, row.updated_at = data, now
    session.flush()
    return row


def replace_rules(session: Session, rules: Sequence[Rule], now: datetime) -> None:
    session.execute(delete(RoutingRule))
    for position, rule in enumerate(rules):
        session.add(
            RoutingRule(
                position=position,
                name=rule.name,
                queue=rule.queue,
                conditions=dict(rule.when),
                created_at=now,
            )
        )
    session.flush()


def read_file(path: Path) -> tuple[list[QueueConfig], list[Rule] | None]:
    """The file's queues and rules (None: the file says nothing about rules)."""
    text = path.read_text(encoding="utf-8")
    data: Any = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold an object with 'queues' and 'rules'.")
    queues = [QueueConfig.parse(q) for q in data.get("queues", [])]
    rules = [Rule.parse(r) for r in data["rules"]] if "rules" in data else None
    return queues, rules


def apply_file(session: Session, path: Path, now: datetime) -> None:
    """The file's queues and rules stored. Gateway processes that start at once take turns
    (PostgreSQL: an advisory lock): side by side, both would insert the same new queue (one
    failing on its unique name, so that process would not start) or both replace the rules."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_FILE_LOCK, {"key": _FILE_LOCK_KEY})
    queues, rules = read_file(path)
    for queue in queues:
        save_queue(session, queue, now)
    if rules is not None:
        replace_rules(session, rules, now)
