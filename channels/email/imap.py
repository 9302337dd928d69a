"""IMAP for e-mail intake with `aioimaplib`: one connection reading one folder of one mailbox.

What a mailbox is configured with (`Mailbox`, from SWITCHBOARD_MAILBOXES) and the IMAP steps
intake needs: open (UIDVALIDITY), the UIDs after the last one read, fetch them, and after the
timeline commit flag, move or delete them; in between wait for news with IDLE (RFC 2177) where
the server offers it, else poll. No database here: gateway/mailboxes.py keeps the position.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import ssl
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import aioimaplib

# Fetch this many messages per round trip: large enough to amortise it, small enough that a
# crash repeats little (what was fetched but not committed is simply fetched again).
FETCH_BATCH = 100
IDLE_SECONDS = 25 * 60  # RFC 2177: re-issue IDLE before the server's 30-minute timeout
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_FETCH_UID = re.compile(rb"UID (\d+)")
_LITERAL = re.compile(rb"\{(\d+)\}$")
T = TypeVar("T")


class AfterIntake(enum.StrEnum):
    """What becomes of a message once it is on the timeline."""

    FLAG = "flag"  # keep it, with `flag` set (\Seen by default)
    MOVE = "move"  # move it to `move_to`
    DELETE = "delete"  # delete and expunge it


class ImapError(Exception):
    """The server refused a step or the connection broke; intake reconnects."""


@dataclass(frozen=True)
class Mailbox:
    """One mailbox Switchboard reads; `queue` is where its new tickets wait."""

    name: str
    host: str
    username: str
    password: str
    port: int | None = None  # 993 with TLS, 143 without
    tls: bool = True
    folder: str = "INBOX"
    queue: str = "default"
    address: str | None = None  # our address here: the recipient of what arrives
    after: AfterIntake = AfterIntake.FLAG
    flag: str = "\\Seen"
    move_to: str | None = None
    idle: bool = True
    poll_seconds: float = 60.0
    verify_tls: bool = True
    ca_file: str | None = None  # trust this CA bundle instead of the system's (a private CA)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Mailbox:
        """One entry of SWITCHBOARD_MAILBOXES; ValueError says what is wrong with it."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown mailbox settings: {', '.join(sorted(unknown))}")
        missing = [n for n in ("name", "host", "username", "password") if not data.get(n)]
        if missing:
            raise ValueError(f"mailbox settings need {', '.join(missing)}")
        mailbox = cls(**{**data, "after": AfterIntake(data.get("after", AfterIntake.FLAG))})
        if mailbox.after is AfterIntake.MOVE and not mailbox.move_to:
            raise ValueError(f"mailbox {mailbox.name!r}: after=move needs move_to")
        return mailbox

    @property
    def server_port(self) -> int:
        return self.port or (993 if self.tls else 143)


@dataclass(frozen=True, slots=True)
class Selected:
    """What SELECT says: UIDs are valid under `uidvalidity`; every UID given so far is below
    `uidnext` (0 if the server did not say)."""

    uidvalidity: int
    uidnext: int


@dataclass(frozen=True, slots=True)
class Fetched:
    uid: int
    raw: bytes


