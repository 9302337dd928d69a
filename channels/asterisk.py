"""Asterisk Manager Interface (AMI): a PBX's own call events, turned into `CallSignal`s.

Why: many contact centres run Asterisk (plain, FreePBX, Issabel) and never script CTI webhooks
into their dialplan, but every Asterisk already announces each channel's life on AMI. So the
gateway logs in to AMI as an ordinary client and listens; the PBX needs one manager user with
read access to the `call` (and, for queue names, `agent`) event classes.

Three layers, each testable alone:

- `AmiFramer` / `parse_blocks`: bytes to messages. AMI is text over TCP: a message is a block of
  `Key: Value` lines ended by an empty line, and TCP may cut it anywhere.
- `CallTracker`: a pure state machine from AMI events (Asterisk 12+: `Newchannel`, `DialBegin`,
  `DialEnd`, `Newstate`, `BridgeEnter`, `Hangup`, `QueueCallerJoin`) to `CallSignal`s, one call
  per `Linkedid` (the Uniqueid of the call's first channel, shared by all its legs).
- `AmiListener`: the asyncio client: banner, login, keepalive `Ping`, reconnect with backoff, and
  after a reconnect a `CoreShowChannels` census that ends the calls which hung up unseen.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from timeline.events import Address, CallPhase, CallSignal, Direction, HangupCause

PROVIDER = "asterisk"
DEFAULT_INBOUND_CONTEXTS = frozenset({"from-trunk", "from-pstn", "from-external"})
# A sane AMI line is well under 1 KiB; a peer that sends endless bytes without a line break is
# broken or hostile, and must not grow our buffer without bound.
MAX_LINE_BYTES = 64 * 1024
BANNER_PREFIX = "Asterisk Call Manager"
CONNECT_TIMEOUT = 10.0
LOGIN_TIMEOUT = 10.0

logger = logging.getLogger(__name__)

Message = dict[str, str]


class AmiProtocolError(Exception):
    """The peer does not speak AMI (no banner, an endless line)."""


class AmiLoginError(Exception):
    """The PBX answered our `Login` action with `Response: Error`."""


# --------------------------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------------------------


class AmiFramer:
    """Incremental AMI message framer: feed bytes as they arrive, get whole messages back.

    Lines end in CRLF per the AMI specification; a bare LF is accepted too. A line is split at its
    first colon, so a value may itself contain `: `. Keys keep their case (`Cause-txt`); when a
    key repeats (`ChanVariable`), the first value is kept. Empty lines between messages and
    lines without a colon (old `Command` output) are ignored.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of `_buffer` known to hold no line break
        self._message: Message = {}

    def feed(self, data: bytes) -> list[Message]:
        """The messages that `data` completes, in order; an unfinished one waits for more."""
        self._buffer += data
        messages: list[Message] = []
        while (end := self._buffer.find(b"\n", self._scanned)) >= 0:
            line = bytes(self._buffer[:end]).removesuffix(b"\r")
            del self._buffer[: end + 1]
            self._scanned = 0
            if message := self._take_line(line):
                messages.append(message)
        self._scanned = len(self._buffer)
        if self._scanned > MAX_LINE_BYTES:
            raise AmiProtocolError(f"an AMI line exceeds {MAX_LINE_BYTES} bytes")
        return messages

    def _take_line(self, line: bytes) -> Message | None:
        """Add one line to the message being read; the finished message on its empty line."""
        if not line:
            message, self._message = self._message, {}
            return message or None
        # UTF-8 per Asterisk; some trunks deliver Latin-1 names, which must not kill the feed.
        key, colon, value = line.decode("utf-8", errors="replace").partition(":")
        if colon:
            self._message.setdefault(key.strip(), value.strip())
        return None


def parse_blocks(data: bytes) -> list[Message]:
    """Every complete AMI message in `data` (a trailing unfinished one is dropped)."""
    return AmiFramer().feed(data)


def format_action(fields: Mapping[str, str]) -> bytes:
    """One AMI action, CRLF-framed; refuses line breaks in values, which would forge lines."""
    lines = []
    for key, value in fields.items():
        if any(c in f"{key}{value}" for c in "\r\n") or ":" in key:
            raise ValueError(f"AMI field {key!r} contains a line break or a colon in its key")
        lines.append(f"{key}: {value}\r\n")
    return ("".join(lines) + "\r\n").encode()


