"""Browser sessions for the agent console and the wallboard: sign-in, CSRF, sign-out.

A session is an API token of its own kind (`gateway.auth.SESSION_PREFIX`), kept in an HttpOnly,
SameSite=Strict cookie: revocable like any token (sign-out revokes it), valid on every gateway
process, never readable by the page's scripts, and expiring `SESSION_LIFETIME` after sign-in.

CSRF: a cookie travels with every request the browser makes, so a state-changing request
authenticated by the cookie must also carry the session's CSRF token (header `X-CSRF-Token`,
or a form field `csrf_token`). The page gets that token in a `<meta>` tag; another site can
neither read it nor compute it (an HMAC of the secret session token).

Sign-in attempts are limited per account and per client address: `MAX_FAILURES` wrong
passwords within `FAILURE_WINDOW` seconds lock further attempts for the rest of the window.
The counts live in the process that saw them (a deployment with several processes behind a
load balancer multiplies the allowance by the number of processes at most).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import defaultdict, deque
from urllib.parse import urlsplit

from aiohttp import web
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway.auth import (
    SESSION_LIFETIME,
    hash_password,
    hash_token,
    is_session_token,
    new_session_token,
    verify_password,
)
from gateway.errors import ApiError
from gateway.keys import SETTINGS
from timeline.models import Agent, ApiToken, utcnow

SESSION_COOKIE = "switchboard_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
MAX_FAILURES = 5
FAILURE_WINDOW = 15 * 60.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Verifying against this costs what a real verification costs, so a wrong e-mail address
# cannot be told from a wrong password by the time the answer takes.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"csrf", hashlib.sha256).hexdigest()


def csrf_ok(request: web.Request, session_token: str, form_value: str | None = None) -> bool:
    supplied = request.headers.get(CSRF_HEADER) or form_value or ""
    return hmac.compare_digest(supplied, csrf_token(session_token))


def check_browser_request(request: web.Request, session_token: str) -> None:
    """Refuse what another site could make a signed-in browser send: a state-changing request
    without the CSRF token, or any request (a WebSocket upgrade, say) from a foreign origin."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise ApiError(
            403, "foreign_origin", "Requests with this session must come from its pages."
        )
    if request.method not in SAFE_METHODS and not csrf_ok(request, session_token):
        raise ApiError(403, "csrf_failed", "The request lacks the page's CSRF token.")


def _own_hosts(request: web.Request) -> set[str]:
    """The host the browser used: as we see it, or as the proxy was told (public URL)."""
    public_url = request.app[SETTINGS].public_url
    return {request.host} | ({urlsplit(public_url).netloc} if public_url else set())


def session_cookie(request: web.Request) -> str | None:
    token = request.cookies.get(SESSION_COOKIE)
    return token if token and is_session_token(token) else None


def sign_in(session: Session, email: str, password: str) -> tuple[int, str] | None:
    """The agent's id and a new session token, or None for a wrong e-mail or password."""
    agent = session.execute(
        select(Agent).where(func.lower(Agent.email) == email.strip().lower())
    ).scalar_one_or_none()
    if not verify_password(agent.password_hash if agent else _DUMMY_HASH, password):
        return None
    if agent is None:
        return None
    token = new_session_token()
    session.add(ApiToken(agent_id=agent.id, token_hash=hash_token(token)))
    session.flush()
    return agent.id, token


def sign_out(session: Session, token: str) -> None:
    session.execute(
        update(ApiToken)
        .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def set_session_cookie(response: web.StreamResponse, request: web.Request, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
        path="/",
    )


def is_https(request: web.Request) -> bool:
    """TLS here or at the proxy in front (which says so in X-Forwarded-Proto)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


class LoginThrottle:
    """Wrong passwords per account and per client address, in a sliding window."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self._limit = limit
        self._window = window
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def retry_after(self, *keys: str) -> int | None:
        """Seconds until a locked key may try again; None when none is locked."""
        now = time.monotonic()
        waits = []
        for key in keys:
            recent = self._recent(key, now)
            if len(recent) >= self._limit:
                waits.append(int(recent[0] + self._window - now) + 1)
        return max(waits) if waits else None

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._recent(key, now).append(now)

    def succeeded(self, account: str) -> None:
        self._failures.pop(account, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        recent = self._failures[key]
        while recent and recent[0] <= now - self._window:
            recent.popleft()
        return recent
