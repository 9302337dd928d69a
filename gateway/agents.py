"""Agents: creation (CLI and API share it) and presence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.auth import hash_password, issue_token
from gateway.errors import ApiError
from routing import presence as routing_presence
from routing.capacity import DEFAULT_CAPACITY, Capacity
from routing.identity import normalise_email
from timeline.models import Agent, AgentSkill, Presence, Role, utcnow


@dataclass(frozen=True, slots=True)
class NewAgent:
    name: str
    email: str
    password: str
    role: Role = Role.AGENT
    skills: Sequence[str] = ()
    extension: str | None = None
    capacity: Capacity = DEFAULT_CAPACITY


def validate(new: NewAgent) -> NewAgent:
    """The same rules for `switchboard agent add` and `POST /api/v1/agents`."""
    email = normalise_email(new.email)
    if email is None:
        raise ApiError(400, "invalid_email", f"{new.email!r} is not an e-mail address.")
    if not new.name.strip():
        raise ApiError(400, "invalid_name", "The agent needs a name.")
    if len(new.password) < 8:
        raise ApiError(400, "weak_password", "The password needs at least 8 characters.")
    return NewAgent(
        name=new.name.strip(),
        email=email,
        password=new.password,
        role=new.role,
        skills=[s.strip() for s in new.skills if s.strip()],
        extension=(new.extension or "").strip() or None,
        capacity=new.capacity,
    )


def create_agent(session: Session, new: NewAgent) -> tuple[Agent, str]:
    """The stored agent and its first API token (shown once, stored hashed)."""
    new = validate(new)
    agent = Agent(
        name=new.name,
        email=new.email,
        password_hash=hash_password(new.password),
        role=new.role,
        skills=list(skill_levels(new.skills)),
        extension=new.extension,
        capacity=new.capacity.to_json(),
        presence=Presence.OFFLINE,
    )
    session.add(agent)
    try:
        session.flush()
    except IntegrityError:
        raise ApiError(409, "agent_exists", f"An agent with e-mail {new.email} exists.") from None
    session.add_all(
        AgentSkill(agent_id=agent.id, skill=name, level=level)
        for name, level in skill_levels(new.skills).items()
    )
    return agent, issue_token(session, agent.id)


def set_presence(session: Session, agent_id: int, presence: Presence) -> Agent | None:
    """The state alone (with its history), without routing: for tools and tests. The gateway
    changes presence through `Dispatcher.set_presence`, which also routes."""
    routing_presence.change(session, [agent_id], presence, utcnow())
    return session.get(Agent, agent_id)


def skill_levels(skills: Sequence[str]) -> dict[str, int]:
    """`billing:3` is billing at level 3; a skill without a level is level 1."""
    levels: dict[str, int] = {}
    for skill in skills:
        name, _, level = skill.partition(":")
        if not level.strip().isdigit() and level.strip():
            raise ApiError(400, "invalid_skill", f"Skill {skill!r}: the level is a number.")
        levels[name.strip().lower()] = int(level) if level.strip() else 1
    return levels


def parse_presence(value: object) -> Presence:
    try:
        return Presence(str(value))
    except ValueError:
        states = ", ".join(p.value for p in Presence)
        raise ApiError(400, "invalid_presence", f"Presence must be one of {states}.") from None
