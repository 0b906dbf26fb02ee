"""The DBC files as the only description of the wire: decode with plausibility, encode strictly.

``DbcCodec`` wraps a cantools database. Decoding rejects what does not follow the protocol:

* an unknown ID or a payload shorter than the message (or longer with bytes that are not padding)
  raises ``ProtocolError`` — the frame is malformed and is dropped;
* a well-formed frame with a value outside the DBC range raises ``ImplausibleValueError`` (a
  ``ProtocolError``) — the vehicle said something impossible, which the session turns into a fault.

Decoded values are rounded to the signal's resolution so that 0.1 V/bit reads 426.1, not
426.09999999999997.

Where the files are: the DBC files are not Python package data. ``find_dbc`` looks, in order, in
an explicit directory (``vehicle.dbc_dir`` in the config), the repository's ``dbc/`` (a source
checkout) and ``/usr/share/v2g-controller/dbc`` (where docs/deploy.md has the technician copy
them). A file found nowhere is a ``VehicleLinkError`` naming every place tried.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cantools
from cantools.database.can import Database, Message, Signal
from cantools.database.errors import Error as CantoolsError

from controller.errors import ProtocolError, VehicleLinkError

# A source checkout's dbc/ directory, and where an installed controller finds the files.
REPO_DBC_DIR = Path(__file__).resolve().parents[2] / "dbc"
SYSTEM_DBC_DIR = Path("/usr/share/v2g-controller/dbc")
CHADEMO_FILE = "chademo.dbc"
GBT27930_FILE = "gbt27930.dbc"
CHADEMO_DBC = REPO_DBC_DIR / CHADEMO_FILE
GBT27930_DBC = REPO_DBC_DIR / GBT27930_FILE

SignalValues = Mapping[str, float]


# A signal on the per-frame path: itself, its name, decimals to round to, declared range.
_SignalPlan = tuple[Signal, str, int, float | None, float | None]


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
    # Read-only to its users (the sessions take it as ``SignalValues``): ``decode_frame`` hands
    # the same object out again for a repeated payload. (Typed dict for hil/'s simulated cars.)
    signals: dict[str, float]


def dbc_search_path(
    explicit: str | Path | None = None,
    *,
    repository: Path = REPO_DBC_DIR,
    system: Path = SYSTEM_DBC_DIR,
) -> tuple[Path, ...]:
    """The directories searched for a DBC file, in order.

    An explicit directory (from the config) is the only place searched when it is given: a
    technician who names a directory must get those files or an error, never others.
    """
    if explicit is not None:
        return (Path(explicit),)
    return (repository, system)


def find_dbc(name: str, directories: tuple[Path, ...] | None = None) -> Path:
    """The first of ``directories`` holding ``name``; VehicleLinkError names every place tried."""
    search = dbc_search_path() if directories is None else directories
    for directory in search:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(directory / name) for directory in search)
    raise VehicleLinkError(
        f"DBC file {name} not found; tried {tried}. Copy the project's dbc/ directory to "
        f"{SYSTEM_DBC_DIR} (docs/deploy.md) or set vehicle.dbc_dir to the directory holding it"
    )


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
    CHAdeMO (unused bytes are 0); None for a third-party DBC whose padding is not known, where
    bytes after the message's length (up to 8) are ignored.
    """

    def __init__(self, path: Path, *, padding_byte: int | None) -> None:
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
        # Per message, computed once for the per-frame path: each signal with its name, the
        # decimals its value is rounded to and its declared range.
        self._plans: dict[str, tuple[_SignalPlan, ...]] = {
            str(m.name): tuple(
                (s, str(s.name), _decimals(float(s.scale)), s.minimum, s.maximum) for s in m.signals
            )
            for m in self._db.messages
        }
        # Per ID, the last payload decoded without error and its result. A vehicle repeats most
        # frames unchanged every period (CHAdeMO 0x100/0x101/0x200 hardly ever change), and
        # decoding is a pure function of the payload, so an identical payload gets the identical
        # result without cantools. One entry per ID the DBC knows: bounded.
        self._last: dict[int, tuple[bytes, Decoded]] = {}

    @classmethod
    def chademo(cls, dbc_dir: str | Path | None = None) -> DbcCodec:
        """The CHAdeMO codec from chademo.dbc (``find_dbc``)."""
        return cls(find_dbc(CHADEMO_FILE, dbc_search_path(dbc_dir)), padding_byte=0x00)

    @classmethod
    def gbt27930(cls, dbc_dir: str | Path | None = None) -> DbcCodec:
        """The GB/T 27930 codec from gbt27930.dbc (``find_dbc``)."""
        return cls(find_dbc(GBT27930_FILE, dbc_search_path(dbc_dir)), padding_byte=0xFF)

    @property
    def message_names(self) -> tuple[str, ...]:
        """Every message the DBC describes, in file order."""
        return tuple(str(m.name) for m in self._db.messages)

    def signal_names(self, name: str) -> tuple[str, ...]:
        """The signals of a message, in file order."""
        return tuple(str(s.name) for s in self._message(name).signals)

    def signal_range(self, name: str, signal: str) -> tuple[float | None, float | None]:
        """A signal's declared [minimum, maximum], None where the DBC declares none."""
        for candidate in self._message(name).signals:
            if candidate.name == signal:
                low, high = candidate.minimum, candidate.maximum
                return (
                    None if low is None else float(low),
                    None if high is None else float(high),
                )
        raise ProtocolError(f"{name}: no signal {signal!r}")

    def is_extended(self, name: str) -> bool:
        """Whether a message uses a 29-bit ID."""
        return bool(self._message(name).is_extended_frame)

    def choice(self, name: str, signal: str, value: float) -> str | None:
        """The DBC value-table name of a signal value, or None when it has none."""
        for candidate in self._message(name).signals:
            if candidate.name == signal and candidate.choices:
                named = candidate.choices.get(int(value))
                return None if named is None else str(named)
        return None

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
        """Decode a frame by its ID (a payload equal to this ID's last one: the same result)."""
        last = self._last.get(frame_id)
        if last is not None and last[0] == data:
            return last[1]
        message = self._by_id.get(frame_id)
        if message is None:
            raise ProtocolError(f"unknown ID 0x{frame_id:X}")
        decoded = self._decode(message, data)
        # Only a result that raised nothing is kept; the key is an immutable copy.
        self._last[frame_id] = (data if type(data) is bytes else bytes(data), decoded)
        return decoded

    def decode_checked(self, frame_id: int, data: bytes) -> tuple[Decoded, dict[str, str]]:
        """Decode a frame by its ID, keeping the signals outside their DBC range apart.

        Returns the in-range values and, per out-of-range signal, the reason it was rejected; a
        malformed frame still raises ``ProtocolError``. A signal whose DBC declares no range is
        returned as decoded. The generic DBC profile uses this so one impossible signal faults
        only the fields it feeds.
        """
        message = self._by_id.get(frame_id)
        if message is None:
            raise ProtocolError(f"unknown ID 0x{frame_id:X}")
        name = str(message.name)
        values: dict[str, float] = {}
        rejected: dict[str, str] = {}
        for signal, value in self._raw_values(message, data):
            reason = _out_of_range(name, signal, value, required=False)
            if reason is None:
                values[str(signal.name)] = value
            else:
                rejected[str(signal.name)] = reason
        return Decoded(name=name, signals=values), rejected

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
        # One pass per frame (the per-frame path): round, range-check and collect together.
        name = str(message.name)
        raw = self._cantools_decode(message, data)
        values: dict[str, float] = {}
        for signal, signal_name, decimals, low, high in self._plans[name]:
            decoded = raw.get(signal_name)
            if decoded is None:
                continue  # multiplexed signal not selected by this frame
            value: float
            if isinstance(decoded, float):
                value = round(decoded, decimals)
            elif isinstance(decoded, int):
                value = decoded
            else:
                raise ProtocolError(f"{name}.{signal_name}: not a number ({decoded!r})")
            # The common case (inside a declared range) without a call; the rest explains itself.
            if low is None or high is None or not low <= value <= high:
                reason = _out_of_range(name, signal, value, required=True)
                if reason is not None:
                    raise ImplausibleValueError(reason)
            values[signal_name] = value
        return Decoded(name=name, signals=values)

    def _raw_values(self, message: Message, data: bytes) -> list[tuple[Signal, float]]:
        """Every signal present in the frame with its scaled, rounded value; malformed raises."""
        name = str(message.name)
        raw = self._cantools_decode(message, data)
        out: list[tuple[Signal, float]] = []
        for signal, signal_name, decimals, _low, _high in self._plans[name]:
            decoded = raw.get(signal_name)
            if decoded is None:
                continue  # multiplexed signal not selected by this frame
            if isinstance(decoded, float):
                out.append((signal, round(decoded, decimals)))
            elif isinstance(decoded, int):
                out.append((signal, decoded))
            else:
                raise ProtocolError(f"{name}.{signal_name}: not a number ({decoded!r})")
        return out

    def _cantools_decode(self, message: Message, data: bytes) -> Mapping[str, object]:
        """cantools' scaled values of a payload of the message's length; malformed raises."""
        name = str(message.name)
        length = int(message.length)
        if len(data) < length:
            raise ProtocolError(f"{name}: {len(data)} bytes, expected {length}")
        if len(data) > length:
            excess = data[length:]
            padded = self._padding_byte is None or all(b == self._padding_byte for b in excess)
            if len(data) > max(8, length) or not padded:
                raise ProtocolError(f"{name}: {len(data)} bytes, expected {length}")
            data = data[:length]
        try:
            return message.decode_simple(data, decode_choices=False, scaling=True)
        except (CantoolsError, KeyError, ValueError) as exc:
            raise ProtocolError(f"{name}: {exc}") from None


def _out_of_range(message: str, signal: Signal, value: float, *, required: bool) -> str | None:
    """Why ``value`` is outside the signal's DBC range, or None when it is inside.

    ``required``: the project's own DBC files declare every range, so a missing one is an error;
    a third-party DBC may leave a signal unbounded.
    """
    low, high = signal.minimum, signal.maximum
    if not required and (low is None or high is None):
        return None
    if value < _bound(low):
        return f"{message}.{signal.name} = {value} below {low}"
    if value > _bound(high):
        return f"{message}.{signal.name} = {value} above {high}"
    return None
