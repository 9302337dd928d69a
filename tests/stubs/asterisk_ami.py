"""A stand-in for Asterisk's manager interface (AMI) on loopback, as tests need it.

It speaks the real framing: a banner line, `Action: Login` checked against a secret,
`Response: Success`, events as blocks of `Key: Value` lines ended by an empty line, strictly
CRLF, with writes cut at random points as TCP may deliver them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

USERNAME, SECRET = "switchboard", "Tr0ub4dor&3"
Event = dict[str, str]


BANNER = b"Asterisk Call Manager/5.0.3\r\n"


def block(fields: Mapping[str, str]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in fields.items()) + b"\r\n"


@dataclass
class Script:
    """What the PBX does on one connection once the login succeeded."""

    events: Sequence[Mapping[str, str]] = ()
    hang_up: bool = False  # close the socket after the events: a dropped connection
    unseen: Sequence[Mapping[str, str]] = ()  # happened before, while nobody listened


@dataclass
class ScriptedPbx:
    """Asterisk's manager port on loopback: the real framing, strictly CRLF, cut writes.

    It keeps the channels its events created (Newchannel) and ended (Hangup), across
    connections, to answer `CoreShowChannels` as the real PBX would.
    """

    scripts: Sequence[Script]
    secret: str = SECRET
    answer_pings: bool = True
    actions: list[Event] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    live: dict[str, Event] = field(default_factory=dict)
    _random: random.Random = field(default_factory=lambda: random.Random(1717))
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def logins(self) -> int:
        return sum(1 for a in self.actions if a.get("Action") == "Login")

    def actions_named(self, name: str) -> list[Event]:
        return [a for a in self.actions if a.get("Action") == name]

    async def __aenter__(self) -> ScriptedPbx:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        async with asyncio.timeout(2):
            while self.open_connections:  # noqa: ASYNC110 - a counter, polled briefly
                await asyncio.sleep(0.01)
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.open_connections += 1
        script = self.scripts[min(self.connections, len(self.scripts) - 1)]
        self.connections += 1
        for event in script.unseen:
            self._apply(event)
        lock = asyncio.Lock()
        streaming: asyncio.Task[None] | None = None
        try:
            await self._send(writer, lock, BANNER)
            buffer = b""
            while data := await reader.read(1024):
                buffer += data
                while b"\r\n\r\n" in buffer:
                    raw, buffer = buffer.split(b"\r\n\r\n", 1)
                    action = dict(
                        line.split(": ", 1) for line in raw.decode().split("\r\n") if line
                    )
                    self.actions.append(action)
                    reply = await self._answer(action, writer, lock)
                    if reply == "refused":
                        return  # Asterisk closes the session after a failed login
                    if reply == "accepted":
                        streaming = asyncio.create_task(self._stream(script, writer, lock))
        except ConnectionError:
            pass
        finally:
            if streaming is not None:
                streaming.cancel()
                await asyncio.gather(streaming, return_exceptions=True)
            writer.close()
            self._writers.discard(writer)
            self.open_connections -= 1

    async def _answer(self, action: Event, writer: asyncio.StreamWriter, lock: asyncio.Lock) -> str:
        name, action_id = action.get("Action"), action.get("ActionID", "")
        if name == "Login":
            if action.get("Username") != USERNAME or action.get("Secret") != self.secret:
                error = {"Response": "Error", "ActionID": action_id}
                await self._send(writer, lock, block(error | {"Message": "Authentication failed"}))
                return "refused"
            accepted = {"Response": "Success", "ActionID": action_id}
            booted = {"Event": "FullyBooted", "Privilege": "system,all", "Status": "Fully Booted"}
            message = block(accepted | {"Message": "Authentication accepted"}) + block(booted)
            await self._send(writer, lock, message)
            return "accepted"
        if name == "Ping" and self.answer_pings:
            pong = {"Response": "Success", "ActionID": action_id, "Ping": "Pong"}
            await self._send(writer, lock, block(pong | {"Timestamp": "1717400000.000000"}))
        if name == "CoreShowChannels":
            async with lock:  # the census and the event stream never interleave
                writer.write(self._census(action_id))
                await writer.drain()
        return "answered"

    def _census(self, action_id: str) -> bytes:
        start = {"Response": "Success", "ActionID": action_id, "EventList": "start"}
        parts = [block(start | {"Message": "Channels will follow"})]
        for channel in self.live.values():
            parts.append(block({"Event": "CoreShowChannel", "ActionID": action_id} | channel))
        done = {"Event": "CoreShowChannelsComplete", "ActionID": action_id}
        parts.append(block(done | {"EventList": "Complete", "ListItems": str(len(self.live))}))
        return b"".join(parts)

    async def _stream(
        self, script: Script, writer: asyncio.StreamWriter, lock: asyncio.Lock
    ) -> None:
        for event in script.events:
            async with lock:
                self._apply(event)
                await self._send_unlocked(writer, block(event))
        if script.hang_up:
            writer.close()

    def _apply(self, event: Mapping[str, str]) -> None:
        keys = ("Channel", "ChannelState", "ChannelStateDesc", "Uniqueid", "Linkedid")
        if event["Event"] == "Newchannel":
            self.live[event["Uniqueid"]] = {k: event[k] for k in keys if k in event}
        elif event["Event"] == "Hangup":
            self.live.pop(event["Uniqueid"], None)

    async def _send(self, writer: asyncio.StreamWriter, lock: asyncio.Lock, data: bytes) -> None:
        async with lock:
            await self._send_unlocked(writer, data)

    async def _send_unlocked(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """`data` in up to five pieces cut at random places, with a pause between them."""
        cuts = sorted(self._random.sample(range(1, len(data)), min(4, len(data) - 1)))
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            writer.write(data[start:end])
            await writer.drain()
            await asyncio.sleep(0.001)