# --------------------------------------------------------------------------------------------
# Call state
# --------------------------------------------------------------------------------------------

# Q.850 cause codes as Asterisk reports them in `Hangup` (`Cause`, `Cause-txt`).
_CAUSES = {
    1: HangupCause.NOT_FOUND,  # Unallocated (unassigned) number
    3: HangupCause.NOT_FOUND,  # No route to destination
    17: HangupCause.BUSY,  # User busy
    18: HangupCause.NO_ANSWER,  # No user responding
    19: HangupCause.NO_ANSWER,  # User alerting, no answer
    21: HangupCause.BUSY,  # Call rejected: the agent pressed "decline"
    28: HangupCause.NOT_FOUND,  # Invalid number format (address incomplete)
    34: HangupCause.CONGESTION,  # No circuit/channel available
    38: HangupCause.CONGESTION,  # Network out of order
    41: HangupCause.CONGESTION,  # Temporary failure
    42: HangupCause.CONGESTION,  # Switching equipment congestion
}
_NORMAL = {0, 16}  # 0 = not defined, which Asterisk reports for ordinary dialplan hang-ups
# `DialEnd` `DialStatus` of the last attempt to reach someone, for calls nobody answered.
_DIAL_STATUSES = {
    "BUSY": HangupCause.BUSY,
    "NOANSWER": HangupCause.NO_ANSWER,
    "CHANUNAVAIL": HangupCause.NO_ANSWER,  # no agent phone reachable: the caller waited in vain
    "CONGESTION": HangupCause.CONGESTION,
    "CANCEL": HangupCause.CANCEL,
}
_ANONYMOUS = frozenset({"", "<unknown>", "anonymous", "unknown", "restricted", "private"})


def hangup_cause(
    code: int | None, *, answered: bool, dial_status: str | None = None
) -> HangupCause:
    """Why a call ended, from the Q.850 `Cause` of its `Hangup` and how its dialling went.

    A normal clearing (16) of a call nobody answered is the caller giving up (`cancel`), unless
    the last `Dial` had already failed (busy, no answer, ...): then that failure is the reason,
    and the hang-up merely followed it (dialplan end, voicemail).
    """
    if code in _CAUSES:
        return _CAUSES[code]
    if answered:
        return HangupCause.NORMAL_CLEARING
    if code is None or code in _NORMAL:
        return _DIAL_STATUSES.get((dial_status or "").upper(), HangupCause.CANCEL)
    return HangupCause.FAILED


def channel_extension(channel: str) -> str | None:
    """The endpoint in an Asterisk channel name: `PJSIP/201-0000002a` → `201`.

    Also `SIP/201-00000001`, `IAX2/201-1234`, `Local/201@from-queue-00000003;2` → `201`.
    """
    _, _, resource = channel.partition("/")
    resource = resource.split(";", 1)[0]  # Local channel half
    if "-" in resource:
        resource = resource.rsplit("-", 1)[0]  # Asterisk's per-channel sequence suffix
    resource = resource.split("@", 1)[0]  # Local channel context
    return resource or None


def _caller(event: Mapping[str, str]) -> Address:
    number = event.get("CallerIDNum", "").strip()
    if number.lower() in _ANONYMOUS:
        return Address("phone", "anonymous")
    name = event.get("CallerIDName", "").strip()
    return Address("phone", number, None if name.lower() in _ANONYMOUS or name == number else name)


def _agent(channel: str, callerid: str | None) -> str | None:
    """The agent on an internal channel: its extension, else the endpoint's caller ID number."""
    extension = channel_extension(channel)
    if extension and extension.isdigit():
        return extension
    number = (callerid or "").strip()
    if number.lower() not in _ANONYMOUS and number.isdigit():
        return number
    return extension


