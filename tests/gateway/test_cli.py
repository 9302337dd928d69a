"""The `switchboard` command as the contract fixes it, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest


def switchboard(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={**os.environ, "SWITCHBOARD_LOG_LEVEL": "WARNING", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_agent_add_prints_the_agent_with_a_one_time_token(tmp_path: Path) -> None:
    result = switchboard(
        "agent", "add", "--name", "Anna Agent", "--email", "Anna@Example.com",
        "--password", "s3cret-pass", "--role", "supervisor", "--skills", "billing, german",
        "--extension", "201", "--capacity", "sms=3,voice=1,email=5",
        cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    agent = json.loads(result.stdout)
    assert agent["name"] == "Anna Agent"
    assert agent["email"] == "anna@example.com"
    assert agent["role"] == "supervisor"
    assert agent["skills"] == ["billing", "german"]
    assert agent["extension"] == "201"
    assert agent["capacity"] == {"total": None, "channels": {"sms": 3, "voice": 1, "email": 5}}
    assert agent["token"].startswith("sb_")
    assert (tmp_path / "switchboard.db").exists(), "the embedded default database is created"
    assert agent["token"].encode() not in (tmp_path / "switchboard.db").read_bytes()


def test_agent_add_refuses_a_second_agent_with_the_same_email(tmp_path: Path) -> None:
    args = ("agent", "add", "--name", "A", "--email", "a@example.com", "--password", "long enough")
    assert switchboard(*args, cwd=tmp_path).returncode == 0

    again = switchboard(*args, cwd=tmp_path)

    assert again.returncode == 1
    assert "a@example.com" in again.stderr


@pytest.mark.parametrize("capacity", ["lots", "sms=", "sms=three"])
def test_agent_add_refuses_a_malformed_capacity(tmp_path: Path, capacity: str) -> None:
    result = switchboard(
        "agent", "add", "--name", "A", "--email", "a@example.com", "--password", "long enough",
        "--capacity", capacity, cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 2
    assert "capacity" in result.stderr


def test_migrate_brings_an_empty_database_to_head(tmp_path: Path) -> None:
    result = switchboard("migrate", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "at head" in result.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _serving(
    tmp_path: Path, port: int, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`switchboard serve` on `port`, once it says it is listening."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port),
        cwd=tmp_path,
        env={**os.environ, "SWITCHBOARD_LOG_LEVEL": "WARNING", **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    banner = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    assert f"http://127.0.0.1:{port}/" in banner.decode()
    return process


async def test_serve_answers_healthz_on_the_given_port(tmp_path: Path) -> None:
    port = _free_port()
    process = await _serving(tmp_path, port)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok"}
            async with http.get(f"http://127.0.0.1:{port}/") as response:
                assert "Switchboard" in await response.text()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=15)


async def _threads_after_a_call(
    tmp_path: Path, env: dict[str, str]
) -> tuple[int, dict[int, set[int]], dict[int, int]]:
    """`serve` started from the calling thread, after one call signal (its writer thread has
    written): the server's pid, and its threads' CPUs and scheduling policies."""
    port = _free_port()
    process = await _serving(tmp_path, port, {**env, "SWITCHBOARD_CTI_TOKEN": "cti-secret"})
    try:
        async with aiohttp.ClientSession() as http:
            ring = {"event": "newCall", "direction": "in", "from": "+4930555", "callId": "c-1"}
            url = f"http://127.0.0.1:{port}/webhooks/cti?token=cti-secret"
            async with http.post(url, data={**ring, "to": "+4930123"}) as response:
                assert response.status == 200
        threads = [int(tid) for tid in os.listdir(f"/proc/{process.pid}/task")]
        cpus = {tid: os.sched_getaffinity(tid) for tid in threads}
        policies = {tid: os.sched_getscheduler(tid) for tid in threads}
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=15)
    return process.pid, cpus, policies


def _idle(policies: dict[int, int]) -> list[int]:
    return [tid for tid, policy in policies.items() if policy == os.SCHED_IDLE]


@pytest.mark.parametrize("setting", ["on", "off"])
async def test_serve_on_sqlite_runs_on_one_cpu_with_its_writer_last_unless_told_not_to(
    tmp_path: Path, setting: str
) -> None:
    allowed = os.sched_getaffinity(0)
    pid, cpus, policies = await _threads_after_a_call(tmp_path, {"SWITCHBOARD_LOOP_CPU": setting})
    idle = _idle(policies)
    if setting == "on" and len(allowed) >= 2:
        assert set(map(frozenset, cpus.values())) == {frozenset({min(allowed)})}
        assert len(idle) == 1 and idle != [pid], "the one writer, not the event loop"
    else:
        assert all(thread_cpus == allowed for thread_cpus in cpus.values())
        assert idle == []


async def test_serve_kept_to_one_cpu_of_several_runs_its_writer_last_on_that_cpu(
    tmp_path: Path,
) -> None:
    allowed = os.sched_getaffinity(0)
    kept_to = {max(allowed)}  # as `taskset -c N` would start it
    os.sched_setaffinity(0, kept_to)  # the child inherits the starting thread's CPUs
    try:
        pid, cpus, policies = await _threads_after_a_call(tmp_path, {})
    finally:
        os.sched_setaffinity(0, allowed)
    idle = _idle(policies)
    assert all(thread_cpus == kept_to for thread_cpus in cpus.values())
    if (os.cpu_count() or 1) > 1:
        assert len(idle) == 1 and idle != [pid], "the one writer, not the event loop"
    else:  # a machine of one core: everything else runs there too
        assert idle == []


def test_agent_adds_racing_on_a_fresh_database_all_succeed(tmp_path: Path) -> None:
    env = {**os.environ, "SWITCHBOARD_LOG_LEVEL": "WARNING"}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "agent",
                "add",
                "--name",
                f"A{i}",
                "--email",
                f"a{i}@example.com",
                "--password",
                "long enough",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    results = [p.communicate(timeout=60) for p in processes]

    assert [p.returncode for p in processes] == [0, 0, 0], [err for _, err in results]
    assert sorted(json.loads(out)["id"] for out, _ in results) == [1, 2, 3]
