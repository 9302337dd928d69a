"""Agent capacity (total and per channel) and the pure agent choice built on it.

Rules: `total` caps all open tickets; each channel limit caps that channel on its own; with
per-channel limits and no explicit total, the total is their sum; a channel without a limit of
its own is capped by the total only. `choose_agent` picks, among agents with room on the channel,
the preferred agent if given, else the fewest open tickets, ties broken by the lowest id.
"""

from __future__ import annotations

import pytest

from routing.capacity import DEFAULT_CAPACITY, Capacity
from routing.choice import Candidate, choose_agent
from routing.queues import implicit_queue

TOTAL_3 = Capacity(total=3)
SMS_3_VOICE_1 = Capacity(channels={"sms": 3, "voice": 1})  # total = 3 + 1 = 4
TOTAL_2_SMS_3 = Capacity(total=2, channels={"sms": 3})  # the total is the tighter cap
TOTAL_5_VOICE_1 = Capacity(total=5, channels={"voice": 1})


# --------------------------------------------------------------------------------------------
# Capacity.is_full / allows
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "load", "full"),
    [
        pytest.param(TOTAL_3, {}, False, id="total-empty"),
        pytest.param(TOTAL_3, {"sms": 2}, False, id="total-one-below"),
        pytest.param(TOTAL_3, {"sms": 3}, True, id="total-reached-one-channel"),
        pytest.param(TOTAL_3, {"sms": 1, "email": 1, "voice": 1}, True, id="total-reached-mixed"),
        pytest.param(TOTAL_3, {"sms": 4}, True, id="total-exceeded"),
        pytest.param(SMS_3_VOICE_1, {"sms": 3}, False, id="channels-sum-4-not-reached-by-3"),
        pytest.param(SMS_3_VOICE_1, {"sms": 3, "voice": 1}, True, id="channels-sum-4-reached"),
        pytest.param(
            SMS_3_VOICE_1, {"sms": 2, "email": 2}, True, id="channels-sum-counts-every-channel"
        ),
        pytest.param(TOTAL_2_SMS_3, {"sms": 2}, True, id="explicit-total-beats-channel-sum"),
        pytest.param(TOTAL_5_VOICE_1, {"voice": 1}, False, id="channel-limit-is-not-total"),
    ],
)
def test_is_full_when_the_total_is_reached(
    capacity: Capacity, load: dict[str, int], full: bool
) -> None:
    assert capacity.is_full(load) is full


@pytest.mark.parametrize(
    ("capacity", "load", "channel", "allowed"),
    [
        # Total only: any channel while below the total.
        pytest.param(TOTAL_3, {}, "sms", True, id="total-only-empty"),
        pytest.param(TOTAL_3, {"sms": 2}, "voice", True, id="total-only-last-slot"),
        pytest.param(TOTAL_3, {"sms": 2, "voice": 1}, "email", False, id="total-only-full"),
        # Per channel only: each channel its own limit, total = their sum.
        pytest.param(SMS_3_VOICE_1, {}, "voice", True, id="channels-voice-free"),
        pytest.param(SMS_3_VOICE_1, {"voice": 1}, "voice", False, id="channels-voice-at-limit"),
        pytest.param(SMS_3_VOICE_1, {"voice": 1}, "sms", True, id="channels-sms-beside-voice"),
        pytest.param(SMS_3_VOICE_1, {"sms": 2}, "sms", True, id="channels-sms-last-slot"),
        pytest.param(SMS_3_VOICE_1, {"sms": 3}, "sms", False, id="channels-sms-at-limit"),
        pytest.param(
            SMS_3_VOICE_1, {"sms": 3}, "voice", True, id="channels-voice-free-beside-full-sms"
        ),
        pytest.param(
            SMS_3_VOICE_1, {"sms": 1}, "email", True, id="channels-unlisted-capped-by-total-only"
        ),
        pytest.param(
            SMS_3_VOICE_1, {"sms": 3, "email": 1}, "voice", False, id="channels-sum-reached"
        ),
        # Both: whichever cap is tighter.
        pytest.param(TOTAL_2_SMS_3, {"sms": 1}, "sms", True, id="both-below-both"),
        pytest.param(TOTAL_2_SMS_3, {"sms": 2}, "sms", False, id="both-total-tighter"),
        pytest.param(TOTAL_5_VOICE_1, {"voice": 1}, "voice", False, id="both-channel-tighter"),
        pytest.param(TOTAL_5_VOICE_1, {"voice": 1}, "sms", True, id="both-other-channel-free"),
        pytest.param(
            TOTAL_5_VOICE_1, {"voice": 1, "sms": 4}, "email", False, id="both-total-reached"
        ),
    ],
)
def test_allows_one_more_ticket_on_a_channel(
    capacity: Capacity, load: dict[str, int], channel: str, allowed: bool
) -> None:
    assert capacity.allows(load, channel) is allowed