class ImapMailbox:
    """One logged-in connection with the mailbox's folder selected.

    Every step fails with `ImapError` as soon as the server drops the connection, or after
    `timeout`: aioimaplib would otherwise let an IDLE (or a MOVE, which it gives no timeout)
    wait forever.
    """

    def __init__(self, mailbox: Mailbox, timeout: float = 60.0) -> None:
        self.mailbox = mailbox
        self._timeout = timeout
        self._client: aioimaplib.IMAP4 | None = None
        self._lost = asyncio.Event()

    async def open(self) -> Selected:
        """Connect, log in and select the folder."""
        mailbox = self.mailbox
        if mailbox.tls:
            context = ssl.create_default_context(cafile=mailbox.ca_file)
            if not mailbox.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                mailbox.host, mailbox.server_port, timeout=self._timeout, ssl_context=context
            )
        else:
            client = aioimaplib.IMAP4(mailbox.host, mailbox.server_port, timeout=self._timeout)
        self._client = client
        client.protocol.conn_lost_cb = lambda _error: self._lost.set()
        await self._step("connect", client.wait_hello_from_server())
        await self._command("LOGIN", client.login(mailbox.username, mailbox.password))
        return await self.select()

    async def select(self) -> Selected:
        """(Re-)select the folder: the session's view is brought up to this moment.

        Mail that arrives later is announced by the IDLE that follows; mail that arrived
        earlier shows in UIDNEXT, even where an EXISTS for it went by unnoticed (aioimaplib
        drops untagged EXISTS that come with a SEARCH response).
        """
        folder = self.mailbox.folder
        response = await self._command(f"SELECT {folder}", self.client.select(folder))
        lines = [bytes(line) for line in response.lines if isinstance(line, bytes | bytearray)]
        validity = next((int(m.group(1)) for x in lines if (m := _UIDVALIDITY.search(x))), None)
        if validity is None:
            raise ImapError(f"{folder}: the server named no UIDVALIDITY")
        uidnext = next((int(m.group(1)) for x in lines if (m := _UIDNEXT.search(x))), 0)
        return Selected(validity, uidnext)

    @property
    def client(self) -> aioimaplib.IMAP4:
        if self._client is None:
            raise ImapError("not connected")
        return self._client

    @property
    def can_idle(self) -> bool:
        return self.mailbox.idle and self.client.has_capability("IDLE")

    async def uids_after(self, last_uid: int) -> list[int]:
        """The UIDs above `last_uid`, ascending (`n:*` also matches the last message if none)."""
        found = await self._command("UID SEARCH", self.client.uid_search(f"UID {last_uid + 1}:*"))
        line = found.lines[0] if found.lines else b""
        return sorted(u for u in map(int, bytes(line).split()) if u > last_uid)

    async def fetch(self, uids: Sequence[int]) -> list[Fetched]:
        """The raw messages, in UID order; a message deleted meanwhile is simply absent."""
        if not uids:
            return []
        uid_set = ",".join(map(str, uids))
        response = await self._command(
            "UID FETCH", self.client.uid("fetch", uid_set, "(UID BODY.PEEK[])")
        )
        return sorted(_fetched(response.lines), key=lambda f: f.uid)

    async def finish(self, uids: Sequence[int]) -> None:
        """What the mailbox is configured to do with messages now on the timeline."""
        if not uids:
            return
        uid_set = ",".join(map(str, uids))
        mailbox, client = self.mailbox, self.client
        if mailbox.after is AfterIntake.MOVE:
            assert mailbox.move_to is not None
            if client.has_capability("MOVE"):
                await self._command("UID MOVE", client.uid("move", uid_set, mailbox.move_to))
                return
            await self._command("UID COPY", client.uid("copy", uid_set, mailbox.move_to))
        # .SILENT (RFC 3501 §6.4.6): no untagged FETCH with the new flags for every message.
        if mailbox.after is AfterIntake.FLAG:
            flags = f"+FLAGS.SILENT ({mailbox.flag})"
            await self._command("UID STORE", client.uid("store", uid_set, flags))
            return
        deleted = "+FLAGS.SILENT (\\Deleted)"
        await self._command("UID STORE", client.uid("store", uid_set, deleted))
        if client.has_capability("UIDPLUS"):
            await self._command("UID EXPUNGE", client.uid("expunge", uid_set))
        else:
            await self._command("EXPUNGE", client.expunge())

    async def wait_for_mail(self) -> None:
        """Until the server announces news (IDLE), or for the poll interval."""
        if not self.can_idle:
            await self._step("poll", asyncio.sleep(self.mailbox.poll_seconds), bounded=False)
            return
        client = self.client
        idle = await self._step("IDLE", client.idle_start(timeout=IDLE_SECONDS))
        try:
            while True:
                waiting = client.wait_server_push(IDLE_SECONDS + 60)
                pushed = await self._step("IDLE", waiting, bounded=False)
                if pushed == aioimaplib.STOP_WAIT_SERVER_PUSH or _announces_mail(pushed):
                    break
        finally:
            client.idle_done()  # also when cancelled: never leave the server idling
        await self._command("IDLE", idle)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):  # closing a broken connection: nothing to save
            await asyncio.wait_for(client.logout(), 2)
        with contextlib.suppress(Exception):
            client.protocol.transport.close()

    async def _command(
        self, what: str, command: Awaitable[aioimaplib.Response]
    ) -> aioimaplib.Response:
        return _ok(await self._step(what, command), what)

    async def _step(self, what: str, step: Awaitable[T], *, bounded: bool = True) -> T:
        """`step`, unless the connection is lost first or (`bounded`) it takes too long."""
        task = asyncio.ensure_future(step)
        lost = asyncio.ensure_future(self._lost.wait())
        limit = self._timeout if bounded else None
        try:
            await asyncio.wait({task, lost}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if lost.done() and not lost.cancelled() and not task.done():
            raise ImapError(f"{what}: the server closed the connection")
        if not task.done() or task.cancelled():
            raise ImapError(f"{what}: no answer within {self._timeout:.0f} s")
        return task.result()


def _ok(response: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if response.result != "OK":
        detail = b" ".join(bytes(line) for line in response.lines[-1:]).decode(errors="replace")
        raise ImapError(f"{what} failed: {response.result} {detail}")
    return response


def _announces_mail(pushed: object) -> bool:
    lines = pushed if isinstance(pushed, list) else [pushed]
    return any(isinstance(line, bytes) and line.endswith(b"EXISTS") for line in lines)


def _fetched(lines: Sequence[Any]) -> list[Fetched]:
    """Pair each FETCH's literal (the message) with its UID, wherever the server put the UID."""
    found: list[Fetched] = []
    uid: int | None = None
    literal: bytes | None = None
    for line in lines:
        if isinstance(line, bytearray):
            literal = bytes(line)
            continue
        if not isinstance(line, bytes):
            continue
        if b" FETCH (" in line or literal is not None:
            match = _FETCH_UID.search(line)
            if match:
                uid = int(match.group(1))
        if literal is not None and uid is not None and not _LITERAL.search(line):
            found.append(Fetched(uid, literal))
            uid, literal = None, None
    return found
