"""Modbus register codec: typed values to and from 16-bit registers. Pure, no IO.

Covers the SunSpec point types and the types a vendor register map names. Multi-register values
are big-endian within each register (Modbus); the order of the registers ("word order") is
either high word first (SunSpec, most devices) or low word first (some vendors).

SunSpec marks an unimplemented point with a sentinel (SunSpec Modbus spec, "not implemented"
values); ``decode`` returns None for it when asked to honour sentinels, so a missing reading is
never mistaken for a real 0 or -32768.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence

from controller.errors import ProtocolError


class RegType(enum.Enum):
    U16 = "uint16"
    I16 = "int16"
    U32 = "uint32"
    I32 = "int32"
    U64 = "uint64"
    I64 = "int64"
    F32 = "float32"
    ACC16 = "acc16"
    ACC32 = "acc32"
    ACC64 = "acc64"
    ENUM16 = "enum16"
    ENUM32 = "enum32"
    BITFIELD16 = "bitfield16"
    BITFIELD32 = "bitfield32"
    SUNSSF = "sunssf"
    STRING = "string"
    PAD = "pad"
    COUNT = "count"  # SunSpec repeat count: an unsigned 16-bit value


class WordOrder(enum.Enum):
    HIGH_FIRST = "high_first"  # SunSpec and most devices: ABCD
    LOW_FIRST = "low_first"  # some vendors: CDAB


_WORDS: dict[RegType, int] = {
    RegType.U16: 1,
    RegType.I16: 1,
    RegType.ENUM16: 1,
    RegType.BITFIELD16: 1,
    RegType.SUNSSF: 1,
    RegType.ACC16: 1,
    RegType.PAD: 1,
    RegType.COUNT: 1,
    RegType.U32: 2,
    RegType.I32: 2,
    RegType.F32: 2,
    RegType.ACC32: 2,
    RegType.ENUM32: 2,
    RegType.BITFIELD32: 2,
    RegType.U64: 4,
    RegType.I64: 4,
    RegType.ACC64: 4,
}

_SIGNED = {RegType.I16, RegType.SUNSSF, RegType.I32, RegType.I64}

# SunSpec "not implemented" values, by type (SunSpec Modbus specification, data types table).
_NOT_IMPLEMENTED: dict[RegType, int] = {
    RegType.I16: 0x8000,
    RegType.SUNSSF: 0x8000,
    RegType.U16: 0xFFFF,
    RegType.ENUM16: 0xFFFF,
    RegType.BITFIELD16: 0xFFFF,
    RegType.COUNT: 0xFFFF,
    RegType.ACC16: 0,
    RegType.I32: 0x8000_0000,
    RegType.U32: 0xFFFF_FFFF,
    RegType.ENUM32: 0xFFFF_FFFF,
    RegType.BITFIELD32: 0xFFFF_FFFF,
    RegType.ACC32: 0,
    RegType.I64: 0x8000_0000_0000_0000,
    RegType.U64: 0xFFFF_FFFF_FFFF_FFFF,
    RegType.ACC64: 0,
}
_F32_NAN_BITS = 0x7FC0_0000


def words_of(reg_type: RegType, string_words: int = 0) -> int:
    """How many registers a value of this type occupies."""
    if reg_type is RegType.STRING:
        if string_words <= 0:
            raise ValueError("a string needs its length in registers")
        return string_words
    return _WORDS[reg_type]


def _check_registers(registers: Sequence[int], count: int) -> None:
    if len(registers) != count:
        raise ProtocolError(f"expected {count} registers, got {len(registers)}")
    for reg in registers:
        if not 0 <= reg <= 0xFFFF:
            raise ProtocolError(f"register value {reg} is not a 16-bit word")


def _join(registers: Sequence[int], order: WordOrder) -> int:
    words = list(registers) if order is WordOrder.HIGH_FIRST else list(reversed(registers))
    value = 0
    for word in words:
        value = (value << 16) | word
    return value


def _split(value: int, count: int, order: WordOrder) -> list[int]:
    words = [(value >> (16 * (count - 1 - i))) & 0xFFFF for i in range(count)]
    return words if order is WordOrder.HIGH_FIRST else list(reversed(words))


def decode(  # noqa: PLR0911  one early return per type family reads clearest
    registers: Sequence[int],
    reg_type: RegType,
    order: WordOrder = WordOrder.HIGH_FIRST,
    *,
    sunspec_sentinels: bool = False,
) -> int | float | str | None:
    """Registers to a raw value (before any scale factor).

    Returns None for a SunSpec not-implemented value when ``sunspec_sentinels`` is set. Raises
    ProtocolError for a wrong register count or a value that is not a 16-bit word.
    """
    if reg_type is RegType.STRING:
        _check_registers(registers, len(registers))
        raw = b"".join(reg.to_bytes(2, "big") for reg in registers)
        text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
        return None if sunspec_sentinels and not text else text
    count = _WORDS[reg_type]
    _check_registers(registers, count)
    unsigned = _join(registers, order)
    if reg_type is RegType.F32:
        if sunspec_sentinels and unsigned == _F32_NAN_BITS:
            return None
        (value,) = struct.unpack(">f", unsigned.to_bytes(4, "big"))
        return None if sunspec_sentinels and math.isnan(value) else float(value)
    if reg_type is RegType.PAD:
        return 0
    if sunspec_sentinels and _NOT_IMPLEMENTED.get(reg_type) == unsigned:
        return None
    if reg_type in _SIGNED and unsigned >= 1 << (16 * count - 1):
        return unsigned - (1 << (16 * count))
    return unsigned


def encode(
    value: int | float | str,
    reg_type: RegType,
    order: WordOrder = WordOrder.HIGH_FIRST,
    *,
    string_words: int = 0,
) -> list[int]:
    """A raw value (after scaling) to registers. Raises ValueError if it does not fit."""
    if reg_type is RegType.STRING:
        data = str(value).encode("utf-8")
        size = words_of(reg_type, string_words) * 2
        if len(data) > size:
            raise ValueError(f"string of {len(data)} bytes does not fit in {size}")
        data = data.ljust(size, b"\0")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, size, 2)]
    count = _WORDS[reg_type]
    if reg_type is RegType.F32:
        unsigned = int.from_bytes(struct.pack(">f", float(value)), "big")
        return _split(unsigned, 2, order)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value} is not a whole number for {reg_type.value}")
        value = int(value)
    if not isinstance(value, int):
        raise TypeError(f"{reg_type.value} needs a number, got {value!r}")
    bits = 16 * count
    if reg_type in _SIGNED:
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        low, high = 0, (1 << bits) - 1
    if not low <= value <= high:
        raise ValueError(f"{value} does not fit in {reg_type.value}")
    return _split(value & ((1 << bits) - 1), count, order)


def not_implemented(reg_type: RegType, string_words: int = 0) -> list[int]:
    """The registers SunSpec uses to say "this point is not implemented"."""
    if reg_type is RegType.STRING:
        return [0] * words_of(reg_type, string_words)
    if reg_type is RegType.F32:
        return _split(_F32_NAN_BITS, 2, WordOrder.HIGH_FIRST)
    return _split(_NOT_IMPLEMENTED.get(reg_type, 0), _WORDS[reg_type], WordOrder.HIGH_FIRST)


def scaled(raw: int | float, scale_factor: int) -> float:
    """Apply a SunSpec scale factor: value = raw x 10^sf."""
    return float(raw) * (10.0**scale_factor)


def unscaled(value: float, scale_factor: int) -> int:
    """The raw integer that represents ``value`` at this scale factor (rounded half away)."""
    raw = value / (10.0**scale_factor)
    return int(math.copysign(math.floor(abs(raw) + 0.5), raw))


def check_scale_factor(sf: int | None) -> int:
    """A SunSpec scale factor must be within -10..10 (SunSpec: sunssf range)."""
    if sf is None:
        raise ProtocolError("scale factor not implemented")
    if not -10 <= sf <= 10:
        raise ProtocolError(f"scale factor {sf} outside -10..10")
    return sf
