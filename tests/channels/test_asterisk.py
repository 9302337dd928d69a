"""Asterisk Manager Interface: AMI bytes → messages → call signals, over a real TCP socket.

The fixtures in tests/fixtures/asterisk/ are AMI event streams of whole calls as Asterisk 18
with `timestampevents = yes` writes them (stored with LF line ends; the wire has CRLF). Each
has one line in `SCENARIOS` saying what it means for the call. The listener is tested against
`ScriptedPbx`, a loopback peer that speaks AMI's real framing (banner, `Login`, CRLF blocks,
`Ping`, `CoreShowChannels`) and cuts its writes at random places.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from channels.asterisk import (
    AmiFramer,
    AmiListener,
    AmiProtocolError,
    CallTracker,
    channel_extension,
    format_action,
    hangup_cause,
    parse_blocks,
)
from tests.stubs.asterisk_ami import SECRET, USERNAME, Script, ScriptedPbx
from timeline.events import Address, CallPhase, CallSignal, Direction, HangupCause

FIXTURES = Path(__file__).parent.parent / "fixtures" / "asterisk"

IN, OUT = Direction.INBOUND, Direction.OUTBOUND
RINGING, ANSWERED, ENDED = CallPhase.RINGING, CallPhase.ANSWERED, CallPhase.ENDED

Event = dict[str, str]


def wire(name: str) -> bytes:
    """A fixture as Asterisk sends it: CRLF line ends."""
    text = (FIXTURES / f"{name}.txt").read_text(encoding="utf-8")
    return text.replace("\n", "\r\n").encode()


def events(name: str) -> list[Event]:
    return parse_blocks(wire(name))


def track(
    stream: Sequence[Mapping[str, str]], tracker: CallTracker | None = None
) -> list[CallSignal]:
    tracker = tracker or CallTracker()
    return [signal for event in stream for signal in tracker.handle(event)]


def changed(event: Mapping[str, str], **changes: str | None) -> Event:
    """An event with some fields changed; a value of None removes the field."""
    result = dict(event)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def first_index(stream: Sequence[Mapping[str, str]], event: str, **fields: str) -> int:
    return next(
        i
        for i, e in enumerate(stream)
        if e["Event"] == event and all(e.get(k) == v for k, v in fields.items())
    )


# --------------------------------------------------------------------------------------------
# Framing: bytes → messages
# --------------------------------------------------------------------------------------------

ALL_FIXTURES = sorted(path.stem for path in FIXTURES.glob("*.txt"))


def test_the_fixtures_are_there() -> None:
    assert len(ALL_FIXTURES) >= 6


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_feeding_one_byte_at_a_time_yields_the_same_messages(name: str) -> None:
    data = wire(name)
    framer = AmiFramer()

    messages = [m for i in range(len(data)) for m in framer.feed(data[i : i + 1])]

    assert messages == parse_blocks(data)
    assert len(messages) == data.count(b"\r\n\r\n")


@pytest.mark.parametrize("seed", range(20))
def test_feeding_random_chunks_yields_the_same_messages(seed: int) -> None:
    data = b"".join(wire(name) + b"\r\n\r\n" for name in ALL_FIXTURES)
    chunks = random.Random(seed)
    framer = AmiFramer()
    messages: list[Event] = []
    position = 0
    while position < len(data):
        size = chunks.randint(1, 300)
        messages += framer.feed(data[position : position + size])
        position += size

    assert messages == parse_blocks(data)
    assert sum(len(events(name)) for name in ALL_FIXTURES) == len(messages)


def test_lf_only_line_ends_read_the_same_as_crlf() -> None:
    crlf = wire("inbound_answered")

    assert parse_blocks(crlf.replace(b"\r\n", b"\n")) == parse_blocks(crlf)


def test_a_value_may_contain_colons_and_keys_keep_their_case() -> None:
    data = (
        b"Event: Newexten\r\nAppData: Set(CDR(note)=Kunde: R\xc3\xbcckruf: dringend)\r\n"
        b"Cause-txt: Normal Clearing\r\nAccountCode:\r\nCallerIDName:   Erika  \r\n\r\n"
    )

    (message,) = parse_blocks(data)

    assert message == {
        "Event": "Newexten",
        "AppData": "Set(CDR(note)=Kunde: Rückruf: dringend)",
        "Cause-txt": "Normal Clearing",
        "AccountCode": "",
        "CallerIDName": "Erika",
    }


def test_an_unfinished_message_waits_for_its_empty_line() -> None:
    framer = AmiFramer()

    assert framer.feed(b"Response: Success\r\nPing: Pong\r\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [{"Response": "Success", "Ping": "Pong"}]


def test_stray_empty_lines_and_repeated_keys() -> None:
    data = (
        b"\r\n\r\nEvent: Newchannel\r\nChanVariable: a=1\r\nChanVariable: b=2\r\n\r\n\r\n"
        b"Event: Hangup\r\n\r\n"
    )

    assert parse_blocks(data) == [
        {"Event": "Newchannel", "ChanVariable": "a=1"},
        {"Event": "Hangup"},
    ]


def test_a_line_without_end_is_refused_before_it_fills_memory() -> None:
    framer = AmiFramer()
    framer.feed(b"Event: Newchannel\r\nAppData: ")

    with pytest.raises(AmiProtocolError):
        framer.feed(b"x" * 100_000)


def test_an_action_is_crlf_framed() -> None:
    action = format_action({"Action": "Ping", "ActionID": "switchboard-ping-7"})

    assert action == b"Action: Ping\r\nActionID: switchboard-ping-7\r\n\r\n"


def test_an_action_value_cannot_forge_lines() -> None:
    with pytest.raises(ValueError):
        format_action({"Action": "Login", "Username": "admin\r\nAction: Originate"})


# --------------------------------------------------------------------------------------------
# Tracking: AMI events → call signals
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What one fixture means: who called whom, and its signals as
    (phase, agents, answered_by, cause, duration_seconds)."""

    call_id: str
    direction: Direction
    caller: Address
    callee: str
    signals: list[tuple[CallPhase, tuple[str, ...], str | None, HangupCause | None, int | None]]