def test_the_default_capacity_is_three_tickets_in_total() -> None:
    assert Capacity(total=3) == DEFAULT_CAPACITY
    assert DEFAULT_CAPACITY.allows({"sms": 2}, "email") is True
    assert DEFAULT_CAPACITY.allows({"sms": 3}, "email") is False


# --------------------------------------------------------------------------------------------
# Capacity.parse (`agent add --capacity`) and JSON round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("3", Capacity(total=3), id="total"),
        pytest.param(" 3 ", Capacity(total=3), id="total-padded"),
        pytest.param("0", Capacity(total=0), id="total-zero"),
        pytest.param("12", Capacity(total=12), id="total-two-digits"),
        pytest.param("sms=3", Capacity(channels={"sms": 3}), id="one-channel"),
        pytest.param("sms=3,voice=1", Capacity(channels={"sms": 3, "voice": 1}), id="two-channels"),
        pytest.param(
            "sms=3,voice=1,email=5",
            Capacity(channels={"sms": 3, "voice": 1, "email": 5}),
            id="contract-example",
        ),
        pytest.param(
            " sms = 3 , voice = 1 ",
            Capacity(channels={"sms": 3, "voice": 1}),
            id="spaces-around-parts",
        ),
    ],
)
def test_parse_capacity(text: str, expected: Capacity) -> None:
    parsed = Capacity.parse(text)
    assert parsed.total == expected.total
    assert dict(parsed.channels) == dict(expected.channels)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="whitespace"),
        pytest.param("three", id="word"),
        pytest.param("-1", id="negative-total"),
        pytest.param("+3", id="signed-total"),
        pytest.param("1.5", id="fractional-total"),
        pytest.param("sms", id="channel-without-number"),
        pytest.param("sms=", id="channel-with-empty-number"),
        pytest.param("=3", id="number-without-channel"),
        pytest.param("sms=x", id="channel-with-word"),
        pytest.param("sms=-1", id="channel-negative"),
        pytest.param("sms=3,", id="trailing-comma"),
        pytest.param("sms=3,,voice=1", id="empty-part"),
        pytest.param("sms=3;voice=1", id="semicolon-separator"),
        pytest.param("3,sms=1", id="total-mixed-with-channels"),
        pytest.param("sms:3", id="colon-instead-of-equals"),
    ],
)
def test_parse_rejects_malformed_capacity(text: str) -> None:
    with pytest.raises(ValueError, match="capacity must be"):
        Capacity.parse(text)


@pytest.mark.parametrize(
    "capacity",
    [TOTAL_3, SMS_3_VOICE_1, TOTAL_2_SMS_3],
    ids=["total", "channels", "both"],
)
def test_json_round_trip(capacity: Capacity) -> None:
    restored = Capacity.from_json(capacity.to_json())
    assert restored.total == capacity.total
    assert dict(restored.channels) == dict(capacity.channels)


def test_to_json_shape() -> None:
    assert SMS_3_VOICE_1.to_json() == {"total": None, "channels": {"sms": 3, "voice": 1}}


