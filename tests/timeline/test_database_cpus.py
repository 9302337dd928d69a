"""On SQLite `serve` may keep a CPU for the event loop (`keep_a_cpu_for_this_thread`), and the
database's writer and reader threads then run on the others (`Database(thread_cpus=…)`), so
that a ring's request is never waiting behind a write for a core."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from timeline.db import Database, keep_a_cpu_for_this_thread


def _cpus_of_this_thread(_session: Session) -> set[int]:
    return os.sched_getaffinity(0)


async def test_the_writer_and_readers_run_on_the_cpus_given(tmp_path: Path) -> None:
    allowed = os.sched_getaffinity(0)
    given = frozenset({min(allowed)})  # with two CPUs or more, fewer than the process has
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'cpus.db'}", thread_cpus=given)
    try:
        await database.upgrade()
        assert await database.run(_cpus_of_this_thread) == given
        assert await database.read(_cpus_of_this_thread) == given
    finally:
        await database.dispose()
    assert os.sched_getaffinity(0) == allowed, "the calling thread is left as it was"


async def test_without_cpus_given_the_threads_run_where_the_process_may(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'cpus.db'}")
    try:
        await database.upgrade()
        assert await database.run(_cpus_of_this_thread) == os.sched_getaffinity(0)
    finally:
        await database.dispose()


async def test_cpus_the_system_will_not_bind_leave_the_threads_working_where_they_were(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    no_such_cpu = frozenset({max(os.sched_getaffinity(0)) + 4096})
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'cpus.db'}", thread_cpus=no_such_cpu)
    try:
        await database.upgrade()
        assert await database.run(_cpus_of_this_thread) == os.sched_getaffinity(0)
        assert await database.read(_cpus_of_this_thread) == os.sched_getaffinity(0)
    finally:
        await database.dispose()
    assert "could not bind a thread" in caplog.text


def test_keeping_a_cpu_binds_the_calling_thread_to_one_and_returns_the_others() -> None:
    allowed = os.sched_getaffinity(0)
    seen: dict[str, object] = {}

    def loop_thread() -> None:  # not the test's own thread: that one must stay unbound
        seen["returned"] = keep_a_cpu_for_this_thread()
        seen["bound"] = os.sched_getaffinity(0)

    thread = threading.Thread(target=loop_thread)
    thread.start()
    thread.join()

    if len(allowed) < 2:
        assert seen == {"returned": None, "bound": allowed}
        return
    (loop_cpu,) = seen["bound"]  # type: ignore[misc]
    assert loop_cpu in allowed
    assert seen["returned"] == frozenset(allowed - {loop_cpu})
    assert os.sched_getaffinity(0) == allowed, "other threads keep every CPU"