ERIKA = Address("phone", "015771234567", "Erika Mustermann")
SCENARIOS = {
    # Dial(PJSIP/201&PJSIP/202): both ring, 202 picks up, the caller hangs up after 95 s.
    "inbound_answered": Scenario(
        "1717400000.16",
        IN,
        ERIKA,
        "4930555716",
        [
            (RINGING, (), None, None, None),
            (RINGING, ("201",), None, None, None),
            (RINGING, ("201", "202"), None, None, None),
            (ANSWERED, ("201", "202"), "202", None, None),
            (ENDED, ("201", "202"), "202", HangupCause.NORMAL_CLEARING, 95),
        ],
    ),
    # Both agents ring; the caller gives up after 12 s (Cause 16, DialStatus CANCEL).
    "inbound_cancelled": Scenario(
        "1717401000.24",
        IN,
        Address("phone", "0301234567"),
        "4930555716",
        [
            (RINGING, (), None, None, None),
            (RINGING, ("201",), None, None, None),
            (RINGING, ("201", "202"), None, None, None),
            (ENDED, ("201", "202"), None, HangupCause.CANCEL, None),
        ],
    ),
    # 201's phone answers 486 Busy Here (Cause 17); a from-pstn context is inbound too.
    "inbound_busy": Scenario(
        "1717402000.31",
        IN,
        Address("phone", "+4940555123", "Hansen Logistik"),
        "4930555716",
        [
            (RINGING, (), None, None, None),
            (RINGING, ("201",), None, None, None),
            (ENDED, ("201",), None, HangupCause.BUSY, None),
        ],
    ),
    # Dial's 20 s run out (DialStatus NOANSWER), then the dialplan hangs up with Cause 16.
    "inbound_no_answer": Scenario(
        "1717402500.35",
        IN,
        Address("phone", "015201112223"),
        "4930555716",
        [
            (RINGING, (), None, None, None),
            (RINGING, ("202",), None, None, None),
            (ENDED, ("202",), None, HangupCause.NO_ANSWER, None),
        ],
    ),
    # A withheld number waits in queue `support`; 203 answers (DialEnd first), then hangs up.
    "anonymous_queue": Scenario(
        "1717403000.40",
        IN,
        Address("phone", "anonymous"),
        "4930555717",
        [
            (RINGING, (), None, None, None),
            (RINGING, ("203",), None, None, None),
            (ANSWERED, ("203",), "203", None, None),
            (ENDED, ("203",), "203", HangupCause.NORMAL_CLEARING, 42),
        ],
    ),
    # Agent 201 dials a customer through the trunk; the customer answers and hangs up.
    "outbound_answered": Scenario(
        "1717404000.50",
        OUT,
        Address("phone", "201", "Anna Agent"),
        "015771234567",
        [
            (RINGING, ("201",), None, None, None),
            (ANSWERED, ("201",), "201", None, None),
            (ENDED, ("201",), "201", HangupCause.NORMAL_CLEARING, 180),
        ],
    ),
}


