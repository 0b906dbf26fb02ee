"""J1939-21 transport: connection messages, reassembly in any order, retransmission, timeouts."""

from __future__ import annotations

import pytest
from hypothesis import given
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
    """A gap still open 100 ms after the last packet is requested by a CTS naming it."""
    receiver = tp.TpReceiver(frozenset({PGN_BRM}))
    assert _transfer(receiver, [1, 2, 4, 5, 6, 7]).completed is None
    assert receiver.tick(0.1).send == ()
    retry = receiver.tick(0.2)
    assert retry.send == (tp.Cts(1, 3, PGN_BRM),)
    done = receiver.on_dt(tp.split_payload(BRM_PAYLOAD)[2], 0.25)
    assert done.completed == (PGN_BRM, BRM_PAYLOAD)


def test_silence_aborts_after_t1() -> None:
    """No data packet for T1 (750 ms) with nothing to ask for aborts with reason timeout."""
    receiver = tp.TpReceiver(frozenset({PGN_BRM}))
    receiver.on_cm(tp.Rts(49, 7, PGN_BRM), 0.0)
    assert receiver.tick(1.0).send == ()
    result = receiver.tick(1.3)  # T2 = 1.25 s after the CTS
    assert result.send == (tp.Abort(tp.AbortReason.TIMEOUT, PGN_BRM),)
    assert receiver.next_deadline_s is None


def test_repeatedly_lost_packet_aborts() -> None:
    """After two unanswered retransmission requests the transfer is aborted."""
    receiver = tp.TpReceiver(frozenset({PGN_BRM}))
    _transfer(receiver, [1, 2, 4, 5, 6, 7])
    packets = tp.split_payload(BRM_PAYLOAD)
    now = 0.2
    sent: list[tp.ConnectionMessage] = []
    for _ in range(3):
        sent += receiver.tick(now).send
        receiver.on_dt(packets[0], now + 0.01)  # a duplicate, never packet 3
        now += 0.2
    assert sent[-1] == tp.Abort(tp.AbortReason.MAX_RETRANSMIT, PGN_BRM)


def test_unexpected_pgn_is_refused() -> None:
    """An RTS for a PGN the receiver does not take is answered with an abort."""
    receiver = tp.TpReceiver(frozenset({PGN_BRM}))
    result = receiver.on_cm(tp.Rts(13, 2, 0x0600), 0.0)
    assert result.send == (tp.Abort(tp.AbortReason.UNEXPECTED_DATA, 0x0600),)


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


@given(st.binary(min_size=0, max_size=8))
def test_any_cm_payload_decodes_or_raises(payload: bytes) -> None:
    """Any 0-8 byte TP.CM payload decodes to a message that re-encodes, or is a ProtocolError."""
    try:
        message = tp.decode_cm(payload)
    except ProtocolError:
        return
    assert tp.decode_cm(tp.encode_cm(message)) == message


@given(st.binary(min_size=0, max_size=8))
def test_any_dt_payload_decodes_or_raises(payload: bytes) -> None:
    """Any 0-8 byte TP.DT payload decodes and round-trips, or is a ProtocolError."""
    try:
        packet = tp.decode_dt(payload)
    except ProtocolError:
        return
    assert tp.encode_dt(packet) == payload


PGNS = st.integers(0, 0x3FFFF)


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
