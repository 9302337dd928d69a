"""Engine, sessions and schema upgrades for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Select, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: the PostgreSQL advisory lock that serialises concurrent `upgrade`s when
# several gateway processes start at once on one database.
_MIGRATION_LOCK = 7_254_001
# Execution option that marks a SQLite connection as the writer (see `_configure_sqlite`).
_WRITER = "switchboard_writer"

# The longest the SQLite writer thread waits, at one statement, for foreground work to end.
FOREGROUND_MAX_WAIT_SECONDS = 0.02

P = ParamSpec("P")
T = TypeVar("T")
UnitOfWork = Callable[Concatenate[Session, P], T]


def create_engine(url: str) -> AsyncEngine:
    """`hide_parameters`: database errors get logged, and their bound values are message bodies."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        _configure_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(
        url, pool_size=10, max_overflow=10, pool_pre_ping=True, hide_parameters=True
    )


def _create_sqlite_sync(url: str) -> Engine:
    """The same file through the standard library's driver, for the writer and reader threads."""
    sync_url = make_url(url).set(drivername="sqlite+pysqlite")
    engine = create_sync_engine(
        sync_url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True
    )
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver, so that BEGIN IMMEDIATE below is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the writer; NORMAL sync is durable against process crashes
        # (the WAL is fsynced at checkpoints); foreign keys are off by default in SQLite.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A deferred transaction that later writes can fail with SQLITE_BUSY without waiting;
        # taking the write lock up front makes concurrent writers queue instead. Readers keep
        # a deferred BEGIN: in WAL mode they never wait for the writer.
        if conn.get_execution_options().get(_WRITER):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class Foreground:
    """Latency-critical work on the event loop's thread (a ring's screen-pop) that the SQLite
    writer thread makes way for.

    Both threads share the GIL, and the loop gives it up at every socket call and SQLite step:
    each time, a writer busy in Python takes it for up to the switch interval. While anything
    holds the foreground, the writer waits before its next statement instead (at most
    `FOREGROUND_MAX_WAIT_SECONDS` each time, so nothing it writes can be held up for long), and
    the loop runs alone. Nothing uses it but the call path; unheld, a statement costs one check.
    """

    def __init__(self) -> None:
        self._holders = 0  # touched on the loop's thread only
        self._clear = threading.Event()
        self._clear.set()

    def hold(self) -> Callable[[], None]:
        """Hold the foreground (on the loop's thread); the function returned lets go, once."""
        self._holders += 1
        self._clear.clear()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._holders -= 1
                if self._holders == 0:
                    self._clear.set()

        return release

    @property
    def held(self) -> bool:
        return self._holders > 0

    def make_way(self, *_event_args: Any) -> None:
        """The writer thread, before each statement: wait while the foreground is held."""
        if not self._clear.is_set():
            self._clear.wait(FOREGROUND_MAX_WAIT_SECONDS)