def test_every_fixture_has_a_scenario() -> None:
    assert sorted(SCENARIOS) == ALL_FIXTURES


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_recorded_call_becomes_its_signals(name: str) -> None:
    scenario = SCENARIOS[name]

    signals = track(events(name))

    assert [
        (s.phase, s.agents, s.answered_by, s.cause, s.duration_seconds) for s in signals
    ] == scenario.signals
    for signal in signals:
        assert signal.provider == "asterisk"
        assert signal.call_id == scenario.call_id
        assert signal.direction is scenario.direction
        assert signal.caller == scenario.caller
        assert signal.callee == scenario.callee


def test_signal_times_are_the_events_timestamps() -> None:
    stream = events("inbound_answered")
    answer = first_index(stream, "Newstate", Channel="PJSIP/202-00000012", ChannelState="6")

    signals = track(stream)

    answered = next(s for s in signals if s.phase is ANSWERED)
    assert answered.occurred_at == datetime.fromtimestamp(float(stream[answer]["Timestamp"]), UTC)
    assert signals[0].occurred_at == datetime.fromtimestamp(1717400000.1, UTC)


def test_the_queue_is_named_once_the_caller_joins_it() -> None:
    signals = track(events("anonymous_queue"))

    assert [s.queue for s in signals] == [None, "support", "support", "support"]


def test_the_configured_inbound_contexts_decide_the_direction() -> None:
    stream = [
        changed(e, Context="ext-did") if e.get("Context") == "from-trunk" else e
        for e in events("inbound_answered")
    ]

    assert {s.direction for s in track(stream)} == {OUT}
    assert {s.direction for s in track(stream, CallTracker({"ext-did"}))} == {IN}


def test_an_agent_rung_again_does_not_ring_the_call_again() -> None:
    stream = events("inbound_cancelled")
    first_dial = first_index(stream, "DialBegin", DestChannel="PJSIP/201-00000019")
    # app_queue style: 201 is rung a second time on a new channel, which is hung up again.
    again = changed(
        stream[first_dial], DestChannel="PJSIP/201-0000001b", DestUniqueid="1717401000.27"
    )
    gone = changed(stream[-1], Channel="PJSIP/201-0000001b", Uniqueid="1717401000.27", Cause="19")
    stream[first_dial + 1 : first_dial + 1] = [again, gone]

    assert [(s.phase, s.agents) for s in track(stream)] == [
        (RINGING, ()),
        (RINGING, ("201",)),
        (RINGING, ("201", "202")),
        (ENDED, ("201", "202")),
    ]


def test_listening_from_mid_call_opens_the_call_at_its_first_dial() -> None:
    stream = events("inbound_answered")
    # Start with the agents' Newchannel: legs of a call we never saw open nothing.
    joined = stream[first_index(stream, "Newchannel", Channel="PJSIP/201-00000011") :]

    signals = track(joined)

    assert [(s.phase, s.agents, s.answered_by, s.duration_seconds) for s in signals] == [
        (RINGING, ("201",), None, None),
        (RINGING, ("201", "202"), None, None),
        (ANSWERED, ("201", "202"), "202", None),
        (ENDED, ("201", "202"), "202", 95),
    ]
    assert signals[0].caller == ERIKA


