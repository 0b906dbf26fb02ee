"""SAE J1939-21 transport protocol (RTS/CTS, connection mode), sans-IO.

GB/T 27930 carries BRM, BCP and BCS (longer than 8 bytes) this way::

    RTS  BMS -> charger   10 size_lo size_hi packets max FF? pgn0 pgn1 pgn2   (TP.CM, PF 0xEC)
    CTS  charger -> BMS   11 packets next FF FF pgn0 pgn1 pgn2
    DT   BMS -> charger   seq d1..d7, the last one padded with FF             (TP.DT, PF 0xEB)
    EoMA charger -> BMS   13 size_lo size_hi packets FF pgn0 pgn1 pgn2
    Abort either way      FF reason FF FF FF pgn0 pgn1 pgn2

``TpReceiver`` is the charger's side and ``TpSender`` the vehicle's (used by the simulator). Both
take decoded connection messages or data packets plus the monotonic time and return what to send;
neither does IO and neither raises for what the other side sends.

The receiver follows J1939-21's timing: a CTS clears a window of packets; the sender has T2 to
send the first and T1 between packets, so any gap below T1 is normal and never asked about. Only
when T1 runs out with packets of the window missing does it ask again (a CTS from the first
missing packet, at most twice a window), and when T2 runs out after a CTS it aborts. A second RTS
for the same PGN restarts the transfer, one for another PGN is refused (abort reason 1) and the
open transfer goes on; a packet beyond the window or a duplicate with other data aborts it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from controller.errors import ProtocolError
from controller.vehicle.protocols.j1939 import (
    BYTES_PER_PACKET,
    MAX_RETRANSMIT_REQUESTS,
    MAX_TP_SIZE,
    T1_S,
    T2_S,
    T3_S,
    T4_S,
)

# The PDU formats, J1939-21 5.10.2.4 timeouts and 5.10.3.2's retransmit limit: protocols/j1939.py.
NO_LIMIT = 0xFF  # J1939-21 TP.CM_RTS byte 5: no limit on the packets one CTS may clear


class ControlByte(enum.IntEnum):
    """TP.CM byte 1."""

    RTS = 0x10
    CTS = 0x11
    END_OF_MSG_ACK = 0x13
    BAM = 0x20
    ABORT = 0xFF


class AbortReason(enum.IntEnum):
    """TP.Conn_Abort byte 2: J1939-21 Table 7 (2006 and 2010 editions; Table 6 in 2022)."""

    ALREADY_IN_SESSION = 1
    SYSTEM_RESOURCES = 2
    TIMEOUT = 3
    CTS_DURING_TRANSFER = 4
    MAX_RETRANSMIT = 5
    UNEXPECTED_DATA = 6
    BAD_SEQUENCE = 7
    DUPLICATE_SEQUENCE = 8
    MESSAGE_TOO_LARGE = 9
    OTHER = 250


_ABORT_REASON_TEXT = {
    AbortReason.ALREADY_IN_SESSION: "already in one or more connection-managed sessions",
    AbortReason.SYSTEM_RESOURCES: "system resources were needed for another task",
    AbortReason.TIMEOUT: "timeout",
    AbortReason.CTS_DURING_TRANSFER: "CTS received while data transfer is in progress",
    AbortReason.MAX_RETRANSMIT: "maximum retransmit request limit reached",
    AbortReason.UNEXPECTED_DATA: "unexpected data transfer packet",
    AbortReason.BAD_SEQUENCE: "bad sequence number",
    AbortReason.DUPLICATE_SEQUENCE: "duplicate sequence number",
    AbortReason.MESSAGE_TOO_LARGE: "message size greater than 1785 bytes",
    AbortReason.OTHER: "any other reason",
}


def describe_abort_reason(reason: int) -> str:
    """``reason`` with its J1939-21 Table 7 meaning, for logs: ``'3 (timeout)'``."""
    try:
        return f"{reason} ({_ABORT_REASON_TEXT[AbortReason(reason)]})"
    except ValueError:
        return f"{reason} (not a J1939-21 reason)"


@dataclass(frozen=True, slots=True)
class Rts:
    """Request to send: opens a connection-mode transfer."""

    total_size: int
    packets: int
    pgn: int
    max_packets_per_cts: int = NO_LIMIT


@dataclass(frozen=True, slots=True)
class Cts:
    """Clear to send ``packets`` packets starting at ``next_packet`` (0 packets = hold)."""

    packets: int
    next_packet: int
    pgn: int


@dataclass(frozen=True, slots=True)
class EndOfMsgAck:
    """The receiver has the whole message."""

    total_size: int
    packets: int
    pgn: int


@dataclass(frozen=True, slots=True)
class Abort:
    """Either side gives up the transfer."""

    reason: int
    pgn: int


ConnectionMessage = Rts | Cts | EndOfMsgAck | Abort


@dataclass(frozen=True, slots=True)
class DataPacket:
    """One TP.DT packet: sequence number 1..255 and 7 data bytes."""

    sequence: int
    data: bytes


def packets_for(size: int) -> int:
    """Number of 7-byte packets a message of ``size`` bytes needs."""
    return math.ceil(size / BYTES_PER_PACKET)


def _pgn_bytes(pgn: int) -> bytes:
    return pgn.to_bytes(3, "little")


def _check_size(size: int, packets: int, what: str) -> None:
    if not 9 <= size <= MAX_TP_SIZE:
        raise ProtocolError(f"TP {what}: size {size} outside 9..{MAX_TP_SIZE}")
    if packets != packets_for(size):
        raise ProtocolError(f"TP {what}: {packets} packets cannot carry {size} bytes")


def decode_cm(data: bytes) -> ConnectionMessage:
    """Decode a TP.CM payload; anything else raises ProtocolError."""
    if len(data) != 8:
        raise ProtocolError(f"TP.CM: {len(data)} bytes, expected 8")
    control = data[0]
    pgn = int.from_bytes(data[5:8], "little")
    if pgn > 0x3FFFF:
        raise ProtocolError(f"TP.CM: PGN 0x{pgn:X} is not 18 bits")
    size = int.from_bytes(data[1:3], "little")
    if control == ControlByte.RTS:
        _check_size(size, data[3], "RTS")
        if data[4] == 0:
            raise ProtocolError("TP RTS: zero packets per CTS")
        return Rts(total_size=size, packets=data[3], pgn=pgn, max_packets_per_cts=data[4])
    if control == ControlByte.CTS:
        if data[1] and not 1 <= data[2] <= 255 - data[1] + 1:
            raise ProtocolError(f"TP CTS: packets {data[1]} from {data[2]} out of range")
        return Cts(packets=data[1], next_packet=data[2], pgn=pgn)
    if control == ControlByte.END_OF_MSG_ACK:
        _check_size(size, data[3], "EndOfMsgAck")
        return EndOfMsgAck(total_size=size, packets=data[3], pgn=pgn)
    if control == ControlByte.ABORT:
        return Abort(reason=data[1], pgn=pgn)
    raise ProtocolError(f"TP.CM: control byte 0x{control:02X} not supported")


def encode_cm(message: ConnectionMessage) -> bytes:
    """Encode a TP.CM payload (reserved bytes 0xFF)."""
    match message:
        case Rts(total_size=size, packets=packets, pgn=pgn, max_packets_per_cts=limit):
            _check_size(size, packets, "RTS")
            head = bytes([ControlByte.RTS, *size.to_bytes(2, "little"), packets, limit])
        case Cts(packets=packets, next_packet=nxt, pgn=pgn):
            head = bytes([ControlByte.CTS, packets, nxt, 0xFF, 0xFF])
        case EndOfMsgAck(total_size=size, packets=packets, pgn=pgn):
            _check_size(size, packets, "EndOfMsgAck")
            head = bytes([ControlByte.END_OF_MSG_ACK, *size.to_bytes(2, "little"), packets, 0xFF])
        case Abort(reason=reason, pgn=pgn):
            head = bytes([ControlByte.ABORT, reason, 0xFF, 0xFF, 0xFF])
    return head + _pgn_bytes(pgn)


def decode_dt(data: bytes) -> DataPacket:
    """Decode a TP.DT payload; anything else raises ProtocolError."""
    if len(data) != 8:
        raise ProtocolError(f"TP.DT: {len(data)} bytes, expected 8")
    if data[0] == 0:
        raise ProtocolError("TP.DT: sequence number 0")
    return DataPacket(sequence=data[0], data=bytes(data[1:]))


def encode_dt(packet: DataPacket) -> bytes:
    """Encode a TP.DT payload."""
    if not 1 <= packet.sequence <= 255 or len(packet.data) != BYTES_PER_PACKET:
        raise ProtocolError(f"TP.DT: bad packet {packet}")
    return bytes([packet.sequence]) + packet.data


def split_payload(payload: bytes) -> tuple[DataPacket, ...]:
    """Cut a payload into numbered packets, the last padded with 0xFF."""
    count = packets_for(len(payload))
    padded = payload + b"\xff" * (count * BYTES_PER_PACKET - len(payload))
    return tuple(
        DataPacket(i + 1, padded[i * BYTES_PER_PACKET : (i + 1) * BYTES_PER_PACKET])
        for i in range(count)
    )


@dataclass(frozen=True, slots=True)
class TpResult:
    """What one input made a transport endpoint do."""

    send: tuple[ConnectionMessage, ...] = ()
    completed: tuple[int, bytes] | None = None  # (pgn, payload) once a message is whole
    problems: tuple[str, ...] = ()  # retransmissions, aborts and ignored input, for the log


@dataclass(slots=True)
class _Transfer:
    rts: Rts
    packets: dict[int, bytes]  # sequence number -> the 7 bytes held
    window_first: int  # the packets the last CTS cleared: window_first..window_end
    window_end: int
    waiting_first: bool  # True: T2 runs (a CTS went out, no packet since); False: T1 runs
    deadline_s: float  # when T2 or T1 runs out
    requests: int  # retransmission requests in this window


class TpReceiver:
    """The receiving side of connection-mode transfers from one sender.

    ``accepted_pgns`` limits which messages may be opened (others are refused at once). One
    transfer is open at a time, as J1939-21 allows one connection per sender and receiver pair.
    """

    def __init__(self, accepted_pgns: frozenset[int]) -> None:
        self._accepted = accepted_pgns
        self._transfer: _Transfer | None = None

    def __repr__(self) -> str:
        if self._transfer is None:
            return "TpReceiver(idle)"
        t = self._transfer
        return f"TpReceiver(pgn=0x{t.rts.pgn:04X}, {len(t.packets)}/{t.rts.packets})"

    @property
    def next_deadline_s(self) -> float | None:
        """When ``tick`` next has something to do (T1 or T2 runs out), or None."""
        return None if self._transfer is None else self._transfer.deadline_s

    def on_cm(self, message: ConnectionMessage, now_s: float) -> TpResult:
        """A TP.CM from the sender."""
        match message:
            case Rts():
                return self._on_rts(message, now_s)
            case Abort(pgn=pgn, reason=reason):
                if self._transfer is not None and self._transfer.rts.pgn == pgn:
                    self._transfer = None
                    why = describe_abort_reason(reason)
                    return TpResult(
                        problems=(f"PGN 0x{pgn:04X}: the sender aborted, reason {why}",)
                    )
                return TpResult()
            case _:
                return TpResult(problems=(f"{message} from the sender ignored",))

    def _on_rts(self, rts: Rts, now_s: float) -> TpResult:
        t = self._transfer
        if t is not None and t.rts.pgn != rts.pgn:
            # J1939-21 5.10.3.4, Table 7 reason 1: the open transfer is not disturbed and goes on.
            return TpResult(
                send=(Abort(AbortReason.ALREADY_IN_SESSION, rts.pgn),),
                problems=(
                    f"RTS for PGN 0x{rts.pgn:04X} refused, abort reason "
                    f"{describe_abort_reason(AbortReason.ALREADY_IN_SESSION)}: the transfer of "
                    f"PGN 0x{t.rts.pgn:04X} is open and goes on",
                ),
            )
        if rts.pgn not in self._accepted:
            # J1939-21 5.10.3.4: a receiver may refuse an RTS with an abort; no Table 7 reason
            # fits a PGN it does not take, so "any other reason".
            return TpResult(
                send=(Abort(AbortReason.OTHER, rts.pgn),),
                problems=(
                    f"RTS for PGN 0x{rts.pgn:04X} refused, abort reason "
                    f"{describe_abort_reason(AbortReason.OTHER)}: not a PGN this charger takes",
                ),
            )
        problems: tuple[str, ...] = ()
        if t is not None:
            # J1939-21 5.10.3.1: of several RTSs for the same PGN the newest is acted on, the
            # older one is dropped without an abort.
            problems = (f"PGN 0x{rts.pgn:04X}: a new RTS restarts the open transfer",)
        t = _Transfer(rts, {}, 1, 0, waiting_first=True, deadline_s=now_s, requests=0)
        self._transfer = t
        return TpResult(send=(self._clear(t, 1, now_s),), problems=problems)

    @staticmethod
    def _clear(t: _Transfer, first: int, now_s: float) -> Cts:
        """Clear the next window from packet ``first``: at most the RTS's packets per CTS."""
        count = min(t.rts.packets - first + 1, t.rts.max_packets_per_cts)
        t.window_first, t.window_end = first, first + count - 1
        t.waiting_first, t.deadline_s, t.requests = True, now_s + T2_S, 0  # J1939-21 5.10.2.4 T2
        return Cts(count, first, t.rts.pgn)

    def on_dt(self, packet: DataPacket, now_s: float) -> TpResult:
        """A TP.DT from the sender."""
        t = self._transfer
        if t is None:
            # No transfer, so no PGN to name in an abort: the packet is dropped.
            return TpResult(problems=(f"data packet {packet.sequence} outside a transfer ignored",))
        refused = self._refuse(t, packet)
        if refused is not None:
            return refused
        seq = packet.sequence
        t.packets[seq] = packet.data  # a copy with the same data changes nothing
        t.waiting_first, t.deadline_s = False, now_s + T1_S  # J1939-21 5.10.2.4 T1
        if len(t.packets) == t.rts.packets:
            rts = t.rts
            payload = b"".join(t.packets[i] for i in range(1, rts.packets + 1))
            self._transfer = None
            return TpResult(
                send=(EndOfMsgAck(rts.total_size, rts.packets, rts.pgn),),
                completed=(rts.pgn, payload[: rts.total_size]),
            )
        if all(i in t.packets for i in range(t.window_first, t.window_end + 1)):
            return TpResult(send=(self._clear(t, t.window_end + 1, now_s),))
        return TpResult()

    def _refuse(self, t: _Transfer, packet: DataPacket) -> TpResult | None:
        """What a data packet the transfer cannot take makes the receiver do, or None."""
        seq = packet.sequence
        if len(packet.data) != BYTES_PER_PACKET:
            return TpResult(problems=(f"data packet {seq} of {len(packet.data)} bytes ignored",))
        if not 1 <= seq <= t.window_end:
            # J1939-21 5.10.3.2: the sender sends only the packets a CTS cleared; the number is
            # wrong, Table 7 reason 7.
            return self._abort(
                t,
                AbortReason.BAD_SEQUENCE,
                f"packet {seq} is outside packets 1..{t.window_end} the CTSs cleared",
            )
        held = t.packets.get(seq)
        if held is not None and held != packet.data:
            # Table 7 reason 8: two different copies, and nothing tells which one is right.
            return self._abort(
                t,
                AbortReason.DUPLICATE_SEQUENCE,
                f"packet {seq} arrived again with other data "
                f"({held.hex()}, then {packet.data.hex()})",
            )
        return None

    def tick(self, now_s: float) -> TpResult:
        """T2 or T1 ran out: ask again for the missing packets, or abort the transfer."""
        t = self._transfer
        if t is None or now_s < t.deadline_s:
            return TpResult()
        if t.waiting_first:
            # J1939-21 5.10.2.4: T2 is a timeout; the sender's T3 has run out by now as well.
            return self._abort(
                t,
                AbortReason.TIMEOUT,
                f"no data packet within T2 ({T2_S * 1000:.0f} ms) of the CTS for packets "
                f"{t.window_first}..{t.window_end}",
            )
        # T1 ran out with packets of the window missing (a complete window clears the next).
        missing = [i for i in range(t.window_first, t.window_end + 1) if i not in t.packets]
        if t.requests >= MAX_RETRANSMIT_REQUESTS:
            return self._abort(
                t,
                AbortReason.MAX_RETRANSMIT,
                f"packets {missing} still missing T1 ({T1_S * 1000:.0f} ms) after the last data "
                f"packet, {t.requests} retransmission requests made",
            )
        # J1939-21 5.10.3.2: on T1 the receiver may ask again with a CTS from the first missing
        # packet; that CTS confirms only the packets before it, so the rest is taken afresh.
        first = missing[0]
        for i in range(first, t.window_end + 1):
            t.packets.pop(i, None)
        t.requests += 1
        t.waiting_first, t.deadline_s = True, now_s + T2_S
        return TpResult(
            send=(Cts(t.window_end - first + 1, first, t.rts.pgn),),
            problems=(
                f"PGN 0x{t.rts.pgn:04X}: no data packet for T1 ({T1_S * 1000:.0f} ms) with "
                f"packets {missing} missing: asked again for packets {first}..{t.window_end} "
                f"(retransmission request {t.requests} of {MAX_RETRANSMIT_REQUESTS})",
            ),
        )

    def _abort(self, t: _Transfer, reason: AbortReason, why: str) -> TpResult:
        self._transfer = None
        return TpResult(
            send=(Abort(reason, t.rts.pgn),),
            problems=(
                f"PGN 0x{t.rts.pgn:04X}: transfer aborted, reason {describe_abort_reason(reason)}: "
                f"{why}",
            ),
        )