def confine_to_one_cpu() -> int | None:
    """Bind the calling thread (the event loop's) to the lowest CPU the process may use, and
    with it every thread it starts from then on (the database's, aiosqlite's): the CPU, or
    None, and nothing bound, where the system cannot bind threads. A process kept to one CPU of
    several (`taskset -c 3`) is confined already: that CPU. On a machine of one core, None:
    everything else runs on that core too, and would leave a yielding writer little time.

    A CPython process runs Python on one core at a time (the GIL); spread over two, the SQLite
    writer and the event loop hand the GIL back and forth between cores, each a cross-core
    wake-up, and the writer's half of that core is taken from everything else on the machine.
    On one core, with the writer behind the loop (`Database(writer_yields=True)`), the loop
    runs whenever it has work and the writer in its idle time; in bench.screenpop that halved
    the ring-to-pop p99 against the writer and the loop on cores of their own."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    if len(allowed) == 1:
        return cpu if (os.cpu_count() or 1) > 1 else None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as error:
        log.warning("could not bind the event loop to CPU %s: %s", cpu, error)
        return None
    return cpu


def _yield_to_other_threads() -> None:
    """The calling thread (the SQLite writer's) runs only when nothing else on its core has
    work (the idle scheduling policy): a woken event loop takes the core from it at once. At
    nice 19 instead, Linux let the writer finish its time slice first, up to a millisecond or
    so, while a ring's request waited unread (bench.screenpop: p99 3.5-5.4 ms against 2.9-3.6).
    Never fatal: a thread the system will not lower writes at the usual priority; a thread
    pool whose initializer raised would refuse all the database's work."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as error:
        log.warning("could not lower the SQLite writer's priority: %s", error)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


class Database:
    """The engines plus the one rule SQLite needs: in one process, one writer at a time.

    SQLite allows a single writer; letting every coroutine race for the file lock only adds
    busy-waiting. PostgreSQL needs no such lock; its row locks do the work.

    Units of work written as plain functions of a `Session` (`run`) execute, on SQLite, whole
    in one writer thread through the standard driver: one hand-off per transaction instead of
    one per statement, which is most of what an async driver costs. On PostgreSQL they run
    on the async session (asyncpg) as they are.
    """

    def __init__(self, url: str, *, writer_yields: bool = False) -> None:
        """`writer_yields`: the SQLite writer thread runs only when nothing else on its core
        has work, behind the event loop (`confine_to_one_cpu`); else as every other thread."""
        self.url = url
        self.engine = create_engine(url)
        self.sessions = session_factory(self.engine)
        self._writer_sessions = session_factory(self.engine.execution_options(**{_WRITER: True}))
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._sqlite_writer: sessionmaker[Session] | None = None
        self._sqlite_reader: sessionmaker[Session] | None = None
        self._writer_thread: ThreadPoolExecutor | None = None
        self._reader_threads: ThreadPoolExecutor | None = None
        self.foreground = Foreground()
        self._sqlite_engine: Engine | None = None
        self._here: Any = None  # SQLite: the loop thread's own connection (`rows_here`)
        self._here_statements: dict[Select[Any], tuple[str, Sequence[str]]] = {}
        if self.is_sqlite:
            sync_engine = _create_sqlite_sync(url)
            self._sqlite_engine = sync_engine
            writer_engine = sync_engine.execution_options(**{_WRITER: True})
            event.listen(writer_engine, "before_cursor_execute", self.foreground.make_way)
            self._sqlite_writer = sessionmaker(writer_engine, expire_on_commit=False)
            self._sqlite_reader = sessionmaker(sync_engine, expire_on_commit=False)
            self._writer_thread = ThreadPoolExecutor(
                1,
                thread_name_prefix="sqlite-writer",
                initializer=_yield_to_other_threads if writer_yields else None,
            )
            self._reader_threads = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: committed on success, rolled back on any exception."""
        if self._write_lock is None:
            async with self.sessions() as session, session.begin():
                yield session
            return
        async with self._write_lock, self._writer_sessions() as session, session.begin():
            yield session

    async def run(self, work: UnitOfWork[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`work(session, …)` in one write transaction: committed, or rolled back on error."""
        if self._sqlite_writer is None:
            async with self.transaction() as session:
                return await session.run_sync(work, *args, **kwargs)
        assert self._write_lock is not None
        writer = self._sqlite_writer

        def in_thread() -> T:
            with writer() as session, session.begin():
                return work(session, *args, **kwargs)

        async with self._write_lock:
            return await asyncio.get_running_loop().run_in_executor(self._writer_thread, in_thread)

    async def read(self, work: UnitOfWork[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`work(session, …)` on a read-only session; on SQLite whole in a reader thread, one
        hand-off rather than one per statement (WAL: it never waits for the writer)."""
        if self._sqlite_reader is None:
            async with self.sessions() as session:
                return await session.run_sync(work, *args, **kwargs)
        reader = self._sqlite_reader

        def in_thread() -> T:
            with reader() as session:
                return work(session, *args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._reader_threads, in_thread)

    async def read_here(self, work: UnitOfWork[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`read`, but on SQLite in the calling thread, with no hand-off at all: for a few
        indexed lookups on the latency-critical path (a ring's card), where waking a reader
        thread and waking the event loop again cost more than the lookups, and each wake-up
        waits for the GIL and for a core. It holds the event loop while it runs, so keep it
        short; WAL readers never wait for the writer."""
        if self._sqlite_reader is None:
            return await self.read(work, *args, **kwargs)
        with self._sqlite_reader() as session:
            return work(session, *args, **kwargs)

    async def rows_here(
        self, statement: Select[Any], parameters: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The rows of one SELECT as plain tuples, for the latency-critical path (a ring).

        On SQLite in the calling thread, on a connection of its own in autocommit (the
        statement is its own snapshot), compiled once per statement: a few microseconds of
        Python instead of the hundred and more that a session, its transaction and
        SQLAlchemy's execution take, and a GIL hand-off per SQLite step instead of a dozen.
        So: no type conversion either way (ids, counts, text), and no expanding parameters.
        Elsewhere through the async engine, as any read."""
        if self._sqlite_engine is None:
            async with self.engine.connect() as connection:
                return [tuple(row) for row in await connection.execute(statement, parameters)]
        sql, names = self._compiled_here(statement)
        values = [parameters[name] for name in names]
        return list(self._connection_here().execute(sql, values).fetchall())

    @property
    def sqlite_file(self) -> str | None:
        """SQLite: the database file's name (what `timeline.store` keys reserved ids by)."""
        return self._sqlite_engine.url.database if self._sqlite_engine is not None else None

    def _compiled_here(self, statement: Select[Any]) -> tuple[str, Sequence[str]]:
        compiled = self._here_statements.get(statement)
        if compiled is None:
            assert self._sqlite_engine is not None
            done = statement.compile(dialect=self._sqlite_engine.dialect)
            if "__[POSTCOMPILE" in done.string:
                raise ValueError("rows_here takes no expanding or literal parameters")
            compiled = self._here_statements[statement] = (done.string, done.positiontup or ())
        return compiled

    def _connection_here(self) -> Any:
        if self._here is None:
            assert self._sqlite_engine is not None
            self._here = self._sqlite_engine.raw_connection()
        return self._here.driver_connection

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def upgrade(self) -> None:
        await upgrade(self.engine)

    async def dispose(self) -> None:
        if self._here is not None:
            self._here.close()
            self._here = None
        await self.engine.dispose()
        if self._sqlite_writer is not None:
            bind = self._sqlite_writer.kw["bind"]
            bind.dispose()
        for threads in (self._writer_thread, self._reader_threads):
            if threads is not None:
                threads.shutdown(wait=True)


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _run_upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    command.upgrade(_alembic_config(connection), "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration; safe to call from several processes at once.

    On SQLite the migration holds the write lock from its start (a writer's BEGIN IMMEDIATE),
    so a second process starting at the same moment waits and then finds the schema at head.
    """
    async with engine.execution_options(**{_WRITER: True}).begin() as connection:
        await connection.run_sync(_run_upgrade)


def make_revision(engine_url: str, message: str) -> None:
    """Developer helper: autogenerate a migration against a database at `engine_url`."""
    sync_url = engine_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    with create_sync_engine(sync_url).begin() as connection:
        command.revision(_alembic_config(connection), message=message, autogenerate=True)