def test_a_replayed_call_opens_nothing_again() -> None:
    tracker = CallTracker()
    stream = events("inbound_answered")
    track(stream, tracker)

    assert track(stream, tracker) == []
    assert tracker.open_calls == 0


def test_other_events_cause_nothing() -> None:
    tracker = CallTracker()

    assert tracker.handle({}) == []
    assert tracker.handle({"Event": "FullyBooted", "Status": "Fully Booted"}) == []
    assert tracker.handle({"Event": "Hangup", "Uniqueid": "1.1", "Cause": "16"}) == []


def test_without_linkedid_the_uniqueid_names_the_call() -> None:
    stream = [changed(e, Linkedid=None) for e in events("inbound_busy")]
    caller = [e for e in stream if e.get("Channel", "").startswith("PJSIP/telekom")]

    signals = track([caller[0], caller[-1]])  # its Newchannel and its Hangup

    assert [(s.phase, s.call_id, s.cause) for s in signals] == [
        (RINGING, "1717402000.31", None),
        (ENDED, "1717402000.31", HangupCause.BUSY),
    ]


def test_without_timestamps_the_clock_times_the_call() -> None:
    now = [datetime(2024, 6, 3, 9, 0, tzinfo=UTC)]
    tracker = CallTracker(clock=lambda: now[0])
    stream = [changed(e, Timestamp=None) for e in events("inbound_answered")]

    signals = track(stream[:-1], tracker)
    now[0] += timedelta(seconds=30)
    signals += track(stream[-1:], tracker)

    assert signals[-1].duration_seconds == 30
    assert signals[-1].occurred_at == now[0]


@pytest.mark.parametrize(
    ("number", "name", "expected"),
    [
        ("", "", Address("phone", "anonymous")),
        ("<unknown>", "<unknown>", Address("phone", "anonymous")),
        ("anonymous", "Anonymous", Address("phone", "anonymous")),
        ("Anonymous", "", Address("phone", "anonymous")),
        ("+4930555716", "<unknown>", Address("phone", "+4930555716")),
        ("+4930555716", "+4930555716", Address("phone", "+4930555716")),
        ("030555716", "Praxis Dr. Weber", Address("phone", "030555716", "Praxis Dr. Weber")),
    ],
)
def test_the_caller_address(number: str, name: str, expected: Address) -> None:
    first = changed(events("inbound_busy")[0], CallerIDNum=number, CallerIDName=name)

    (signal,) = CallTracker().handle(first)

    assert signal.caller == expected


def test_a_census_ends_the_calls_whose_channels_all_vanished() -> None:
    tracker = CallTracker(clock=lambda: datetime.fromtimestamp(1717400060.423, UTC))
    stream = events("inbound_answered")
    track(stream[: first_index(stream, "BridgeLeave")], tracker)
    caller = stream[0]["Uniqueid"]

    assert tracker.reconcile({caller, "1717400000.18"}, among=tracker.channels()) == []
    (ended,) = tracker.reconcile({"1717400000.99"}, among=tracker.channels())

    assert (ended.phase, ended.answered_by, ended.cause) == (
        ENDED,
        "202",
        HangupCause.NORMAL_CLEARING,
    )
    assert ended.duration_seconds == 52  # answered at .423 + 8 s, census at .423 + 60 s
    assert tracker.open_calls == 0