@dataclass(frozen=True, slots=True)
class TpSendResult:
    """What one input made the sender do."""

    send_cm: tuple[ConnectionMessage, ...] = ()
    send_dt: tuple[DataPacket, ...] = ()
    done: bool = False  # EndOfMsgAck received
    problems: tuple[str, ...] = ()


class TpSender:
    """The sending side of one connection-mode transfer at a time."""

    def __init__(self) -> None:
        self._pgn: int | None = None
        self._packets: tuple[DataPacket, ...] = ()
        self._size = 0
        self._deadline_s = 0.0

    @property
    def busy(self) -> bool:
        """A transfer is open."""
        return self._pgn is not None

    @property
    def next_deadline_s(self) -> float | None:
        """When ``tick`` next has something to do, or None."""
        return self._deadline_s if self._pgn is not None else None

    def start(self, pgn: int, payload: bytes, now_s: float) -> TpSendResult:
        """Open a transfer of ``payload`` (9..1785 bytes); replaces an open one."""
        self._pgn = pgn
        self._size = len(payload)
        self._packets = split_payload(payload)
        self._deadline_s = now_s + T3_S
        return TpSendResult(send_cm=(Rts(len(payload), len(self._packets), pgn),))

    def on_cm(self, message: ConnectionMessage, now_s: float) -> TpSendResult:
        """A TP.CM from the receiver."""
        if self._pgn is None or message.pgn != self._pgn:
            return TpSendResult(problems=(f"{message} outside a transfer",))
        result = TpSendResult()
        match message:
            case Cts(packets=0):
                self._deadline_s = now_s + T4_S  # J1939-21: CTS(0) holds the connection open
            case Cts(packets=count, next_packet=first):
                chosen = tuple(p for p in self._packets if first <= p.sequence < first + count)
                if not chosen:
                    return self._abort(AbortReason.BAD_SEQUENCE, f"CTS asks for {first}+{count}")
                self._deadline_s = now_s + T3_S
                result = TpSendResult(send_dt=chosen)
            case EndOfMsgAck():
                self._pgn = None
                result = TpSendResult(done=True)
            case Abort(reason=reason):
                self._pgn = None
                result = TpSendResult(problems=(f"receiver aborted, reason {reason}",))
            case Rts():
                result = TpSendResult(problems=("RTS from the receiver",))
        return result

    def tick(self, now_s: float) -> TpSendResult:
        """T3/T4: abort when the receiver went quiet."""
        if self._pgn is not None and now_s >= self._deadline_s:
            return self._abort(AbortReason.TIMEOUT, "no CTS or EndOfMsgAck in time")
        return TpSendResult()

    def _abort(self, reason: AbortReason, why: str) -> TpSendResult:
        pgn = self._pgn if self._pgn is not None else 0
        self._pgn = None
        return TpSendResult(send_cm=(Abort(reason, pgn),), problems=(why,))
