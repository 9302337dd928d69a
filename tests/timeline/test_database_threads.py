"""On SQLite `serve` runs on one CPU (`confine_to_one_cpu`), the event loop first: the
database's writer thread yields to it (`Database(writer_yields=True)`), so that a ring's
request is never waiting behind a write, for a core or for the GIL."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from timeline.db import Database, confine_to_one_cpu


def _policy_of_this_thread(_session: Session) -> int:
    return os.sched_getscheduler(0)  # 0: the calling thread


def _in_a_thread_of_its_own(work: Callable[[dict[str, object]], None]) -> dict[str, object]:
    """Run `work(seen)` in a new thread, so that the test's own thread stays as it was."""
    seen: dict[str, object] = {}
    thread = threading.Thread(target=work, args=(seen,))
    thread.start()
    thread.join()
    return seen


async def test_a_yielding_writer_runs_only_when_its_core_is_idle_and_the_readers_as_usual(
    tmp_path: Path,
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'threads.db'}", writer_yields=True)
    try:
        await database.upgrade()
        assert await database.run(_policy_of_this_thread) == os.SCHED_IDLE
        assert await database.read(_policy_of_this_thread) == os.SCHED_OTHER
    finally:
        await database.dispose()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER, "the calling thread is left as it was"


async def test_by_default_the_writer_runs_as_every_other_thread(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'threads.db'}")
    try:
        await database.upgrade()
        assert await database.run(_policy_of_this_thread) == os.SCHED_OTHER
    finally:
        await database.dispose()


def test_confining_binds_the_calling_thread_and_the_threads_it_starts_to_one_cpu() -> None:
    allowed = os.sched_getaffinity(0)

    def loop_thread(seen: dict[str, object]) -> None:
        seen["cpu"] = confine_to_one_cpu()
        seen["bound"] = os.sched_getaffinity(0)
        seen.update(_in_a_thread_of_its_own(lambda s: s.update(started=os.sched_getaffinity(0))))

    seen = _in_a_thread_of_its_own(loop_thread)

    if len(allowed) < 2:
        cpu = min(allowed) if (os.cpu_count() or 1) > 1 else None
        assert seen == {"cpu": cpu, "bound": allowed, "started": allowed}
        return
    assert seen["cpu"] == min(allowed)
    assert seen["bound"] == seen["started"] == {min(allowed)}
    assert os.sched_getaffinity(0) == allowed, "threads started before keep every CPU"


def test_a_thread_kept_to_one_cpu_of_several_is_confined_already(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allowed = os.sched_getaffinity(0)
    kept_to = {max(allowed)}

    def kept_thread(seen: dict[str, object]) -> None:
        os.sched_setaffinity(0, kept_to)
        monkeypatch.setattr(os, "cpu_count", lambda: 8)
        seen["on several"] = confine_to_one_cpu()
        monkeypatch.setattr(os, "cpu_count", lambda: 1)
        seen["on one core"] = confine_to_one_cpu()
        seen["bound"] = os.sched_getaffinity(0)

    seen = _in_a_thread_of_its_own(kept_thread)

    assert seen == {"on several": max(allowed), "on one core": None, "bound": kept_to}


def test_a_cpu_the_system_will_not_bind_leaves_the_thread_where_it_was(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(_pid: int, _cpus: object) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:  # with one CPU nothing is ever bound, nor tried
        assert confine_to_one_cpu() == (min(allowed) if (os.cpu_count() or 1) > 1 else None)
        return
    assert confine_to_one_cpu() is None
    assert "could not bind the event loop" in caplog.text


async def test_a_writer_the_system_will_not_lower_still_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(_pid: int, _policy: int, _param: os.sched_param) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'threads.db'}", writer_yields=True)
    try:
        await database.upgrade()
        assert await database.run(_policy_of_this_thread) == os.SCHED_OTHER
    finally:
        await database.dispose()
    assert "could not lower the SQLite writer's priority" in caplog.text