@pytest.mark.parametrize(
    ("code", "answered", "dial_status", "expected"),
    [
        (16, True, None, HangupCause.NORMAL_CLEARING),
        (16, False, None, HangupCause.CANCEL),
        (16, False, "CANCEL", HangupCause.CANCEL),
        (16, False, "NOANSWER", HangupCause.NO_ANSWER),
        (16, False, "BUSY", HangupCause.BUSY),
        (0, False, None, HangupCause.CANCEL),
        (None, True, None, HangupCause.NORMAL_CLEARING),
        (17, False, None, HangupCause.BUSY),
        (18, False, None, HangupCause.NO_ANSWER),
        (19, False, None, HangupCause.NO_ANSWER),
        (21, False, None, HangupCause.BUSY),
        (1, False, None, HangupCause.NOT_FOUND),
        (34, False, None, HangupCause.CONGESTION),
        (38, False, None, HangupCause.CONGESTION),
        (41, False, None, HangupCause.CONGESTION),
        (42, False, None, HangupCause.CONGESTION),
        (127, False, None, HangupCause.FAILED),  # Interworking, unspecified
        (127, True, None, HangupCause.NORMAL_CLEARING),
    ],
)
def test_hangup_causes(
    code: int | None, answered: bool, dial_status: str | None, expected: HangupCause
) -> None:
    assert hangup_cause(code, answered=answered, dial_status=dial_status) is expected


@pytest.mark.parametrize(
    ("channel", "extension"),
    [
        ("PJSIP/201-0000002a", "201"),
        ("SIP/202-00000001", "202"),
        ("IAX2/203-1234", "203"),
        ("Local/201@from-queue-00000003;2", "201"),
        ("PJSIP/anna-office-0000000f", "anna-office"),
        ("", None),
    ],
)
def test_the_extension_in_a_channel_name(channel: str, extension: str | None) -> None:
    assert channel_extension(channel) == extension


# --------------------------------------------------------------------------------------------
# The listener against a scripted AMI peer
# --------------------------------------------------------------------------------------------


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - any condition, polled in a bounded test
            await asyncio.sleep(0.005)


@asynccontextmanager
async def listening(
    port: int,
    *,
    secret: str = SECRET,
    on_signal: Callable[[CallSignal], Awaitable[None]] | None = None,
    ping_interval: float = 5.0,
) -> AsyncIterator[tuple[AmiListener, list[CallSignal]]]:
    """A running listener that collects its signals; stopped, and awaited, on exit."""
    signals: list[CallSignal] = []

    async def collect(signal: CallSignal) -> None:
        signals.append(signal)

    listener = AmiListener(
        "127.0.0.1",
        port,
        USERNAME,
        secret,
        on_signal or collect,
        reconnect_initial=0.01,
        reconnect_max=0.05,
        ping_interval=ping_interval,
    )
    running = asyncio.create_task(listener.run())
    try:
        yield listener, signals
    finally:
        listener.stop()
        async with asyncio.timeout(2):
            await running


def ended(signals: Sequence[CallSignal]) -> int:
    return sum(1 for s in signals if s.phase is ENDED)


def logged(caplog: pytest.LogCaptureFixture, level: int, text: str) -> bool:
    return any(
        r.levelno == level and r.name == "channels.asterisk" and text in r.getMessage()
        for r in caplog.records
    )


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="channels.asterisk")


async def test_the_listener_turns_a_live_ami_stream_into_the_calls_signals() -> None:
    stream = events("inbound_answered") + events("outbound_answered")
    async with ScriptedPbx([Script(stream)]) as pbx, listening(pbx.port) as (listener, signals):
        await until(lambda: ended(signals) == 2)

    assert signals == track(stream)
    (login,) = pbx.actions_named("Login")
    assert (login["Username"], login["Secret"], login["Events"]) == (USERNAME, SECRET, "on")
    assert login["ActionID"]
    assert listener.reconnects == 0


async def test_a_refused_login_gives_no_signals_and_is_retried_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = events("inbound_answered")
    async with (
        ScriptedPbx([Script(stream)]) as pbx,
        listening(pbx.port, secret="wrong-secret") as (listener, signals),
    ):
        await until(lambda: pbx.logins() >= 3)

    assert signals == []
    assert listener.login_failures >= 2
    assert listener.reconnects == 0
    assert logged(caplog, logging.ERROR, "login refused (Authentication failed)")
    assert not any("wrong-secret" in r.getMessage() for r in caplog.records)


