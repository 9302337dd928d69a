"""Shared fixtures: real SQLite and PostgreSQL databases, real Redis, the gateway app.

PostgreSQL and Redis are the machine's real servers. Where one cannot be reached, its tests
are skipped on a developer's machine, loudly, and fail under CI=true: CI never passes by
skipping a service.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.browser import BrowserMissing, chromium
from tests.dovecot import Dovecot, DovecotMissing
from tests.helpers import Agents, empty_postgres
from tests.smtp_peer import SmtpPeer
from tests.stubs.twilio_api import TwilioApiStub
from tests.twilio_sms import stub
from timeline.db import Database
from timeline.models import Role

POSTGRES_DSN = os.environ.get(
    "SWITCHBOARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SWITCHBOARD_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"

_skipped_services: set[str] = set()


def service_unavailable(service: str, error: BaseException) -> None:
    """Fail under CI; elsewhere skip, and say so again in the summary."""
    message = f"{service} is not reachable ({type(error).__name__}: {error})"
    if IN_CI:
        pytest.fail(f"{message}; CI must exercise every real service", pytrace=False)
    _skipped_services.add(service)
    pytest.skip(f"SKIPPED FOR WANT OF A SERVICE: {message}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for service in sorted(_skipped_services):
        terminalreporter.write_line(
            f"WARNING: tests needing {service} were SKIPPED; start it to run them "
            "(under CI=true they fail instead)",
            red=True,
            bold=True,
        )


# --- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A throw-away database on the real server for this test session; dropped afterwards."""
    name = f"switchboard_test_{os.getpid()}_{secrets.token_hex(3)}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    def run(statement: str) -> None:
        # Its own thread and loop: this session fixture may be set up inside a test's loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, admin(statement)).result()

    try:
        run(f'CREATE DATABASE "{name}"')
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        service_unavailable("PostgreSQL", error)
    base = POSTGRES_DSN.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The same test on the embedded default and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'switchboard.db'}"
    url: str = request.getfixturevalue("postgres_database")
    await empty_postgres(url)
    return url


@pytest.fixture
async def pg(postgres_database: str) -> AsyncIterator[Database]:
    """A migrated PostgreSQL database with empty tables, for what only PostgreSQL does."""
    await empty_postgres(postgres_database)
    database = Database(postgres_database)
    await database.upgrade()
    yield database
    await database.dispose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated database of either kind, for tests of the store without the app."""
    database = Database(database_url)
    await database.upgrade()
    yield database
    await database.dispose()


# --- Redis ----------------------------------------------------------------------------------


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (OSError, redis.RedisError) as error:
        await client.aclose()
        service_unavailable("Redis", error)
    await client.aclose()
    yield REDIS_URL


# --- The gateway ----------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str, tmp_path: Any) -> Settings:
    return Settings(
        database_url=database_url,
        default_region="DE",
        max_body_bytes=64 * 1024,
        data_dir=tmp_path / "data",
    )


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> TestClient:
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def agents(client: TestClient) -> Agents:
    return Agents(client.server.app)


@pytest.fixture
async def admin(agents: Agents) -> dict[str, Any]:
    return await agents.add("Admin", role=Role.ADMIN)


# --- SMTP -----------------------------------------------------------------------------------


@pytest.fixture
def smtp_peer() -> Iterator[SmtpPeer]:
    """A real SMTP server (aiosmtpd) on a free loopback port, keeping what it received."""
    peer = SmtpPeer()
    peer.start()
    yield peer
    peer.stop()


# --- IMAP -----------------------------------------------------------------------------------


def _dovecot(*, tls: bool) -> Iterator[Dovecot]:
    try:
        server = Dovecot.start(tls=tls)
    except (DovecotMissing, OSError, RuntimeError, subprocess.CalledProcessError) as error:
        service_unavailable("Dovecot", error)
    yield server
    server.stop()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A throw-away Dovecot (Debian dovecot-imapd) with one user and an empty Maildir."""
    yield from _dovecot(tls=False)


@pytest.fixture
def dovecot_tls() -> Iterator[Dovecot]:
    """The same, speaking only IMAPS, with a self-signed certificate (`certificate`)."""
    yield from _dovecot(tls=True)


# --- Chromium ---------------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium (tests.browser); fails under CI when it is missing, else skips."""
    try:
        async with chromium() as launched:
            yield launched
    except BrowserMissing as error:
        service_unavailable("Chromium", error)


# --- Twilio -----------------------------------------------------------------------------------


@pytest.fixture
async def twilio(aiohttp_server: Any) -> tuple[TwilioApiStub, str]:
    """A local stub of Twilio's REST API (tests.stubs.twilio_api) and its base URL."""
    api = stub()
    server = await aiohttp_server(api.app())
    return api, str(server.make_url("")).rstrip("/")
