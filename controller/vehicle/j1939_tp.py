"""SAE J1939-21 transport protocol (RTS/CTS, connection mode), sans-IO.

GB/T 27930 carries BRM, BCP and BCS (longer than 8 bytes) this way::

    RTS  BMS -> charger   10 size_lo size_hi packets max FF? pgn0 pgn1 pgn2   (TP.CM, PF 0xEC)
    CTS  charger -> BMS   11 packets next FF FF pgn0 pgn1 pgn2
    DT   BMS -> charger   seq d1..d7, the last one padded with FF             (TP.DT, PF 0xEB)
    EoMA charger -> BMS   13 size_lo size_hi packets FF pgn0 pgn1 pgn2
    Abort either way      FF reason FF FF FF pgn0 pgn1 pgn2

``TpReceiver`` is the charger's side and ``TpSender`` the vehicle's (used by the simulator). Both
take decoded connection messages or data packets plus the monotonic time and return what to send;
neither does IO. The receiver accepts data packets in any order, ignores duplicates, asks again (a
CTS naming the first missing packet) when a gap is still open ``RETRANSMIT_AFTER_S`` after the last
packet, and aborts on the J1939-21 timeouts.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from controller.errors import ProtocolError

TP_CM_PF = 0xEC
TP_DT_PF = 0xEB
TP_PRIORITY = 7

# J1939-21 5.10.2.4 timeouts.
TR_S = 0.20  # response time
T1_S = 0.75  # receiver: between data packets
T2_S = 1.25  # receiver: after sending CTS, until the first data packet
T3_S = 1.25  # sender: after the last data packet (or RTS), until CTS / EndOfMsgAck
T4_S = 1.05  # sender: after a CTS(0) hold, until the next CTS

# Project choice: a gap still open this long after the last data packet is asked for again.
RETRANSMIT_AFTER_S = 0.10
MAX_RETRANSMIT_REQUESTS = 2

MAX_TP_SIZE = 1785  # 255 packets of 7 bytes
BYTES_PER_PACKET = 7
NO_LIMIT = 0xFF


class ControlByte(enum.IntEnum):
    """TP.CM byte 1."""

    RTS = 0x10
    CTS = 0x11
    END_OF_MSG_ACK = 0x13
    BAM = 0x20
    ABORT = 0xFF


class AbortReason(enum.IntEnum):
    """J1939-21 connection abort reasons used here."""

    ALREADY_IN_SESSION = 1
    TIMEOUT = 3
    MAX_RETRANSMIT = 5
    UNEXPECTED_DATA = 6
    BAD_SEQUENCE = 7


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


def tp_id(pf: int, destination: int, source: int) -> int:
    """29-bit J1939 PDU1 identifier for TP.CM / TP.DT."""
    return TP_PRIORITY << 26 | pf << 16 | destination << 8 | source


@dataclass(frozen=True, slots=True)
class TpResult:
    """What one input made a transport endpoint do."""

    send: tuple[ConnectionMessage, ...] = ()
    completed: tuple[int, bytes] | None = None  # (pgn, payload) once a message is whole
    problems: tuple[str, ...] = ()  # retransmissions, aborts and ignored input, for the log


@dataclass(slots=True)
class _Transfer:
    rts: Rts
    packets: dict[int, bytes]
    window_end: int  # highest packet number the last CTS allowed
    deadline_s: float  # T1/T2
    last_data_s: float | None
    requests: int


class TpReceiver:
    """The receiving side of connection-mode transfers from one sender.

    ``accepted_pgns`` limits which messages may be opened (others are aborted at once).
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
        """When ``tick`` next has something to do, or None."""
        t = self._transfer
        if t is None:
            return None
        if t.last_data_s is not None and self._missing(t):
            return min(t.deadline_s, t.last_data_s + RETRANSMIT_AFTER_S)
        return t.deadline_s

    def on_cm(self, message: ConnectionMessage, now: float) -> TpResult:
        """A TP.CM from the sender."""
        match message:
            case Rts():
                return self._on_rts(message, now)
            case Abort(pgn=pgn, reason=reason):
                if self._transfer is not None and self._transfer.rts.pgn == pgn:
                    self._transfer = None
                    return TpResult(problems=(f"sender aborted PGN 0x{pgn:04X}, reason {reason}",))
                return TpResult()
            case _:
                return TpResult(problems=(f"unexpected {message} from the sender",))

    def _on_rts(self, rts: Rts, now: float) -> TpResult:
        if rts.pgn not in self._accepted:
            return TpResult(
                send=(Abort(AbortReason.UNEXPECTED_DATA, rts.pgn),),
                problems=(f"RTS for PGN 0x{rts.pgn:04X} not accepted",),
            )
        problems: tuple[str, ...] = ()
        if self._transfer is not None:
            # J1939-21: a new RTS from the same sender replaces the open transfer.
            problems = (f"RTS replaced open transfer of PGN 0x{self._transfer.rts.pgn:04X}",)
        window = min(rts.packets, rts.max_packets_per_cts)
        self._transfer = _Transfer(
            rts=rts,
            packets={},
            window_end=window,
            deadline_s=now + T2_S,
            last_data_s=None,
            requests=0,
        )
        return TpResult(send=(Cts(window, 1, rts.pgn),), problems=problems)

    def on_dt(self, packet: DataPacket, now: float) -> TpResult:
        """A TP.DT from the sender."""
        t = self._transfer
        if t is None:
            return TpResult(problems=(f"data packet {packet.sequence} outside a transfer",))
        if packet.sequence > t.rts.packets:
            return TpResult(problems=(f"data packet {packet.sequence} beyond {t.rts.packets}",))
        t.packets.setdefault(packet.sequence, packet.data)
        t.last_data_s = now
        t.deadline_s = now + T1_S
        missing = self._missing(t)
        if not missing:
            payload = b"".join(t.packets[i] for i in range(1, t.rts.packets + 1))
            rts = t.rts
            self._transfer = None
            return TpResult(
                send=(EndOfMsgAck(rts.total_size, rts.packets, rts.pgn),),
                completed=(rts.pgn, payload[: rts.total_size]),
            )
        if missing[0] > t.window_end:
            # The window is complete: clear the next one.
            window = min(t.rts.packets - t.window_end, t.rts.max_packets_per_cts)
            start = t.window_end + 1
            t.window_end += window
            t.deadline_s = now + T2_S
            return TpResult(send=(Cts(window, start, t.rts.pgn),))
        return TpResult()

    def tick(self, now: float) -> TpResult:
        """Timeouts: ask again for a gap, or abort the transfer."""
        t = self._transfer
        if t is None:
            return TpResult()
        missing = self._missing(t)
        if now >= t.deadline_s:
            self._transfer = None
            return TpResult(
                send=(Abort(AbortReason.TIMEOUT, t.rts.pgn),),
                problems=(f"PGN 0x{t.rts.pgn:04X}: timed out with packets {missing} missing",),
            )
        gap_open = t.last_data_s is not None and now >= t.last_data_s + RETRANSMIT_AFTER_S
        if gap_open and missing and missing[0] <= t.window_end:
            if t.requests >= MAX_RETRANSMIT_REQUESTS:
                self._transfer = None
                return TpResult(
                    send=(Abort(AbortReason.MAX_RETRANSMIT, t.rts.pgn),),
                    problems=(f"PGN 0x{t.rts.pgn:04X}: packets {missing} lost again",),
                )
            t.requests += 1
            first = missing[0]
            last = max(m for m in missing if m <= t.window_end)
            t.last_data_s = None
            t.deadline_s = now + T2_S
            return TpResult(
                send=(Cts(last - first + 1, first, t.rts.pgn),),
                problems=(f"PGN 0x{t.rts.pgn:04X}: asked again for packets {first}..{last}",),
            )
        return TpResult()

    @staticmethod
    def _missing(t: _Transfer) -> list[int]:
        return [i for i in range(1, t.rts.packets + 1) if i not in t.packets]


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

    def start(self, pgn: int, payload: bytes, now: float) -> TpSendResult:
        """Open a transfer of ``payload`` (9..1785 bytes); replaces an open one."""
        self._pgn = pgn
        self._size = len(payload)
        self._packets = split_payload(payload)
        self._deadline_s = now + T3_S
        return TpSendResult(send_cm=(Rts(len(payload), len(self._packets), pgn),))

    def on_cm(self, message: ConnectionMessage, now: float) -> TpSendResult:
        """A TP.CM from the receiver."""
        if self._pgn is None or message.pgn != self._pgn:
            return TpSendResult(problems=(f"{message} outside a transfer",))
        result = TpSendResult()
        match message:
            case Cts(packets=0):
                self._deadline_s = now + T4_S  # J1939-21: CTS(0) holds the connection open
            case Cts(packets=count, next_packet=first):
                chosen = tuple(p for p in self._packets if first <= p.sequence < first + count)
                if not chosen:
                    return self._abort(AbortReason.BAD_SEQUENCE, f"CTS asks for {first}+{count}")
                self._deadline_s = now + T3_S
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

    def tick(self, now: float) -> TpSendResult:
        """T3/T4: abort when the receiver went quiet."""
        if self._pgn is not None and now >= self._deadline_s:
            return self._abort(AbortReason.TIMEOUT, "no CTS or EndOfMsgAck in time")
        return TpSendResult()

    def _abort(self, reason: AbortReason, why: str) -> TpSendResult:
        pgn = self._pgn if self._pgn is not None else 0
        self._pgn = None
        return TpSendResult(send_cm=(Abort(reason, pgn),), problems=(why,))