async def test_a_call_goes_on_across_a_dropped_connection(caplog: pytest.LogCaptureFixture) -> None:
    stream = events("inbound_answered")
    cut = first_index(stream, "BridgeLeave")  # ringing, answered, talking: then the drop
    scripts = [Script(stream[:cut], hang_up=True), Script(stream[cut:])]
    async with ScriptedPbx(scripts) as pbx, listening(pbx.port) as (listener, signals):
        await until(lambda: ended(signals) == 1)

    assert signals == track(stream)
    assert [s.phase for s in signals][-2:] == [ANSWERED, ENDED]
    assert listener.reconnects == 1
    assert pbx.connections == 2
    assert logged(caplog, logging.WARNING, "connection lost")
    assert logged(caplog, logging.WARNING, "reconnected")
    assert len(pbx.actions_named("CoreShowChannels")) == 1  # the census after the gap


async def test_a_call_that_ended_during_the_gap_is_ended_by_the_census() -> None:
    stream = events("inbound_answered")
    cut = first_index(stream, "BridgeLeave")
    scripts = [Script(stream[:cut], hang_up=True), Script(unseen=stream[cut:])]
    async with ScriptedPbx(scripts) as pbx, listening(pbx.port) as (listener, signals):
        await until(lambda: ended(signals) == 1)

    assert signals[:-1] == track(stream[:cut])
    last = signals[-1]
    assert (last.phase, last.answered_by, last.cause) == (
        ENDED,
        "202",
        HangupCause.NORMAL_CLEARING,
    )
    assert last.duration_seconds is not None
    assert listener.reconnects == 1


async def test_a_pbx_that_answers_ping_keeps_its_connection() -> None:
    async with (
        ScriptedPbx([Script()]) as pbx,
        listening(pbx.port, ping_interval=0.02) as (listener, _),
    ):
        await until(lambda: len(pbx.actions_named("Ping")) >= 5)

    assert listener.reconnects == 0
    assert pbx.connections == 1


async def test_a_silent_pbx_is_reconnected(caplog: pytest.LogCaptureFixture) -> None:
    async with (
        ScriptedPbx([Script()], answer_pings=False) as pbx,
        listening(pbx.port, ping_interval=0.02) as (listener, _),
    ):
        await until(lambda: listener.reconnects >= 1)

    assert pbx.actions_named("Ping")
    assert logged(caplog, logging.WARNING, "did not answer Ping")


async def test_a_failing_consumer_does_not_deafen_the_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[CallSignal] = []

    async def consume(signal: CallSignal) -> None:
        received.append(signal)
        if signal.phase is RINGING and not signal.agents:
            raise RuntimeError("database is locked")

    stream = events("inbound_answered")
    async with ScriptedPbx([Script(stream)]) as pbx, listening(pbx.port, on_signal=consume):
        await until(lambda: ended(received) == 1)

    assert received == track(stream)
    assert logged(caplog, logging.ERROR, "failed")


async def test_nobody_listening_is_retried_with_warnings_until_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()

    async with listening(port) as (listener, signals):
        await until(
            lambda: sum(1 for r in caplog.records if "connection failed" in r.getMessage()) >= 3
        )
        assert listener.connected is False

    assert signals == []


async def test_stop_closes_the_connection() -> None:
    async with ScriptedPbx([Script()]) as pbx:
        async with listening(pbx.port) as (listener, _):
            await until(lambda: listener.connected)
            assert pbx.open_connections == 1
        await until(lambda: pbx.open_connections == 0, seconds=2)


async def test_credentials_and_call_contents_stay_out_of_logs_above_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = events("inbound_answered")
    cut = first_index(stream, "BridgeLeave")
    scripts = [Script(stream[:cut], hang_up=True), Script(stream[cut:])]
    async with ScriptedPbx(scripts) as pbx, listening(pbx.port) as (_, signals):
        await until(lambda: ended(signals) == 1)

    visible = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert visible  # connecting, losing and regaining the connection are all told
    for secret in (SECRET, USERNAME, "015771234567", "Erika"):
        assert not any(secret in message for message in visible), secret
    assert any("015771234567" in r.getMessage() for r in caplog.records)  # at DEBUG only