@dataclass
class _Call:
    call_id: str
    direction: Direction
    caller: Address
    callee: str
    origin: str  # Uniqueid of the call's first channel
    origin_agent: str | None  # the agent who placed an outbound call
    channels: set[str]  # Uniqueids of the call's channels still up
    agents: list[str] = field(default_factory=list)
    # A dialled channel's Uniqueid → the agent credited when it answers (None: a trunk answered).
    dialled: dict[str, str | None] = field(default_factory=dict)
    queue: str | None = None
    answered_at: datetime | None = None
    answered_by: str | None = None
    cause_code: int | None = None
    dial_status: str | None = None


class CallTracker:
    """AMI events in, `CallSignal`s out; no I/O, so every rule is tested with plain dicts.

    A call is a `Linkedid` (falling back to the `Uniqueid` of channels that lack one); it rings
    once on the `Newchannel` of its first channel, rings again each time `DialBegin` adds an
    agent, is answered once, and ends on the `Hangup` of its last channel. Times come from the
    events' `Timestamp` (manager.conf `timestampevents = yes`), else from `clock`.
    """

    def __init__(
        self,
        inbound_contexts: Iterable[str] = DEFAULT_INBOUND_CONTEXTS,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._inbound_contexts = frozenset(inbound_contexts)
        self._clock = clock
        self._calls: dict[str, _Call] = {}
        self._call_of_channel: dict[str, str] = {}
        # Ended calls, so that a late event of one never opens it again.
        self._ended: deque[str] = deque(maxlen=1024)
        self._handlers: dict[str, Callable[[Mapping[str, str]], list[CallSignal]]] = {
            "newchannel": self._on_newchannel,
            "dialbegin": self._on_dial_begin,
            "dialend": self._on_dial_end,
            "newstate": self._on_newstate,
            "bridgeenter": self._on_bridge_enter,
            "queuecallerjoin": self._on_queue_caller_join,
            "hangup": self._on_hangup,
        }

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    def channels(self) -> frozenset[str]:
        """The Uniqueids of every channel of every open call."""
        return frozenset(self._call_of_channel)

    def handle(self, event: Mapping[str, str]) -> list[CallSignal]:
        """The signals one AMI event causes (most events cause none)."""
        handler = self._handlers.get(event.get("Event", "").lower())
        return handler(event) if handler else []

    def reconcile(self, alive: Collection[str], *, among: Collection[str]) -> list[CallSignal]:
        """End the calls whose channels in `among` all vanished: `alive` lists every channel
        the PBX still has (`CoreShowChannel` events), so the rest hung up while we were away."""
        gone = set(among) - set(alive)
        signals = []
        for uniqueid in gone:
            call = self._forget_channel(uniqueid)
            if call is not None and not call.channels:
                signals.append(self._end(call, self._clock()))
        return signals

    # Newchannel: the first channel of a Linkedid opens the call; later ones are its legs.
    def _on_newchannel(self, event: Mapping[str, str]) -> list[CallSignal]:
        uniqueid = event.get("Uniqueid", "")
        call_id = event.get("Linkedid") or uniqueid
        if not uniqueid or call_id in self._ended:
            return []
        if call := self._calls.get(call_id):
            self._add_channel(call, uniqueid)
            return []
        if call_id != uniqueid:
            return []  # a later leg of a call that began before we listened
        call = self._open(event, uniqueid)
        return [self._signal(call, CallPhase.RINGING, event)]

    # DialBegin: `Channel` dials `DestChannel`; an internal destination is an agent to ring.
    def _on_dial_begin(self, event: Mapping[str, str]) -> list[CallSignal]:
        call, opened = self._call(event), False
        uniqueid = event.get("Uniqueid", "")
        first = uniqueid and uniqueid == event.get("Linkedid", uniqueid)
        if call is None and first and uniqueid not in self._ended:
            call, opened = self._open(event, uniqueid), True  # we joined mid-call
        if call is None:
            return []
        agent = None
        if event.get("DestContext", "") not in self._inbound_contexts:
            agent = _agent(event.get("DestChannel", ""), event.get("DestCallerIDNum"))
        if dest := event.get("DestUniqueid"):
            self._add_channel(call, dest)
            call.dialled[dest] = agent or call.origin_agent
        grew = False
        if agent is not None and agent not in call.agents:
            call.agents.append(agent)
            grew = True
        return [self._signal(call, CallPhase.RINGING, event)] if grew or opened else []

    # DialEnd: `DialStatus: ANSWER` is the dialled agent picking up; others are remembered.
    def _on_dial_end(self, event: Mapping[str, str]) -> list[CallSignal]:
        call = self._call(event)
        if call is None:
            return []
        status = event.get("DialStatus", "").upper()
        if status == "ANSWER":
            return self._answer(call, event.get("DestUniqueid", ""), event)
        if status:
            call.dial_status = status
        return []

    # Newstate: a dialled channel going `Up` (ChannelState 6) has been answered.
    def _on_newstate(self, event: Mapping[str, str]) -> list[CallSignal]:
        up = event.get("ChannelStateDesc", "").lower() == "up" or event.get("ChannelState") == "6"
        call = self._call(event)
        if call is None or not up:
            return []
        return self._answer(call, event.get("Uniqueid", ""), event)

    # BridgeEnter: a dialled channel joining a bridge talks to the caller.
    def _on_bridge_enter(self, event: Mapping[str, str]) -> list[CallSignal]:
        call = self._call(event)
        return self._answer(call, event.get("Uniqueid", ""), event) if call else []

    # QueueCallerJoin: the caller waits in an app_queue queue; later signals name it.
    def _on_queue_caller_join(self, event: Mapping[str, str]) -> list[CallSignal]:
        call = self._call(event)
        if call is not None and event.get("Queue"):
            call.queue = event["Queue"]
        return []

    # Hangup: one channel is gone; the call ends with its last channel.
    def _on_hangup(self, event: Mapping[str, str]) -> list[CallSignal]:
        uniqueid = event.get("Uniqueid", "")
        call = self._call(event)
        if call is None or uniqueid not in call.channels:
            return []
        code = _int(event.get("Cause"))
        # The caller's own leg says best what happened to the caller; other legs fill in.
        if code and (uniqueid == call.origin or call.cause_code is None):
            call.cause_code = code
        self._forget_channel(uniqueid)
        return [] if call.channels else [self._end(call, self._time(event))]

    def _open(self, event: Mapping[str, str], uniqueid: str) -> _Call:
        inbound = event.get("Context", "") in self._inbound_contexts
        call = _Call(
            call_id=event.get("Linkedid") or uniqueid,
            direction=Direction.INBOUND if inbound else Direction.OUTBOUND,
            caller=_caller(event),
            callee=event.get("Exten", ""),
            origin=uniqueid,
            origin_agent=None
            if inbound
            else _agent(event.get("Channel", ""), event.get("CallerIDNum")),
            channels=set(),
        )
        if call.origin_agent:
            call.agents.append(call.origin_agent)
        self._calls[call.call_id] = call
        self._add_channel(call, uniqueid)
        return call

    def _call(self, event: Mapping[str, str]) -> _Call | None:
        """The open call an event's channel belongs to; our own map wins over `Linkedid`,
        which Asterisk may rewrite when bridges merge."""
        uniqueid = event.get("Uniqueid", "")
        call_id = self._call_of_channel.get(uniqueid) or event.get("Linkedid") or uniqueid
        return self._calls.get(call_id)

    def _add_channel(self, call: _Call, uniqueid: str) -> None:
        call.channels.add(uniqueid)
        self._call_of_channel[uniqueid] = call.call_id

    def _forget_channel(self, uniqueid: str) -> _Call | None:
        call = self._calls.get(self._call_of_channel.pop(uniqueid, ""))
        if call is not None:
            call.channels.discard(uniqueid)
        return call

    def _answer(self, call: _Call, uniqueid: str, event: Mapping[str, str]) -> list[CallSignal]:
        if call.answered_at is not None or uniqueid not in call.dialled:
            return []
        call.answered_at = self._time(event)
        call.answered_by = call.dialled[uniqueid]
        return [self._signal(call, CallPhase.ANSWERED, event)]

    def _end(self, call: _Call, at: datetime) -> CallSignal:
        del self._calls[call.call_id]
        for uniqueid in call.channels:
            self._call_of_channel.pop(uniqueid, None)
        self._ended.append(call.call_id)
        answered = call.answered_at is not None
        duration = round((at - call.answered_at).total_seconds()) if call.answered_at else None
        return self._make(
            call,
            CallPhase.ENDED,
            at,
            cause=hangup_cause(call.cause_code, answered=answered, dial_status=call.dial_status),
            duration_seconds=max(duration, 0) if duration is not None else None,
        )

    def _signal(self, call: _Call, phase: CallPhase, event: Mapping[str, str]) -> CallSignal:
        return self._make(call, phase, self._time(event))

    def _make(
        self,
        call: _Call,
        phase: CallPhase,
        at: datetime,
        *,
        cause: HangupCause | None = None,
        duration_seconds: int | None = None,
    ) -> CallSignal:
        return CallSignal(
            provider=PROVIDER,
            call_id=call.call_id,
            phase=phase,
            direction=call.direction,
            caller=call.caller,
            callee=call.callee,
            occurred_at=at,
            agents=tuple(call.agents),
            answered_by=call.answered_by,
            cause=cause,
            duration_seconds=duration_seconds,
            queue=call.queue,
            # The agents to ring come with DialBegin; nobody is rung before that.
            ring_available=False,
        )

    def _time(self, event: Mapping[str, str]) -> datetime:
        try:
            return datetime.fromtimestamp(float(event["Timestamp"]), UTC)
        except (KeyError, ValueError, OverflowError):
            return self._clock()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# The listener
# --------------------------------------------------------------------------------------------


class _Connection:
    """One AMI TCP connection: framed messages in, actions out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._framer = AmiFramer()
        self._pending: deque[Message] = deque()

    async def banner(self) -> str:
        line = await self.reader.readline()
        text = line.decode("utf-8", errors="replace").strip()
        if not text.startswith(BANNER_PREFIX):
            raise AmiProtocolError("the peer sent no Asterisk Call Manager banner")
        return text

    async def send(self, fields: Mapping[str, str]) -> None:
        self.writer.write(format_action(fields))
        await self.writer.drain()

    async def next_message(self) -> Message:
        """The next message; callers bound the wait with `asyncio.timeout`."""
        while not self._pending:
            # StreamReader.read is cancellation-safe: a timeout loses no bytes.
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the PBX closed the connection")
            self._pending.extend(self._framer.feed(data))
        return self._pending.popleft()

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except (OSError, TimeoutError):
            pass  # the peer is gone already; nothing left to tidy


@dataclass
class _Census:
    """A `CoreShowChannels` in flight: which channels we knew when we asked, which are alive."""

    action_id: str
    known: frozenset[str]
    alive: set[str] = field(default_factory=set)


class AmiListener:
    """Listen to one Asterisk's AMI and hand each `CallSignal` to `on_signal`, until `stop()`.

    A dropped or silent connection (no answer to `Ping`) is reconnected with exponential backoff
    and jitter, each time logged at WARNING and counted in `reconnects`; the tracker's calls are
    kept, so a call that goes on across the gap ends correctly, and a `CoreShowChannels` census
    ends those that hung up during it. A refused login is logged at ERROR and retried the same
    way. Credentials and event contents are never logged above DEBUG.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        on_signal: Callable[[CallSignal], Awaitable[None]],
        *,
        inbound_contexts: Iterable[str] = DEFAULT_INBOUND_CONTEXTS,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        ping_interval: float = 20.0,
    ) -> None:
        self.host = host
        self.port = port
        self._username = username
        self._secret = secret
        self._on_signal = on_signal
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._ping_interval = ping_interval
        self.tracker = CallTracker(inbound_contexts)
        self.reconnects = 0
        self.login_failures = 0
        self.connected = False
        self._sessions = 0
        self._stopping = asyncio.Event()
        self._action_ids = itertools.count(1)
        self._census: _Census | None = None

    def stop(self) -> None:
        """Close the connection and make `run()` return."""
        self._stopping.set()

    async def run(self) -> None:
        """Listen until `stop()`; network trouble never ends it, only a bug would."""
        serving = asyncio.create_task(self._serve())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, stopping):
                task.cancel()
            await asyncio.gather(serving, stopping, return_exceptions=True)
        error = serving.exception() if serving.done() and not serving.cancelled() else None
        if error is not None:
            raise error

    async def _serve(self) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            level, problem = logging.WARNING, "session ended"
            try:
                await self._session()
            except AmiLoginError as error:
                self.login_failures += 1
                level, problem = logging.ERROR, f"login refused ({error})"
            except (OSError, TimeoutError, AmiProtocolError) as error:
                # ConnectionError is an OSError; TimeoutError covers connect, banner and login.
                state = "lost" if self.connected else "failed"
                problem = f"connection {state} ({_describe(error)})"
            self.connected = False
            if time.monotonic() - started >= self._reconnect_max:
                attempt = 0  # a long healthy session: the next outage starts the backoff afresh
            delay = self._backoff(attempt)
            attempt += 1
            logger.log(
                level, "AMI %s:%s %s; retrying in %.2f s", self.host, self.port, problem, delay
            )
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._reconnect_max, self._reconnect_initial * 2 ** min(attempt, 30))
        # Jitter, so that gateways reconnecting to a restarted PBX do not arrive all at once.
        return random.uniform(ceiling / 2, ceiling)

    async def _session(self) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(self.host, self.port)
        connection = _Connection(reader, writer)
        try:
            async with asyncio.timeout(LOGIN_TIMEOUT):
                await connection.banner()
                await self._login(connection)
            self._sessions += 1
            self.connected = True
            if self._sessions > 1:
                self.reconnects += 1
                logger.warning(
                    "AMI reconnected to %s:%s (reconnect %d); events during the gap were lost",
                    self.host,
                    self.port,
                    self.reconnects,
                )
            else:
                logger.info("AMI connected to %s:%s", self.host, self.port)
            await self._start_census(connection)
            await self._listen(connection)
        finally:
            await connection.close()

    async def _login(self, connection: _Connection) -> None:
        action_id = self._action_id("login")
        await connection.send(
            {
                "Action": "Login",
                "ActionID": action_id,
                "Username": self._username,
                "Secret": self._secret,
                "Events": "on",
            }
        )
        while True:
            message = await connection.next_message()
            if "Response" not in message or message.get("ActionID", action_id) != action_id:
                continue
            if message["Response"].lower() == "success":
                return
            raise AmiLoginError(message.get("Message", "no reason given"))

    async def _start_census(self, connection: _Connection) -> None:
        """After a gap, ask which channels still exist (`CoreShowChannels`)."""
        self._census = None
        known = self.tracker.channels()
        if not known:
            return
        self._census = _Census(self._action_id("census"), known)
        await connection.send({"Action": "CoreShowChannels", "ActionID": self._census.action_id})

    async def _listen(self, connection: _Connection) -> None:
        pinged = False
        while True:
            try:
                async with asyncio.timeout(self._ping_interval):
                    message = await connection.next_message()
            except TimeoutError:
                if pinged:
                    raise ConnectionError("the PBX did not answer Ping") from None
                await connection.send({"Action": "Ping", "ActionID": self._action_id("ping")})
                pinged = True
                continue
            pinged = False
            await self._dispatch(message)

    async def _dispatch(self, message: Message) -> None:
        if self._census and message.get("ActionID") == self._census.action_id:
            await self._census_reply(message)
        elif "Event" in message:
            logger.debug("AMI event %s", message)
            for signal in self.tracker.handle(message):
                await self._deliver(signal)

    # CoreShowChannel: one live channel; CoreShowChannelsComplete: the census is done.
    async def _census_reply(self, message: Message) -> None:
        census = self._census
        assert census is not None
        event = message.get("Event", "")
        if event == "CoreShowChannel":
            census.alive.add(message.get("Uniqueid", ""))
        elif event == "CoreShowChannelsComplete":
            self._census = None
            for signal in self.tracker.reconcile(census.alive, among=census.known):
                await self._deliver(signal)
        elif message.get("Response", "").lower() == "error":
            self._census = None
            logger.warning("AMI CoreShowChannels refused: %s", message.get("Message", ""))

    async def _deliver(self, signal: CallSignal) -> None:
        try:
            await self._on_signal(signal)
        except Exception:
            # One failing signal must not deafen the listener to every later call.
            logger.exception("handling %s of call %s failed", signal.phase, signal.call_id)

    def _action_id(self, purpose: str) -> str:
        return f"switchboard-{purpose}-{next(self._action_ids)}"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
