"""API tokens and passwords.

Tokens are long random strings, so a fast SHA-256 is enough to keep them unusable if the
database leaks (no dictionary to try); passwords are low-entropy and get argon2.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from gateway.errors import ApiError
from timeline.models import Agent, ApiToken, Role, utcnow

TOKEN_PREFIX = "sb_"
# Browser sessions (gateway.sessions) are tokens too, of their own kind, and they expire.
SESSION_PREFIX = "sbs_"
SESSION_LIFETIME = timedelta(hours=12)
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_session_token() -> str:
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def is_session_token(token: str) -> bool:
    return token.startswith(SESSION_PREFIX)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the agent behind the token."""

    agent_id: int
    name: str
    role: str

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            allowed = " or ".join(roles)
            raise ApiError(403, "forbidden", f"This needs the role {allowed}.")


def issue_token(session: Session, agent_id: int) -> str:
    token = new_token()
    session.add(ApiToken(agent_id=agent_id, token_hash=hash_token(token)))
    session.flush()
    return token


def principal_for(session: Session, token: str) -> Principal | None:
    query = (
        select(Agent.id, Agent.name, Agent.role, ApiToken.created_at)
        .join(ApiToken, ApiToken.agent_id == Agent.id)
        .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )
    row = session.execute(query).one_or_none()
    if row is None:
        return None
    agent_id, name, role, created_at = row
    if is_session_token(token) and utcnow() - created_at > SESSION_LIFETIME:
        return None
    return Principal(agent_id, name, role)


def token_from(request: web.Request, *, allow_query: bool = False) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_query:
        return request.query.get("token") or None
    return None


class TokenCache:
    """Recently verified tokens, so that a busy integration costs no query per request.

    A token revoked in the database stops working within `ttl` seconds on every process.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], ttl: float = 10.0) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._known: dict[str, tuple[Principal, float]] = {}

    async def principal(self, token: str) -> Principal | None:
        key = hash_token(token)
        now = time.monotonic()
        cached = self._known.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self._sessions() as session:
            principal = await session.run_sync(principal_for, token)
        if principal is None:
            self._known.pop(key, None)
            return None
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[key] = (principal, now + self._ttl)
        return principal

    def forget(self, token: str) -> None:
        """A token revoked here stops working here at once (elsewhere within `ttl`)."""
        self._known.pop(hash_token(token), None)
