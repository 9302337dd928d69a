"""IMAP for e-mail intake with `aioimaplib`: one session reading one folder of one mailbox.

What a mailbox is configured with (`Mailbox`, from SWITCHBOARD_MAILBOXES) and the IMAP steps
intake needs: open (UIDVALIDITY), the UIDs after the last one read, fetch them, and after the
timeline commit flag, move or delete them; in between wait for news with IDLE (RFC 2177) where
the server offers it, else poll. The messages themselves come over a second, read-only
connection (`ImapReader`, in a thread). No database here: gateway/mailboxes.py keeps the
position.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import imaplib
import re
import ssl
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
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
        self._reader: ImapReader | None = None
        self._lost = asyncio.Event()

    async def open(self) -> Selected:
        """Connect, log in and select the folder; open the reading connection beside it."""
        mailbox = self.mailbox
        if mailbox.tls:
            client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                mailbox.host,
                mailbox.server_port,
                timeout=self._timeout,
                ssl_context=_ssl_context(mailbox),
            )
        else:
            client = aioimaplib.IMAP4(mailbox.host, mailbox.server_port, timeout=self._timeout)
        self._client = client
        client.protocol.conn_lost_cb = lambda _error: self._lost.set()
        await self._step("connect", client.wait_hello_from_server())
        await self._command("LOGIN", client.login(mailbox.username, mailbox.password))
        selected = await self.select()
        self._reader = ImapReader(mailbox, self._timeout)
        reading = await self._step("open the reader", asyncio.to_thread(self._reader.open))
        if reading != selected.uidvalidity:
            raise ImapError("the folder's UIDVALIDITY changed while it was being opened")
        return selected

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

    async def _uids_in(self, uids: Collection[int]) -> list[int]:
        """Which of `uids` the folder has now (NOOP first: expunges by others come in)."""
        await self._command("NOOP", self.client.noop())
        found = await self._command("UID SEARCH", self.client.uid_search(f"UID {_uid_set(uids)}"))
        line = found.lines[0] if found.lines else b""
        return [u for u in map(int, bytes(line).split()) if u in uids]

    async def uids_after(self, last_uid: int) -> list[int]:
        """The UIDs above `last_uid`, ascending (`n:*` also matches the last message if none)."""
        found = await self._command("UID SEARCH", self.client.uid_search(f"UID {last_uid + 1}:*"))
        line = found.lines[0] if found.lines else b""
        return sorted(u for u in map(int, bytes(line).split()) if u > last_uid)

    async def fetch(self, uids: Sequence[int]) -> list[Fetched]:
        """The raw messages, in UID order; a message deleted meanwhile is simply absent.

        They come over the reading connection (`ImapReader`). What it did not find, this
        session must not find either: else the reader's view lagged, and taking the message
        as gone would lose it.
        """
        if not uids:
            return []
        if self._reader is None:
            raise ImapError("not connected")
        fetched = await self._step("UID FETCH", asyncio.to_thread(self._reader.fetch, uids))
        missing = set(uids) - {f.uid for f in fetched}
        if missing and await self._uids_in(missing):
            raise ImapError(f"UID FETCH: {len(missing)} messages not found that are there")
        return fetched

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
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
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


class ImapReader:
    """A second connection to the folder, read-only (EXAMINE), that only fetches messages.

    Blocking (the standard library's `imaplib`), for a thread: aioimaplib rescans the
    response so far at every line of a FETCH, so a batch of messages costs it time that grows
    with the square of the batch, in the event loop; `imaplib` reads each message as one
    literal of known size. Used by one thread at a time.
    """

    def __init__(self, mailbox: Mailbox, timeout: float) -> None:
        self.mailbox = mailbox
        self._timeout = timeout
        self._connection: imaplib.IMAP4 | None = None

    def open(self) -> int:
        """Connect, log in and examine the folder; its UIDVALIDITY."""
        mailbox = self.mailbox
        try:
            if mailbox.tls:
                connection: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    mailbox.host,
                    mailbox.server_port,
                    ssl_context=_ssl_context(mailbox),
                    timeout=self._timeout,
                )
            else:
                connection = imaplib.IMAP4(mailbox.host, mailbox.server_port, self._timeout)
            self._connection = connection
            connection.login(mailbox.username, mailbox.password)
            status, _ = connection.select(_quoted(mailbox.folder), readonly=True)
            _, validity = connection.response("UIDVALIDITY")
        except (imaplib.IMAP4.error, OSError) as error:
            raise ImapError(f"reader: {type(error).__name__}: {error}") from error
        if status != "OK" or not validity or validity[0] is None:
            raise ImapError(f"reader: {mailbox.folder} could not be examined")
        return int(validity[0])

    def fetch(self, uids: Sequence[int]) -> list[Fetched]:
        """The raw messages of `uids` there are, in UID order.

        Mail that arrived after this connection last looked is not in its view: what the
        FETCH did not find is asked for again after a NOOP has brought the view up to now.
        Only then, not before every FETCH: in a backlog the view has it all already.
        """
        fetched = self._fetch(uids)
        missing = set(uids) - {f.uid for f in fetched}
        if missing:
            self._command("NOOP", lambda connection: connection.noop())
            fetched += self._fetch(sorted(missing))
        return sorted(fetched, key=lambda f: f.uid)

    def _fetch(self, uids: Sequence[int]) -> list[Fetched]:
        status, data = self._command(
            "UID FETCH",
            lambda connection: connection.uid("FETCH", _uid_set(uids), "(UID BODY.PEEK[])"),
        )
        if status != "OK":
            raise ImapError(f"reader: UID FETCH failed: {status}")
        return _fetched(data)

    def _command(self, what: str, command: Callable[[imaplib.IMAP4], Any]) -> Any:
        if self._connection is None:
            raise ImapError("reader: not connected")
        try:
            return command(self._connection)
        except (imaplib.IMAP4.error, OSError) as error:
            raise ImapError(f"reader: {what}: {type(error).__name__}: {error}") from error

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing to save
                connection.shutdown()


def _ssl_context(mailbox: Mailbox) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=mailbox.ca_file)
    if not mailbox.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _uid_set(uids: Iterable[int]) -> str:
    return ",".join(map(str, sorted(uids)))


def _quoted(folder: str) -> str:
    """A folder name as an IMAP quoted string (imaplib sends arguments as they are)."""
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ok(response: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if response.result != "OK":
        detail = b" ".join(bytes(line) for line in response.lines[-1:]).decode(errors="replace")
        raise ImapError(f"{what} failed: {response.result} {detail}")
    return response


def _announces_mail(pushed: object) -> bool:
    lines = pushed if isinstance(pushed, list) else [pushed]
    return any(isinstance(line, bytes) and line.endswith(b"EXISTS") for line in lines)


def _fetched(data: Sequence[Any]) -> list[Fetched]:
    """Pair each message (the literal) with its UID, before it or after (`imaplib`'s shape:
    a tuple (text before the literal, literal), then the text after it)."""
    found: list[Fetched] = []
    waiting: bytes | None = None  # a literal whose UID comes after it
    for item in data:
        if isinstance(item, tuple):
            match = _FETCH_UID.search(item[0])
            if match:
                found.append(Fetched(int(match.group(1)), bytes(item[1])))
            else:
                waiting = bytes(item[1])
        elif waiting is not None and isinstance(item, bytes):
            if match := _FETCH_UID.search(item):
                found.append(Fetched(int(match.group(1)), waiting))
            waiting = None
    return found
