"""J1939-21 receiver timing and abort rules (issue 17, item 6), on an injected clock.

J1939-21 5.10.2.4: T1 750 ms between data packets, T2 1250 ms from a CTS to its first packet.
Table 7 abort reasons: 1 already in a connection-managed session, 3 timeout, 5 maximum
retransmit requests, 7 bad sequence number, 8 duplicate sequence number, 250 any other reason.
The reasons are written as numbers so that each test states the wire value it expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.vehicle import j1939_tp as tp

PGN_BRM, PGN_BCP, PGN_BCS = 0x0200, 0x0600, 0x1100
ACCEPTED = frozenset({PGN_BRM, PGN_BCP, PGN_BCS})
# GB/T 27930 sizes on the wire: BRM 49 bytes (7 packets), BCP 13 (2), BCS 9 (2).
GBT_SIZES = {PGN_BRM: 49, PGN_BCP: 13, PGN_BCS: 9}
TICK_S = 0.05  # how often the GB/T session ticks while a session is open
JUST_BEFORE_S = 1e-6


def payload_of(size: int) -> bytes:
    """A payload whose packets all differ."""
    return bytes(range(size))


def rts_for(pgn: int, size: int, window: int = tp.NO_LIMIT) -> tp.Rts:
    return tp.Rts(size, tp.packets_for(size), pgn, window)


@dataclass
class Log:
    """What the receiver did, in order, with the time it did it."""

    sent: list[tuple[float, tp.ConnectionMessage]] = field(default_factory=list)
    completed: list[tuple[int, bytes]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def take(self, now: float, result: tp.TpResult) -> None:
        self.sent += [(now, message) for message in result.send]
        self.problems += result.problems
        if result.completed is not None:
            self.completed.append(result.completed)

    @property
    def messages(self) -> list[tp.ConnectionMessage]:
        return [message for _, message in self.sent]


class Driver:
    """Feeds a receiver at given times and ticks it as the session would in between: every
    ``TICK_S``, at its ``next_deadline_s`` and just before each input."""

    def __init__(self, receiver: tp.TpReceiver) -> None:
        self.receiver = receiver
        self.log = Log()
        self.now_s = 0.0

    def run_until(self, until_s: float) -> None:
        """Tick up to (not at) ``until_s``."""
        while True:
            candidates = [self.now_s + TICK_S, until_s - JUST_BEFORE_S]
            deadline = self.receiver.next_deadline_s
            if deadline is not None and deadline > self.now_s:
                candidates.append(deadline)
            at = min(candidates)
            if at >= until_s or at <= self.now_s:
                return
            self.now_s = at
            self.log.take(at, self.receiver.tick(at))

    def cm(self, at_s: float, message: tp.ConnectionMessage) -> None:
        self.run_until(at_s)
        self.now_s = at_s
        self.log.take(at_s, self.receiver.on_cm(message, at_s))

    def dt(self, at_s: float, packet: tp.DataPacket) -> None:
        self.run_until(at_s)
        self.now_s = at_s
        self.log.take(at_s, self.receiver.on_dt(packet, at_s))


def paced_transfer(pgn: int, size: int, gaps_s: list[float], window: int = tp.NO_LIMIT) -> Log:
    """RTS at 0, then each packet ``gaps_s[i]`` after the one before (or after the RTS); the
    log runs until 3 s after the last packet."""
    driver = Driver(tp.TpReceiver(ACCEPTED))
    driver.cm(0.0, rts_for(pgn, size, window))
    at_s = 0.0
    for packet, gap_s in zip(tp.split_payload(payload_of(size)), gaps_s, strict=True):
        at_s += gap_s
        driver.dt(at_s, packet)
    driver.run_until(at_s + 3.0)
    return driver.log


# Slow but lawful senders: no CTS in the middle of a window.


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pgn", [PGN_BRM, PGN_BCP, PGN_BCS], ids=["BRM", "BCP", "BCS"])
@pytest.mark.parametrize("spacing_s", [0.12, 0.15, 0.2])
def test_slow_packets_complete_without_a_cts_mid_window(pgn: int, spacing_s: float) -> None:
    """Packets 120-200 ms apart (below T1) give one CTS, the message and EndOfMsgAck."""
    size = GBT_SIZES[pgn]
    packets = tp.packets_for(size)
    log = paced_transfer(pgn, size, [spacing_s] * packets)
    assert log.messages == [tp.Cts(packets, 1, pgn), tp.EndOfMsgAck(size, packets, pgn)]
    assert log.completed == [(pgn, payload_of(size))]
    assert log.problems == []


@pytest.mark.timeout(60)
@settings(max_examples=200)
@given(data=st.data(), size=st.integers(9, 140), window=st.integers(1, 255))
def test_any_spacing_below_t1_completes_without_retransmission(
    data: st.DataObject, size: int, window: int
) -> None:
    """Any packet spacing of 0-700 ms, any packets per CTS: the message completes, every CTS
    clears the next new window (never asks again) and nothing is aborted."""
    packets = tp.packets_for(size)
    gaps_ms = data.draw(st.lists(st.integers(0, 700), min_size=packets, max_size=packets))
    log = paced_transfer(PGN_BRM, size, [g / 1000 for g in gaps_ms], window)
    ctss = [m for m in log.messages if isinstance(m, tp.Cts)]
    step = min(window, packets)
    assert [c.next_packet for c in ctss] == list(range(1, packets + 1, step))
    assert not any(isinstance(m, tp.Abort) for m in log.messages)
    assert log.messages[-1] == tp.EndOfMsgAck(size, packets, PGN_BRM)
    assert log.completed == [(PGN_BRM, payload_of(size))]
    assert log.problems == []


def test_packets_just_below_t1_apart_complete() -> None:
    """745 ms between packets (just below T1) and 1.2 s from the CTS (below T2) still complete."""
    log = paced_transfer(PGN_BRM, 49, [1.2] + [0.745] * 6)
    assert log.messages == [tp.Cts(7, 1, PGN_BRM), tp.EndOfMsgAck(49, 7, PGN_BRM)]


# Real timeouts: T1 asks again (at most twice), T2 and the third T1 abort.


def test_spacing_beyond_t1_asks_again_then_aborts_with_reason_5() -> None:
    """Packets 800 ms apart: at each T1 (750 ms) a CTS from the next packet, twice; the third
    expiry aborts with reason 5 (maximum retransmit requests)."""
    log = paced_transfer(PGN_BRM, 49, [0.8] * 7)
    assert log.sent == [
        (0.0, tp.Cts(7, 1, PGN_BRM)),
        (pytest.approx(1.55), tp.Cts(6, 2, PGN_BRM)),
        (pytest.approx(2.35), tp.Cts(5, 3, PGN_BRM)),
        (pytest.approx(3.15), tp.Abort(5, PGN_BRM)),
    ]
    assert "T1 (750 ms)" in log.problems[0]
    assert "retransmission request 1 of 2" in log.problems[0]
    assert "reason 5 (maximum retransmit request limit reached)" in log.problems[2]
    assert log.completed == []


def test_sender_silent_after_a_retransmission_cts_aborts_with_reason_3() -> None:
    """Three packets, then silence: T1 asks for packets 4..7, T2 after that CTS aborts (3)."""
    log = paced_transfer(PGN_BRM, 49, [0.01] * 3 + [60.0] * 4)
    assert log.sent[:3] == [
        (0.0, tp.Cts(7, 1, PGN_BRM)),
        (pytest.approx(0.78), tp.Cts(4, 4, PGN_BRM)),
        (pytest.approx(0.78 + 1.25), tp.Abort(3, PGN_BRM)),
    ]
    assert "T2 (1250 ms)" in log.problems[1]
    assert "reason 3 (timeout)" in log.problems[1]


def test_no_data_after_the_rts_aborts_at_t2() -> None:
    """No packet at all: nothing is asked again before T2 (1250 ms), then reason 3."""
    driver = Driver(tp.TpReceiver(ACCEPTED))
    driver.cm(0.0, rts_for(PGN_BCS, 9))
    driver.run_until(3.0)
    assert driver.log.sent == [(0.0, tp.Cts(2, 1, PGN_BCS)), (1.25, tp.Abort(3, PGN_BCS))]
    assert driver.receiver.next_deadline_s is None


def test_lost_packet_is_asked_for_at_t1_and_the_rest_taken_again() -> None:
    """Packet 2 of 7 lost: no CTS before T1 after packet 7; then a CTS for 2..7, and the
    EndOfMsgAck comes only after the resent packet 7 (that CTS confirms packet 1 only)."""
    packets = tp.split_payload(payload_of(49))
    driver = Driver(tp.TpReceiver(ACCEPTED))
    driver.cm(0.0, rts_for(PGN_BRM, 49))
    for i in (1, 3, 4, 5, 6, 7):
        driver.dt(0.01 * i, packets[i - 1])
    driver.run_until(0.8)
    assert len(driver.log.sent) == 1  # the first CTS only, up to T1 after packet 7
    driver.run_until(0.85)
    assert driver.log.messages[1:] == [tp.Cts(6, 2, PGN_BRM)]
    assert driver.log.sent[1][0] == pytest.approx(0.82)  # T1 after packet 7 at 70 ms
    for i in range(2, 7):
        driver.dt(0.85 + 0.01 * i, packets[i - 1])
    assert driver.log.completed == []
    driver.dt(0.95, packets[6])
    assert driver.log.sent[-1] == (0.95, tp.EndOfMsgAck(49, 7, PGN_BRM))
    assert driver.log.completed == [(PGN_BRM, payload_of(49))]


# Connection rules.


def test_rts_for_another_pgn_is_refused_and_the_open_transfer_goes_on() -> None:
    """An RTS for BCP while BRM is open is refused with reason 1; BRM still completes."""
    packets = tp.split_payload(payload_of(49))
    driver = Driver(tp.TpReceiver(ACCEPTED))
    driver.cm(0.0, rts_for(PGN_BRM, 49))
    for i in range(1, 4):
        driver.dt(0.01 * i, packets[i - 1])
    driver.cm(0.05, rts_for(PGN_BCP, 13))
    assert driver.log.sent[-1] == (0.05, tp.Abort(1, PGN_BCP))
    assert "reason 1 (already in one or more connection-managed sessions)" in driver.log.problems[0]
    for i in range(4, 8):
        driver.dt(0.05 + 0.01 * i, packets[i - 1])
    assert driver.log.completed == [(PGN_BRM, payload_of(49))]
    assert driver.log.messages[-1] == tp.EndOfMsgAck(49, 7, PGN_BRM)


def test_rts_for_the_same_pgn_restarts_the_transfer() -> None:
    """J1939-21: a new RTS for the open PGN replaces the transfer, without an abort."""
    old = tp.split_payload(payload_of(49))
    new = tp.split_payload(bytes(range(100, 149)))
    driver = Driver(tp.TpReceiver(ACCEPTED))
    driver.cm(0.0, rts_for(PGN_BRM, 49))
    for i in range(1, 4):
        driver.dt(0.01 * i, old[i - 1])
    driver.cm(0.1, rts_for(PGN_BRM, 49))
    for i in range(1, 8):
        driver.dt(0.1 + 0.01 * i, new[i - 1])
    assert driver.log.messages == [
        tp.Cts(7, 1, PGN_BRM),
        tp.Cts(7, 1, PGN_BRM),
        tp.EndOfMsgAck(49, 7, PGN_BRM),
    ]
    assert driver.log.completed == [(PGN_BRM, bytes(range(100, 149)))]
    assert "restarts" in driver.log.problems[0]


def test_duplicate_packet_with_other_data_aborts_with_reason_8() -> None:
    """Packet 2 again with other data aborts (reason 8); the same data again is harmless."""
    packets = tp.split_payload(payload_of(49))
    receiver = tp.TpReceiver(ACCEPTED)
    receiver.on_cm(rts_for(PGN_BRM, 49), 0.0)
    receiver.on_dt(packets[0], 0.01)
    receiver.on_dt(packets[1], 0.02)
    assert receiver.on_dt(packets[1], 0.03) == tp.TpResult()
    result = receiver.on_dt(tp.DataPacket(2, bytes(7)), 0.04)
    assert result.send == (tp.Abort(8, PGN_BRM),)
    assert "reason 8 (duplicate sequence number)" in result.problems[0]
    assert "packet 2 arrived again with other data" in result.problems[0]
    assert receiver.next_deadline_s is None


@pytest.mark.parametrize("sequence", [4, 7, 8, 255])
def test_packet_beyond_the_cts_window_aborts_with_reason_7(sequence: int) -> None:
    """With 3 packets per CTS, a packet numbered above 3 (or above the message) aborts (7)."""
    receiver = tp.TpReceiver(ACCEPTED)
    assert receiver.on_cm(rts_for(PGN_BRM, 49, window=3), 0.0).send == (tp.Cts(3, 1, PGN_BRM),)
    receiver.on_dt(tp.split_payload(payload_of(49))[0], 0.01)
    result = receiver.on_dt(tp.DataPacket(sequence, bytes(7)), 0.02)
    assert result.send == (tp.Abort(7, PGN_BRM),)
    assert "reason 7 (bad sequence number)" in result.problems[0]
    assert f"packet {sequence} is outside packets 1..3" in result.problems[0]
    assert result.completed is None


def test_windows_follow_each_other() -> None:
    """3 packets per CTS: each completed window clears the next, from the right packet."""
    log = paced_transfer(PGN_BRM, 49, [0.3] * 7, window=3)
    assert log.messages == [
        tp.Cts(3, 1, PGN_BRM),
        tp.Cts(3, 4, PGN_BRM),
        tp.Cts(1, 7, PGN_BRM),
        tp.EndOfMsgAck(49, 7, PGN_BRM),
    ]


def test_rts_for_a_pgn_not_taken_is_refused_with_any_other_reason() -> None:
    """An RTS for a PGN the charger does not take: abort 250, nothing opened."""
    receiver = tp.TpReceiver(ACCEPTED)
    result = receiver.on_cm(rts_for(0x0700, 13), 0.0)
    assert result.send == (tp.Abort(250, 0x0700),)
    assert "not a PGN this charger takes" in result.problems[0]
    assert receiver.next_deadline_s is None


# Nothing the sender does raises.

ANY_CM = st.one_of(
    st.builds(
        lambda size, pgn, window: rts_for(pgn, size, window),
        st.integers(9, 60),
        st.sampled_from([PGN_BRM, PGN_BCP, 0x0700]),
        st.integers(1, 255),
    ),
    st.builds(tp.Abort, st.integers(0, 255), st.sampled_from([PGN_BRM, PGN_BCP])),
    st.builds(tp.Cts, st.integers(0, 9), st.integers(1, 9), st.just(PGN_BRM)),
    st.builds(tp.EndOfMsgAck, st.just(13), st.just(2), st.just(PGN_BRM)),
)
ANY_DT = st.builds(
    tp.DataPacket, st.integers(0, 256), st.binary(min_size=6, max_size=8) | st.just(bytes(7))
)


@pytest.mark.timeout(60)
@settings(max_examples=200)
@given(
    inputs=st.lists(
        st.tuples(st.floats(0.0, 2.0), st.one_of(ANY_CM, ANY_DT, st.none())), max_size=40
    )
)
def test_any_input_is_answered_never_raised(
    inputs: list[tuple[float, tp.ConnectionMessage | tp.DataPacket | None]],
) -> None:
    """Any connection messages, data packets and ticks: nothing raises, every abort carries a
    Table 7 reason and a problem naming it, and a tick leaves no deadline already due."""
    receiver = tp.TpReceiver(ACCEPTED)
    now_s = 0.0
    for gap_s, item in inputs:
        now_s += gap_s
        if item is None:
            result = receiver.tick(now_s)
        elif isinstance(item, tp.DataPacket):
            result = receiver.on_dt(item, now_s)
        else:
            result = receiver.on_cm(item, now_s)
        for message in result.send:
            assert isinstance(message, tp.Cts | tp.EndOfMsgAck | tp.Abort)
            if isinstance(message, tp.Abort):
                assert message.reason in {1, 3, 5, 7, 8, 250}
                assert any(f"reason {message.reason} (" in p for p in result.problems)
            if isinstance(message, tp.Cts):
                assert 1 <= message.packets <= 255
        if item is None:
            deadline = receiver.next_deadline_s
            assert deadline is None or deadline > now_s