def test_channel_names_in_capacity_are_case_insensitive() -> None:
    # `--capacity SMS=3,voice=1`: an agent with 3 SMS tickets must not take a 4th.
    # Actual: the limit is stored under "SMS", never matches channel "sms", so it is allowed.
    assert Capacity.parse("SMS=3,voice=1").allows({"sms": 3}, "sms") is False


# --------------------------------------------------------------------------------------------
# choose_agent
# --------------------------------------------------------------------------------------------


def agent(agent_id: int, capacity: Capacity = TOTAL_3, **load: int) -> Candidate:
    return Candidate(agent_id, capacity, load)


@pytest.mark.parametrize(
    ("candidates", "channel", "preferred", "expected"),
    [
        pytest.param([], "sms", None, None, id="nobody-none"),
        pytest.param([agent(1)], "sms", None, 1, id="single-free-agent"),
        pytest.param(
            [agent(1, sms=2), agent(2, sms=1), agent(3, sms=2)],
            "sms",
            None,
            2,
            id="fewest-open-tickets",
        ),
        pytest.param(
            [agent(1, email=2), agent(2, sms=1)],
            "sms",
            None,
            2,
            id="fewest-counts-all-channels",
        ),
        pytest.param(
            [agent(7, sms=1), agent(3, email=1), agent(5, voice=1)],
            "sms",
            None,
            3,
            id="tie-lowest-id-whatever-order",
        ),
        pytest.param(
            [agent(1, sms=3), agent(2, sms=2)],
            "sms",
            None,
            2,
            id="skips-full-agent-with-lower-id",
        ),
        pytest.param(
            [agent(1, sms=3), agent(2, sms=1, email=2)],
            "sms",
            None,
            None,
            id="all-full-none",
        ),
        pytest.param(
            [agent(1, SMS_3_VOICE_1, voice=1), agent(2, SMS_3_VOICE_1, sms=2)],
            "voice",
            None,
            2,
            id="skips-agent-at-channel-limit-though-fewer-tickets",
        ),
        pytest.param(
            [agent(1, SMS_3_VOICE_1, voice=1), agent(2, SMS_3_VOICE_1, sms=2)],
            "sms",
            None,
            1,
            id="channel-limit-only-blocks-its-channel",
        ),
        pytest.param(
            [agent(1, SMS_3_VOICE_1, voice=1), agent(2, TOTAL_3, sms=3)],
            "voice",
            None,
            None,
            id="channel-limit-and-full-none",
        ),
        # A preferred agent (who handled the reopened ticket before) wins whenever it has room.
        pytest.param(
            [agent(1), agent(2, sms=2)],
            "sms",
            2,
            2,
            id="preferred-with-room-wins-over-less-loaded",
        ),
        pytest.param(
            [agent(1), agent(2, sms=3)],
            "sms",
            2,
            1,
            id="preferred-full-falls-back",
        ),
        pytest.param(
            [agent(1, SMS_3_VOICE_1), agent(2, SMS_3_VOICE_1, voice=1)],
            "voice",
            2,
            1,
            id="preferred-at-channel-limit-falls-back",
        ),
        pytest.param(
            [agent(1, sms=1), agent(2)],
            "sms",
            9,
            2,
            id="preferred-absent-falls-back",
        ),
        pytest.param([], "sms", 1, None, id="preferred-but-nobody-none"),
    ],
)
def test_choose_agent(
    candidates: list[Candidate], channel: str, preferred: int | None, expected: int | None
) -> None:
    queue = implicit_queue("default")  # the foundation's policy: least occupied
    assert choose_agent(queue, channel, candidates, sticky=preferred) == expected


def test_a_candidates_open_tickets_are_the_sum_over_channels() -> None:
    assert agent(1, sms=2, email=1, voice=0).open_tickets == 3


@pytest.mark.parametrize("stored", [None, {}, {"total": None, "channels": {}}])
def test_an_agent_stored_without_a_capacity_gets_the_default(stored: dict | None) -> None:
    assert Capacity.from_json(stored) == Capacity(total=3)
