"""The DBC files as the only description of the wire: decode with plausibility, encode strictly.

``DbcCodec`` wraps a cantools database. Decoding rejects what does not follow the protocol:

* an unknown ID or a payload shorter than the message (or longer with bytes that are not padding)
  raises ``ProtocolError`` — the frame is malformed and is dropped;
* a well-formed frame with a value outside the DBC range raises ``ImplausibleValueError`` (a
  ``ProtocolError``) — the vehicle said something impossible, which the session turns into a fault.

Decoded values are rounded to the signal's resolution so that 0.1 V/bit reads 426.1, not
426.09999999999997.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cantools
from cantools.database.can import Database, Message
from cantools.database.errors import Error as CantoolsError

from controller.errors import ProtocolError

# The repository's dbc/ directory; the files are not Python package data (see the link's docs).
DBC_DIR = Path(__file__).resolve().parents[2] / "dbc"
CHADEMO_DBC = DBC_DIR / "chademo.dbc"
GBT27930_DBC = DBC_DIR / "gbt27930.dbc"

SignalValues = Mapping[str, float]


class ImplausibleValueError(ProtocolError):
    """A well-formed frame carries a value outside its DBC range."""


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """One signal's scaling and range as the DBC declares them."""

    name: str
    length_bits: int
    scale: float
    offset: float
    minimum: float
    maximum: float


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded message."""

    name: str
    signals: dict[str, float]


def _bound(limit: float | None) -> float:
    """A signal range end; the project's DBC files declare every one."""
    if limit is None:
        raise ProtocolError("DBC signal without a declared range")
    return float(limit)


def _decimals(scale: float) -> int:
    """Decimal places of a signal resolution (0.1 -> 1, 0.01 -> 2, 10 -> 0)."""
    if scale == 0 or abs(scale) >= 1:
        return 0
    return max(0, math.ceil(-math.log10(abs(scale)) - 1e-9))


class DbcCodec:
    """Decode and encode one protocol's messages through its DBC file.

    ``padding_byte`` is what unused bits hold: 0xFF for GB/T 27930 (unused bits are 1), 0x00 for
    CHAdeMO (unused bytes are 0).
    """

    def __init__(self, path: Path, *, padding_byte: int) -> None:
        try:
            db = cantools.database.load_file(str(path), strict=True)
        except (OSError, CantoolsError) as exc:
            raise ProtocolError(f"cannot load DBC {path}: {exc}") from None
        if not isinstance(db, Database):
            raise ProtocolError(f"{path} is not a CAN database")
        self._db = db
        self._padding_byte = padding_byte
        self._by_id: dict[int, Message] = {m.frame_id: m for m in db.messages}
        self._by_name: dict[str, Message] = {m.name: m for m in db.messages}
        self._decimals: dict[tuple[str, str], int] = {
            (m.name, s.name): _decimals(float(s.scale))
            for m in self._db.messages
            for s in m.signals
        }

    @classmethod
    def chademo(cls) -> DbcCodec:
        """The CHAdeMO codec from dbc/chademo.dbc."""
        return cls(CHADEMO_DBC, padding_byte=0x00)

    @classmethod
    def gbt27930(cls) -> DbcCodec:
        """The GB/T 27930 codec from dbc/gbt27930.dbc."""
        return cls(GBT27930_DBC, padding_byte=0xFF)

    @property
    def frame_ids(self) -> frozenset[int]:
        """Every arbitration ID the DBC describes."""
        return frozenset(self._by_id)

    def frame_id(self, name: str) -> int:
        """The arbitration ID of a message."""
        return int(self._message(name).frame_id)

    def length(self, name: str) -> int:
        """The payload length of a message in bytes."""
        return int(self._message(name).length)

    def name_of(self, frame_id: int) -> str | None:
        """The message name for an ID, or None when the DBC does not know it."""
        message = self._by_id.get(frame_id)
        return None if message is None else str(message.name)

    def signals(self, name: str) -> tuple[SignalSpec, ...]:
        """The signals of a message with their scaling and range."""
        return tuple(
            SignalSpec(
                name=str(s.name),
                length_bits=int(s.length),
                scale=float(s.scale),
                offset=float(s.offset),
                minimum=_bound(s.minimum),
                maximum=_bound(s.maximum),
            )
            for s in self._message(name).signals
        )

    def decode_frame(self, frame_id: int, data: bytes) -> Decoded:
        """Decode a frame by its ID."""
        message = self._by_id.get(frame_id)
        if message is None:
            raise ProtocolError(f"unknown ID 0x{frame_id:X}")
        return self._decode(message, data)

    def decode(self, name: str, data: bytes) -> Decoded:
        """Decode a payload by message name (used for transport-reassembled messages)."""
        return self._decode(self._message(name), data)

    def encode(self, name: str, signals: SignalValues) -> bytes:
        """Encode every signal of a message; a missing or out-of-range value is a ProtocolError."""
        message = self._message(name)
        try:
            data = message.encode(dict(signals), padding=self._padding_byte == 0xFF, strict=True)
        except (CantoolsError, KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(f"{name}: cannot encode {dict(signals)}: {exc}") from None
        return bytes(data)

    def _message(self, name: str) -> Message:
        message = self._by_name.get(name)
        if message is None:
            raise ProtocolError(f"unknown message {name!r}")
        return message

    def _decode(self, message: Message, data: bytes) -> Decoded:
        name = str(message.name)
        length = int(message.length)
        if len(data) < length:
            raise ProtocolError(f"{name}: {len(data)} bytes, expected {length}")
        if len(data) > length:
            excess = data[length:]
            if len(data) > max(8, length) or any(b != self._padding_byte for b in excess):
                raise ProtocolError(f"{name}: {len(data)} bytes, expected {length}")
            data = data[:length]
        try:
            raw = message.decode_simple(data, decode_choices=False, scaling=True)
        except (CantoolsError, KeyError, ValueError) as exc:
            raise ProtocolError(f"{name}: {exc}") from None
        values: dict[str, float] = {}
        for signal in message.signals:
            decoded = raw.get(signal.name)
            if decoded is None:
                continue  # multiplexed signal not selected by this frame
            if not isinstance(decoded, int | float):
                raise ProtocolError(f"{name}.{signal.name}: not a number ({decoded!r})")
            value: float = decoded
            if isinstance(value, float):
                value = round(value, self._decimals[(name, signal.name)])
            if value < _bound(signal.minimum):
                raise ImplausibleValueError(
                    f"{name}.{signal.name} = {value} below {signal.minimum}"
                )
            if value > _bound(signal.maximum):
                raise ImplausibleValueError(
                    f"{name}.{signal.name} = {value} above {signal.maximum}"
                )
            values[signal.name] = value
        return Decoded(name=name, signals=values)
