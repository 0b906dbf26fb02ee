"""J1939-21 transport: connection messages, reassembly in any order, retransmission, timeouts.

The receiver's timing and abort rules on an injected clock are in test_j1939_tp_timing.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import ProtocolError
from controller.vehicle import j1939_tp as tp

from .fixtures import recorded as rec

PGN_BRM = 0x0200
BRM_PAYLOAD = b"".join(f.data[1:] for f in rec.GBT_BRM_TRANSFER[2:9])[:49]


def test_recorded_connection_messages_decode() -> None:
    """The recorded RTS, CTS, EndOfMsgAck and abort decode to their fields."""
    assert tp.decode_cm(rec.GBT_BRM_TRANSFER[0].data) == tp.Rts(49, 7, PGN_BRM, 0xFF)
    assert tp.decode_cm(rec.GBT_BRM_TRANSFER[1].data) == tp.Cts(7, 1, PGN_BRM)
    assert tp.decode_cm(rec.GBT_BRM_TRANSFER[-1].data) == tp.EndOfMsgAck(49, 7, PGN_BRM)
    assert tp.decode_cm(rec.GBT_TP_ABORT.data) == tp.Abort(0xFF, PGN_BRM)


def test_receiver_answers_like_the_recorded_charger() -> None:
    """Fed the recorded BRM transfer, the receiver sends the recorded CTS and EndOfMsgAck."""
    receiver = tp.TpReceiver(frozenset({PGN_BRM}))
    first = receiver.on_cm(tp.decode_cm(rec.GBT_BRM_TRANSFER[0].data), 0.0)
    assert [tp.encode_cm(m) for m in first.send] == [rec.GBT_BRM_TRANSFER[1].data]
    result = tp.TpResult()
    for i, frame in enumerate(rec.GBT_BRM_TRANSFER[2:9]):
        result = receiver.on_dt(tp.decode_dt(frame.data), 0.01 * (i + 1))
    assert [tp.encode_cm(m) for m in result.send] == [rec.GBT_BRM_TRANSFER[-1].data]
    assert result.completed == (PGN_BRM, BRM_PAYLOAD)


def _transfer(receiver: tp.TpReceiver, order: list[int], t0: float = 0.0) -> tp.TpResult:
    """Open a BRM transfer and feed its packets in ``order``; return the last result."""
    receiver.on_cm(tp.Rts(49, 7, PGN_BRM), t0)
    packets = tp.split_payload(BRM_PAYLOAD)
    result = tp.TpResult()
    for i, seq in enumerate(order):
        result = receiver.on_dt(packets[seq - 1], t0 + 0.01 * (i + 1))
    return result


def test_reordered_packets_reassemble() -> None:
    """Packets arriving out of order and duplicated still give the exact payload."""
    result = _transfer(tp.TpReceiver(frozenset({PGN_BRM})), [2, 1, 4, 3, 3, 7, 6, 5])
    assert result.completed == (PGN_BRM, BRM_PAYLOAD)


def test_lost_packet_is_asked_for_again() -> None:
    """A gap still open T1 (750 ms) after the last packet is asked for by a CTS from it, not
    before; the packets after it are taken again (that CTS confirms only those before it)."""
    receiver = tp.TpReceiver(frozenset({PGN_BRM}))
    assert _transfer(receiver, [1, 2, 4, 5, 6, 7]).completed is None  # packet 7 at 60 ms
    assert receiver.tick(0.8).send == ()
    retry = receiver.tick(0.81)
    assert retry.send == (tp.Cts(5, 3, PGN_BRM),)
    assert "asked again" in retry.problems[0]
    packets = tp.split_payload(BRM_PAYLOAD)
    results = [receiver.on_dt(packets[i], 0.9 + 0.01 * i) for i in range(2, 7)]
    assert results[-1].completed == (PGN_BRM, BRM_PAYLOAD)


def test_silence_after_the_cts_aborts_at_t2() -> None:
    """No data packet within T2 (1.25 s) of the CTS aborts with reason timeout."""
    receiver = tp.TpReceiver(frozenset({PGN_BRM}))
    receiver.on_cm(tp.Rts(49, 7, PGN_BRM), 0.0)
    assert receiver.tick(1.0).send == ()
    result = receiver.tick(1.3)  # T2 = 1.25 s after the CTS
    assert result.send == (tp.Abort(tp.AbortReason.TIMEOUT, PGN_BRM),)
    assert receiver.next_deadline_s is None


def test_repeatedly_lost_packet_aborts() -> None:
    """After two unanswered retransmission requests the next T1 aborts with reason 5."""
    receiver = tp.TpReceiver(frozenset({PGN_BRM}))
    _transfer(receiver, [1, 2, 4, 5, 6, 7])
    packets = tp.split_payload(BRM_PAYLOAD)
    sent: list[tp.ConnectionMessage] = []
    for _ in range(3):
        now = receiver.next_deadline_s
        assert now is not None
        sent += receiver.tick(now).send
        receiver.on_dt(packets[0], now + 0.01)  # a copy of packet 1, never packet 3
    assert sent == [
        tp.Cts(5, 3, PGN_BRM),
        tp.Cts(5, 3, PGN_BRM),
        tp.Abort(tp.AbortReason.MAX_RETRANSMIT, PGN_BRM),
    ]


def test_unexpected_pgn_is_refused() -> None:
    """An RTS for a PGN the receiver does not take is answered with an abort ("any other")."""
    receiver = tp.TpReceiver(frozenset({PGN_BRM}))
    result = receiver.on_cm(tp.Rts(13, 2, 0x0600), 0.0)
    assert result.send == (tp.Abort(tp.AbortReason.OTHER, 0x0600),)


def test_sender_and_receiver_complete_a_transfer() -> None:
    """The sender's RTS, the receiver's CTS, the data and EndOfMsgAck close the transfer."""
    sender = tp.TpSender()
    receiver = tp.TpReceiver(frozenset({PGN_BRM}))
    rts = sender.start(PGN_BRM, BRM_PAYLOAD, 0.0).send_cm[0]
    cts = receiver.on_cm(rts, 0.0).send[0]
    data = sender.on_cm(cts, 0.0).send_dt
    results = [receiver.on_dt(p, 0.01) for p in data]
    assert results[-1].completed == (PGN_BRM, BRM_PAYLOAD)
    assert sender.on_cm(results[-1].send[0], 0.02).done
    assert not sender.busy


def test_sender_times_out_without_cts() -> None:
    """No CTS within T3 (1.25 s): the sender aborts."""
    sender = tp.TpSender()
    sender.start(PGN_BRM, BRM_PAYLOAD, 0.0)
    assert sender.tick(1.0).send_cm == ()
    assert sender.tick(1.3).send_cm == (tp.Abort(tp.AbortReason.TIMEOUT, PGN_BRM),)


def test_bad_sizes_are_protocol_errors() -> None:
    """An RTS whose packet count cannot carry its size is rejected."""
    with pytest.raises(ProtocolError):
        tp.decode_cm(bytes.fromhex("10310006FF000200"))
    with pytest.raises(ProtocolError):
        tp.decode_dt(bytes.fromhex("0001020304"))


PGNS = st.integers(0, 0x3FFFF)
BYTES = st.integers(0, 0xFF)
CM_KINDS = ("rts", "cts", "eoma", "abort")


@st.composite
def valid_cm(
    draw: st.DrawFn, kinds: tuple[str, ...] = CM_KINDS
) -> tuple[bytes, tp.ConnectionMessage]:
    """A well-formed TP.CM payload built byte by byte (any reserved bytes) and its meaning."""
    pgn = draw(PGNS)
    tail = pgn.to_bytes(3, "little")
    kind = draw(st.sampled_from(kinds))
    if kind in ("rts", "eoma"):
        size = draw(st.integers(9, 1785))
        packets = (size + 6) // 7
        head = bytes([size & 0xFF, size >> 8, packets])
        if kind == "rts":
            limit = draw(st.integers(1, 255))
            return bytes([0x10, *head, limit]) + tail, tp.Rts(size, packets, pgn, limit)
        return bytes([0x13, *head, draw(BYTES)]) + tail, tp.EndOfMsgAck(size, packets, pgn)
    if kind == "cts":
        count = draw(st.integers(0, 255))
        first = draw(st.integers(1, 256 - count) if count else BYTES)
        reserved = bytes([draw(BYTES), draw(BYTES)])
        return bytes([0x11, count, first, *reserved]) + tail, tp.Cts(count, first, pgn)
    reason = draw(BYTES)
    reserved = bytes([draw(BYTES), draw(BYTES), draw(BYTES)])
    return bytes([0xFF, reason, *reserved]) + tail, tp.Abort(reason, pgn)


# Each flaw J1939-21 rules out, and the connection messages it can be given to.
CM_FLAWS: dict[str, tuple[str, ...]] = {
    "short": CM_KINDS,
    "long": CM_KINDS,
    "control": CM_KINDS,
    "pgn": CM_KINDS,
    "count": ("rts", "eoma"),
    "size": ("rts", "eoma"),
    "no window": ("rts",),
    "window": ("cts",),
}
UNSUPPORTED_CONTROL = [b for b in range(256) if b not in (0x10, 0x11, 0x13, 0xFF)]


@st.composite
def invalid_cm(draw: st.DrawFn) -> bytes:
    """A well-formed TP.CM payload given one flaw that J1939-21 rules out."""
    flaw = draw(st.sampled_from(sorted(CM_FLAWS)))
    payload = bytearray(draw(valid_cm(CM_FLAWS[flaw]))[0])
    if flaw == "short":
        return bytes(payload[: draw(st.integers(0, 7))])
    if flaw == "long":
        return bytes(payload) + draw(st.binary(min_size=1, max_size=8))
    if flaw == "control":  # BAM (0x20) is real J1939 but not taken here
        payload[0] = draw(st.one_of(st.just(0x20), st.sampled_from(UNSUPPORTED_CONTROL)))
    elif flaw == "pgn":
        payload[7] = draw(st.integers(0x04, 0xFF))  # above 18 bits
    elif flaw == "count":
        payload[3] = draw(st.sampled_from([n for n in range(256) if n != payload[3]]))
    elif flaw == "size":  # outside 9..1785, with the packet count that size would need
        size = draw(st.one_of(st.integers(0, 8), st.integers(1786, 0xFFFF)))
        payload[1:4] = bytes([size & 0xFF, size >> 8, min((size + 6) // 7, 255)])
    elif flaw == "no window":
        payload[4] = 0  # RTS: zero packets per CTS
    else:  # CTS: a window reaching beyond packet 255, or starting at packet 0
        count = draw(st.integers(1, 255))
        payload[1:3] = bytes([count, draw(st.sampled_from([0, *range(257 - count, 256)]))])
    return bytes(payload)


@settings(max_examples=300)
@given(
    st.one_of(
        valid_cm().map(lambda case: ("valid", *case)),
        invalid_cm().map(lambda payload: ("invalid", payload, None)),
        st.binary(min_size=0, max_size=8).map(lambda payload: ("random", payload, None)),
    )
)
def test_any_cm_payload_decodes_or_raises(
    case: tuple[str, bytes, tp.ConnectionMessage | None],
) -> None:
    """Valid TP.CM payloads decode to their message, invalid ones raise ProtocolError."""
    kind, payload, expected = case
    if kind == "invalid":
        with pytest.raises(ProtocolError):
            tp.decode_cm(payload)
        return
    try:
        message = tp.decode_cm(payload)
    except ProtocolError:
        assert kind == "random", f"valid {payload.hex()} refused"
        return
    if expected is not None:
        assert message == expected
    assert tp.decode_cm(tp.encode_cm(message)) == message


@given(
    st.one_of(
        st.tuples(st.integers(1, 255), st.binary(min_size=7, max_size=7)).map(
            lambda case: ("valid", bytes([case[0]]) + case[1])
        ),
        st.one_of(
            st.binary(max_size=7),
            st.binary(min_size=9, max_size=16),
            st.binary(min_size=7, max_size=7).map(lambda rest: b"\0" + rest),  # sequence 0
        ).map(lambda payload: ("invalid", payload)),
        st.binary(min_size=0, max_size=8).map(lambda payload: ("random", payload)),
    )
)
def test_any_dt_payload_decodes_or_raises(case: tuple[str, bytes]) -> None:
    """Valid TP.DT payloads decode and round-trip; wrong length or sequence 0 is ProtocolError."""
    kind, payload = case
    if kind == "invalid":
        with pytest.raises(ProtocolError):
            tp.decode_dt(payload)
        return
    try:
        packet = tp.decode_dt(payload)
    except ProtocolError:
        assert kind == "random", f"valid {payload.hex()} refused"
        return
    assert (packet.sequence, packet.data) == (payload[0], payload[1:])
    assert tp.encode_dt(packet) == payload


@given(
    st.one_of(
        st.builds(
            lambda size, pgn, limit: tp.Rts(size, tp.packets_for(size), pgn, limit),
            st.integers(9, 1785),
            PGNS,
            st.integers(1, 255),
        ),
        st.builds(tp.Cts, st.integers(1, 255), st.just(1), PGNS),
        st.builds(
            lambda size, pgn: tp.EndOfMsgAck(size, tp.packets_for(size), pgn),
            st.integers(9, 1785),
            PGNS,
        ),
        st.builds(tp.Abort, st.integers(0, 255), PGNS),
    )
)
def test_charger_connection_messages_round_trip(message: tp.ConnectionMessage) -> None:
    """Every connection message the charger sends (CTS, EndOfMsgAck, Abort) round-trips."""
    assert tp.decode_cm(tp.encode_cm(message)) == message
