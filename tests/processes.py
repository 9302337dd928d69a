"""Real `switchboard serve` processes for the tests that kill one mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class GatewayProcess:
    """One `switchboard serve` process, its output appended to a log file."""

    def __init__(
        self, env: dict[str, str], log: Path, *, port: int | None = None, cwd: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(self.port)],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.url}/healthz") as response:
                    if response.status == 200:
                        return
            assert self.alive, f"the gateway on {self.port} exited"
            await asyncio.sleep(0.1)
        raise AssertionError(f"the gateway on {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed, as a crash."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None
